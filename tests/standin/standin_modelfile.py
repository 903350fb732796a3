"""Client-side Modelfile parsing for ``ollama create`` (parser/parser.go, api.FormatParams).

Produces the *current* ``/api/create`` request: ``from`` for a model name, ``files``
(name → digest, uploaded separately) when FROM/ADAPTER point at files on disk.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Tuple

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
ROLES = ("system", "user", "assistant")
INT_PARAMS = (
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
)
FLOAT_PARAMS = ("min_p", "top_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty")
BOOL_PARAMS = ("use_mmap", "numa")
LIST_PARAMS = ("stop",)
DEPRECATED_PARAMS = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
)
_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "renderer", "parser", "parameter", '
    '"message", or "requires"'
)


class ModelfileError(ValueError):
    """A Modelfile Ollama's parser would reject; ``str()`` is its message."""


Command = Tuple[str, str]


def _read_value(rest: str, lines: List[str], index: int) -> Tuple[str, int]:
    """The value starting at ``rest`` (maybe continuing on later lines) and the next line index."""
    for quote in ('"""', '"'):
        if rest.startswith(quote):
            body = rest[len(quote) :]
            end = body.find(quote)
            if end >= 0:
                return body[:end], index
            parts = [body]
            while index < len(lines):
                line = lines[index]
                index += 1
                end = line.find(quote)
                if end >= 0:
                    parts.append(line[:end])
                    return "\n".join(parts), index
                parts.append(line)
            raise ModelfileError("unexpected EOF")
    return rest.strip(), index


def _split_word(text: str) -> Tuple[str, str]:
    """The first whitespace-separated word and the rest (leading whitespace dropped)."""
    parts = text.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0] if parts else "", "")


def parse_modelfile(text: str) -> List[Command]:
    """Commands as (name, args): FROM becomes ``model``, PARAMETER becomes its parameter name."""
    lines = text.lstrip("\ufeff").splitlines()
    commands: List[Command] = []
    index = 0
    while index < len(lines):
        line_number = index + 1
        stripped = lines[index].strip()
        index += 1
        if not stripped or stripped.startswith("#"):
            continue
        instruction, rest = _split_word(stripped)
        instruction = instruction.lower()
        if instruction not in COMMANDS:
            raise ModelfileError("(line %d): %s" % (line_number, _INVALID_COMMAND))
        name = "model" if instruction == "from" else instruction
        prefix = ""
        if instruction in ("parameter", "message"):
            head, rest = _split_word(rest)
            if instruction == "parameter":
                name = head.lower()
            else:
                if head.lower() not in ROLES:
                    raise ModelfileError(
                        '(line %d): message role must be one of "system", "user", or "assistant"' % line_number
                    )
                prefix = head.lower() + ": "
        value, index = _read_value(rest, lines, index)
        commands.append((name, prefix + value))
    if not any(name == "model" for name, _ in commands):
        raise ModelfileError("no FROM line")
    return commands


def format_param(name: str, values: List[str]) -> Any:
    """``api.FormatParams`` for one parameter: typed value, or ModelfileError."""
    if name in LIST_PARAMS:
        return list(values)
    raw = values[0]
    if name in INT_PARAMS:
        try:
            return int(raw)
        except ValueError:
            raise ModelfileError("invalid int value [%s]" % raw) from None
    if name in FLOAT_PARAMS:
        try:
            return float(raw)
        except ValueError:
            raise ModelfileError("invalid float value [%s]" % raw) from None
    if name in BOOL_PARAMS:
        lowered = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
        if raw.lower() not in lowered or raw not in (
            "1",
            "t",
            "T",
            "TRUE",
            "true",
            "True",
            "0",
            "f",
            "F",
            "FALSE",
            "false",
            "False",
        ):
            raise ModelfileError("invalid bool value [%s]" % raw)
        return lowered[raw.lower()]
    raise ModelfileError("unknown parameter '%s'" % name)


def sha256_digest(path: str) -> str:
    """``sha256:<hex>`` of a file."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def expand_path(path: str, relative_dir: str) -> str:
    """``expandPath``: absolute stays, ``~`` is home, anything else is relative to the Modelfile."""
    if os.path.isabs(path):
        return path
    if path.startswith("~"):
        return os.path.expanduser(path)
    return os.path.join(relative_dir, path)


def _file_digests(path: str) -> Dict[str, Tuple[str, str]]:
    """{name: (path, digest)} for a GGUF file or the GGUF files of a directory."""
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.endswith((".gguf", ".safetensors")))
        if not names:
            raise ModelfileError("no safetensors or torch files found")
        return {name: (os.path.join(path, name), sha256_digest(os.path.join(path, name))) for name in names}
    return {os.path.basename(path): (path, sha256_digest(path))}


def create_request(
    commands: List[Command], relative_dir: str, warn: Any
) -> Tuple[Dict[str, Any], Dict[str, Tuple[str, str]]]:
    """The ``/api/create`` body and the files to upload first ({name: (path, digest)})."""
    request: Dict[str, Any] = {}
    uploads: Dict[str, Tuple[str, str]] = {}
    params: Dict[str, Any] = {}
    licenses: List[str] = []
    messages: List[Dict[str, str]] = []
    for name, args in commands:
        if name in ("model", "adapter"):
            path = expand_path(args, relative_dir)
            if not os.path.exists(path):
                if name == "model":
                    request["from"] = args
                    continue
                raise ModelfileError("open %s: no such file or directory" % path)
            found = _file_digests(path)
            uploads.update(found)
            target = "files" if name == "model" else "adapters"
            request.setdefault(target, {}).update({key: digest for key, (_path, digest) in found.items()})
        elif name in ("template", "system", "renderer", "parser", "requires"):
            request[name] = args
        elif name == "license":
            licenses.append(args)
        elif name == "message":
            role, _, content = args.partition(": ")
            messages.append({"role": role, "content": content})
        elif name in DEPRECATED_PARAMS:
            warn("warning: parameter %s is deprecated" % name)
        else:
            value = format_param(name, [args])
            if isinstance(value, list) and isinstance(params.get(name), list):
                params[name] = params[name] + value
            else:
                params[name] = value
    if params:
        request["parameters"] = params
    if messages:
        request["messages"] = messages
    if licenses:
        request["license"] = licenses
    return request, uploads
