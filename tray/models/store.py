"""Read Ollama's on-disk model store: names, manifests, blobs and leftovers.

Layout (``$OLLAMA_MODELS``, default ``~/.ollama/models``)::

    manifests/<host>/<namespace>/<model>/<tag>   JSON: config + layers (digest, size, mediaType, from)
    blobs/sha256-<64 hex>                         content-addressed files
    blobs/sha256-<hex>-partial[-N]                unfinished downloads

This module only reads files; deleting is the caller's business.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tray.core.names import ModelName, parse_name
from tray.models.errors import ManifestNotFound, StoreError, StoreUnreadable

MEDIA_MODEL = "application/vnd.ollama.image.model"

_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_BLOB_NAME_RE = re.compile(r"^sha256-([0-9a-fA-F]{64})$")
# Unfinished downloads: "-partial[-N]" (GGUF pulls, sparse, pre-sized to the whole blob) and ".tmp" (resumable
# safetensors/MLX pulls).
_PARTIAL_RE = re.compile(r"^sha256-[0-9a-fA-F]{64}(-partial(-\d+)?|\.tmp)$")
# Temp files Ollama makes in blobs/ (os.CreateTemp: a prefix and random digits) while it writes a layer
# (manifest/layer.go), splits or copies one, or quantizes to a type such as Q4_K_M (server/create.go, quantization.go).
_OLLAMA_TEMP_RE = re.compile(
    r"^(?:sha256-|split-copy|projector-metadata|compat-tensors|COPY|(?:I?Q\d|TQ\d|B?F16|F32|MXFP4)[A-Za-z0-9_]*?)\d+$"
)
# Blob names of old Ollama versions; the server renames them to sha256-<hex> at start (server/fixblobs.go).
_LEGACY_BLOB_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def default_models_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """``$OLLAMA_MODELS`` (trimmed of spaces and quotes, as Ollama reads it), else ``~/.ollama/models``.

    A ``~`` in ``OLLAMA_MODELS`` stays as written: Ollama does not expand it either.

    >>> default_models_dir({"OLLAMA_MODELS": "~/models"}).as_posix()
    '~/models'
    """
    env = os.environ if env is None else env
    configured = env.get("OLLAMA_MODELS", "").strip().strip("\"'")
    if configured:
        return Path(configured)
    return (home or Path.home()) / ".ollama" / "models"


_CONFIG_MODELS_RE = re.compile(r"OLLAMA_MODELS:(.*?)(?: OLLAMA_[A-Z_]+:|\])")


def models_dir_from_log(lines: Iterable[str]) -> Path | None:
    """The models dir a server logged in its last ``server config`` line (``env="map[… OLLAMA_MODELS:/x …]"``).

    >>> line = 'level=INFO msg="server config" env="map[OLLAMA_HOST:x OLLAMA_MODELS:/srv/m OLLAMA_NOPRUNE:false]"'
    >>> models_dir_from_log([line])
    PosixPath('/srv/m')
    """
    found = None
    for line in lines:
        if "server config" in line:
            match = _CONFIG_MODELS_RE.search(line)
            if match and match.group(1):
                found = Path(match.group(1))
    return found


def models_dir_of_runner(model_path: str) -> Path | None:
    """The store a runner's ``--model <models>/blobs/sha256-…`` path lies in (None for an MLX model name).

    >>> models_dir_of_runner("/usr/share/ollama/.ollama/models/blobs/sha256-" + "a" * 64).as_posix()
    '/usr/share/ollama/.ollama/models'
    """
    path = Path(model_path)
    if path.parent.name == "blobs" and _BLOB_NAME_RE.match(path.name):
        return path.parent.parent
    return None


def listed_in(models_dir: Path, tags: Iterable[Mapping[str, Any]]) -> bool | None:
    """Whether ``models_dir`` holds the manifests ``/api/tags`` lists (their bytes hash to the listed digests).

    None when nothing can be told: no model listed, or the store cannot be read.
    """
    try:
        check_readable(models_dir)
    except StoreUnreadable:
        return None
    seen = False
    for entry in tags:
        name, digest = entry.get("name") or entry.get("model"), entry.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str) or not is_model_name(name):
            continue
        try:
            path = find_manifest_path(models_dir, parse_model_name(name))
            if path is None:
                return False
            seen = True
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                return False
        except OSError:
            return None
    return True if seen else None


def _owner_of(path: Path) -> str:
    """The account owning ``path`` or, where it cannot be looked at, its nearest visible ancestor."""
    for candidate in (path, *path.parents):
        try:
            uid = candidate.stat().st_uid
        except OSError:
            continue
        try:
            import pwd

            return pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError):
            return f"uid {uid}"
    return "another user"


def check_readable(models_dir: Path) -> None:
    """Raise :class:`StoreUnreadable` when this user may not read the store (another account's, closed to others).

    A store that does not exist yet is not unreadable: it is empty.
    """
    models_dir = Path(models_dir)
    for part in (models_dir / "manifests", models_dir / "blobs"):
        try:
            os.listdir(part)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise StoreUnreadable(
                f"cannot read Ollama's model store {models_dir} (it belongs to {_owner_of(models_dir)}): "
                "verification skipped"
            ) from None
        except OSError:
            continue


def store_writable(models_dir: Path) -> bool:
    """Whether this user may delete and write blobs in the store (not so for another account's)."""
    blobs = Path(models_dir) / "blobs"
    return os.access(blobs, os.W_OK | os.X_OK) if blobs.exists() else os.access(models_dir, os.W_OK)


# --- model names ---------------------------------------------------------------------------------


def parse_model_name(text: str) -> ModelName:
    """Parse ``[host/][namespace/]model[:tag][@digest]`` and fill Ollama's defaults; StoreError when invalid.

    >>> parse_model_name("llama3").display
    'llama3:latest'
    >>> parse_model_name("hf.co/org/repo:Q4_K_M").manifest_relpath.as_posix()
    'manifests/hf.co/org/repo/Q4_K_M'
    """
    try:
        return parse_name(text)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def is_model_name(text: str) -> bool:
    """Whether ``text`` parses as a model name."""
    try:
        parse_name(text)
    except ValueError:
        return False
    return True


# --- digests and blobs ---------------------------------------------------------------------------


def digest_hex(digest: str) -> str:
    """The lowercase hex of ``sha256:<hex>`` (or ``sha256-<hex>``); StoreError when malformed."""
    match = _DIGEST_RE.match(digest)
    if not match:
        raise StoreError(f"invalid digest '{digest}'")
    return match.group(1).lower()


def blob_path(models_dir: Path, digest: str) -> Path:
    """Where Ollama keeps the blob with this digest."""
    return Path(models_dir) / "blobs" / f"sha256-{digest_hex(digest)}"


def short_digest(digest: str) -> str:
    """``sha256:<first 12 hex>``, the length ``ollama list`` shows."""
    return f"sha256:{digest_hex(digest)[:12]}"


# --- manifests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A manifest entry: one blob. ``from_model`` is the parent model a layer was inherited from."""

    media_type: str
    digest: str
    size: int
    from_model: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the blobs one model consists of."""

    name: ModelName
    path: Path
    config: Layer
    layers: tuple[Layer, ...]
    digest: str  # sha256 hex of the manifest file's bytes: the model ID in `ollama list`

    @property
    def blobs(self) -> tuple[Layer, ...]:
        """Config first, then the layers: everything the model needs on disk."""
        return (self.config, *self.layers)

    @property
    def size(self) -> int:
        """Sum of config and layer sizes, the ``size`` ``/api/tags`` reports."""
        return sum(blob.size for blob in self.blobs)

    @property
    def model_layer(self) -> Layer | None:
        """The weights (GGUF) layer, if any."""
        return next((layer for layer in self.layers if layer.media_type == MEDIA_MODEL), None)


def manifest_path(models_dir: Path, name: ModelName) -> Path:
    """Where the manifest of ``name`` lives (whether or not it exists)."""
    return Path(models_dir) / name.manifest_relpath


def _parse_layer(raw: Any, where: str) -> Layer:
    if not isinstance(raw, dict):
        raise TypeError(f"{where} is not an object")
    digest = raw.get("digest")
    size = raw.get("size")
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ValueError(f"{where} has an invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{where} has an invalid size {size!r}")
    from_model = raw.get("from")
    name = raw.get("name")
    return Layer(
        media_type=str(raw.get("mediaType", "")),
        digest=f"sha256:{digest_hex(digest)}",
        size=size,
        from_model=from_model if isinstance(from_model, str) and from_model else None,
        name=name if isinstance(name, str) and name else None,
    )


def parse_manifest(data: bytes, name: ModelName, path: Path) -> Manifest:
    """Parse manifest bytes; StoreError naming the file when they are not a valid manifest."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        config = _parse_layer(raw.get("config"), "config")
        raw_layers = raw.get("layers")
        if not isinstance(raw_layers, list):
            raise TypeError("layers is not a list")
        layers = tuple(_parse_layer(layer, f"layer {i}") for i, layer in enumerate(raw_layers))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: corrupt manifest: {exc}") from None
    return Manifest(name=name, path=path, config=config, layers=layers, digest=hashlib.sha256(data).hexdigest())


def find_manifest_path(models_dir: Path, name: ModelName) -> Path | None:
    """The manifest file of ``name``: the exact path, else a case-insensitive match; None when absent."""
    exact = manifest_path(models_dir, name)
    try:
        if exact.is_file():
            return exact
    except OSError:  # a store this user may not look into
        return None
    for entry in _manifest_files(models_dir):
        if entry[0].same_as(name):
            return entry[1]
    return None


def read_manifest(models_dir: Path, name: ModelName | str) -> Manifest:
    """Read a model's manifest; ManifestNotFound when absent, StoreError when unreadable."""
    model = parse_model_name(name) if isinstance(name, str) else name
    check_readable(models_dir)
    path = find_manifest_path(models_dir, model)
    if path is None:
        raise ManifestNotFound(f"model '{model.display}' has no manifest in {models_dir}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read manifest: {exc.strerror}") from None
    return parse_manifest(data, model, path)


@dataclass(frozen=True)
class ManifestEntry:
    """A manifest file found in the store; ``manifest`` is None and ``error`` set when unreadable."""

    name: ModelName
    path: Path
    manifest: Manifest | None
    error: str | None = None


def _manifest_files(models_dir: Path) -> list[tuple[ModelName, Path]]:
    root = Path(models_dir) / "manifests"
    found = []
    # Exactly four levels, as Ollama globs them (manifests/*/*/*/*).
    for path in sorted(root.glob("*/*/*/*")):
        if path.is_file():
            host, namespace, model, tag = path.relative_to(root).parts
            found.append((ModelName(host, namespace, model, tag), path))
    return found


def list_models(models_dir: Path) -> list[ManifestEntry]:
    """Every manifest in the store, sorted by path; unreadable ones carry their error."""
    entries = []
    for name, path in _manifest_files(models_dir):
        try:
            manifest = parse_manifest(path.read_bytes(), name, path)
        except StoreError as exc:
            entries.append(ManifestEntry(name, path, None, str(exc)))
        except OSError as exc:
            entries.append(ManifestEntry(name, path, None, f"{path}: cannot read manifest: {exc.strerror}"))
        else:
            entries.append(ManifestEntry(name, path, manifest))
    return entries


def referenced_digests(entries: Iterable[ManifestEntry]) -> set[str]:
    """Digests (``sha256:<hex>``) used by the readable manifests."""
    return {blob.digest for entry in entries if entry.manifest for blob in entry.manifest.blobs}


# --- base model ----------------------------------------------------------------------------------


def base_model_of(
    models_dir: Path, name: ModelName | str, entries: list[ManifestEntry] | None = None
) -> ModelName | None:
    """The model ``name`` was created from.

    The weights layer's ``from`` field names it when present; otherwise another
    installed model that holds the same weights blob is the base (preferring one
    whose weights are not themselves inherited). None for a model that is its
    own base, such as a pulled library model.
    """
    manifest = read_manifest(models_dir, name)
    weights = manifest.model_layer
    if weights is None:
        return None
    if weights.from_model and is_model_name(weights.from_model):
        parent = parse_model_name(weights.from_model)
        if not parent.same_as(manifest.name):
            return parent
    entries = list_models(models_dir) if entries is None else entries
    sharing = [
        entry
        for entry in entries
        if entry.manifest
        and not entry.name.same_as(manifest.name)
        and any(layer.digest == weights.digest for layer in entry.manifest.layers)
    ]
    return _original_holder(sharing, weights)


def _inherits(entry: ManifestEntry, weights: Layer) -> bool:
    assert entry.manifest is not None
    return any(layer.digest == weights.digest and layer.from_model for layer in entry.manifest.layers)


def _original_holder(sharing: list[ManifestEntry], weights: Layer) -> ModelName | None:
    """The first sharer that holds the weights as its own (no ``from``); None when all inherit them."""
    originals = [entry for entry in sharing if not _inherits(entry, weights)]
    return originals[0].name if originals else None


# --- leftovers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreFile:
    """A file in ``blobs/`` with its size and modification time (seconds since the epoch)."""

    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class BlobScan:
    """The files of ``blobs/``, sorted into blobs, partial downloads and other files."""

    blobs: dict[str, StoreFile]  # digest -> file, for well-named blobs
    partials: list[StoreFile]  # unfinished downloads (size: the bytes on disk; they are sparse)
    others: list[StoreFile]  # temp files Ollama makes
    legacy: list[StoreFile] = field(default_factory=list)  # sha256:<hex> names Ollama renames: never deleted
    foreign: list[StoreFile] = field(default_factory=list)  # names Ollama never makes, and symlinks: never deleted


def scan_blobs(models_dir: Path) -> BlobScan:
    """Classify every file in ``blobs/``."""
    blobs: dict[str, StoreFile] = {}
    partials: list[StoreFile] = []
    others: list[StoreFile] = []
    legacy: list[StoreFile] = []
    foreign: list[StoreFile] = []
    directory = Path(models_dir) / "blobs"
    if not directory.is_dir():
        return BlobScan(blobs, partials, others)
    for path in sorted(directory.iterdir()):
        try:
            stat = path.stat()
            linked = path.is_symlink()
        except OSError:
            continue  # vanished while scanning, or a dangling link
        if not path.is_file():
            continue
        item = StoreFile(path, stat.st_size, stat.st_mtime)
        blob_match = _BLOB_NAME_RE.match(path.name)
        if linked:
            foreign.append(item)
        elif blob_match:
            blobs[f"sha256:{blob_match.group(1).lower()}"] = item
        elif _PARTIAL_RE.match(path.name):
            partials.append(StoreFile(path, _bytes_on_disk(stat), stat.st_mtime))
        elif _LEGACY_BLOB_RE.match(path.name):
            legacy.append(item)
        elif _OLLAMA_TEMP_RE.match(path.name):
            others.append(item)
        else:
            foreign.append(item)
    return BlobScan(blobs, partials, others, legacy, foreign)


def store_folder_outside(models_dir: Path) -> str | None:
    """Why files of ``blobs/`` must not be deleted: it or ``manifests/`` leads out of the store (a symlink), else None.

    A symlinked folder may point at anything (a home directory, a disk of
    other data); cleaning it would delete files that are not Ollama's.
    """
    root = Path(os.path.realpath(models_dir))
    for folder in ("blobs", "manifests"):
        path = Path(models_dir) / folder
        real = Path(os.path.realpath(path))
        if path.is_symlink() or not real.is_relative_to(root):
            return f"{path} is a symlink to {real}: no file there is deleted"
    return None


def inside_blobs(path: Path, models_dir: Path) -> bool:
    """Is ``path`` a file directly in the store's own ``blobs/`` (checked again just before it is deleted)?"""
    blobs = Path(models_dir) / "blobs"
    return (
        store_folder_outside(models_dir) is None
        and not path.is_symlink()
        and Path(os.path.realpath(path.parent)) == Path(os.path.realpath(blobs))
    )


def _bytes_on_disk(stat: os.stat_result) -> int:
    """What a (sparse) file occupies: its allocated blocks where the OS tells, else its length."""
    blocks = getattr(stat, "st_blocks", None)
    return min(stat.st_size, blocks * 512) if blocks is not None else stat.st_size


@dataclass(frozen=True)
class Leftovers:
    """Files no model needs. ``unreferenced`` is empty and ``withheld`` says why when it is unsafe to tell."""

    unreferenced: list[StoreFile]
    partials: list[StoreFile]
    others: list[StoreFile]
    withheld: str | None = None
    foreign: list[StoreFile] = field(default_factory=list)  # listed, never deleted: not a file Ollama makes

    @property
    def files(self) -> list[StoreFile]:
        return [*self.unreferenced, *self.partials, *self.others]

    @property
    def total_size(self) -> int:
        return sum(item.size for item in self.files)


def find_leftovers(models_dir: Path, now: float, grace_seconds: float = 3600.0) -> Leftovers:
    """Unreferenced blobs, partial downloads and stray files older than ``grace_seconds``.

    ``now`` is wall-clock time (file mtimes are wall-clock). The grace period
    spares files of a pull or create that is still running, as Ollama's own
    prune does. When a manifest is unreadable the unreferenced list is withheld:
    that manifest may need blobs that look unused.
    """
    outside = store_folder_outside(models_dir)
    if outside is not None:
        return Leftovers([], [], [], withheld=outside)
    entries = list_models(models_dir)
    scan = scan_blobs(models_dir)

    def old(item: StoreFile) -> bool:
        return now - item.mtime >= grace_seconds

    corrupt = [entry for entry in entries if entry.manifest is None]
    partials = [item for item in scan.partials if old(item)]
    others = [item for item in scan.others if old(item)]
    if corrupt:
        reason = f"manifest {corrupt[0].path} is unreadable, so unused blobs cannot be told apart"
        return Leftovers([], partials, others, withheld=reason, foreign=scan.foreign)
    used = referenced_digests(entries)
    unreferenced = [item for digest, item in sorted(scan.blobs.items()) if digest not in used and old(item)]
    return Leftovers(unreferenced, partials, others, foreign=scan.foreign)


def exclusive_size(entries: list[ManifestEntry], name: ModelName) -> int:
    """Bytes that deleting ``name`` would free: its blobs that no other manifest uses."""
    own = next((entry.manifest for entry in entries if entry.manifest and entry.name.same_as(name)), None)
    if own is None:
        return 0
    others = referenced_digests(entry for entry in entries if not entry.name.same_as(name))
    sizes = {blob.digest: blob.size for blob in own.blobs if blob.digest not in others}
    return sum(sizes.values())
