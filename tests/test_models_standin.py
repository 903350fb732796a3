"""Model management against the stand-in ``ollama serve`` (real HTTP, real store on disk)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest

from standin import standin_gguf as gguf
from standin.harness import StandinEnv, flip_middle_byte
from tray.models.builder import ModelReport, ensure_model_loaded, rebuild, verify
from tray.models.commands import run_ensure
from tray.models.store import blob_path, read_manifest

pytestmark = pytest.mark.process

MODEL = "uncensored-llama3"
MIB = 1024 * 1024


class RecordingClient:
    """An httpx client that remembers (method, path) of every request it sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.client = httpx.Client(event_hooks={"request": [self._record]})

    def _record(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path))

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))


@pytest.fixture
def served(standin: StandinEnv) -> StandinEnv:
    standin.spawn_serve()
    standin.wait_ready()
    return standin


@pytest.fixture
def modelfile(tmp_path: Path) -> Path:
    path = tmp_path / "uncensored.Modelfile"
    path.write_text("FROM llama3\nSYSTEM You are brief.\n")
    return path


def ensure(env: StandinEnv, modelfile: Path, state: Path, recorder: RecordingClient | None = None) -> ModelReport:
    recorder = recorder or RecordingClient()
    return ensure_model_loaded(
        env.base_url,
        MODEL,
        modelfile,
        models_dir=env.models_dir,
        state_dir=state,
        client=recorder.client,
        min_free_bytes=64 * MIB,
    )


def test_fresh_store_pulls_builds_and_tests(served, modelfile, tmp_path):
    recorder = RecordingClient()
    report = ensure(served, modelfile, tmp_path / "state", recorder)
    assert report.action == "built"
    assert report.reason == "not installed"
    assert report.pulled_base is True
    assert report.inference_ok is True
    assert report.parameter_size == "8.0B"
    assert report.quantization == "Q4_K_M"
    assert report.size == read_manifest(served.models_dir, MODEL).size
    assert recorder.count("POST", "/api/pull") == 1
    assert recorder.count("POST", "/api/create") == 1
    assert recorder.count("POST", "/api/chat") == 1
    names = {entry["name"] for entry in httpx.get(served.base_url + "/api/tags").json()["models"]}
    assert names == {"llama3:latest", "uncensored-llama3:latest"}
    shown = httpx.post(served.base_url + "/api/show", json={"model": MODEL}).json()
    assert shown["system"] == "You are brief."
    assert verify(MODEL, models_dir=served.models_dir, state_dir=tmp_path / "state").ok


def test_second_ensure_sends_no_create(served, modelfile, tmp_path):
    state = tmp_path / "state"
    ensure(served, modelfile, state)
    recorder = RecordingClient()
    report = ensure(served, modelfile, state, recorder)
    assert report.action == "none"
    assert recorder.requests == [("GET", "/api/tags"), ("POST", "/api/show")]


def test_edited_modelfile_is_rebuilt(served, modelfile, tmp_path):
    state = tmp_path / "state"
    first = ensure(served, modelfile, state)
    modelfile.write_text("FROM llama3\nSYSTEM You are verbose.\nPARAMETER temperature 0.2\n")
    recorder = RecordingClient()
    second = ensure(served, modelfile, state, recorder)
    assert (second.action, second.reason, second.pulled_base) == ("built", "the Modelfile changed", False)
    assert second.fingerprint != first.fingerprint
    assert recorder.count("POST", "/api/create") == 1
    shown = httpx.post(served.base_url + "/api/show", json={"model": MODEL}).json()
    assert shown["system"] == "You are verbose."
    assert "temperature" in shown["parameters"]


def test_flipped_base_byte_is_found_and_rebuild_repairs_it(served, modelfile, tmp_path):
    state = tmp_path / "state"
    ensure(served, modelfile, state)
    weights = read_manifest(served.models_dir, "llama3").model_layer
    assert weights is not None
    assert verify(MODEL, models_dir=served.models_dir, state_dir=state).ok

    flip_middle_byte(blob_path(served.models_dir, weights.digest))
    damaged = verify(MODEL, models_dir=served.models_dir, state_dir=state)
    assert not damaged.ok
    assert [blob.digest for blob in damaged.corrupt] == [weights.digest]
    assert weights.digest in damaged.summary()

    recorder = RecordingClient()
    report = rebuild(
        served.base_url,
        MODEL,
        modelfile,
        models_dir=served.models_dir,
        state_dir=state,
        client=recorder.client,
        min_free_bytes=64 * MIB,
    )
    assert report.repaired == (weights.digest,)
    assert report.pulled_base is True
    assert report.inference_ok is True
    assert recorder.count("POST", "/api/pull") == 1
    repaired = verify(MODEL, models_dir=served.models_dir, state_dir=state, full=True)
    assert repaired.ok
    assert repaired.cached_blobs == 0


def test_local_f16_gguf_is_uploaded_and_quantized(served, tmp_path):
    weights = tmp_path / "model-f16.gguf"
    kvs = [
        gguf.string("general.architecture", "llama"),
        gguf.u64("general.parameter_count", 1_000_000_000),
        gguf.u32("general.file_type", gguf.FILE_TYPE_IDS["F16"]),
        gguf.u32("llama.context_length", 4096),
    ]
    with open(weights, "wb") as handle:
        handle.writelines(gguf.synthesized_chunks("local", 3 * MIB, kvs))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./model-f16.gguf\nSYSTEM local\n")
    recorder = RecordingClient()
    report = ensure_model_loaded(
        served.base_url,
        "local-model",
        modelfile,
        models_dir=served.models_dir,
        state_dir=tmp_path / "state",
        client=recorder.client,
        quantize="q4_K_M",
    )
    assert len(report.uploaded) == 1
    assert blob_path(served.models_dir, report.uploaded[0]).read_bytes() == weights.read_bytes()
    assert report.quantization == "Q4_K_M"
    assert report.inference_ok is True
    assert recorder.count("HEAD", f"/api/blobs/{report.uploaded[0]}") == 1
    assert recorder.count("POST", "/api/pull") == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('FROM llama3\nSYSTEM """never closed\n', ':2: unterminated quote: no closing """ before the end of the file'),
        (
            "FROM llama3\nSYSTEMS hi\n",
            (
                ":2: unknown instruction 'SYSTEMS' (expected one of FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, "
                "LICENSE, MESSAGE, REQUIRES, DRAFT, RENDERER, PARSER)"
            ),
        ),
        ("SYSTEM no base\n", ":1: no FROM instruction: the Modelfile must name a base model or a model file"),
        (None, ": Modelfile not found"),
    ],
)
def test_malformed_modelfiles_give_one_clear_line(served, tmp_path, content, problem):
    path = tmp_path / "bad.Modelfile"
    if content is not None:
        path.write_text(content)
    recorder = RecordingClient()
    out, err = io.StringIO(), io.StringIO()
    code = run_ensure(
        served.base_url,
        MODEL,
        path,
        models_dir=served.models_dir,
        state_dir=tmp_path / "state",
        out=out,
        err=err,
        client=recorder.client,
    )
    assert code == 1
    assert out.getvalue() == ""
    assert err.getvalue() == f"ollama-manager: {path}{problem}\n"
    assert recorder.requests == []
