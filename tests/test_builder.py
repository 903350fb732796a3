"""Builder (ensure / rebuild / verify / cleanup), CLI commands and progress rendering.

Ollama is replaced by ``FakeOllama`` behind ``httpx.MockTransport``: it keeps a
real store (manifests + blobs) in tmp_path, and like Ollama its pull treats a
blob already on disk as a cache hit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import httpx
import pytest

from tray.core.units import human_bytes
from tray.models.builder import (
    BuildRecord,
    ModelReport,
    bytes_needed_for_pull,
    check_disk_space,
    cleanup,
    cleanup_report,
    ensure_model_loaded,
    load_records,
    rebuild,
    rebuild_reason,
    save_records,
    verify,
)
from tray.models.commands import (
    run_cleanup,
    run_ensure,
    run_list,
    run_rebuild,
    run_verify,
)
from tray.models.errors import (
    DiskSpaceError,
    ModelError,
    ModelfileError,
    OllamaAPIError,
    OllamaUnreachable,
)
from tray.models.progress import (
    PlainLineState,
    ProgressEvent,
    ProgressRenderer,
    format_bar,
    format_plain_line,
    plain_line_due,
)
from tray.models.store import (
    MEDIA_MODEL,
    blob_path,
    list_models,
    parse_model_name,
    read_manifest,
)

BASE_URL = "http://ollama.test"
MODEL = "uncensored-llama3"
WEIGHTS = b"GGUF" + bytes(range(256)) * 32
TEMPLATE = b"{{ .System }} {{ .Prompt }}"
GB = 1000**3


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeOllama:
    """Just enough of Ollama's model API, writing a real store under ``models``."""

    def __init__(self, models: Path, registry: dict[str, list[tuple[str, bytes]]] | None = None) -> None:
        self.models = models
        self.registry = (
            registry
            if registry is not None
            else {"llama3": [(MEDIA_MODEL, WEIGHTS), ("application/vnd.ollama.image.template", TEMPLATE)]}
        )
        self.calls: list[tuple[str, str]] = []
        self.bodies: dict[str, list[Any]] = {}
        self.overrides: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}
        self.chat_error: str | None = None

    # -- store helpers
    def _blob(self, data: bytes) -> dict[str, Any]:
        path = blob_path(self.models, sha(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # a blob on disk is a cache hit: never rewritten
            path.write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    def _write_manifest(self, name: str, config: bytes, layers: list[dict[str, Any]]) -> None:
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **self._blob(config)},
            "layers": layers,
        }
        path = self.models / parse_model_name(name).manifest_relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")

    def _manifest_path(self, name: str) -> Path:
        return self.models / parse_model_name(name).manifest_relpath

    # -- routing
    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, path))
        body = (
            json.loads(request.read() or b"null")
            if request.method != "POST" or not path.startswith("/api/blobs")
            else None
        )
        self.bodies.setdefault(path, []).append(body)
        override = self.overrides.get((request.method, path))
        if override:
            return override(request)
        if path.startswith("/api/blobs/"):
            return self.blobs(request, path.rsplit("/", 1)[1])
        route = {
            ("GET", "/api/tags"): self.tags,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/pull"): self.pull,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/chat"): self.chat,
            ("DELETE", "/api/delete"): self.delete,
        }.get((request.method, path))
        if route is None:
            return httpx.Response(404, text="404 page not found")
        return route(body)

    @staticmethod
    def stream(lines: list[dict[str, Any]]) -> httpx.Response:
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return httpx.Response(200, content=content, headers={"Content-Type": "application/x-ndjson"})

    def tags(self, _body: Any) -> httpx.Response:
        models = []
        for path in sorted((self.models / "manifests").glob("*/*/*/*")):
            raw = path.read_bytes()
            manifest = json.loads(raw)
            size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
            name = f"{path.parent.name}:{path.name}"
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": hashlib.sha256(raw).hexdigest(),
                    "details": {"parameter_size": "8.0B", "quantization_level": "Q4_0"},
                }
            )
        return httpx.Response(200, json={"models": models})

    def show(self, body: dict[str, Any]) -> httpx.Response:
        if not self._manifest_path(body["model"]).exists():
            return httpx.Response(404, json={"error": f"model '{body['model']}' not found"})
        return httpx.Response(
            200,
            json={
                "details": {"family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_0"},
                "model_info": {"general.parameter_count": 8030261248, "general.architecture": "llama"},
            },
        )

    def pull(self, body: dict[str, Any]) -> httpx.Response:
        name = parse_model_name(body["model"]).model
        if name not in self.registry:
            return self.stream([{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}])
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        layers = []
        for media, data in self.registry[name]:
            layers.append({"mediaType": media, **self._blob(data)})
            lines.append(
                {
                    "status": f"pulling {sha(data)[7:19]}",
                    "digest": sha(data),
                    "total": len(data),
                    "completed": len(data),
                }
            )
        self._write_manifest(body["model"], json.dumps({"model_format": "gguf", "from": name}).encode(), layers)
        lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        return self.stream(lines)

    def blobs(self, request: httpx.Request, digest: str) -> httpx.Response:
        path = blob_path(self.models, digest)
        if request.method == "HEAD":
            return httpx.Response(200 if path.exists() else 404)
        data = request.read()
        if sha(data) != digest:
            return httpx.Response(400, json={"error": f'digest mismatch, expected "{digest}", got "{sha(data)}"'})
        existed = path.exists()
        self._blob(data)
        return httpx.Response(200 if existed else 201)

    def create(self, body: dict[str, Any]) -> httpx.Response:
        if "modelfile" in body and "from" not in body and "files" not in body:
            return httpx.Response(400, json={"error": "neither 'from' or 'files' was specified"})
        lines: list[dict[str, Any]] = []
        layers: list[dict[str, Any]] = []
        if "from" in body:
            base_path = self._manifest_path(body["from"])
            if not base_path.exists():
                return httpx.Response(404, json={"error": f"model '{body['from']}' not found"})
            for layer in json.loads(base_path.read_text())["layers"]:
                layers.append(dict(layer, **{"from": body["from"]}))
                lines.append({"status": f"using existing layer {layer['digest']}"})
        for digest in (body.get("files") or {}).values():
            if not blob_path(self.models, digest).exists():
                return self.stream([{"error": f"blob {digest} not found"}])
            layers.append(
                {"mediaType": MEDIA_MODEL, "digest": digest, "size": blob_path(self.models, digest).stat().st_size}
            )
            lines.insert(0, {"status": "parsing GGUF"})
        if "system" in body:
            layers.append({"mediaType": "application/vnd.ollama.image.system", **self._blob(body["system"].encode())})
            lines.append({"status": f"creating new layer {sha(body['system'].encode())}"})
        if "parameters" in body:
            params = json.dumps(body["parameters"]).encode()
            layers.append({"mediaType": "application/vnd.ollama.image.params", **self._blob(params)})
        self._write_manifest(
            body["model"], json.dumps({"model_format": "gguf", "q": body.get("quantize")}).encode(), layers
        )
        return self.stream([*lines, {"status": "writing manifest"}, {"status": "success"}])

    def chat(self, body: dict[str, Any]) -> httpx.Response:
        if self.chat_error:
            return httpx.Response(500, json={"error": self.chat_error})
        return httpx.Response(
            200, json={"model": body["model"], "message": {"role": "assistant", "content": "ok"}, "done": True}
        )

    def delete(self, body: dict[str, Any]) -> httpx.Response:
        path = self._manifest_path(body["model"])
        if not path.exists():
            return httpx.Response(404, json={"error": f"model '{body['model']}' not found"})
        path.unlink()
        return httpx.Response(200)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def count(self, method: str, path: str) -> int:
        return self.calls.count((method, path))


class Clock:
    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def env(tmp_path: Path):
    models = tmp_path / "models"
    state = tmp_path / "state"
    modelfile = tmp_path / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You are brief.\n")
    fake = FakeOllama(models)
    return fake, models, state, modelfile


def ensure(fake: FakeOllama, models: Path, state: Path, modelfile: Path, **kwargs: Any) -> ModelReport:
    kwargs.setdefault("disk_free", lambda _path: 100 * GB)
    kwargs.setdefault("clock", Clock(0.25))
    return ensure_model_loaded(
        BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, client=fake.client(), **kwargs
    )


def do_rebuild(fake: FakeOllama, models: Path, state: Path, modelfile: Path, **kwargs: Any) -> ModelReport:
    kwargs.setdefault("disk_free", lambda _path: 100 * GB)
    kwargs.setdefault("clock", Clock(0.25))
    return rebuild(BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, client=fake.client(), **kwargs)


# --- ensure --------------------------------------------------------------------------------------


def test_fresh_store_pulls_base_builds_and_tests(env):
    fake, models, state, modelfile = env
    events: list[ProgressEvent] = []
    report = ensure(fake, models, state, modelfile, progress=events.append)

    assert fake.calls == [
        ("GET", "/api/tags"),
        ("GET", "/api/tags"),
        ("POST", "/api/pull"),
        ("POST", "/api/create"),
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
        ("POST", "/api/chat"),
    ]
    assert fake.bodies["/api/pull"] == [{"model": "llama3:latest", "stream": True}]
    assert fake.bodies["/api/create"] == [
        {"model": MODEL, "from": "llama3", "system": "You are brief.", "stream": True}
    ]
    assert fake.bodies["/api/chat"] == [
        {
            "model": "uncensored-llama3:latest",
            "messages": [{"role": "user", "content": "test"}],
            "stream": False,
            "options": {"num_predict": 1},
        }
    ]
    manifest = read_manifest(models, MODEL)
    assert report.model == "uncensored-llama3:latest"
    assert report.action == "built"
    assert report.reason == "not installed"
    assert report.pulled_base is True
    assert report.base_model == "llama3:latest"
    assert report.size == manifest.size
    assert (report.parameter_size, report.parameter_count, report.quantization, report.family) == (
        "8.0B",
        8030261248,
        "Q4_0",
        "llama",
    )
    assert report.inference_ok is True
    assert report.inference_seconds == 0.25
    assert report.ok
    assert (
        report.summary()
        == f"uncensored-llama3:latest built (8.0B, Q4_0, {human_bytes(manifest.size)}); test inference OK in 0.2 s"
    )
    assert ("pulling", "sha256:" + sha(WEIGHTS)[7:19]) in {(e.phase, e.detail) for e in events}
    assert ("creating", "success") in {(e.phase, e.detail) for e in events}
    record = load_records(state)["uncensored-llama3:latest"]
    assert record.fingerprint == report.fingerprint
    assert record.manifest_digest == manifest.digest
    assert record.modelfile == str(modelfile)


def test_second_ensure_sends_no_create(env):
    fake, models, state, modelfile = env
    first = ensure(fake, models, state, modelfile)
    fake.calls.clear()
    second = ensure(fake, models, state, modelfile)
    assert fake.calls == [("GET", "/api/tags"), ("POST", "/api/show")]
    assert second.action == "none"
    assert second.reason == "current"
    assert second.fingerprint == first.fingerprint
    assert second.inference_ok is None
    assert second.summary().startswith("uncensored-llama3:latest is current (8.0B, Q4_0, ")


def test_edited_modelfile_rebuilds_without_pulling(env):
    fake, models, state, modelfile = env
    first = ensure(fake, models, state, modelfile)
    modelfile.write_text("FROM llama3\nSYSTEM You are verbose.\nPARAMETER num_ctx 4096\n")
    fake.calls.clear()
    second = ensure(fake, models, state, modelfile)
    assert second.action == "built"
    assert second.reason == "the Modelfile changed"
    assert second.pulled_base is False
    assert second.fingerprint != first.fingerprint
    assert fake.count("POST", "/api/pull") == 0
    assert fake.bodies["/api/create"][-1] == {
        "model": MODEL,
        "from": "llama3",
        "system": "You are verbose.",
        "parameters": {"num_ctx": 4096},
        "stream": True,
    }


def test_model_replaced_outside_the_manager_is_rebuilt(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    manifest_file = models / parse_model_name(MODEL).manifest_relpath
    manifest_file.write_text(manifest_file.read_text().replace("\n", " \n"))
    report = ensure(fake, models, state, modelfile)
    assert (report.action, report.reason) == ("built", "the installed model was replaced outside the manager")


def test_installed_model_without_record_is_rebuilt_but_base_not_pulled(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    (state / "models.json").unlink()
    fake.calls.clear()
    report = ensure(fake, models, state, modelfile)
    assert (report.action, report.reason) == ("built", "installed, but not built by the manager")
    assert fake.count("POST", "/api/pull") == 0


def test_quantize_is_sent_uppercased_and_changes_the_fingerprint(env):
    fake, models, state, modelfile = env
    plain = ensure(fake, models, state, modelfile)
    quantized = ensure(fake, models, state, modelfile, quantize="q4_K_M")
    assert quantized.action == "built"
    assert fake.bodies["/api/create"][-1]["quantize"] == "Q4_K_M"
    assert quantized.fingerprint != plain.fingerprint


def test_rebuild_reason_decisions():
    record = BuildRecord("fp", "digest", "m", "t")
    assert rebuild_reason(None, record, "fp") == "not installed"
    assert rebuild_reason("digest", None, "fp") == "installed, but not built by the manager"
    assert rebuild_reason("digest", record, "other") == "the Modelfile changed"
    assert rebuild_reason("changed", record, "fp") == "the installed model was replaced outside the manager"
    assert rebuild_reason("digest", record, "fp") is None


def test_parameter_overrides_are_built_in_recorded_and_kept_by_later_checks(env):
    fake, models, state, modelfile = env
    modelfile.write_text("FROM llama3\nSYSTEM You are brief.\nPARAMETER num_ctx 8192\nPARAMETER temperature 0.5\n")
    plain = ensure(fake, models, state, modelfile)
    fake.calls.clear()
    reduced = ensure(fake, models, state, modelfile, overrides={"num_ctx": 2048})
    assert (reduced.action, reduced.reason) == ("built", "parameter overrides changed (now: PARAMETER num_ctx 2048)")
    assert fake.count("POST", "/api/pull") == 0
    assert fake.bodies["/api/create"][-1]["parameters"] == {"num_ctx": 2048, "temperature": 0.5}  # ours win
    assert reduced.fingerprint != plain.fingerprint
    assert reduced.summary().startswith("uncensored-llama3:latest built with PARAMETER num_ctx 2048 (8.0B, ")
    assert load_records(state)[MODEL + ":latest"].overrides == {"num_ctx": 2048}
    # A check with the same overrides finds the model current: nothing "repairs" them away.
    assert ensure(fake, models, state, modelfile, overrides={"num_ctx": 2048}).action == "none"
    out = io.StringIO()
    assert run_list(MODEL, models_dir=models, state_dir=state, out=out) == 0
    assert (
        out.getvalue().splitlines()[2].endswith("active, built by manager, with PARAMETER num_ctx 2048 (out of memory)")
    )
    # Without them, the model is built as the Modelfile says again.
    back = ensure(fake, models, state, modelfile)
    assert (back.action, back.reason) == ("built", "parameter overrides changed (now: none)")
    assert fake.bodies["/api/create"][-1]["parameters"] == {"num_ctx": 8192, "temperature": 0.5}
    assert back.fingerprint == plain.fingerprint
    assert load_records(state)[MODEL + ":latest"].overrides == {}


def test_records_written_before_overrides_existed_still_load(env):
    fake, models, state, modelfile = env
    state.mkdir(parents=True)
    old = {"fingerprint": "f", "manifest_digest": "d", "modelfile": "x", "built_at": "t"}
    (state / "models.json").write_text(json.dumps({"version": 1, "models": {"m:latest": old}}))
    assert load_records(state)["m:latest"] == BuildRecord("f", "d", "x", "t")


def test_local_gguf_is_uploaded_once(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    weights = tmp_path / "w.gguf"
    weights.write_bytes(WEIGHTS)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./w.gguf\nSYSTEM s\n")
    fake = FakeOllama(models, registry={})
    report = ensure(fake, models, state, modelfile)
    digest = sha(WEIGHTS)
    assert report.uploaded == (digest,)
    assert fake.calls[:4] == [
        ("GET", "/api/tags"),
        ("HEAD", f"/api/blobs/{digest}"),
        ("POST", f"/api/blobs/{digest}"),
        ("POST", "/api/create"),
    ]
    assert fake.bodies["/api/create"][0] == {"model": MODEL, "files": {"w.gguf": digest}, "system": "s", "stream": True}
    assert blob_path(models, digest).read_bytes() == WEIGHTS

    modelfile.write_text("FROM ./w.gguf\nSYSTEM changed\n")
    fake.calls.clear()
    again = ensure(fake, models, state, modelfile)
    assert again.uploaded == ()
    assert fake.count("POST", f"/api/blobs/{digest}") == 0
    assert fake.count("HEAD", f"/api/blobs/{digest}") == 1


def test_changed_local_gguf_changes_the_fingerprint(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    weights = tmp_path / "w.gguf"
    weights.write_bytes(WEIGHTS)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./w.gguf\n")
    fake = FakeOllama(models, registry={})
    first = ensure(fake, models, state, modelfile)
    weights.write_bytes(WEIGHTS + b"more")
    second = ensure(fake, models, state, modelfile)
    assert (second.action, second.reason) == ("built", "the Modelfile changed")
    assert second.fingerprint != first.fingerprint
    assert fake.bodies["/api/create"][-1]["files"] == {"w.gguf": sha(WEIGHTS + b"more")}


# --- disk space ----------------------------------------------------------------------------------


def test_pull_needs_the_configured_minimum_when_the_base_size_is_unknown(env):
    fake, models, state, modelfile = env
    with pytest.raises(DiskSpaceError) as caught:
        ensure(fake, models, state, modelfile, disk_free=lambda _p: 2 * GB, min_free_bytes=8 * GB)
    assert str(caught.value) == f"not enough disk space to pull llama3:latest: need 8 GB free in {models}, have 2 GB"
    assert fake.count("POST", "/api/pull") == 0


def test_needed_bytes_are_the_missing_blobs_of_a_known_base(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    blob_path(models, sha(WEIGHTS)).unlink()
    assert bytes_needed_for_pull(models, parse_model_name("llama3"), 8 * GB) == len(WEIGHTS)
    assert bytes_needed_for_pull(models, parse_model_name("absent"), 8 * GB) == 8 * GB


def test_check_disk_space():
    check_disk_space(10, 10, "pull x", Path("/m"))
    with pytest.raises(DiskSpaceError) as caught:
        check_disk_space(4_700_000_000, 1_200_000_000, "pull x", Path("/m"))
    assert str(caught.value) == "not enough disk space to pull x: need 4.7 GB free in /m, have 1.2 GB"


# --- Ollama errors -------------------------------------------------------------------------------


def test_streamed_error_with_http_200_is_one_line(env):
    fake, models, state, modelfile = env
    fake.overrides[("POST", "/api/create")] = lambda _r: FakeOllama.stream(
        [{"status": "using existing layer sha256:aa"}, {"error": 'template error:\n  unexpected "}"'}]
    )
    ensure_base(fake, models)
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert str(caught.value) == 'create uncensored-llama3 failed: template error: unexpected "}"'
    assert caught.value.status == 200
    assert load_records(state) == {}


def test_old_style_streamed_error_keeps_its_status(env):
    fake, models, state, modelfile = env
    fake.overrides[("POST", "/api/create")] = lambda _r: FakeOllama.stream(
        [{"error": "neither 'from' or 'files' was specified", "status": 400}]
    )
    ensure_base(fake, models)
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert str(caught.value) == "create uncensored-llama3 failed: neither 'from' or 'files' was specified"
    assert caught.value.status == 400


def test_http_error_status_with_json_body(env):
    fake, models, state, modelfile = env
    fake.overrides[("POST", "/api/create")] = lambda _r: httpx.Response(
        400, json={"error": "quantization is only supported for F16, BF16 and F32 models"}
    )
    ensure_base(fake, models)
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert str(caught.value) == (
        "create uncensored-llama3 failed: quantization is only supported for F16, BF16 and F32 models (HTTP 400)"
    )
    assert caught.value.status == 400


def test_http_error_with_plain_text_body(env):
    fake, models, state, modelfile = env
    fake.overrides[("GET", "/api/tags")] = lambda _r: httpx.Response(
        503, text="server busy, please try again.  maximum pending requests exceeded"
    )
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert (
        str(caught.value)
        == "listing models failed: server busy, please try again. maximum pending requests exceeded (HTTP 503)"
    )


def test_pull_of_an_unknown_base_fails_with_ollamas_message(env):
    fake, models, state, modelfile = env
    modelfile.write_text("FROM nosuchmodel\n")
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert str(caught.value) == "pull nosuchmodel:latest failed: pull model manifest: file does not exist"


def test_create_stream_that_stops_early_is_an_error(env):
    fake, models, state, modelfile = env
    fake.overrides[("POST", "/api/create")] = lambda _r: FakeOllama.stream([{"status": "writing manifest"}])
    ensure_base(fake, models)
    with pytest.raises(OllamaAPIError) as caught:
        ensure(fake, models, state, modelfile)
    assert str(caught.value) == "create uncensored-llama3 failed: the stream ended before 'success'"


def test_connection_refused_is_one_line(env):
    _fake, models, state, modelfile = env

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(OllamaUnreachable) as caught:
        ensure_model_loaded(BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, client=client)
    assert str(caught.value) == f"cannot reach Ollama at {BASE_URL} (listing models): [Errno 111] Connection refused"


def test_timeout_is_one_line(env):
    _fake, models, state, modelfile = env

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = httpx.Client(transport=httpx.MockTransport(hang))
    with pytest.raises(OllamaUnreachable) as caught:
        ensure_model_loaded(BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, client=client)
    assert str(caught.value) == f"Ollama at {BASE_URL} stopped answering during listing models"


def test_failed_test_inference_is_reported_not_raised(env):
    fake, models, state, modelfile = env
    fake.chat_error = "model requires more system memory (9.1 GiB) than is available (3.2 GiB)"
    report = ensure(fake, models, state, modelfile)
    assert report.action == "built"
    assert report.inference_ok is False
    assert report.inference_error == (
        "test inference with uncensored-llama3:latest failed: model requires more system memory (9.1 GiB) "
        "than is available (3.2 GiB) (HTTP 500)"
    )
    assert not report.ok
    assert "uncensored-llama3:latest" in load_records(state)


def test_bad_modelfile_raises_before_any_request(env):
    fake, models, state, modelfile = env
    modelfile.write_text("SYSTEM no base\n")
    with pytest.raises(ModelfileError) as caught:
        ensure(fake, models, state, modelfile)
    assert (
        str(caught.value) == f"{modelfile}:1: no FROM instruction: the Modelfile must name a base model or a model file"
    )
    assert fake.calls == []


def test_a_second_builder_waits_for_the_lock_then_gives_up(env):
    fake, models, state, modelfile = env
    state.mkdir(parents=True)
    holder = filelock.FileLock(str(state / "model-build.lock"))
    holder.acquire()
    try:
        with pytest.raises(ModelError) as caught:
            ensure(fake, models, state, modelfile, lock_timeout=0.05)
    finally:
        holder.release()
    assert str(caught.value) == f"another model build is still running (lock {state / 'model-build.lock'})"
    assert fake.calls == []


def test_warns_when_models_dir_is_not_the_servers_store(env, tmp_path):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    other = tmp_path / "other-store"
    report = ensure_model_loaded(BASE_URL, MODEL, modelfile, models_dir=other, state_dir=state, client=fake.client())
    assert report.warnings == (
        (
            f"Ollama lists uncensored-llama3:latest but {other} has no manifest for it: the server uses another "
            "model directory (OLLAMA_MODELS or user differs), so integrity checks cannot see it"
        ),
    )


def ensure_base(fake: FakeOllama, models: Path) -> None:
    with fake.client() as client:
        client.post(f"{BASE_URL}/api/pull", json={"model": "llama3"})
    fake.calls.clear()


# --- rebuild and repair --------------------------------------------------------------------------


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rebuild_repairs_a_corrupt_base_blob(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    assert verify(MODEL, models_dir=models, state_dir=state).ok
    weights = blob_path(models, sha(WEIGHTS))
    flip_middle_byte(weights)
    damaged = verify(MODEL, models_dir=models, state_dir=state)
    assert [b.digest for b in damaged.corrupt] == [sha(WEIGHTS)]

    fake.calls.clear()
    report = do_rebuild(fake, models, state, modelfile)
    assert report.action == "rebuilt"
    assert report.reason == "repair"
    assert report.repaired == (sha(WEIGHTS),)
    assert report.pulled_base is True
    assert fake.calls[:2] == [("POST", "/api/pull"), ("POST", "/api/create")]
    assert weights.read_bytes() == WEIGHTS
    assert verify(MODEL, models_dir=models, state_dir=state).ok


def test_pull_alone_does_not_fix_a_corrupt_blob(env):
    """The reason rebuild deletes first: the fake, like Ollama, treats a blob on disk as a cache hit."""
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    flip_middle_byte(blob_path(models, sha(WEIGHTS)))
    ensure_base(fake, models)
    assert not verify(MODEL, models_dir=models, state_dir=state).ok


def test_rebuild_of_a_corrupt_own_layer_needs_no_pull(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    system_digest = sha(b"You are brief.")
    flip_middle_byte(blob_path(models, system_digest))
    fake.calls.clear()
    report = do_rebuild(fake, models, state, modelfile)
    assert report.repaired == (system_digest,)
    assert report.pulled_base is False
    assert fake.count("POST", "/api/pull") == 0
    assert blob_path(models, system_digest).read_bytes() == b"You are brief."


def test_rebuild_of_an_intact_model_is_forced(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    fake.calls.clear()
    report = do_rebuild(fake, models, state, modelfile)
    assert (report.action, report.reason, report.repaired, report.pulled_base) == ("rebuilt", "forced", (), False)
    assert fake.count("POST", "/api/create") == 1
    assert do_rebuild(fake, models, state, modelfile, pull_base=True).pulled_base is True


def test_rebuild_when_the_model_is_missing_checks_the_base(env):
    fake, models, state, modelfile = env
    ensure_base(fake, models)
    flip_middle_byte(blob_path(models, sha(TEMPLATE)))
    report = do_rebuild(fake, models, state, modelfile)
    assert report.repaired == (sha(TEMPLATE),)
    assert report.pulled_base is True
    assert blob_path(models, sha(TEMPLATE)).read_bytes() == TEMPLATE


def test_repair_that_does_not_help_is_an_error(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    flip_middle_byte(blob_path(models, sha(WEIGHTS)))
    original_pull = fake.pull

    def pull_then_damage(request: httpx.Request) -> httpx.Response:
        response = original_pull(json.loads(request.read()))
        blob_path(models, sha(WEIGHTS)).write_bytes(b"X" * len(WEIGHTS))  # e.g. a failing disk
        return response

    fake.overrides[("POST", "/api/pull")] = pull_then_damage
    with pytest.raises(ModelError) as caught:
        do_rebuild(fake, models, state, modelfile)
    assert str(caught.value) == (
        f"repair did not help: uncensored-llama3:latest: blob {sha(WEIGHTS)} (uncensored-llama3:latest, llama3:latest) "
        f"is corrupt: its content hashes to {sha(b'X' * len(WEIGHTS))}"
    )


# --- cleanup -------------------------------------------------------------------------------------


def test_cleanup_lists_and_deletes_stale_builds_and_leftovers(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    ensure_model_loaded(BASE_URL, "old-build", modelfile, models_dir=models, state_dir=state, client=fake.client())
    modelfile.write_text("FROM llama3\nSYSTEM different\n")
    ensure(fake, models, state, modelfile)
    now = 2_000_000_000.0
    for path in (models / "blobs").iterdir():
        os.utime(path, (now - 7200, now - 7200))
    orphan = blob_path(models, sha(b"orphan"))
    orphan.write_bytes(b"orphan")
    partial = models / "blobs" / ("sha256-" + "f" * 64 + "-partial")
    partial.write_bytes(b"1234")
    for path in (orphan, partial):
        os.utime(path, (now - 7200, now - 7200))

    report = cleanup_report(MODEL, models_dir=models, state_dir=state, now=now)
    # old-build shares config and weights; only its system layer ("You are brief.") is its own
    assert [(m.name, m.size) for m in report.stale_models] == [("old-build:latest", len(b"You are brief."))]
    assert [item.path for item in report.leftovers.unreferenced] == [orphan]
    assert [item.path for item in report.leftovers.partials] == [partial]
    assert f"unreferenced blob {orphan}  6 B" in report.lines()
    assert f"partial download {partial}  4 B" in report.lines()

    fake.calls.clear()
    result = cleanup(BASE_URL, MODEL, models_dir=models, state_dir=state, client=fake.client(), now=now)
    assert fake.calls == [("DELETE", "/api/delete")]
    assert fake.bodies["/api/delete"] == [{"model": "old-build:latest"}]
    assert result.errors == ()
    assert set(result.deleted) == {"old-build:latest", str(partial), str(orphan)}  # files by their full path
    assert not partial.exists() and not orphan.exists()
    assert set(load_records(state)) == {"uncensored-llama3:latest"}
    assert result.freed_bytes == report.total_size


def test_cleanup_deletes_only_names_ollama_makes_and_lists_the_rest_by_full_path(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    now = time.time()  # run_cleanup compares with the clock
    blobs = models / "blobs"
    notes = blobs / "notes.txt"  # put there by the user: Ollama never makes such a name
    notes.write_text("mine")
    layer_temp = blobs / "sha256-2849202111"  # a layer Ollama was writing (os.CreateTemp)
    layer_temp.write_bytes(b"tmp")
    quantize_temp = blobs / "Q4_K_M3141592653"  # a quantization Ollama was writing
    quantize_temp.write_bytes(b"q")
    for path in blobs.iterdir():
        os.utime(path, (now - 7200, now - 7200))
    out = io.StringIO()
    code = run_cleanup(BASE_URL, MODEL, models_dir=models, state_dir=state, delete=True, out=out, client=fake.client())
    assert code == 0
    lines = out.getvalue().splitlines()
    assert f"temporary file {layer_temp}  3 B" in lines and f"temporary file {quantize_temp}  1 B" in lines
    assert f"left alone (not a file Ollama makes): {notes}" in lines
    assert notes.read_text() == "mine"
    assert not layer_temp.exists() and not quantize_temp.exists()


@pytest.mark.parametrize("folder", ["blobs", "manifests"])
def test_cleanup_never_follows_a_symlinked_store_folder_out_of_the_store(env, tmp_path, folder):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    now = 2_000_000_000.0
    elsewhere = tmp_path / "elsewhere"
    (models / folder).rename(elsewhere)
    (models / folder).symlink_to(elsewhere)
    blobs_dir = elsewhere if folder == "blobs" else models / "blobs"
    victims = [blobs_dir / "thesis.pdf", blobs_dir / ("sha256-" + "d" * 64), blobs_dir / "sha256-123456"]
    for victim in victims:
        victim.write_bytes(b"precious")
    for path in blobs_dir.iterdir():
        os.utime(path, (now - 7200, now - 7200))
    report = cleanup_report(MODEL, models_dir=models, state_dir=state, now=now)
    assert report.leftovers.files == []
    assert report.leftovers.withheld == f"{models / folder} is a symlink to {elsewhere}: no file there is deleted"
    result = cleanup(BASE_URL, MODEL, models_dir=models, state_dir=state, client=fake.client(), now=now)
    assert (result.deleted, result.errors) == ((), ())
    assert all(victim.read_bytes() == b"precious" for victim in victims)


def test_cleanup_report_skips_the_active_model_and_missing_stale_ones(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    records = load_records(state)
    records["gone:latest"] = BuildRecord("fp", "d", "m", "t")
    save_records(state, records)
    report = cleanup_report(MODEL, models_dir=models, state_dir=state, now=0.0)
    assert report.stale_models == ()
    assert report.empty
    assert report.lines() == ["total 0 B"]


# --- commands ------------------------------------------------------------------------------------


def test_run_ensure_prints_summary_and_returns_0(env):
    fake, models, state, modelfile = env
    out, err = io.StringIO(), io.StringIO()
    code = run_ensure(
        BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, out=out, err=err, client=fake.client()
    )
    assert code == 0
    assert out.getvalue().startswith("uncensored-llama3:latest built (8.0B, Q4_0, ")
    assert out.getvalue().count("\n") == 1
    assert "pulling" in err.getvalue()


def test_run_ensure_error_is_one_line_and_returns_1(env):
    fake, models, state, modelfile = env
    modelfile.write_text('FROM llama3\nSYSTEM """open\n')
    out, err = io.StringIO(), io.StringIO()
    code = run_ensure(
        BASE_URL, MODEL, modelfile, models_dir=models, state_dir=state, out=out, err=err, client=fake.client()
    )
    assert code == 1
    assert out.getvalue() == ""
    assert (
        err.getvalue()
        == f'ollama-manager: {modelfile}:2: unterminated quote: no closing """ before the end of the file\n'
    )


def test_run_verify_exit_codes(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    out = io.StringIO()
    assert run_verify(MODEL, models_dir=models, state_dir=state, out=out, err=io.StringIO()) == 0
    assert out.getvalue().startswith("uncensored-llama3:latest: 5 blobs intact (")
    flip_middle_byte(blob_path(models, sha(WEIGHTS)))
    out = io.StringIO()
    assert run_verify(MODEL, models_dir=models, state_dir=state, full=True, out=out, err=io.StringIO()) == 2
    assert out.getvalue().startswith(
        f"uncensored-llama3:latest: blob {sha(WEIGHTS)} (uncensored-llama3:latest, llama3:latest) is corrupt"
    )
    assert (
        run_rebuild(
            BASE_URL,
            MODEL,
            modelfile,
            models_dir=models,
            state_dir=state,
            out=io.StringIO(),
            err=io.StringIO(),
            client=fake.client(),
        )
        == 0
    )
    assert run_verify(MODEL, models_dir=models, state_dir=state, out=io.StringIO(), err=io.StringIO()) == 0


def test_run_list_table(env):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    out = io.StringIO()
    assert run_list(MODEL, models_dir=models, state_dir=state, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "NOTE"]
    assert [line.split()[0] for line in lines[1:]] == ["llama3:latest", "uncensored-llama3:latest"]
    mine = read_manifest(models, MODEL)
    assert lines[2].split()[1] == mine.digest[:12]
    assert lines[2].endswith("active, built by manager")
    empty = io.StringIO()
    assert run_list(MODEL, models_dir=models / "nothing", state_dir=state, out=empty) == 0
    assert empty.getvalue() == f"no models in {models / 'nothing'}\n"


def test_run_cleanup_without_delete_only_lists(env, tmp_path):
    fake, models, state, modelfile = env
    ensure(fake, models, state, modelfile)
    old_modelfile = tmp_path / "old.Modelfile"
    old_modelfile.write_text("FROM llama3\nSYSTEM old\n")
    ensure_model_loaded(BASE_URL, "old-build", old_modelfile, models_dir=models, state_dir=state, client=fake.client())
    out = io.StringIO()
    assert run_cleanup(BASE_URL, MODEL, models_dir=models, state_dir=state, out=out, client=fake.client()) == 0
    assert out.getvalue() == "stale model old-build:latest  3 B\ntotal 3 B\nrun with --delete to remove these\n"
    assert read_manifest(models, "old-build")
    out = io.StringIO()
    assert (
        run_cleanup(BASE_URL, MODEL, models_dir=models, state_dir=state, delete=True, out=out, client=fake.client())
        == 0
    )
    assert out.getvalue().endswith("deleted 1 item(s), freed 3 B\n")
    assert list_models_names(models) == ["llama3:latest", "uncensored-llama3:latest"]


def list_models_names(models: Path) -> list[str]:
    return [entry.name.display for entry in list_models(models)]


# --- progress rendering --------------------------------------------------------------------------


def test_plain_lines_on_phase_change_each_10_percent_and_interval():
    state = PlainLineState()
    first = ProgressEvent("pulling", "sha256:abc", 0, 1000)
    assert plain_line_due(state, first, now=0.0, interval=5.0)
    state = PlainLineState(key=("pulling", "sha256:abc"), bucket=0, written_at=0.0)
    assert not plain_line_due(state, ProgressEvent("pulling", "sha256:abc", 50, 1000), now=1.0, interval=5.0)
    assert plain_line_due(state, ProgressEvent("pulling", "sha256:abc", 100, 1000), now=1.0, interval=5.0)
    assert plain_line_due(state, ProgressEvent("pulling", "sha256:abc", 50, 1000), now=5.0, interval=5.0)
    assert plain_line_due(state, ProgressEvent("creating", "writing manifest"), now=1.0, interval=5.0)
    assert not plain_line_due(
        PlainLineState(key=("creating", "x"), bucket=None, written_at=0.0), ProgressEvent("creating", "x"), 9.0, 5.0
    )


def test_renderer_writes_sparse_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    clock = Clock(0.5)
    renderer = ProgressRenderer(stream, is_tty=False, clock=clock, interval=5.0)
    renderer(ProgressEvent("pulling", "manifest"))
    for done in range(0, 1_000_001, 10_000):  # 101 events, 0.5 s apart
        renderer(ProgressEvent("pulling", "sha256:abc", done, 1_000_000))
    renderer(ProgressEvent("creating", "success"))
    renderer.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[1] == "pulling sha256:abc    0%  0 B/1 MB"
    assert lines[-1] == "creating success"
    progress_lines = lines[1:-1]
    assert len(progress_lines) == 11  # one per 10 % step
    assert progress_lines[-1] == "pulling sha256:abc  100%  1 MB/1 MB  20 KB/s"


def test_renderer_draws_a_bar_on_a_tty():
    stream = io.StringIO()
    renderer = ProgressRenderer(stream, is_tty=True, clock=Clock(1.0), width=80)
    renderer(ProgressEvent("verifying", "sha256:abc", 0, 1000))
    renderer(ProgressEvent("verifying", "sha256:abc", 500, 1000))
    renderer(ProgressEvent("creating", "success"))
    renderer.close()
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3
    assert frames[1].startswith("verifying sha256:abc")
    assert " 50% 500 B/1 KB 500 B/s\x1b[K\n" in frames[1]
    assert "█" * 5 in frames[1]
    assert frames[2] == "creating success\x1b[K\n"
    assert all(len(frame.split("\x1b")[0]) <= 80 for frame in frames)


def test_format_helpers():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1_500) == "1.5 KB"
    assert human_bytes(4_700_000_000) == "4.7 GB"
    # sizes as `ollama pull` and the tray's menu print them: no ".0", no decimal from ten up
    pulling = ProgressEvent("pulling", "sha256:6a0746a1ec1a", 4_000_000_000, 26_000_000_000)
    assert format_plain_line(pulling, 35_123_456.0) == "pulling sha256:6a0746a1ec1a   15%  4 GB/26 GB  35 MB/s"
    assert format_plain_line(ProgressEvent("creating", "writing manifest"), None) == "creating writing manifest"
    assert format_bar(ProgressEvent("hashing", "w.gguf", 10, None), None) == "hashing w.gguf  10 B"
