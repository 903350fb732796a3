"""Check that a model's blobs still match their sha256 digests.

Ollama verifies a blob only when it downloads it; a blob damaged later (disk
error, an interrupted copy, a stray write) goes unnoticed until loading fails.
:func:`verify_model` re-hashes every blob of a model's manifest (config and
layers) and of its base model, streamed in large chunks.

A JSON cache keyed by (path, size, mtime_ns) remembers digests already
computed, so a periodic check re-hashes only files that changed; ``full=True``
re-hashes everything (it also catches damage that left size and mtime alone).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tray.atomic import write_atomically
from tray.core.names import ModelName
from tray.core.units import human_bytes
from tray.models.errors import ManifestNotFound, StoreError
from tray.models.progress import ProgressCallback, ProgressEvent
from tray.models.store import (
    Manifest,
    base_model_of,
    blob_path,
    check_readable,
    digest_hex,
    list_models,
    parse_model_name,
    read_manifest,
    short_digest,
)

CHUNK_SIZE = 1024 * 1024  # fits in L2 cache: measurably faster than 4 MiB with hashlib
PROGRESS_MIN_SIZE = 32 * 1024 * 1024  # smaller files hash too fast to be worth a progress line
CACHE_VERSION = 1


def sha256_file(
    path: Path,
    *,
    progress: ProgressCallback | None = None,
    phase: str = "hashing",
    detail: str = "",
    chunk_size: int = CHUNK_SIZE,
) -> str:
    """The hex sha256 of a file, read in ``chunk_size`` pieces.

    With ``progress`` the callback gets a :class:`ProgressEvent` after each chunk.
    """
    with open(path, "rb", buffering=0) as handle:
        if progress is None:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        total = os.fstat(handle.fileno()).st_size
        digest = hashlib.sha256()
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        done = 0
        progress(ProgressEvent(phase, detail, 0, total))
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            done += count
            progress(ProgressEvent(phase, detail, done, total))
        return digest.hexdigest()


@dataclass(frozen=True)
class FileStamp:
    """What must not change for a cached digest to stay valid."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileStamp:
        return cls(stat.st_size, stat.st_mtime_ns)


class HashCache:
    """Digests of files keyed by absolute path and :class:`FileStamp`, kept in a JSON file.

    A missing or unreadable cache file simply starts empty. :meth:`save`
    writes atomically (temp file + ``os.replace``) and drops entries of files
    that no longer exist.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = self._load() if path else {}
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict) or raw.get("version") != CACHE_VERSION or not isinstance(raw.get("files"), dict):
            return {}
        return {key: value for key, value in raw["files"].items() if isinstance(value, dict)}

    @staticmethod
    def _key(path: Path) -> str:
        return os.path.abspath(path)

    def lookup(self, path: Path, stamp: FileStamp) -> str | None:
        """The cached hex digest when the file's stamp is unchanged."""
        entry = self._entries.get(self._key(path))
        if entry and entry.get("size") == stamp.size and entry.get("mtime_ns") == stamp.mtime_ns:
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) else None
        return None

    def store(self, path: Path, stamp: FileStamp, hexdigest: str) -> None:
        """Remember the digest of ``path`` as it is at ``stamp``."""
        self._entries[self._key(path)] = {"size": stamp.size, "mtime_ns": stamp.mtime_ns, "sha256": hexdigest}
        self._dirty = True

    def forget(self, path: Path) -> None:
        """Drop what is known about ``path`` (e.g. after deleting it)."""
        if self._entries.pop(self._key(path), None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Write the cache if anything changed; a write failure only costs re-hashing next time."""
        if self.path is None:
            return
        stale = [key for key in self._entries if not os.path.exists(key)]
        for key in stale:
            del self._entries[key]
        if not (self._dirty or stale):
            return
        payload = {"version": CACHE_VERSION, "files": dict(sorted(self._entries.items()))}
        try:
            write_json_atomic(self.path, payload)
        except OSError:
            return
        self._dirty = False


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so readers see the old or the new file, never half of one (for the user alone)."""
    write_atomically(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def hash_with_cache(
    path: Path,
    cache: HashCache,
    *,
    full: bool = False,
    progress: ProgressCallback | None = None,
    phase: str = "hashing",
    detail: str = "",
) -> tuple[str, bool]:
    """``(hex digest, served_from_cache)`` for a file, hashing only when needed."""
    stamp = FileStamp.of(os.stat(path))
    if not full:
        cached = cache.lookup(path, stamp)
        if cached:
            return cached, True
    big_enough = progress is not None and stamp.size >= PROGRESS_MIN_SIZE
    hexdigest = sha256_file(path, progress=progress if big_enough else None, phase=phase, detail=detail)
    after = FileStamp.of(os.stat(path))
    if after == stamp:  # changed while we read it: don't remember a digest of a moving target
        cache.store(path, stamp, hexdigest)
    return hexdigest, False


# --- model verification --------------------------------------------------------------------------

BlobStatus = Literal["ok", "missing", "corrupt"]


@dataclass(frozen=True)
class BlobCheck:
    """The verdict on one blob."""

    digest: str  # sha256:<hex>, as the manifest names it
    path: Path
    expected_size: int
    status: BlobStatus
    used_by: tuple[str, ...]  # display names of the checked models that need this blob
    actual_size: int | None = None
    actual_digest: str | None = None  # sha256:<hex> of the content, when it was hashed
    from_cache: bool = False

    @property
    def problem(self) -> str:
        """One phrase describing what is wrong, empty when the blob is fine."""
        if self.status == "missing":
            return f"blob {self.digest} ({', '.join(self.used_by)}) is missing"
        if self.status == "corrupt":
            if self.actual_size is not None and self.actual_size != self.expected_size:
                return (
                    f"blob {self.digest} ({', '.join(self.used_by)}) is corrupt: "
                    f"size {self.actual_size} bytes, expected {self.expected_size}"
                )
            return (
                f"blob {self.digest} ({', '.join(self.used_by)}) is corrupt: its content hashes to {self.actual_digest}"
            )
        return ""


@dataclass(frozen=True)
class IntegrityReport:
    """The result of :func:`verify_model`; ``ok`` is the verdict, ``summary()`` the line to show."""

    model: str
    manifest_path: Path | None
    manifest_problem: str | None  # the model's manifest is missing or unreadable
    base_model: str | None
    base_note: str | None  # e.g. the base model's manifest is not installed
    blobs: tuple[BlobCheck, ...]
    hashed_bytes: int  # read from disk this time
    cached_blobs: int  # blobs whose digest came from the cache

    @property
    def missing(self) -> tuple[BlobCheck, ...]:
        return tuple(blob for blob in self.blobs if blob.status == "missing")

    @property
    def corrupt(self) -> tuple[BlobCheck, ...]:
        return tuple(blob for blob in self.blobs if blob.status == "corrupt")

    @property
    def bad(self) -> tuple[BlobCheck, ...]:
        return tuple(blob for blob in self.blobs if blob.status != "ok")

    @property
    def checked_bytes(self) -> int:
        """Bytes of the blobs confirmed intact (hashed now or from the cache)."""
        return sum(blob.expected_size for blob in self.blobs if blob.status == "ok")

    @property
    def ok(self) -> bool:
        return self.manifest_problem is None and not self.bad

    def summary(self) -> str:
        """One line for the user."""
        if self.manifest_problem:
            return f"{self.model}: {self.manifest_problem}"
        if self.bad:
            extra = f" (and {len(self.bad) - 1} more)" if len(self.bad) > 1 else ""
            return f"{self.model}: {self.bad[0].problem}{extra}"
        hashed = len(self.blobs) - self.cached_blobs
        return (
            f"{self.model}: {len(self.blobs)} blobs intact ({human_bytes(self.checked_bytes)}; "
            f"{hashed} hashed, {self.cached_blobs} from cache)"
        )


def _planned_blobs(manifests: list[Manifest]) -> dict[str, tuple[int, list[str]]]:
    """digest -> (size, users), each digest once, in manifest order."""
    planned: dict[str, tuple[int, list[str]]] = {}
    for manifest in manifests:
        for blob in manifest.blobs:
            _size, users = planned.setdefault(blob.digest, (blob.size, []))
            if manifest.name.display not in users:
                users.append(manifest.name.display)
    return planned


def check_blob(
    models_dir: Path,
    digest: str,
    expected_size: int,
    used_by: tuple[str, ...],
    cache: HashCache,
    *,
    full: bool = False,
    progress: ProgressCallback | None = None,
) -> BlobCheck:
    """Compare one blob file with its digest and size."""
    path = blob_path(models_dir, digest)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return BlobCheck(digest, path, expected_size, "missing", used_by)
    if actual_size != expected_size:
        return BlobCheck(digest, path, expected_size, "corrupt", used_by, actual_size=actual_size)
    try:
        hexdigest, cached = hash_with_cache(
            path, cache, full=full, progress=progress, phase="verifying", detail=short_digest(digest)
        )
    except FileNotFoundError:
        return BlobCheck(digest, path, expected_size, "missing", used_by)
    status: BlobStatus = "ok" if hexdigest == digest_hex(digest) else "corrupt"
    return BlobCheck(digest, path, expected_size, status, used_by, actual_size, f"sha256:{hexdigest}", cached)


def _base_manifest(models_dir: Path, name: ModelName) -> tuple[str | None, Manifest | None, str | None]:
    """(base display name, its manifest, a note) for the model's base, if it has one."""
    try:
        base = base_model_of(models_dir, name, list_models(models_dir))
    except StoreError as exc:
        return None, None, str(exc)
    if base is None:
        return None, None, None
    try:
        return base.display, read_manifest(models_dir, base), None
    except ManifestNotFound:
        return base.display, None, f"base model {base.display} is not installed; its shared blobs were checked"
    except StoreError as exc:
        return base.display, None, str(exc)


def verify_model(
    models_dir: Path,
    model: str | ModelName,
    *,
    cache_path: Path | None = None,
    full: bool = False,
    include_base: bool = True,
    progress: ProgressCallback | None = None,
) -> IntegrityReport:
    """Verify every blob of ``model`` (and of its base model) against digest and size.

    ``cache_path`` is the JSON digest cache (None: no cache); ``full`` ignores
    cached digests. Missing or corrupt manifests and blobs are reported, not raised.
    """
    name = parse_model_name(model) if isinstance(model, str) else model
    check_readable(models_dir)  # an unreadable store raises: it is not a missing model
    try:
        manifest = read_manifest(models_dir, name)
    except ManifestNotFound:
        return IntegrityReport(name.display, None, "not installed (no manifest)", None, None, (), 0, 0)
    except StoreError as exc:
        return IntegrityReport(name.display, None, str(exc), None, None, (), 0, 0)
    manifests = [manifest]
    base_name, base_note = None, None
    if include_base:
        base_name, base_manifest, base_note = _base_manifest(models_dir, name)
        if base_manifest is not None:
            manifests.append(base_manifest)
    cache = HashCache(cache_path)
    checks: list[BlobCheck] = []
    hashed_bytes = 0
    try:
        for digest, (size, users) in _planned_blobs(manifests).items():
            check = check_blob(models_dir, digest, size, tuple(users), cache, full=full, progress=progress)
            if check.actual_digest is not None and not check.from_cache:
                hashed_bytes += size
            checks.append(check)
    finally:
        cache.save()
    cached = sum(1 for check in checks if check.from_cache)
    return IntegrityReport(name.display, manifest.path, None, base_name, base_note, tuple(checks), hashed_bytes, cached)
