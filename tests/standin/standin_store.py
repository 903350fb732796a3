"""The on-disk model store of the stand-in: blobs, manifests, the fake registry, pull and create.

Layout and bytes follow Ollama (ollama.md §3): ``blobs/sha256-<hex>`` named by the
sha256 of their content, ``manifests/<host>/<namespace>/<model>/<tag>`` JSON files,
a model's ID being the sha256 of its manifest bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Generator, Iterable, Iterator, List, Optional, Set, Tuple

import standin_gguf as gguf
from standin_common import MIB, ModelName, env_var, go_json, log, normalize_numbers

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."
MODEL, ADAPTER, PROJECTOR = MEDIA + "model", MEDIA + "adapter", MEDIA + "projector"
TEMPLATE, SYSTEM, PARAMS = MEDIA + "template", MEDIA + "system", MEDIA + "params"
LICENSE, MESSAGES = MEDIA + "license", MEDIA + "messages"
DIGEST_PATTERN = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
DEFAULT_REGISTRY = ("llama3", "llama3.2", "llama3.1", "mistral", "tinyllama", "all-minilm")


class StreamError(Exception):
    """An error for a progress stream; ``status`` is the HTTP code when nothing was sent yet."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ModelMissing(Exception):
    """The manifest or one of the blobs it needs is not on disk."""


# A base layer and, for GGUF weights, their metadata.
BaseLayer = Tuple["Layer", Optional[Dict[str, Any]]]


# --- Layers --------------------------------------------------------------------------


class Layer:
    """A manifest entry; ``status`` is the create-progress line it produces (not serialized)."""

    def __init__(self, media_type: str, digest: str, size: int, origin: str = "", status: str = "") -> None:
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.origin = origin
        self.status = status

    def to_json(self) -> Dict[str, Any]:
        """The layer as Ollama serializes it (``from`` only when set)."""
        entry: Dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.origin:
            entry["from"] = self.origin
        return entry

    @classmethod
    def from_json(cls, entry: Dict[str, Any]) -> "Layer":
        """Read a manifest entry."""
        return cls(
            entry.get("mediaType", ""), entry.get("digest", ""), int(entry.get("size", 0)), entry.get("from", "")
        )


def manifest_bytes(config: Layer, layers: List[Layer], trailing_newline: bool) -> bytes:
    """A manifest as Go's encoder writes it (create adds a trailing newline, pulls keep registry bytes)."""
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return (go_json(document) + ("\n" if trailing_newline else "")).encode("utf-8")


def sha256_file(path: str) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def is_valid_file_path(name: str) -> bool:
    """Go's ``fs.ValidPath``: relative, slash-separated, no empty, ``.`` or ``..`` elements."""
    if name == ".":
        return True
    return bool(name) and all(part not in ("", ".", "..") for part in name.split("/"))


# --- Model profiles of the fake registry -------------------------------------------------


class Profile:
    """What a synthesized model claims to be."""

    def __init__(
        self,
        architecture: str,
        parameter_count: int,
        file_type: str,
        context_length: int,
        embedding_length: int,
        embedding: bool,
    ) -> None:
        self.architecture = architecture
        self.parameter_count = parameter_count
        self.file_type = file_type
        self.context_length = context_length
        self.embedding_length = embedding_length
        self.embedding = embedding

    def gguf_metadata(self, title: str) -> List[gguf.KV]:
        """The GGUF header entries of a model with this profile."""
        arch = self.architecture
        kvs = [
            gguf.string("general.architecture", arch),
            gguf.string("general.name", title),
            gguf.u64("general.parameter_count", self.parameter_count),
            gguf.u32("general.file_type", gguf.FILE_TYPE_IDS[self.file_type]),
            gguf.u32("general.quantization_version", 2),
            gguf.u32(arch + ".context_length", self.context_length),
            gguf.u32(arch + ".embedding_length", self.embedding_length),
            gguf.u32(arch + ".block_count", 32 if not self.embedding else 6),
        ]
        if self.embedding:
            kvs.append(gguf.u32(arch + ".pooling_type", 1))
        return kvs


def profile_for(name: ModelName) -> Profile:
    """The synthesized model for a registry name: embedding models are small BERTs, the rest 8B llamas."""
    model = name.model.lower()
    if "minilm" in model or "embed" in model:
        return Profile("bert", 22565376, "F16", 512, 384, True)
    file_type = "F16" if model.endswith("-f16") else "Q4_K_M"
    return Profile("llama", 8030261248, file_type, 8192, 4096, False)


CHAT_TEMPLATE = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- if .Tools }}<|start_header_id|>tools<|end_header_id|>\n\n"
    "{{ range .Tools }}{{ . }}\n{{ end }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
CHAT_PARAMS = '{"num_keep":24,"stop":["<|start_header_id|>","<|end_header_id|>","<|eot_id|>"]}'


class RemoteLayer:
    """A layer the fake registry serves: its bytes are produced on demand."""

    def __init__(self, media_type: str, produce: Callable[[], Iterable[bytes]], digest: str, size: int) -> None:
        self.media_type = media_type
        self.produce = produce
        self.digest = digest
        self.size = size


class Registry:
    """The fake ``registry.ollama.ai``: known names synthesize deterministic models."""

    def __init__(self, extra_names: str, blob_size: int) -> None:
        self.entries = list(DEFAULT_REGISTRY) + [item.strip() for item in extra_names.split(",") if item.strip()]
        self.blob_size = blob_size
        self._digests: Dict[Tuple[str, int], Tuple[str, int]] = {}
        self._lock = threading.Lock()

    def knows(self, name: ModelName) -> bool:
        """Whether the name is served; an entry without a tag serves every tag."""
        for entry in self.entries:
            known = ModelName.parse(entry)
            tagged = entry.rfind(":") > entry.rfind("/")
            same_model = known.key.rsplit("/", 1)[0] == name.key.rsplit("/", 1)[0]
            if same_model and (not tagged or known.tag.lower() == name.tag.lower()):
                return True
        return False

    def manifest(self, name: ModelName) -> Tuple[bytes, List[RemoteLayer], RemoteLayer]:
        """The registry manifest bytes, the layers and the config of a known name."""
        profile = profile_for(name)
        seed = "%s|%d" % (name.display, self.blob_size)
        layers = [self._model_layer(seed, profile, name.display)]
        if not profile.embedding:
            layers.append(self._text_layer(TEMPLATE, CHAT_TEMPLATE))
        layers.append(
            self._text_layer(LICENSE, "Stand-in license for %s.\nNot a real model; for tests only.\n" % name.display)
        )
        layers.append(self._text_layer(PARAMS, CHAT_PARAMS if not profile.embedding else '{"num_ctx":256}'))
        config_doc = {
            "model_format": "gguf",
            "model_family": profile.architecture,
            "model_families": [profile.architecture],
            "model_type": gguf.human_number(profile.parameter_count),
            "file_type": profile.file_type,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
        config = self._text_layer(CONFIG_MEDIA_TYPE, go_json(config_doc))
        as_layers = [Layer(item.media_type, item.digest, item.size) for item in layers]
        data = manifest_bytes(Layer(config.media_type, config.digest, config.size), as_layers, trailing_newline=False)
        return data, layers, config

    def _model_layer(self, seed: str, profile: Profile, title: str) -> RemoteLayer:
        kvs = profile.gguf_metadata(title)

        def produce() -> Iterable[bytes]:
            """The weights, regenerated on demand."""
            return gguf.synthesized_chunks(seed, self.blob_size, kvs)

        with self._lock:
            key = (seed, self.blob_size)
            if key not in self._digests:
                self._digests[key] = gguf.digest_of_chunks(iter(produce()))
            digest, size = self._digests[key]
        return RemoteLayer(MODEL, produce, digest, size)

    @staticmethod
    def _text_layer(media_type: str, text: str) -> RemoteLayer:
        data = text.encode("utf-8")
        return RemoteLayer(media_type, lambda: [data], "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


# --- A model as read from disk -------------------------------------------------------------


class LocalModel:
    """A model resolved from its manifest (Ollama's ``GetModel``)."""

    def __init__(self, name: ModelName, manifest_data: bytes, modified: float) -> None:
        self.name = name
        self.manifest_data = manifest_data
        self.digest = hashlib.sha256(manifest_data).hexdigest()
        self.modified = modified
        self.config: Dict[str, Any] = {}
        self.model_path = ""
        self.parent_model = ""
        self.adapter_paths: List[str] = []
        self.template = ""
        self.system = ""
        self.licenses: List[str] = []
        self.params: Dict[str, Any] = {}
        self.messages: List[Dict[str, Any]] = []
        self.size = 0

    def metadata(self) -> Dict[str, Any]:
        """GGUF metadata of the model blob, empty when it cannot be decoded."""
        try:
            return gguf.read_metadata(self.model_path)
        except (OSError, ValueError):
            return {}

    def capabilities(self) -> List[str]:
        """``completion``/``embedding`` from the GGUF (falling back to the config), plus ``tools``/``insert``."""
        metadata = self.metadata()
        if metadata:
            arch = metadata.get("general.architecture", "")
            embedding = (arch + ".pooling_type") in metadata
        else:
            embedding = self.config.get("model_family") == "bert"
        found = ["embedding"] if embedding else ["completion"]
        if not embedding and ".Tools" in self.template:
            found.append("tools")
        if not embedding and ".Suffix" in self.template:
            found.append("insert")
        return found

    def details(self, with_parent: bool) -> Dict[str, Any]:
        """The ``details`` object of tags/show/ps."""
        return {
            "parent_model": self.parent_model if with_parent else "",
            "format": self.config.get("model_format", ""),
            "family": self.config.get("model_family", ""),
            "families": self.config.get("model_families"),
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }

    def context_length(self) -> int:
        """``<arch>.context_length`` from the GGUF, else 0."""
        metadata = self.metadata()
        return int(metadata.get("%s.context_length" % metadata.get("general.architecture", ""), 0))

    def embedding_length(self) -> int:
        """``<arch>.embedding_length`` from the GGUF, else 384."""
        metadata = self.metadata()
        return int(metadata.get("%s.embedding_length" % metadata.get("general.architecture", ""), 384))


# --- The store -------------------------------------------------------------------------------


class ModelStore:
    """Blobs and manifests under one models directory, with Ollama's create/pull/delete semantics."""

    def __init__(
        self,
        root: str,
        registry: Registry,
        control: Callable[[], Dict[str, Any]],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = root
        self.blobs = os.path.join(root, "blobs")
        self.manifests = os.path.join(root, "manifests")
        self.registry = registry
        self.control = control
        self.sleep = sleep
        self.lock = threading.RLock()
        self._blob_locks: Dict[str, threading.Lock] = {}
        self._blob_locks_guard = threading.Lock()

    def ensure_dirs(self) -> None:
        """Create ``blobs/`` and ``manifests/`` (raises OSError like ``mkdir`` would)."""
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.manifests, exist_ok=True)

    # paths

    def blob_path(self, digest: str) -> str:
        """``blobs/sha256-<hex>`` for ``sha256:<hex>`` (or ``sha256-<hex>``)."""
        if not DIGEST_PATTERN.match(digest):
            raise ValueError("invalid digest format")
        return os.path.join(self.blobs, "sha256-" + digest[7:].lower())

    def manifest_path(self, name: ModelName) -> str:
        """``manifests/<host>/<namespace>/<model>/<tag>``."""
        return os.path.join(self.manifests, *name.manifest_parts)

    # blobs

    def write_blob(self, chunks: Iterable[bytes], media_type: str) -> Layer:
        """Ollama's ``NewLayer``: hash into a temp file, keep it unless the blob exists already."""
        os.makedirs(self.blobs, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix="sha256-", dir=self.blobs)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
            digest = "sha256:" + hasher.hexdigest()
            target = self.blob_path(digest)
            if os.path.exists(target):
                os.unlink(temp)
                return Layer(media_type, digest, size, status="using existing layer " + digest)
            os.replace(temp, target)
            os.chmod(target, 0o644)
            return Layer(media_type, digest, size, status="creating new layer " + digest)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise

    def existing_layer(self, digest: str, media_type: str, origin: str) -> Layer:
        """Ollama's ``NewLayerFromLayer``: reuse a blob already on disk."""
        size = os.stat(self.blob_path(digest)).st_size
        return Layer(media_type, digest, size, origin, status="using existing layer " + digest)

    def read_blob_text(self, digest: str) -> str:
        """A blob's content as text; missing blobs raise :class:`ModelMissing`."""
        try:
            with open(self.blob_path(digest), "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError as error:
            raise ModelMissing(str(error)) from error

    def blob_lock(self, digest: str) -> threading.Lock:
        """A lock serializing downloads of one blob."""
        with self._blob_locks_guard:
            return self._blob_locks.setdefault(digest, threading.Lock())

    # manifests

    def read_manifest(self, name: ModelName) -> Tuple[bytes, Dict[str, Any], float]:
        """Manifest bytes, parsed JSON and mtime; raises :class:`ModelMissing` or ``ValueError``."""
        path = self.manifest_path(name)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            modified = os.stat(path).st_mtime_ns / 1e9
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
            raise ModelMissing(str(error)) from error
        return data, json.loads(data.decode("utf-8")), modified

    def write_manifest(self, name: ModelName, data: bytes) -> None:
        """Write manifest bytes for a name, creating its directories."""
        path = self.manifest_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = path + ".tmp-%d" % threading.get_ident()
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)

    def manifest_names(self) -> List[ModelName]:
        """Every ``host/namespace/model/tag`` file under ``manifests/``."""
        names = []
        for directory, _subdirs, files in os.walk(self.manifests):
            relative = os.path.relpath(directory, self.manifests)
            parts = [] if relative == "." else relative.split(os.sep)
            if len(parts) != 3:
                continue
            for tag in files:
                if not tag.startswith(".") and ".tmp-" not in tag:
                    names.append(ModelName(parts[0], parts[1], parts[2], tag))
        return names

    def referenced_digests(self) -> Set[str]:
        """Digests of every layer and config that some readable manifest references."""
        found: Set[str] = set()
        for name in self.manifest_names():
            try:
                _data, document, _mtime = self.read_manifest(name)
            except (ModelMissing, ValueError):
                continue
            found.add(document.get("config", {}).get("digest", ""))
            found.update(entry.get("digest", "") for entry in document.get("layers", []))
        return found

    def remove_unreferenced(self, digests: Iterable[str]) -> List[str]:
        """Delete the given blobs that no manifest references any more; return what was deleted."""
        if env_var("OLLAMA_NOPRUNE"):
            return []
        with self.lock:
            referenced = self.referenced_digests()
            removed = []
            for digest in digests:
                if digest in referenced or not DIGEST_PATTERN.match(digest):
                    continue
                try:
                    os.unlink(self.blob_path(digest))
                    removed.append(digest)
                except FileNotFoundError:
                    pass
            return removed

    def prune_at_start(self, now: float) -> Tuple[int, int]:
        """Startup pruning: stale partial/temp files go, unreferenced blobs older than an hour go."""
        if env_var("OLLAMA_NOPRUNE") or not os.path.isdir(self.blobs):
            return 0, 0
        referenced = self.referenced_digests()
        names = os.listdir(self.blobs)
        removed = 0
        for entry in names:
            path = os.path.join(self.blobs, entry)
            digest = "sha256:" + entry[7:] if entry.startswith("sha256-") else ""
            valid = bool(DIGEST_PATTERN.match(digest))
            stale = now - os.stat(path).st_mtime > 3600
            if (not valid and stale) or (valid and digest not in referenced and stale):
                os.unlink(path)
                removed += 1
        return len(names), removed

    # model resolution

    def get_model(self, name: ModelName) -> LocalModel:
        """Resolve a name (Ollama's ``GetModel``); a missing manifest or text blob raises :class:`ModelMissing`."""
        data, document, modified = self.read_manifest(name)
        model = LocalModel(name, data, modified)
        config_digest = document.get("config", {}).get("digest", "")
        model.config = json.loads(self.read_blob_text(config_digest)) if config_digest else {}
        model.size = int(document.get("config", {}).get("size", 0))
        for layer in (Layer.from_json(entry) for entry in document.get("layers", [])):
            model.size += layer.size
            self._apply_layer(model, layer)
        return model

    def _apply_layer(self, model: LocalModel, layer: Layer) -> None:
        if layer.media_type == MODEL:
            model.model_path = self.blob_path(layer.digest)
            model.parent_model = layer.origin
        elif layer.media_type == ADAPTER:
            model.adapter_paths.append(self.blob_path(layer.digest))
        elif layer.media_type == TEMPLATE:
            model.template = self.read_blob_text(layer.digest)
        elif layer.media_type == SYSTEM:
            model.system = self.read_blob_text(layer.digest)
        elif layer.media_type == LICENSE:
            model.licenses.append(self.read_blob_text(layer.digest))
        elif layer.media_type == PARAMS:
            model.params = json.loads(self.read_blob_text(layer.digest) or "{}")
        elif layer.media_type == MESSAGES:
            model.messages = json.loads(self.read_blob_text(layer.digest) or "[]")

    def list_models(self) -> List[LocalModel]:
        """Models with a readable manifest and config, newest first (others are skipped with a warning)."""
        found = []
        for name in self.manifest_names():
            try:
                data, document, modified = self.read_manifest(name)
                model = LocalModel(name, data, modified)
                model.config = json.loads(self.read_blob_text(document["config"]["digest"]))
                model.size = int(document["config"].get("size", 0)) + sum(
                    int(e.get("size", 0)) for e in document.get("layers", [])
                )
                model.parent_model = next(
                    (e.get("from", "") for e in document.get("layers", []) if e.get("mediaType") == MODEL), ""
                )
            except (ModelMissing, ValueError, KeyError, TypeError) as error:
                log("WARN", "manifest.go:55", "bad manifest", ("name", name.display), ("error", str(error)))
                continue
            found.append(model)
        found.sort(key=lambda item: item.modified, reverse=True)
        return found

    # delete / copy

    def delete(self, name: ModelName) -> None:
        """Remove the manifest, prune empty directories, then blobs nothing else references."""
        with self.lock:
            _data, document, _mtime = self.read_manifest(name)
            path = self.manifest_path(name)
            os.unlink(path)
            directory = os.path.dirname(path)
            while os.path.abspath(directory) != os.path.abspath(self.manifests):
                try:
                    os.rmdir(directory)
                except OSError:
                    break
                directory = os.path.dirname(directory)
            self.remove_unreferenced(_manifest_digests(document))

    def copy(self, source: ModelName, destination: ModelName) -> None:
        """Copy a manifest file; blobs are shared."""
        with self.lock:
            data, _document, _mtime = self.read_manifest(source)
            self.write_manifest(destination, data)

    # pull

    def pull(self, name: ModelName) -> Iterator[Dict[str, Any]]:
        """Ollama's ``PullModel`` against the fake registry, as progress objects."""
        yield {"status": "pulling manifest"}
        if self.control().get("pull_offline"):
            # What Ollama's registry client says when DNS (or the route) is gone; the manifest line is out already.
            raise StreamError(
                'pull model manifest: Get "https://%s/v2/%s/%s/manifests/%s": dial tcp: lookup %s: no such host'
                % (name.host, name.namespace, name.model, name.tag, name.host)
            )
        if not self.registry.knows(name):
            raise StreamError("pull model manifest: file does not exist")
        data, layers, config = self.registry.manifest(name)
        fresh: List[RemoteLayer] = []
        for layer in [*layers, config]:
            with self.blob_lock(layer.digest):
                if os.path.exists(self.blob_path(layer.digest)):
                    yield _progress(layer, layer.size)
                    continue
                yield from self._download(layer)
                fresh.append(layer)
        yield {"status": "verifying sha256 digest"}
        for layer in fresh:
            self._verify(layer)
        yield {"status": "writing manifest"}
        with self.lock:
            try:
                _old, old_document, _mtime = self.read_manifest(name)
            except (ModelMissing, ValueError):
                old_document = {}
            self.write_manifest(name, data)
            wanted = {layer.digest for layer in [*layers, config]}
            stale = [digest for digest in _manifest_digests(old_document) if digest not in wanted]
            if stale:
                yield {"status": "removing unused layers"}
                self.remove_unreferenced(stale)
        yield {"status": "success"}

    def _download(self, layer: RemoteLayer) -> Iterator[Dict[str, Any]]:
        final = self.blob_path(layer.digest)
        partial = final + "-partial"
        yield _progress(layer, 0)
        done = 0
        room = self.control().get("pull_disk_full_after_mb")
        with open(partial, "wb") as handle:
            for chunk in layer.produce():
                if room is not None and done + len(chunk) > float(room) * MIB:
                    # download.go writes the blob in parts; a full disk fails the part's write (ENOSPC)
                    raise StreamError("write %s-0: no space left on device" % partial)
                handle.write(chunk)
                handle.flush()
                done += len(chunk)
                delay_ms = float(self.control().get("slow_pull_ms_per_mb", 0) or 0)
                if delay_ms > 0:
                    self.sleep(delay_ms * len(chunk) / MIB / 1000.0)
                yield _progress(layer, done)
        os.replace(partial, final)
        os.chmod(final, 0o644)

    def _verify(self, layer: RemoteLayer) -> None:
        path = self.blob_path(layer.digest)
        actual = sha256_file(path)
        if actual != layer.digest:
            os.unlink(path)
            raise StreamError(
                "digest mismatch, file must be downloaded again: want %s, got %s" % (layer.digest, actual)
            )

    # create

    def create(self, request: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        """Ollama's ``CreateHandler``/``createModel`` for the current request shape, as progress objects."""
        name = ModelName.parse(str(request.get("model") or request.get("name") or ""))
        if not name.is_valid:
            raise StreamError("invalid model name", 400)
        files = request.get("files")
        for key, digest in dict(files or {}).items():
            if not is_valid_file_path(key):
                raise StreamError("file path must be relative", 400)
            if not DIGEST_PATTERN.match(str(digest)):
                raise StreamError("invalid digest format", 400)
        try:
            _old, old_document, _mtime = self.read_manifest(name)
        except (ModelMissing, ValueError):
            old_document = {}

        if request.get("from"):
            base = yield from self._layers_from_model(str(request["from"]))
        elif files is not None:
            base = yield from self._layers_from_files(dict(files))
        else:
            raise StreamError("neither 'from' or 'files' was specified", 400)
        base += self._adapter_layers(dict(request.get("adapters") or {}))

        config = _new_config(request)
        quantize = str(request.get("quantize") or request.get("quantization") or "").upper()
        layers: List[Layer] = []
        for layer, metadata in base:
            if metadata is not None and layer.media_type == MODEL:
                if quantize:
                    # the quantized layer replaces the original, as in Ollama's create
                    layer, metadata = yield from self._maybe_quantize(layer, metadata, quantize)  # noqa: PLW2901
                _fill_config(config, metadata)
            layers.append(layer)
        layers = self._apply_request(layers, request)
        config["rootfs"]["diff_ids"] = [layer.digest for layer in layers]
        config_layer = self.write_blob([(go_json(config) + "\n").encode()], CONFIG_MEDIA_TYPE)
        config_layer.status = ""
        for layer in layers:
            if layer.status:
                yield {"status": layer.status}
        yield {"status": "writing manifest"}
        with self.lock:
            self.write_manifest(name, manifest_bytes(config_layer, layers, trailing_newline=True))
            self.remove_unreferenced(_manifest_digests(old_document))
        yield {"status": "success"}

    def _layers_from_model(self, source: str) -> Generator[Dict[str, Any], None, List[BaseLayer]]:
        """``parseFromModel``: the base model's layers (pulling it first when it is not local)."""
        base_name = ModelName.parse(source)
        if not base_name.is_valid:
            raise StreamError("invalid model name", 400)
        try:
            _data, document, _mtime = self.read_manifest(base_name)
        except ModelMissing:
            yield from self.pull(base_name)
            _data, document, _mtime = self.read_manifest(base_name)
        except ValueError as error:
            raise StreamError(str(error)) from None
        layers = []
        for entry in document.get("layers", []):
            layer = self._existing_or_error(entry["digest"], entry["mediaType"], base_name.display)
            metadata = self._decode(layer.digest) if layer.media_type in (MODEL, ADAPTER, PROJECTOR) else None
            layers.append((layer, metadata))
        return layers

    def _layers_from_files(self, files: Dict[str, str]) -> Generator[Dict[str, Any], None, List[BaseLayer]]:
        """``convertModelFromFiles`` for GGUF files already uploaded as blobs."""
        if not files:
            raise StreamError("no files provided", 400)
        if any(key.endswith(".safetensors") for key in files):
            yield {"status": "converting model"}
            raise StreamError("the stand-in cannot convert safetensors models")
        yield {"status": "parsing GGUF"}
        layers: List[BaseLayer] = []
        for key in sorted(files):
            path = self.blob_path(files[key])
            metadata = self._decode(files[key])
            media_type = ADAPTER if metadata.get("general.type") == "adapter" else MODEL
            layers.append((self._existing_or_error(files[key], media_type, path), metadata))
        return layers

    def _adapter_layers(self, adapters: Dict[str, str]) -> List[BaseLayer]:
        if len(adapters) > 1:
            raise StreamError("only one adapter is currently supported", 400)
        return [
            (self._existing_or_error(digest, ADAPTER, self.blob_path(digest)), None) for digest in adapters.values()
        ]

    def _existing_or_error(self, digest: str, media_type: str, origin: str) -> Layer:
        try:
            return self.existing_layer(digest, media_type, origin)
        except FileNotFoundError:
            raise StreamError("open %s: no such file or directory" % self.blob_path(digest)) from None

    def _decode(self, digest: str) -> Dict[str, Any]:
        try:
            return gguf.read_metadata(self.blob_path(digest))
        except FileNotFoundError:
            raise StreamError("open %s: no such file or directory" % self.blob_path(digest)) from None
        except gguf.GGUFError as error:
            raise StreamError(str(error)) from None

    def _maybe_quantize(
        self, layer: Layer, metadata: Dict[str, Any], target: str
    ) -> Generator[Dict[str, Any], None, Tuple[Layer, Dict[str, Any]]]:
        current = gguf.file_type_name(metadata)
        if current not in gguf.QUANTIZABLE_FROM:
            raise StreamError("quantization is only supported for F16, BF16 and F32 models", 400)
        if target not in gguf.QUANTIZE_TARGETS:
            raise StreamError(
                "unsupported quantization type %s - supported types are %s"
                % (target, ", ".join(gguf.QUANTIZE_TARGETS)),
                400,
            )
        if current == target:
            return layer, metadata
        status = "quantizing %s model to %s" % (current, target)
        for step in (0, 1, 2, 3):
            yield {
                "status": status,
                "digest": "0000000000000000000",
                "total": layer.size,
                "completed": layer.size * step // 3,
            }
        yield {"status": "verifying conversion"}
        new_metadata = dict(metadata, **{"general.file_type": gguf.FILE_TYPE_IDS[target]})
        kvs = [(key, _kv_kind(value), value) for key, value in new_metadata.items() if _kv_kind(value) >= 0]
        size = max(1, layer.size * 3 // 10)
        chunks = gguf.synthesized_chunks("%s|%s" % (layer.digest, target), size, kvs)
        return self.write_blob(chunks, MODEL), new_metadata

    def _apply_request(self, layers: List[Layer], request: Dict[str, Any]) -> List[Layer]:
        """``setTemplate``/``setSystem``/``setLicense``/``setParameters``/``setMessages``."""
        template = request.get("template") or ""
        if template:
            if template.count("{{") != template.count("}}"):
                raise StreamError("template error: template: :1: unclosed action", 400)
            layers = self._replace(layers, TEMPLATE, template)
        if request.get("system"):
            layers = self._replace(layers, SYSTEM, str(request["system"]))
        licenses = request.get("license")
        for text in [licenses] if isinstance(licenses, str) else list(licenses or []):
            if text:
                layers.append(self.write_blob([str(text).encode()], LICENSE))
        params = dict(request.get("parameters") or {})
        for layer in [item for item in layers if item.media_type == PARAMS]:
            existing = json.loads(self.read_blob_text(layer.digest) or "{}")
            for key, value in existing.items():
                params.setdefault(key, value)
        if params:
            encoded = go_json(normalize_numbers(dict(sorted(params.items())))) + "\n"
            layers = [item for item in layers if item.media_type != PARAMS]
            layers.append(self.write_blob([encoded.encode()], PARAMS))
        messages = request.get("messages") or []
        if messages:
            encoded = go_json([{"role": m.get("role", ""), "content": m.get("content", "")} for m in messages]) + "\n"
            layers = self._replace(layers, MESSAGES, encoded)
        return layers

    def _replace(self, layers: List[Layer], media_type: str, text: str) -> List[Layer]:
        kept = [layer for layer in layers if layer.media_type != media_type]
        kept.append(self.write_blob([text.encode("utf-8")], media_type))
        return kept


def _progress(layer: RemoteLayer, completed: int) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"status": "pulling %s" % layer.digest[7:19], "digest": layer.digest, "total": layer.size}
    if completed:
        entry["completed"] = completed
    return entry


def _manifest_digests(document: Dict[str, Any]) -> List[str]:
    digests = [entry.get("digest", "") for entry in document.get("layers", [])]
    if document.get("config"):
        digests.append(document["config"].get("digest", ""))
    return [digest for digest in digests if digest]


def _new_config(request: Dict[str, Any]) -> Dict[str, Any]:
    """A ``ConfigV2`` in Go field order, before the model layer fills it in."""
    config: Dict[str, Any] = {
        "model_format": "",
        "model_family": "",
        "model_families": None,
        "model_type": "",
        "file_type": "",
    }
    for key in ("renderer", "parser", "requires"):
        if request.get(key):
            config[key] = request[key]
    config.update({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    return config


def _fill_config(config: Dict[str, Any], metadata: Dict[str, Any]) -> None:
    arch = str(metadata.get("general.architecture", ""))
    config["model_format"] = config["model_format"] or "gguf"
    config["model_family"] = config["model_family"] or arch
    config["model_type"] = config["model_type"] or gguf.human_number(int(metadata.get("general.parameter_count", 0)))
    config["file_type"] = config["file_type"] or gguf.file_type_name(metadata)
    config["model_families"] = (config["model_families"] or []) + [arch]


def _kv_kind(value: Any) -> int:
    """GGUF type code to re-encode a decoded value (-1: not re-encoded)."""
    if isinstance(value, str):
        return 8
    if isinstance(value, bool):
        return 7
    if isinstance(value, int):
        return 10 if value > 0xFFFFFFFF else 4
    return -1
