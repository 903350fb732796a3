"""Ollama's model names: ``[host/][namespace/]model[:tag]``, parsed and checked by Ollama's own rules (types/model).

Pure: the store (:mod:`tray.models.store`) finds a name's manifest, the
settings (``ollama_model``) refuse a name Ollama would refuse, and every
comparison of two names goes through :func:`same_model` (or :func:`model_key`
for sets and dict keys), case-insensitive as Ollama compares them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART_MAX_LEN = {"host": 350}


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name ``host/namespace/model:tag``."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The shortest form, always with a tag, as Ollama echoes names (``llama3:latest``)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def manifest_relpath(self) -> PurePosixPath:
        """Where its manifest lies in the store, relative to the models folder."""
        return PurePosixPath("manifests", self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity: Ollama treats ``Mistral`` and ``mistral`` as one model."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def same_as(self, other: ModelName) -> bool:
        """Whether both name the same model, ignoring case."""
        return self.key() == other.key()

    def __str__(self) -> str:
        return self.display


def _valid_part(kind: str, text: str) -> bool:
    if not text or len(text) > _PART_MAX_LEN.get(kind, 80):
        return False
    if not (text[0].isascii() and (text[0].isalnum() or text[0] == "_")):
        return False
    for char in text[1:]:
        if char in "_-":
            continue
        if char == ".":
            if kind == "namespace":
                return False
            continue
        if char == ":":
            if kind != "host":
                return False
            continue
        if not (char.isascii() and char.isalnum()):
            return False
    return True


def parse_name(text: str) -> ModelName:
    """Parse ``[host/][namespace/]model[:tag][@digest]`` and fill Ollama's defaults; ValueError when invalid.

    >>> parse_name("llama3").display
    'llama3:latest'
    >>> parse_name("hf.co/org/repo:Q4_K_M").manifest_relpath.as_posix()
    'manifests/hf.co/org/repo/Q4_K_M'
    >>> parse_name("my model")
    Traceback (most recent call last):
    ValueError: invalid model name 'my model'
    """
    rest = text.strip()
    for scheme in ("http://", "https://"):
        rest = rest.removeprefix(scheme)
    rest = rest.split("@", 1)[0]
    tag = DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    pieces = rest.split("/")
    if len(pieces) > 3:
        raise ValueError(f"invalid model name '{text}'")
    model = pieces[-1]
    namespace = pieces[-2] if len(pieces) >= 2 else DEFAULT_NAMESPACE
    host = pieces[-3] if len(pieces) == 3 else DEFAULT_HOST
    parts = {"host": host, "namespace": namespace, "model": model, "tag": tag}
    if not all(_valid_part(kind, value) for kind, value in parts.items()):
        raise ValueError(f"invalid model name '{text}'")
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


@functools.lru_cache(maxsize=1024)  # asked several times per gateway request, for a handful of names
def model_key(name: str) -> str:
    """A name as Ollama matches it (``Name.EqualFold``): case ignored, defaults filled in, shortest form; a text that
    is not a valid name (a cloud model's, say) is matched as itself, case ignored. For sets and dict keys.

    >>> model_key("Llama3"), model_key("llama3:8B"), model_key("library/llama3"), model_key("localhost:5000/me/m")
    ('llama3:latest', 'llama3:8b', 'llama3:latest', 'localhost:5000/me/m:latest')
    >>> model_key(" gpt 4o "), model_key("")
    ('gpt 4o', '')
    """
    try:
        return parse_name(name).display.lower()
    except ValueError:
        return name.strip().lower()


def same_model(a: str, b: str) -> bool:
    """Whether two names are one model, as Ollama compares them (:meth:`ModelName.same_as` on parsed names).

    >>> same_model("Llama3", "llama3:latest"), same_model("registry.ollama.ai/library/llama3", "llama3")
    (True, True)
    >>> same_model("llama3", "llama3:8b"), same_model("", "")
    (False, True)
    """
    return model_key(a) == model_key(b)
