"""Parse a Modelfile and turn it into Ollama's current ``/api/create`` request.

Syntax (Ollama's parser/parser.go): one ``INSTRUCTION value`` per line,
instructions case-insensitive and in any order; ``#`` starts a comment line;
values are the rest of the line, ``"..."`` or ``\"\"\"...\"\"\"`` (newlines kept).
A quoted value runs until a line whose end closes the quote, as in Ollama.

Instructions: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE,
REQUIRES, and the newer DRAFT, RENDERER and PARSER.

Three steps keep reading files apart from deciding:

1. :func:`parse_modelfile` (pure) or :func:`load_modelfile` (reads the file)
   give a :class:`Modelfile`.
2. :func:`resolve_sources` looks at the file system to tell which FROM /
   ADAPTER / DRAFT values are local files (to upload) and which are model names.
3. :meth:`Modelfile.to_create_request` (pure) builds the JSON once the local
   files' digests are known; :func:`fingerprint` hashes it.

Every problem raises :class:`ModelfileError` whose text is one line,
``<file>:<line>: <problem>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tray.models.errors import ModelfileError
from tray.models.store import is_model_name
from tray.settings.textfile import FileRefused, read_regular_file

ParamValue = int | float | bool | str | list[str]

_INT = "int"
_FLOAT = "float"
_BOOL = "bool"
_STR_LIST = "list"

# Every option name Ollama's api.Options/Runner accepts (api/types.go), with its type; tfs_z and numa are gone
# (create fails on them), draft_num_predict is the speculative decoder's.
PARAMETER_TYPES: dict[str, str] = {
    # sampling / prediction
    "num_keep": _INT,
    "seed": _INT,
    "num_predict": _INT,
    "top_k": _INT,
    "top_p": _FLOAT,
    "min_p": _FLOAT,
    "typical_p": _FLOAT,
    "repeat_last_n": _INT,
    "temperature": _FLOAT,
    "repeat_penalty": _FLOAT,
    "presence_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "mirostat": _INT,
    "mirostat_tau": _FLOAT,
    "mirostat_eta": _FLOAT,
    "penalize_newline": _BOOL,
    "stop": _STR_LIST,
    # runner (set when the model loads)
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "low_vram": _BOOL,
    "f16_kv": _BOOL,
    "logits_all": _BOOL,
    "vocab_only": _BOOL,
    "use_mmap": _BOOL,
    "use_mlock": _BOOL,
    "num_thread": _INT,
    "draft_num_predict": _INT,
}

# Accepted, but current Ollama ignores them (parser/parser.go deprecatedParameters).
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

INSTRUCTIONS = (
    "FROM",
    "PARAMETER",
    "TEMPLATE",
    "SYSTEM",
    "ADAPTER",
    "LICENSE",
    "MESSAGE",
    "REQUIRES",
    "DRAFT",
    "RENDERER",
    "PARSER",
)
MESSAGE_ROLES = ("system", "user", "assistant")

_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SEMVER_RE = re.compile(r"^v?(0|[1-9]\d*)(\.(0|[1-9]\d*)){0,2}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_NEWLINE_RE = re.compile(r"(\r\n|\r|\n)")
_WORD_RE = re.compile(r"[ \t]*(\S+)(?:[ \t]+(.*))?$", re.DOTALL)

SourceKind = Literal["model", "adapter", "draft"]


@dataclass(frozen=True)
class SourceRef:
    """A FROM / ADAPTER / DRAFT value as written, with its line."""

    kind: SourceKind
    value: str
    line: int


@dataclass(frozen=True)
class Message:
    """A MESSAGE instruction: one turn of the conversation the model starts with."""

    role: str
    content: str


@dataclass(frozen=True)
class LocalFile:
    """A local file to upload: ``key`` is its name in the create request's ``files`` map."""

    key: str
    path: Path


@dataclass(frozen=True)
class BuildSources:
    """Where the model's weights come from: a model name and/or local files."""

    from_model: str | None = None
    files: tuple[LocalFile, ...] = ()
    adapters: tuple[LocalFile, ...] = ()
    draft_files: tuple[LocalFile, ...] = ()

    @property
    def local_files(self) -> tuple[LocalFile, ...]:
        return (*self.files, *self.adapters, *self.draft_files)


@dataclass(frozen=True)
class Modelfile:
    """A parsed Modelfile. ``filename`` is used in error messages only."""

    filename: str
    sources: tuple[SourceRef, ...]
    system: str | None = None
    template: str | None = None
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    licenses: tuple[str, ...] = ()
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    warnings: tuple[str, ...] = ()

    def to_create_request(
        self,
        model: str,
        sources: BuildSources,
        digests: Mapping[Path, str],
        *,
        quantize: str | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """The ``/api/create`` body (current shape: ``from``/``files``, never ``modelfile``).

        ``digests`` maps each local file's path to ``sha256:<hex>``.
        """
        request: dict[str, Any] = {"model": model}
        if sources.from_model:
            request["from"] = sources.from_model
        for key, group in (
            ("files", sources.files),
            ("adapters", sources.adapters),
            ("draft_files", sources.draft_files),
        ):
            if group:
                request[key] = {item.key: digests[item.path] for item in group}
        optional: dict[str, Any] = {
            "system": self.system,
            "template": self.template,
            "parameters": dict(self.parameters) or None,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages] or None,
            "license": list(self.licenses) or None,
            "requires": self.requires,
            "renderer": self.renderer,
            "parser": self.parser,
            "quantize": quantize,
        }
        request.update({key: value for key, value in optional.items() if value is not None})
        request["stream"] = stream
        return request


def fingerprint(create_request: Mapping[str, Any]) -> str:
    """A stable sha256 of what a model is built from.

    It covers the normalized create request (base name, local file digests,
    system, template, parameters, messages, licenses, quantize, ...) but not the
    target name or the ``stream`` flag.
    """
    essentials = {key: value for key, value in create_request.items() if key not in ("model", "name", "stream")}
    canonical = json.dumps(essentials, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(("modelfile-v1\n" + canonical).encode("utf-8")).hexdigest()


# --- parsing -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        # Lines and the line ends that follow them: a multi-line value keeps its own (CRLF stays CRLF, as in Ollama).
        pieces = _NEWLINE_RE.split(text.removeprefix("\ufeff"))
        self.lines = pieces[0::2]
        self.ends = [*pieces[1::2], ""]
        self.sources: list[SourceRef] = []
        self.fields: dict[str, str] = {}
        self.parameters: dict[str, ParamValue] = {}
        self.messages: list[Message] = []
        self.licenses: list[str] = []
        self.warnings: list[str] = []

    def fail(self, line: int, problem: str) -> ModelfileError:
        return ModelfileError(f"{self.filename}:{line}: {problem}")

    def run(self) -> Modelfile:
        index = 0
        while index < len(self.lines):
            stripped = self.lines[index].strip()
            if not stripped or stripped.startswith("#"):
                index += 1
                continue
            index = self.statement(index)
        if not any(ref.kind == "model" for ref in self.sources):
            raise self.fail(1, "no FROM instruction: the Modelfile must name a base model or a model file")
        return Modelfile(
            filename=self.filename,
            sources=tuple(self.sources),
            system=self.fields.get("SYSTEM"),
            template=self.fields.get("TEMPLATE"),
            parameters=self.parameters,
            messages=tuple(self.messages),
            licenses=tuple(self.licenses),
            requires=self.fields.get("REQUIRES"),
            renderer=self.fields.get("RENDERER"),
            parser=self.fields.get("PARSER"),
            warnings=tuple(self.warnings),
        )

    def statement(self, index: int) -> int:
        """Handle the instruction starting on line ``index``; return the index after it."""
        line_no = index + 1
        match = _WORD_RE.match(self.lines[index])
        assert match is not None  # the line is not blank
        word, rest = match.group(1), match.group(2)
        keyword = word.upper()
        if keyword not in INSTRUCTIONS:
            raise self.fail(line_no, f"unknown instruction '{_clip(word)}' (expected one of {', '.join(INSTRUCTIONS)})")
        if rest is None or not rest.strip():
            raise self.fail(line_no, f"{keyword} needs a value")
        if keyword == "PARAMETER":
            return self.parameter(index, rest)
        if keyword == "MESSAGE":
            return self.message(index, rest)
        value, after = self.value(index, rest)
        if keyword in ("FROM", "ADAPTER", "DRAFT"):
            kind: SourceKind = "model" if keyword == "FROM" else "adapter" if keyword == "ADAPTER" else "draft"
            if kind == "adapter" and any(ref.kind == "adapter" for ref in self.sources):
                # Ollama keeps only the last ADAPTER (each replaces the request's adapters).
                self.sources = [ref for ref in self.sources if ref.kind != "adapter"]
                self.warnings.append(
                    f"{self.filename}:{line_no}: only one ADAPTER is used; this one replaces the earlier"
                )
            self.sources.append(SourceRef(kind, value, line_no))
        elif keyword == "LICENSE":
            self.licenses.append(value)
        elif keyword == "REQUIRES":
            self.fields[keyword] = self.semver(value, line_no)
        else:
            self.fields[keyword] = value
        return after

    def value(self, index: int, first: str) -> tuple[str, int]:
        """Read a bare or quoted value that starts with ``first`` on line ``index``."""
        text = first.strip()
        for quote in ('"""', '"'):
            if text.startswith(quote):
                return self.quoted(index, first, quote)
        return text, index + 1

    def quoted(self, index: int, first: str, quote: str) -> tuple[str, int]:
        """A quoted value ends at the first line end where the text so far closes the quote."""
        collected = first
        end = index
        while not (len(collected.strip()) >= 2 * len(quote) and collected.strip().endswith(quote)):
            end += 1
            if end >= len(self.lines):
                raise self.fail(index + 1, f"unterminated quote: no closing {quote} before the end of the file")
            collected += self.ends[end - 1] + self.lines[end]
        return collected.strip()[len(quote) : -len(quote)], end + 1

    def parameter(self, index: int, rest: str) -> int:
        line_no = index + 1
        match = _WORD_RE.match(rest)
        assert match is not None
        name, raw = match.group(1), match.group(2)
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise self.fail(line_no, f"invalid parameter name '{_clip(name)}'")
        if name not in PARAMETER_TYPES:
            raise self.fail(line_no, f"unknown parameter '{_clip(name)}'")
        if raw is None or not raw.strip():
            raise self.fail(line_no, f"parameter '{name}' needs a value")
        text, after = self.value(index, raw)
        self.set_parameter(name, text, line_no)
        return after

    def set_parameter(self, name: str, text: str, line_no: int) -> None:
        kind = PARAMETER_TYPES[name]
        if name in DEPRECATED_PARAMETERS:
            self.warnings.append(
                f"{self.filename}:{line_no}: parameter {name} is deprecated; current Ollama ignores it"
            )
        if kind == _STR_LIST:
            existing = self.parameters.get(name)
            values = existing if isinstance(existing, list) else []
            self.parameters[name] = [*values, text]
            return
        try:
            self.parameters[name] = _convert(kind, text)
        except ValueError:
            expected = {"int": "a whole number", "float": "a number", "bool": "true or false"}[kind]
            raise self.fail(line_no, f"parameter '{name}' must be {expected}, got '{_clip(text)}'") from None

    def message(self, index: int, rest: str) -> int:
        line_no = index + 1
        match = _WORD_RE.match(rest)
        assert match is not None
        role, raw = match.group(1), match.group(2)
        if role not in MESSAGE_ROLES:
            raise self.fail(line_no, f"bad message role '{_clip(role)}' (must be system, user or assistant)")
        if raw is None or not raw.strip():
            raise self.fail(line_no, f"MESSAGE {role} needs a text")
        text, after = self.value(index, raw)
        self.messages.append(Message(role, text))
        return after

    def semver(self, text: str, line_no: int) -> str:
        if not _SEMVER_RE.match(text):
            raise self.fail(line_no, f"REQUIRES must be a version such as 0.14.0, got '{_clip(text)}'")
        return text.removeprefix("v")


def _convert(kind: str, text: str) -> int | float | bool:
    if kind == _INT:
        if not _INT_RE.match(text):
            raise ValueError(text)
        return int(text)
    if kind == _FLOAT:
        if not _FLOAT_RE.match(text) or not math.isfinite(float(text)):
            raise ValueError(text)
        return float(text)
    if text not in _GO_BOOLS:
        raise ValueError(text)
    return _GO_BOOLS[text]


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_modelfile(text: str, filename: str = "Modelfile") -> Modelfile:
    """Parse Modelfile text (pure). ``filename`` only labels error messages."""
    return _Parser(text, filename).run()


MAX_MODELFILE_BYTES = 16 << 20  # Modelfiles hold instructions and text (a system prompt, a licence), never weights
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_modelfile(data: bytes, filename: str) -> str:
    """UTF-8 text, honouring a UTF-8 or UTF-16 byte order mark as Ollama does."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding.replace("-sig", ""))
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ModelfileError(f"{filename}:{line}: not valid UTF-8 text") from None


def load_modelfile(path: str | Path) -> Modelfile:
    """Read and parse a Modelfile; a missing file gives ``<file>: Modelfile not found``."""
    name = str(path)
    try:
        data = read_regular_file(Path(path).expanduser(), MAX_MODELFILE_BYTES)
    except FileNotFoundError:
        raise ModelfileError(f"{name}: Modelfile not found") from None
    except IsADirectoryError:
        raise ModelfileError(f"{name}: is a directory, not a Modelfile") from None
    except FileRefused as exc:
        raise ModelfileError(f"{name}: {exc}") from None
    except OSError as exc:
        raise ModelfileError(f"{name}: cannot read Modelfile: {exc.strerror}") from None
    return parse_modelfile(decode_modelfile(data, name), name)


# --- local sources -------------------------------------------------------------------------------


def expand_source_path(value: str, base_dir: Path, home: Path | None = None) -> Path:
    """Where a FROM/ADAPTER value points when read as a path: absolute, ``~``, or relative to the Modelfile."""
    if value == "~" or value.startswith("~/"):
        path = (home or Path.home()) / value[2:]
    elif value.startswith("~"):
        path = Path(os.path.expanduser(value))
    else:
        path = Path(value)
        if not path.is_absolute():
            path = base_dir / path
    return Path(os.path.abspath(path))


# Weight files in a model directory, first matching group wins (Ollama's filesForModel).
_WEIGHT_PATTERNS = (
    ("model*.safetensors", "*/model*.safetensors"),
    ("consolidated*.safetensors",),
    ("pytorch_model*.bin",),
    ("consolidated*.pth",),
    ("*.gguf",),
    ("*.bin",),
)
_COMPANION_PATTERNS = ("*.json", "*/*.json", "chat_template.jinja")


def model_directory_files(directory: Path) -> list[Path]:
    """The files Ollama uploads for a model directory: weights, JSON configs, tokenizer."""
    weights: list[Path] = []
    for group in _WEIGHT_PATTERNS:
        weights = sorted(p for pattern in group for p in directory.glob(pattern) if p.is_file())
        if weights:
            break
    if not weights:
        return []
    companions = sorted(p for pattern in _COMPANION_PATTERNS for p in directory.glob(pattern) if p.is_file())
    tokenizer = sorted(
        p for p in [*directory.glob("tokenizer.model"), *directory.glob("*/tokenizer.model")] if p.is_file()
    )
    unique: dict[Path, None] = dict.fromkeys([*weights, *companions, *tokenizer[:1]])
    return list(unique)


def _local_files(ref: SourceRef, path: Path, filename: str) -> tuple[LocalFile, ...]:
    if path.is_dir():
        found = model_directory_files(path)
        if not found:
            raise ModelfileError(f"{filename}:{ref.line}: no safetensors or GGUF files in {path}")
        return tuple(LocalFile(p.relative_to(path).as_posix(), p.resolve()) for p in found)
    return (LocalFile(path.name, path.resolve()),)


def resolve_sources(modelfile: Modelfile, base_dir: Path, home: Path | None = None) -> BuildSources:
    """Decide which FROM/ADAPTER/DRAFT values are local files and list those files.

    A FROM value that is not an existing path is a model name (the last one
    wins, as in Ollama); ADAPTER and DRAFT must be existing files or directories.
    """
    from_model: str | None = None
    groups: dict[SourceKind, list[LocalFile]] = {"model": [], "adapter": [], "draft": []}
    for ref in modelfile.sources:
        path = expand_source_path(ref.value, base_dir, home)
        if not path.exists():
            if ref.kind != "model":
                raise ModelfileError(f"{modelfile.filename}:{ref.line}: {ref.kind} file not found: {path}")
            if not is_model_name(ref.value):
                raise ModelfileError(
                    f"{modelfile.filename}:{ref.line}: '{_clip(ref.value)}' "
                    "is neither an existing file nor a valid model name"
                )
            from_model = ref.value
            continue
        groups[ref.kind].extend(_local_files(ref, path, modelfile.filename))
    for kind, items in groups.items():
        keys = [item.key for item in items]
        duplicate = next((key for key in keys if keys.count(key) > 1), None)
        if duplicate:
            raise ModelfileError(f"{modelfile.filename}: two {kind} files are named '{duplicate}'")
    return BuildSources(from_model, tuple(groups["model"]), tuple(groups["adapter"]), tuple(groups["draft"]))
