"""Ollama store reading and blob verification on synthetic stores in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tray.models import integrity
from tray.models.errors import ManifestNotFound, StoreError
from tray.models.integrity import (
    FileStamp,
    HashCache,
    hash_with_cache,
    sha256_file,
    verify_model,
)
from tray.models.progress import ProgressEvent
from tray.models.store import (
    MEDIA_MODEL,
    ModelName,
    base_model_of,
    blob_path,
    default_models_dir,
    exclusive_size,
    find_leftovers,
    list_models,
    parse_model_name,
    read_manifest,
    referenced_digests,
    scan_blobs,
)

MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(models: Path, data: bytes) -> str:
    digest = sha(data)
    path = models / "blobs" / digest.replace(":", "-")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def put_model(
    models: Path, name: str, layers: list[tuple[str, bytes, str | None]], config: bytes | None = None
) -> Path:
    """Write blobs and a manifest for ``name``; layers are (mediaType, content, from)."""
    config = config if config is not None else json.dumps({"model_format": "gguf", "name": name}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": MEDIA_CONFIG, "digest": put_blob(models, config), "size": len(config)},
        "layers": [],
    }
    for media, content, parent in layers:
        layer = {"mediaType": media, "digest": put_blob(models, content), "size": len(content)}
        if parent:
            layer["from"] = parent
        manifest["layers"].append(layer)
    path = models / parse_model_name(name).manifest_relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest) + "\n")
    return path


WEIGHTS = b"GGUF" + bytes(range(256)) * 64  # 16 KiB + 4


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """llama3 (pulled) and mine (created from llama3, sharing the weights)."""
    models = tmp_path / "models"
    put_model(
        models,
        "llama3",
        [(MEDIA_MODEL, WEIGHTS, None), ("application/vnd.ollama.image.template", b"{{ .Prompt }}", None)],
    )
    put_model(models, "mine", [(MEDIA_MODEL, WEIGHTS, "llama3"), (MEDIA_SYSTEM, b"be brief", None)])
    return models


def flip_middle_byte(path: Path, keep_mtime: bool = False) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# --- names and paths -----------------------------------------------------------------------------


def test_default_models_dir_prefers_env_trimmed_of_quotes(tmp_path):
    assert default_models_dir({"OLLAMA_MODELS": ' "/data/models" '}, home=tmp_path) == Path("/data/models")
    assert default_models_dir({}, home=tmp_path) == tmp_path / ".ollama" / "models"
    assert default_models_dir({"OLLAMA_MODELS": "  "}, home=tmp_path) == tmp_path / ".ollama" / "models"


@pytest.mark.parametrize(
    ("text", "expected", "display"),
    [
        ("llama3", ModelName("registry.ollama.ai", "library", "llama3", "latest"), "llama3:latest"),
        ("llama3:8b", ModelName("registry.ollama.ai", "library", "llama3", "8b"), "llama3:8b"),
        ("user/m:t", ModelName("registry.ollama.ai", "user", "m", "t"), "user/m:t"),
        ("hf.co/org/repo:Q4_K_M", ModelName("hf.co", "org", "repo", "Q4_K_M"), "hf.co/org/repo:Q4_K_M"),
        ("localhost:5000/ns/m", ModelName("localhost:5000", "ns", "m", "latest"), "localhost:5000/ns/m:latest"),
        ("https://hf.co/org/repo", ModelName("hf.co", "org", "repo", "latest"), "hf.co/org/repo:latest"),
        ("llama3@sha256-" + "a" * 64, ModelName("registry.ollama.ai", "library", "llama3", "latest"), "llama3:latest"),
    ],
)
def test_parse_model_name(text, expected, display):
    name = parse_model_name(text)
    assert name == expected
    assert name.display == display


@pytest.mark.parametrize("text", ["", "llama3:", "a/b/c/d", "bad name", "ns.dot/m", "-lead", "x:y:z/a"])
def test_invalid_model_names(text):
    with pytest.raises(StoreError) as caught:
        parse_model_name(text)
    assert str(caught.value) == f"invalid model name '{text}'"


def test_manifest_path_and_case_insensitive_identity():
    name = parse_model_name("User/M:T")
    assert name.manifest_relpath == Path("manifests/registry.ollama.ai/User/M/T")
    assert name.same_as(parse_model_name("user/m:t"))


def test_blob_path_and_bad_digest(tmp_path):
    assert blob_path(tmp_path, "sha256:" + "AB" * 32) == tmp_path / "blobs" / ("sha256-" + "ab" * 32)
    with pytest.raises(StoreError) as caught:
        blob_path(tmp_path, "md5:123")
    assert str(caught.value) == "invalid digest 'md5:123'"


# --- manifests -----------------------------------------------------------------------------------


def test_read_manifest(store):
    manifest = read_manifest(store, "mine")
    raw = manifest.path.read_bytes()
    assert manifest.digest == hashlib.sha256(raw).hexdigest()
    assert [layer.media_type for layer in manifest.layers] == [MEDIA_MODEL, MEDIA_SYSTEM]
    assert manifest.model_layer is not None and manifest.model_layer.from_model == "llama3"
    assert manifest.model_layer.digest == sha(WEIGHTS)
    assert manifest.size == manifest.config.size + len(WEIGHTS) + len(b"be brief")


def test_read_manifest_falls_back_to_case_insensitive_match(store):
    assert read_manifest(store, "MINE").name == parse_model_name("MINE")
    assert read_manifest(store, "MINE").path == store / "manifests/registry.ollama.ai/library/mine/latest"


def test_missing_and_corrupt_manifests(store):
    with pytest.raises(ManifestNotFound) as caught:
        read_manifest(store, "absent")
    assert str(caught.value) == f"model 'absent:latest' has no manifest in {store}"
    path = store / "manifests/registry.ollama.ai/library/mine/latest"
    path.write_text('{"config": 1}')
    with pytest.raises(StoreError) as caught:
        read_manifest(store, "mine")
    assert str(caught.value) == f"{path}: corrupt manifest: config is not an object"


def test_list_models_includes_unreadable_manifests(store):
    broken = store / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("not json")
    (store / "manifests/registry.ollama.ai/library/too-shallow").write_text("{}")
    entries = list_models(store)
    assert [entry.name.display for entry in entries] == ["broken:latest", "llama3:latest", "mine:latest"]
    assert entries[0].manifest is None and entries[0].error.startswith(f"{broken}: corrupt manifest: ")
    assert referenced_digests(entries) == {
        blob.digest
        for entry in entries[1:]
        for blob in entry.manifest.blobs  # type: ignore[union-attr]
    }


def test_base_model_from_the_from_field(store):
    assert base_model_of(store, "mine") == parse_model_name("llama3")
    assert base_model_of(store, "llama3") is None


def test_base_model_from_a_shared_weights_blob(tmp_path):
    models = tmp_path / "models"
    put_model(models, "llama3", [(MEDIA_MODEL, WEIGHTS, None)])
    put_model(models, "copy", [(MEDIA_MODEL, WEIGHTS, None), (MEDIA_SYSTEM, b"x", None)])
    put_model(models, "other", [(MEDIA_MODEL, b"different weights", None)])
    assert base_model_of(models, "copy") == parse_model_name("llama3")
    assert base_model_of(models, "other") is None


def test_exclusive_size(store):
    entries = list_models(store)
    mine = read_manifest(store, "mine")
    # mine shares the weights with llama3; its config and system layer are its own
    assert exclusive_size(entries, parse_model_name("mine")) == mine.config.size + len(b"be brief")


# --- leftovers -----------------------------------------------------------------------------------


def _age(path: Path, seconds_ago: float, now: float) -> None:
    os.utime(path, (now - seconds_ago, now - seconds_ago))


def test_leftovers_respect_the_grace_period(store):
    now = 2_000_000_000.0
    for path in (store / "blobs").iterdir():
        _age(path, 7200, now)
    old_unused = store / "blobs" / sha(b"orphan").replace(":", "-")
    old_unused.write_bytes(b"orphan")
    fresh_unused = store / "blobs" / sha(b"fresh").replace(":", "-")
    fresh_unused.write_bytes(b"fresh")
    partial = store / "blobs" / ("sha256-" + "e" * 64 + "-partial-0")
    partial.write_bytes(b"12345")
    temp = store / "blobs" / "sha256-123456789"
    temp.write_bytes(b"tmp")
    _age(old_unused, 7200, now)
    _age(fresh_unused, 60, now)
    _age(partial, 4000, now)
    _age(temp, 3600, now)

    scan = scan_blobs(store)
    assert [item.path for item in scan.partials] == [partial]
    assert [item.path for item in scan.others] == [temp]

    leftovers = find_leftovers(store, now, grace_seconds=3600)
    assert [item.path for item in leftovers.unreferenced] == [old_unused]
    assert [item.path for item in leftovers.partials] == [partial]
    assert [item.path for item in leftovers.others] == [temp]
    assert leftovers.total_size == 6 + 5 + 3
    assert leftovers.withheld is None


def test_unreferenced_blobs_are_withheld_when_a_manifest_is_unreadable(store):
    now = 2_000_000_000.0
    orphan = store / "blobs" / sha(b"orphan").replace(":", "-")
    orphan.write_bytes(b"orphan")
    _age(orphan, 7200, now)
    broken = store / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{")
    leftovers = find_leftovers(store, now)
    assert leftovers.unreferenced == []
    assert leftovers.withheld == f"manifest {broken} is unreadable, so unused blobs cannot be told apart"


# --- hashing -------------------------------------------------------------------------------------


def test_sha256_file_matches_hashlib_and_reports_chunks(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(10_000)
    path.write_bytes(data)
    events: list[ProgressEvent] = []
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, progress=events.append, detail="f", chunk_size=4096) == hashlib.sha256(data).hexdigest()
    assert [(e.completed, e.total) for e in events] == [(0, 10_000), (4096, 10_000), (8192, 10_000), (10_000, 10_000)]
    assert {e.phase for e in events} == {"hashing"}


def test_hash_cache_round_trip_and_atomic_file(tmp_path):
    target = tmp_path / "blob"
    target.write_bytes(b"abc")
    cache_path = tmp_path / "state" / "cache.json"
    cache = HashCache(cache_path)
    digest, cached = hash_with_cache(target, cache)
    assert (digest, cached) == (hashlib.sha256(b"abc").hexdigest(), False)
    cache.save()
    assert [p.name for p in cache_path.parent.iterdir()] == ["cache.json"]  # no temp file left behind
    stored = json.loads(cache_path.read_text())
    stamp = FileStamp.of(target.stat())
    assert stored == {
        "version": 1,
        "files": {str(target): {"size": 3, "mtime_ns": stamp.mtime_ns, "sha256": digest}},
    }
    assert hash_with_cache(target, HashCache(cache_path)) == (digest, True)


def test_hash_cache_ignores_a_garbled_file_and_prunes_vanished_files(tmp_path):
    cache_path = tmp_path / "cache.json"
    cache_path.write_text("{not json")
    cache = HashCache(cache_path)
    gone = tmp_path / "gone"
    gone.write_bytes(b"x")
    hash_with_cache(gone, cache)
    gone.unlink()
    cache.save()
    assert json.loads(cache_path.read_text()) == {"version": 1, "files": {}}


# --- verification --------------------------------------------------------------------------------


def test_intact_model_and_base_verify(store, tmp_path):
    report = verify_model(store, "mine", cache_path=tmp_path / "cache.json")
    mine, base = read_manifest(store, "mine"), read_manifest(store, "llama3")
    digests = {b.digest for b in mine.blobs} | {b.digest for b in base.blobs}
    assert report.ok
    assert report.base_model == "llama3:latest"
    assert {check.digest for check in report.blobs} == digests
    assert len(report.blobs) == 5  # the shared weights are checked once
    weights = next(check for check in report.blobs if check.digest == sha(WEIGHTS))
    assert weights.used_by == ("mine:latest", "llama3:latest")
    total = sum(b.size for b in mine.blobs) + sum(b.size for b in base.blobs) - len(WEIGHTS)
    assert report.checked_bytes == total
    assert report.hashed_bytes == total
    assert report.cached_blobs == 0
    assert total == 16491
    assert report.summary() == "mine:latest: 5 blobs intact (16 KB; 5 hashed, 0 from cache)"


def test_flipped_byte_in_the_base_blob_is_reported_with_its_digest(store, tmp_path):
    cache_path = tmp_path / "cache.json"
    assert verify_model(store, "mine", cache_path=cache_path).ok
    weights_path = blob_path(store, sha(WEIGHTS))
    flip_middle_byte(weights_path)
    report = verify_model(store, "mine", cache_path=cache_path)
    assert not report.ok
    assert [check.digest for check in report.corrupt] == [sha(WEIGHTS)]
    bad = report.corrupt[0]
    flipped = weights_path.read_bytes()
    assert bad.actual_digest == sha(flipped)
    assert bad.actual_size == len(WEIGHTS)
    assert report.summary() == (
        f"mine:latest: blob {sha(WEIGHTS)} (mine:latest, llama3:latest) is corrupt: "
        f"its content hashes to {sha(flipped)}"
    )
    assert report.cached_blobs == 4
    assert report.hashed_bytes == len(WEIGHTS)


def test_unchanged_files_are_served_from_the_cache_without_reading(store, tmp_path, monkeypatch):
    cache_path = tmp_path / "cache.json"
    verify_model(store, "mine", cache_path=cache_path)

    def no_hashing(*args, **kwargs):
        raise AssertionError("an unchanged blob was re-hashed")

    monkeypatch.setattr(integrity, "sha256_file", no_hashing)
    report = verify_model(store, "mine", cache_path=cache_path)
    assert report.ok
    assert report.cached_blobs == 5
    assert report.hashed_bytes == 0
    assert all(check.from_cache for check in report.blobs)


def test_mtime_change_causes_a_rehash_of_that_file_only(store, tmp_path):
    cache_path = tmp_path / "cache.json"
    verify_model(store, "mine", cache_path=cache_path)
    weights_path = blob_path(store, sha(WEIGHTS))
    stat = weights_path.stat()
    os.utime(weights_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    report = verify_model(store, "mine", cache_path=cache_path)
    assert report.ok
    assert report.cached_blobs == 4
    assert report.hashed_bytes == len(WEIGHTS)
    assert [check.digest for check in report.blobs if not check.from_cache] == [sha(WEIGHTS)]


def test_damage_that_keeps_size_and_mtime_needs_full(store, tmp_path):
    cache_path = tmp_path / "cache.json"
    verify_model(store, "mine", cache_path=cache_path)
    flip_middle_byte(blob_path(store, sha(WEIGHTS)), keep_mtime=True)
    assert verify_model(store, "mine", cache_path=cache_path).ok  # the cache cannot see it
    full = verify_model(store, "mine", cache_path=cache_path, full=True)
    assert [check.digest for check in full.corrupt] == [sha(WEIGHTS)]
    assert full.cached_blobs == 0


def test_missing_blob_and_wrong_size(store, tmp_path):
    system_digest = sha(b"be brief")
    blob_path(store, system_digest).unlink()
    config = read_manifest(store, "llama3").config
    blob_path(store, config.digest).write_bytes(b"short")
    report = verify_model(store, "mine", cache_path=tmp_path / "cache.json")
    assert [check.digest for check in report.missing] == [system_digest]
    assert report.missing[0].problem == f"blob {system_digest} (mine:latest) is missing"
    assert [check.digest for check in report.corrupt] == [config.digest]
    assert report.corrupt[0].problem == (
        f"blob {config.digest} (llama3:latest) is corrupt: size 5 bytes, expected {config.size}"
    )
    assert report.summary().endswith("(and 1 more)")


def test_missing_manifest_is_reported_not_raised(store, tmp_path):
    report = verify_model(store, "ghost", cache_path=tmp_path / "cache.json")
    assert not report.ok
    assert report.manifest_problem == "not installed (no manifest)"
    assert report.summary() == "ghost:latest: not installed (no manifest)"


def test_base_not_installed_is_a_note(store, tmp_path):
    (store / "manifests/registry.ollama.ai/library/llama3/latest").unlink()
    report = verify_model(store, "mine", cache_path=tmp_path / "cache.json")
    assert report.ok
    assert report.base_model == "llama3:latest"
    assert report.base_note == "base model llama3:latest is not installed; its shared blobs were checked"
    assert len(report.blobs) == 3


def test_progress_is_reported_for_big_blobs_only(store, tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "PROGRESS_MIN_SIZE", len(WEIGHTS))
    events: list[ProgressEvent] = []
    verify_model(store, "mine", progress=events.append)
    assert {(e.phase, e.detail) for e in events} == {("verifying", "sha256:" + sha(WEIGHTS)[7:19])}
    assert events[-1].completed == events[-1].total == len(WEIGHTS)


def test_cleanup_spares_legacy_names_and_counts_partials_as_ollama_leaves_them(store):
    now = 2_000_000_000.0
    blobs = store / "blobs"
    legacy = blobs / ("sha256:" + "a" * 64)  # renamed to sha256-<hex> by Ollama at its next start
    legacy.write_bytes(b"legacy")
    resumable = blobs / ("sha256-" + "b" * 64 + ".tmp")  # a resumable safetensors/MLX pull
    resumable.write_bytes(b"part")
    sparse = blobs / ("sha256-" + "c" * 64 + "-partial")  # pre-sized to the whole blob, mostly holes
    with open(sparse, "wb") as handle:
        handle.write(b"x" * 4096)
        handle.truncate(1 << 30)
    for path in (legacy, resumable, sparse):
        _age(path, 7200, now)

    scan = scan_blobs(store)
    assert [item.path for item in scan.legacy] == [legacy]
    leftovers = find_leftovers(store, now)
    assert legacy not in [item.path for item in leftovers.files]
    assert sorted(item.path for item in leftovers.partials) == sorted([resumable, sparse])
    assert leftovers.others == []
    sizes = {item.path: item.size for item in leftovers.partials}
    assert sizes[resumable] == 4
    assert 4096 <= sizes[sparse] < 1 << 20  # what it occupies, not its length of 1 GiB


def test_a_tilde_in_ollama_models_is_not_expanded(tmp_path):
    # Ollama's envconfig.Models() returns the value as written.
    assert default_models_dir({"OLLAMA_MODELS": "~/models"}, home=tmp_path) == Path("~/models")
