"""Hashing throughput of the integrity check compared with ``openssl dgst -sha256``.

Creates a 1 GB file in a temporary directory, lays it out as a one-model Ollama
store, and measures:

1. ``sha256_file`` (``hashlib.file_digest``) and the chunked progress path (1 MiB reads), MB/s;
2. ``openssl dgst -sha256`` on the same file, MB/s;
3. a full ``verify_model`` run (cache cold), and a periodic check when nothing
   changed (every digest served from the cache).

Each hash runs after one warm-up read, so all figures are page-cache speed
(the CPU cost of hashing), not disk speed. The temp directory is removed at the
end. Usage: ``python bench/bench_hashing.py [--size-mb 1000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tray.models.integrity import sha256_file, verify_model
from tray.models.progress import ProgressEvent
from tray.models.store import MEDIA_MODEL

MB = 1000 * 1000


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes; return their sha256 hex."""
    block = os.urandom(4 * 1024 * 1024)
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as handle:
        while written < size:
            piece = block[: min(len(block), size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def openssl_hex(path: Path) -> str:
    output = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return output.split()[0]


def make_store(models: Path, weights: Path, weights_hex: str) -> None:
    blobs = models / "blobs"
    blobs.mkdir(parents=True)
    os.replace(weights, blobs / f"sha256-{weights_hex}")
    config = json.dumps({"model_format": "gguf"}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / f"sha256-{config_hex}").write_bytes(config)
    size = (blobs / f"sha256-{weights_hex}").stat().st_size
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": f"sha256:{config_hex}",
            "size": len(config),
        },
        "layers": [{"mediaType": MEDIA_MODEL, "digest": f"sha256:{weights_hex}", "size": size}],
    }
    path = models / "manifests/registry.ollama.ai/library/bench/latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="file size in MB (10^6 bytes); default 1000")
    args = parser.parse_args()
    size = args.size_mb * MB
    if shutil.which("openssl") is None:
        print("openssl not found on PATH", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-hashing-"))
    try:
        data = work / "weights.gguf"
        print(f"writing {size / MB:.0f} MB test file in {work} ...")
        expected = write_random_file(data, size)
        sha256_file(data)  # warm the page cache

        seconds, digest = timed(lambda: sha256_file(data))
        assert digest == expected
        print(f"integrity sha256_file (hashlib.file_digest): {size / MB / seconds:8.0f} MB/s  ({seconds:.2f} s)")

        events = 0

        def count(_event: ProgressEvent) -> None:
            nonlocal events
            events += 1

        seconds, digest = timed(lambda: sha256_file(data, progress=count))
        assert digest == expected
        print(
            f"integrity sha256_file with progress (1 MiB):  {size / MB / seconds:8.0f} MB/s  "
            f"({seconds:.2f} s, {events} events)"
        )

        seconds, digest = timed(lambda: openssl_hex(data))
        assert digest == expected
        print(f"openssl dgst -sha256:                         {size / MB / seconds:8.0f} MB/s  ({seconds:.2f} s)")

        models = work / "models"
        make_store(models, data, expected)
        cache = work / "state" / "blob-hashes.json"
        seconds, report = timed(lambda: verify_model(models, "bench", cache_path=cache))
        assert report.ok and report.cached_blobs == 0  # type: ignore[attr-defined]
        print(f"verify_model, cold cache (hashes everything): {seconds:8.3f} s")
        seconds, report = timed(lambda: verify_model(models, "bench", cache_path=cache))
        assert report.ok and report.hashed_bytes == 0  # type: ignore[attr-defined]
        print(f"verify_model, nothing changed (cache hit):    {seconds * 1000:8.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
