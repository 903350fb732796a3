"""The stand-in `ollama` as a real process: CLI, HTTP API, on-disk store, runners, signals, faults."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from standin.harness import STANDIN_BIN, StandinEnv, same_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

MIB = 1024 * 1024
JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
NDJSON = "application/x-ndjson"
MODEL_MEDIA = "application/vnd.ollama.image.model"
BASE_PARAMS = '{"num_keep":24,"stop":["<|start_header_id|>","<|end_header_id|>","<|eot_id|>"]}'


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def manifest_path(env: StandinEnv, model: str, tag: str = "latest") -> Path:
    return env.models_dir / "manifests" / "registry.ollama.ai" / "library" / model / tag


def read_manifest(env: StandinEnv, model: str) -> dict[str, Any]:
    return json.loads(manifest_path(env, model).read_bytes())


def blob(env: StandinEnv, digest: str) -> Path:
    return env.models_dir / "blobs" / digest.replace(":", "-")


def model_blob(env: StandinEnv, model: str) -> Path:
    layers = read_manifest(env, model)["layers"]
    return blob(env, next(layer["digest"] for layer in layers if layer["mediaType"] == MODEL_MEDIA))


def runner_events(env: StandinEnv, model: str) -> list[dict[str, Any]]:
    return [e for e in env.events() if e["event"] == "runner_start" and e["model"] == model]


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def copy_model(client: httpx.Client, source: str, destination: str) -> None:
    assert client.post("/api/copy", json={"source": source, "destination": destination}).status_code == 200


def unique_gguf(env: StandinEnv, tag: bytes) -> Path:
    """A GGUF file (the pulled llama3 weights plus a suffix) whose digest no other test uses."""
    path = env.root / ("model-%s.gguf" % tag.decode())
    path.write_bytes(model_blob(env, "llama3").read_bytes() + tag)
    return path


def create_from_file(env: StandinEnv, client: httpx.Client, name: str, path: Path) -> str:
    digest = "sha256:" + sha256_hex(path.read_bytes())
    assert client.post("/api/blobs/" + digest, content=path.read_bytes()).status_code == 201
    response = client.post("/api/create", json={"model": name, "files": {path.name: digest}, "stream": False})
    assert response.json() == {"status": "success"}
    return digest


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinEnv]:
    """One running stand-in for the API tests, with llama3 pulled (1 MiB weights, 32 MiB runners)."""
    env = StandinEnv(
        tmp_path_factory.mktemp("served"), blob_mb=1, runner_mb=32, extra_env={"OLLAMA_STANDIN_REGISTRY": "llama3-f16"}
    )
    try:
        env.spawn_serve()
        env.wait_ready()
        env.pull("llama3")
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def api(served: StandinEnv) -> Iterator[httpx.Client]:
    with served.client() as client:
        yield client
    served.clear_faults()


def start(env: StandinEnv, **extra_env: str) -> subprocess.Popen[bytes]:
    """Start serve with small weights and runners, and wait until it answers."""
    env.env.update({"OLLAMA_STANDIN_BLOB_MB": "1", "OLLAMA_STANDIN_RUNNER_MB": "16"})
    serve = env.spawn_serve(extra_env=extra_env)
    env.wait_ready()
    return serve


# --- Version, root, routing -------------------------------------------------------------------


def test_version_without_a_server_warns_and_exits_0(standin: StandinEnv) -> None:
    result = standin.ollama("--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert (
        result.stdout == "Warning: could not connect to a running Ollama instance\nWarning: client version is 0.33.0\n"
    )


def test_root_head_and_version(served: StandinEnv, api: httpx.Client) -> None:
    root = api.get("/")
    assert (root.status_code, root.text, root.headers["content-type"]) == (200, "Ollama is running", TEXT)
    head = api.head("/")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "17")
    version = api.get("/api/version")
    assert (version.status_code, version.text, version.headers["content-type"]) == (200, '{"version":"0.33.0"}', JSON)
    assert api.head("/api/version").status_code == 200
    result = served.ollama("-v")
    assert (result.returncode, result.stdout) == (0, "ollama version is 0.33.0\n")


def test_unknown_path_wrong_method_and_bad_bodies(api: httpx.Client) -> None:
    missing = api.get("/api/nope")
    assert (missing.status_code, missing.text, missing.headers["content-type"]) == (404, "404 page not found", TEXT)
    wrong = api.get("/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
    assert api.post("/api/chat", content=b"").json() == {"error": "missing request body"}
    bad = api.post("/api/chat", content=b"{x")
    assert (bad.status_code, bad.json()) == (
        400,
        {"error": "invalid character 'x' looking for beginning of object key string"},
    )
    assert api.post("/api/chat", content=b'{"model":').json() == {"error": "unexpected EOF"}
    assert api.post("/api/generate", content=b"[1]").json() == {
        "error": "json: cannot unmarshal array into Go value of type api.GenerateRequest"
    }


def test_serve_logs_listening_line_and_gin_access_lines(served: StandinEnv, api: httpx.Client) -> None:
    api.get("/api/version")
    log = served.log_text()
    assert re.search(
        r"^time=\S+ level=INFO source=routes\.go:\d+ msg=\"Listening on 127\.0\.0\.1:%d \(version 0\.33\.0\)\"$"
        % served.port,
        log,
        re.M,
    )
    assert re.search(
        r'^\[GIN\] \d{4}/\d\d/\d\d - \d\d:\d\d:\d\d \| 200 \| +\S+ \| +127\.0\.0\.1 \| GET +"/api/version"$', log, re.M
    )
    start = [e for e in served.events() if e["event"] == "serve_start"]
    assert [(e["port"], e["host"]) for e in start] == [(served.port, served.host)]


# --- Process behaviour ----------------------------------------------------------------------------


def test_port_in_use_exits_1_with_the_go_message(standin: StandinEnv) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", standin.port))
        holder.listen()
        result = standin.ollama("serve", timeout=20)
    assert result.returncode == 1
    assert result.stderr == "Error: listen tcp 127.0.0.1:%d: bind: address already in use\n" % standin.port
    assert [e["event"] for e in standin.events()] == ["serve_exit"]


@pytest.mark.parametrize("template", [' "127.0.0.1:{port}" ', "http://127.0.0.1:{port}", ":{port}"])
def test_ollama_host_values_are_parsed_like_envconfig(standin: StandinEnv, template: str) -> None:
    start(standin, OLLAMA_HOST=template.format(port=standin.port))
    assert httpx.get(standin.base_url + "/api/version").json() == {"version": "0.33.0"}


def test_sigterm_kills_runners_and_exits_0(standin: StandinEnv) -> None:
    serve = start(standin)
    standin.pull("llama3")
    httpx.post(standin.base_url + "/api/generate", json={"model": "llama3"}, timeout=30)
    (runner_pid,) = standin.alive_runner_pids()
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=10) == 0
    assert standin.alive_runner_pids() == []
    assert not psutil.pid_exists(runner_pid) or psutil.Process(runner_pid).status() == psutil.STATUS_ZOMBIE
    tail = [(e["event"], e["pid"]) for e in standin.events()[-2:]]
    assert tail == [("runner_exit", runner_pid), ("serve_exit", serve.pid)]
    assert standin.events()[-1]["code"] == 0


def test_sigkill_orphans_the_runner_until_cleanup(standin: StandinEnv) -> None:
    serve = start(standin)
    standin.pull("llama3")
    httpx.post(standin.base_url + "/api/generate", json={"model": "llama3"}, timeout=30)
    (runner_pid,) = standin.alive_runner_pids()
    serve.kill()
    assert serve.wait(timeout=10) == -signal.SIGKILL
    time.sleep(0.3)
    assert standin.alive_runner_pids() == [runner_pid]
    assert psutil.Process(runner_pid).ppid() != serve.pid
    standin.cleanup()
    assert standin.alive_runner_pids() == []


def test_cleanup_reaps_a_serve_still_starting_and_only_its_own(tmp_path: Path) -> None:
    """A serve a manager started just before it was stopped has written no start event yet: cleanup still ends it."""
    mine, other = StandinEnv(tmp_path / "mine"), StandinEnv(tmp_path / "other")
    others_serve = other.spawn_serve()
    # Started as a manager starts it (not by the harness), and held before it could say it started.
    serve = subprocess.Popen(
        [str(mine.executable), "serve"],
        env=mine.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        os.kill(serve.pid, signal.SIGSTOP)
        mine.events_file.write_text("")  # whatever it managed to record is not there yet
        mine.cleanup()
        assert serve.wait(timeout=10) == -signal.SIGKILL
        assert others_serve.poll() is None  # another environment's serve is not this cleanup's
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        other.cleanup()


def test_runner_is_a_child_of_serve_holding_real_memory(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "rss-check")
    assert api.post("/api/generate", json={"model": "rss-check", "keep_alive": -1}).json()["done_reason"] == "load"
    (event,) = runner_events(served, "rss-check:latest")
    runner = psutil.Process(event["pid"])
    (serve_pid,) = served.serve_pids()
    assert runner.ppid() == serve_pid
    assert os.getpgid(runner.pid) == os.getpgid(serve_pid)
    # Ollama >= 0.30 runs <install>/lib/ollama/llama-server; the stand-in's is a link to Python running its script.
    assert runner.name() == "llama-server"
    blob_path = str(model_blob(served, "rss-check"))
    command = runner.cmdline()
    assert command[0] == str(served.root / "lib" / "ollama" / "llama-server")
    assert command[1] == str(STANDIN_BIN.parent / "standin_runner.py")
    assert command[2:8] == ["--model", blob_path, "--port", str(event["port"]), "--host", "127.0.0.1"]
    assert command[8:10] == ["--no-webui", "--offline"]
    assert command[10:14] == ["-c", "4096", "-np", "1"]
    assert runner.memory_info().rss >= 32 * MIB
    (entry,) = [m for m in api.get("/api/ps").json()["models"] if m["name"] == "rss-check:latest"]
    assert entry["size"] == os.path.getsize(blob_path) + 32 * MIB
    assert (entry["size_vram"], entry["context_length"], entry["expires_at"][:2]) == (0, 4096, "23")


def test_a_version_before_0_30_runs_ollama_runner(standin: StandinEnv) -> None:
    start(standin, OLLAMA_STANDIN_VERSION="0.12.0")
    standin.pull("llama3")
    assert httpx.get(standin.base_url + "/api/version").json() == {"version": "0.12.0"}
    httpx.post(standin.base_url + "/api/generate", json={"model": "llama3"}, timeout=30)
    (event,) = runner_events(standin, "llama3:latest")
    runner = psutil.Process(event["pid"])
    assert runner.name() == "ollama"
    blob_path = str(model_blob(standin, "llama3"))
    assert runner.cmdline()[1:] == [str(STANDIN_BIN), "runner", "--model", blob_path, "--port", str(event["port"])]
    assert 'msg="starting runner" cmd=' in standin.log_text()


def test_keep_alive_expiry_kills_the_runner(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "short-lived")
    body = {
        "model": "short-lived",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "keep_alive": "1s",
    }
    assert api.post("/api/chat", json=body).json()["message"]["content"] == "You said: hi"
    (event,) = runner_events(served, "short-lived:latest")
    assert [m["name"] for m in api.get("/api/ps").json()["models"]].count("short-lived:latest") == 1
    assert wait_until(lambda: same_process(event["pid"], event["create_time"]) is None, timeout=5)
    assert "short-lived:latest" not in [m["name"] for m in api.get("/api/ps").json()["models"]]
    # serve writes runner_exit once it has reaped the child, just after the process is gone.
    assert wait_until(lambda: any(e["event"] == "runner_exit" and e["pid"] == event["pid"] for e in served.events()))


# --- Pull and the store ------------------------------------------------------------------------------


def test_pull_writes_ollamas_store_layout(served: StandinEnv, api: httpx.Client) -> None:
    data = manifest_path(served, "llama3").read_bytes()
    manifest = json.loads(data)
    assert (manifest["schemaVersion"], manifest["mediaType"]) == (
        2,
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    kinds = [layer["mediaType"].rsplit(".", 1)[-1] for layer in manifest["layers"]]
    assert kinds == ["model", "template", "license", "params"]
    for entry in manifest["layers"] + [manifest["config"]]:
        content = blob(served, entry["digest"]).read_bytes()
        assert entry["digest"] == "sha256:" + sha256_hex(content)
        assert entry["size"] == len(content)
    weights = model_blob(served, "llama3").read_bytes()
    assert (weights[:4], len(weights)) == (b"GGUF", MIB)
    assert blob(served, manifest["layers"][3]["digest"]).read_text() == BASE_PARAMS
    config = json.loads(blob(served, manifest["config"]["digest"]).read_bytes())
    assert (config["model_format"], config["model_family"], config["model_type"], config["file_type"]) == (
        "gguf",
        "llama",
        "8.0B",
        "Q4_K_M",
    )
    assert not [p for p in (served.models_dir / "blobs").iterdir() if "partial" in p.name]
    (tag,) = [m for m in api.get("/api/tags").json()["models"] if m["name"] == "llama3:latest"]
    assert tag["digest"] == sha256_hex(data)
    assert tag["size"] == sum(entry["size"] for entry in manifest["layers"]) + manifest["config"]["size"]
    assert tag["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "8.0B",
        "quantization_level": "Q4_K_M",
    }
    mtime = manifest_path(served, "llama3").stat().st_mtime
    assert abs(time.mktime(time.strptime(tag["modified_at"][:19], "%Y-%m-%dT%H:%M:%S")) - int(mtime)) <= 1


def test_pull_stream_reports_progress_then_cache_hits(standin: StandinEnv) -> None:
    start(standin)
    first = ndjson(httpx.post(standin.base_url + "/api/pull", json={"model": "tinyllama"}, timeout=30))
    digests = [entry["digest"] for entry in json.loads(manifest_path(standin, "tinyllama").read_bytes())["layers"]]
    weights = [line for line in first if line.get("digest") == digests[0]]
    assert weights[0] == {"status": "pulling %s" % digests[0][7:19], "digest": digests[0], "total": MIB}
    assert [line["completed"] for line in weights[1:]] == sorted(line["completed"] for line in weights[1:])
    assert weights[-1]["completed"] == MIB and len(weights) >= 3
    assert [line["status"] for line in first if "digest" not in line] == [
        "pulling manifest",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    again = ndjson(httpx.post(standin.base_url + "/api/pull", json={"model": "tinyllama"}, timeout=30))
    assert [line.get("completed") == line.get("total") for line in again if "digest" in line] == [True] * 5
    assert len(again) == 1 + 5 + 3


def test_cached_blob_is_not_downloaded_or_verified_again(standin: StandinEnv) -> None:
    start(standin)
    standin.pull("mistral")
    weights = model_blob(standin, "mistral")
    original = weights.read_bytes()
    weights.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    assert standin.pull("mistral") == {"status": "success"}
    assert weights.read_bytes() != original
    assert "sha256:" + sha256_hex(weights.read_bytes()) != read_manifest(standin, "mistral")["layers"][0]["digest"]


def test_pull_of_an_unknown_model(api: httpx.Client) -> None:
    streamed = api.post("/api/pull", json={"model": "no-such-model"})
    assert streamed.status_code == 200
    assert ndjson(streamed) == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    quiet = api.post("/api/pull", json={"model": "no-such-model", "stream": False})
    assert (quiet.status_code, quiet.json()) == (500, {"error": "pull model manifest: file does not exist"})


# --- Create ----------------------------------------------------------------------------------------------


def test_create_from_with_system_and_parameters(served: StandinEnv, api: httpx.Client) -> None:
    base = read_manifest(served, "llama3")["layers"]
    body = {"model": "pirate", "from": "llama3", "system": "You are a pirate.", "parameters": {"temperature": 0.7}}
    lines = ndjson(api.post("/api/create", json=body))
    params = (
        '{"num_keep":24,"stop":["\\u003c|start_header_id|\\u003e","\\u003c|end_header_id|\\u003e",'
        '"\\u003c|eot_id|\\u003e"],"temperature":0.7}\n'
    )
    assert [line["status"] for line in lines] == [
        "using existing layer " + base[0]["digest"],
        "using existing layer " + base[1]["digest"],
        "using existing layer " + base[2]["digest"],
        "creating new layer sha256:" + sha256_hex(b"You are a pirate."),
        "creating new layer sha256:" + sha256_hex(params.encode()),
        "writing manifest",
        "success",
    ]
    data = manifest_path(served, "pirate").read_bytes()
    assert data.endswith(b"}\n") and b"\n" not in data[:-1] and b": " not in data
    assert [layer.get("from") for layer in json.loads(data)["layers"]] == ["llama3:latest"] * 3 + [None, None]
    (tag,) = [m for m in api.get("/api/tags").json()["models"] if m["name"] == "pirate:latest"]
    assert tag["digest"] == sha256_hex(data)
    shown = api.post("/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == "You are a pirate."
    assert shown["details"]["parent_model"] == "llama3:latest"
    assert "temperature                    0.7" in shown["parameters"].splitlines()
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["model_info"]["llama.context_length"] == 8192
    assert api.post("/api/show", json={"model": "nope"}).json() == {"error": "model 'nope:latest' not found"}


def test_create_with_only_a_modelfile_is_rejected(api: httpx.Client) -> None:
    response = api.post("/api/create", json={"model": "legacy", "modelfile": "FROM llama3\nSYSTEM hi\n"})
    assert (response.status_code, response.text, response.headers["content-type"]) == (
        400,
        "{\"error\":\"neither 'from' or 'files' was specified\"}",
        JSON,
    )


def test_create_from_a_model_not_present_pulls_it_first(served: StandinEnv, api: httpx.Client) -> None:
    statuses = [line["status"] for line in ndjson(api.post("/api/create", json={"model": "small", "from": "llama3.2"}))]
    pulled = statuses.index("success") + 1
    assert statuses[0] == "pulling manifest" and statuses[pulled - 3 : pulled] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    base = read_manifest(served, "llama3.2")["layers"]
    # Go re-encodes the inherited params (escaping < and >), so they become a new layer.
    params = BASE_PARAMS.replace("<", "\\u003c").replace(">", "\\u003e") + "\n"
    assert statuses[pulled:] == [
        "using existing layer " + base[0]["digest"],
        "using existing layer " + base[1]["digest"],
        "using existing layer " + base[2]["digest"],
        "creating new layer sha256:" + sha256_hex(params.encode()),
        "writing manifest",
        "success",
    ]
    assert manifest_path(served, "small").exists()


def test_quantize_needs_an_f16_base(served: StandinEnv, api: httpx.Client) -> None:
    refused = api.post("/api/create", json={"model": "q", "from": "llama3", "quantize": "q4_K_M"})
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": "quantization is only supported for F16, BF16 and F32 models"},
    )
    lines = ndjson(api.post("/api/create", json={"model": "q", "from": "llama3-f16", "quantize": "q4_K_M"}))
    quantizing = [line for line in lines if line["status"] == "quantizing F16 model to Q4_K_M"]
    assert quantizing[-1] == {
        "status": "quantizing F16 model to Q4_K_M",
        "digest": "0000000000000000000",
        "total": MIB,
        "completed": MIB,
    }
    assert "verifying conversion" in [line["status"] for line in lines] and lines[-1] == {"status": "success"}
    assert api.post("/api/show", json={"model": "q"}).json()["details"]["quantization_level"] == "Q4_K_M"


def test_recreating_a_model_prunes_its_old_blobs(served: StandinEnv, api: httpx.Client) -> None:
    first = "sha256:" + sha256_hex(b"prune me A")
    api.post("/api/create", json={"model": "prunable", "from": "llama3", "system": "prune me A", "stream": False})
    assert blob(served, first).exists()
    api.post("/api/create", json={"model": "prunable", "from": "llama3", "system": "prune me B", "stream": False})
    assert not blob(served, first).exists()
    assert blob(served, "sha256:" + sha256_hex(b"prune me B")).exists()


def test_cli_create_uploads_a_gguf_file_then_creates(served: StandinEnv) -> None:
    weights = unique_gguf(served, b"cli")
    digest = "sha256:" + sha256_hex(weights.read_bytes())
    modelfile = served.root / "Modelfile.cli"
    modelfile.write_text('# built by a test\nfrom ./%s\nSYSTEM """Be brief.\nVery brief."""\n' % weights.name)
    result = served.ollama("create", "from-file", "-f", str(modelfile))
    system = "sha256:" + sha256_hex(b"Be brief.\nVery brief.")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.splitlines() == [
        "gathering model components",
        "copying file %s 100%%" % digest,
        "parsing GGUF",
        "using existing layer " + digest,
        "creating new layer " + system,
        "writing manifest",
        "success",
    ]
    assert blob(served, digest).read_bytes() == weights.read_bytes()


# --- Inference ----------------------------------------------------------------------------------------


def test_chat_stream_and_non_stream(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "chatty")
    api.post("/api/generate", json={"model": "chatty"})
    messages = [{"role": "user", "content": "hello   world"}]
    streamed = api.post("/api/chat", json={"model": "chatty", "messages": messages})
    assert streamed.headers["content-type"] == NDJSON
    chunks = ndjson(streamed)
    assert [c["message"]["content"] for c in chunks] == ["You", " said:", " hello", " world", ""]
    assert [c["done"] for c in chunks] == [False] * 4 + [True]
    assert set(chunks[0]) == {"model", "created_at", "message", "done"}
    final = chunks[-1]
    assert (final["model"], final["done_reason"], final["eval_count"], final["prompt_eval_count"]) == (
        "chatty",
        "stop",
        4,
        2,
    )
    # Ollama's load_duration is the time spent scheduling: present, and short for a loaded model.
    assert 0 < final["load_duration"] < final["total_duration"]
    whole = api.post("/api/chat", json={"model": "chatty", "messages": messages, "stream": False})
    assert whole.headers["content-type"] == JSON
    assert whole.json()["message"] == {"role": "assistant", "content": "You said: hello world"}


def test_load_unload_and_load_duration(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "loader")
    served.set_faults(load_ms=400)
    loaded = api.post("/api/chat", json={"model": "loader", "messages": []}).json()
    assert set(loaded) == {"model", "created_at", "message", "done_reason", "done"}
    assert (loaded["done_reason"], loaded["done"], loaded["message"]) == (
        "load",
        True,
        {"role": "assistant", "content": ""},
    )
    (event,) = runner_events(served, "loader:latest")
    assert "loader:latest" in [m["name"] for m in api.get("/api/ps").json()["models"]]
    unloaded = api.post("/api/chat", json={"model": "loader", "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert same_process(event["pid"], event["create_time"]) is None
    assert "loader:latest" not in [m["name"] for m in api.get("/api/ps").json()["models"]]
    first = api.post("/api/generate", json={"model": "loader", "prompt": "a b", "stream": False}).json()
    assert first["load_duration"] >= 400_000_000
    second = api.post("/api/generate", json={"model": "loader", "prompt": "a b", "stream": False}).json()
    assert 0 < second["load_duration"] < first["load_duration"] / 10
    assert (second["response"], second["context"][:2]) == ("You said: a b", first["context"][:2])


def test_runner_killed_mid_stream_then_reloaded(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "fragile")
    api.post("/api/generate", json={"model": "fragile"})
    (event,) = runner_events(served, "fragile:latest")
    served.set_faults(token_ms=150)
    with api.stream("POST", "/api/generate", json={"model": "fragile", "prompt": "one two three four"}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["response"] == "You"
        os.kill(event["pid"], signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1] == {"error": "an error was encountered while running the model: unexpected EOF"}
    served.clear_faults()
    again = api.post("/api/generate", json={"model": "fragile", "prompt": "x", "stream": False}).json()
    assert again["response"] == "You said: x" and again["load_duration"] > 0
    assert len(runner_events(served, "fragile:latest")) == 2


def test_num_predict_limits_the_answer(api: httpx.Client) -> None:
    body = {"model": "llama3", "prompt": "one two three", "options": {"num_predict": 3}, "stream": False}
    answer = api.post("/api/generate", json=body).json()
    assert (answer["response"], answer["done_reason"], answer["eval_count"]) == ("You said: one", "length", 3)


def test_generate_errors_for_missing_or_broken_models(served: StandinEnv, api: httpx.Client) -> None:
    assert api.post("/api/generate", json={"model": "nope", "prompt": "x"}).json() == {
        "error": "model 'nope' not found"
    }
    assert api.post("/api/generate", json={"model": "", "prompt": "x"}).status_code == 404
    assert api.post("/api/chat", json={"model": "", "messages": []}).json() == {"error": "model is required"}
    create_from_file(served, api, "ghost", unique_gguf(served, b"ghost"))
    model_blob(served, "ghost").unlink()
    gone = api.post("/api/generate", json={"model": "ghost", "prompt": "x"})
    assert (gone.status_code, gone.json()) == (404, {"error": 'model "ghost" not found, try pulling it first'})
    create_from_file(served, api, "garbage", unique_gguf(served, b"garbage"))
    model_blob(served, "garbage").write_bytes(b"NOPE" + b"\0" * 100)
    broken = api.post("/api/chat", json={"model": "garbage", "messages": [{"role": "user", "content": "x"}]})
    # Serve decodes the GGUF header itself before it starts a runner (llm.LoadModel).
    assert (broken.status_code, broken.text) == (500, '{"error":"invalid file magic"}')
    assert runner_events(served, "garbage:latest") == []
    assert re.search(r'msg="failed to load model metadata" model=\S+ error="invalid file magic"', served.log_text())


def test_embed(served: StandinEnv, api: httpx.Client) -> None:
    served.pull("all-minilm")
    answer = api.post("/api/embed", json={"model": "all-minilm", "input": ["a b", "c"]}).json()
    assert [len(vector) for vector in answer["embeddings"]] == [384, 384]
    assert abs(sum(x * x for x in answer["embeddings"][0]) - 1.0) < 1e-4
    again = api.post("/api/embed", json={"model": "all-minilm", "input": "a b"}).json()
    assert again["embeddings"] == answer["embeddings"][:1] and again["prompt_eval_count"] == 2
    assert api.post("/api/embed", json={"model": "all-minilm", "input": 5}).json() == {"error": "invalid input type"}
    refused = api.post("/api/generate", json={"model": "all-minilm", "prompt": "x"})
    assert (refused.status_code, refused.json()) == (400, {"error": '"all-minilm" does not support generate'})


def test_openai_models_and_chat_completions(api: httpx.Client) -> None:
    models = api.get("/v1/models").json()
    assert models["object"] == "list"
    assert {"id": "llama3:latest", "object": "model", "owned_by": "library"}.items() <= next(
        m for m in models["data"] if m["id"] == "llama3:latest"
    ).items()
    body = {"model": "llama3", "messages": [{"role": "user", "content": "ping"}]}
    whole = api.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "You said: ping"}, "finish_reason": "stop"}
    ]
    assert whole["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    streamed = api.post("/v1/chat/completions", json=dict(body, stream=True))
    assert streamed.headers["content-type"] == "text/event-stream"
    events = [line[len("data: ") :] for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0] for event in events[:-1]]
    assert "".join(d["delta"]["content"] for d in deltas) == "You said: ping"
    assert [d["finish_reason"] for d in deltas] == [None, None, None, "stop"]
    missing = api.post("/v1/chat/completions", json=dict(body, model="nope"))
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")


# --- Delete, copy, blobs ---------------------------------------------------------------------------------


def test_delete_and_copy_answer_200_with_an_empty_body(served: StandinEnv, api: httpx.Client) -> None:
    copied = api.post("/api/copy", json={"source": "llama3", "destination": "keeper/copy:v1"})
    assert (copied.status_code, copied.content) == (200, b"")
    assert (served.models_dir / "manifests/registry.ollama.ai/keeper/copy/v1").read_bytes() == manifest_path(
        served, "llama3"
    ).read_bytes()
    assert api.post("/api/copy", json={"source": "nope", "destination": "x"}).json() == {
        "error": 'model "nope" not found'
    }
    deleted = api.request("DELETE", "/api/delete", json={"model": "keeper/copy:v1"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert not (served.models_dir / "manifests/registry.ollama.ai/keeper").exists()
    again = api.request("DELETE", "/api/delete", json={"model": "keeper/copy:v1"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'keeper/copy:v1' not found"})
    assert model_blob(served, "llama3").exists()


def test_delete_prunes_blobs_no_other_model_uses(served: StandinEnv, api: httpx.Client) -> None:
    api.post("/api/create", json={"model": "doomed", "from": "llama3", "system": "doomed system", "stream": False})
    system_blob = blob(served, "sha256:" + sha256_hex(b"doomed system"))
    assert system_blob.exists()
    api.request("DELETE", "/api/delete", json={"model": "doomed"})
    assert not system_blob.exists() and model_blob(served, "llama3").exists()


def test_tags_skip_a_model_whose_config_blob_is_missing(served: StandinEnv, api: httpx.Client) -> None:
    api.post("/api/create", json={"model": "configless", "from": "llama3", "system": "no config", "stream": False})
    assert "configless:latest" in [m["name"] for m in api.get("/api/tags").json()["models"]]
    blob(served, read_manifest(served, "configless")["config"]["digest"]).unlink()
    assert manifest_path(served, "configless").exists()
    assert "configless:latest" not in [m["name"] for m in api.get("/api/tags").json()["models"]]
    assert "llama3:latest" in [m["name"] for m in api.get("/api/tags").json()["models"]]


def test_blob_upload_statuses(api: httpx.Client) -> None:
    content = b"blob for the upload test"
    digest = "sha256:" + sha256_hex(content)
    assert api.head("/api/blobs/" + digest).status_code == 404
    assert api.post("/api/blobs/" + digest, content=content).status_code == 201
    assert api.head("/api/blobs/" + digest).status_code == 200
    exists = api.post("/api/blobs/" + digest, content=content)
    assert (exists.status_code, exists.content) == (200, b"")
    wrong = "sha256:" + "0" * 64
    mismatch = api.post("/api/blobs/" + wrong, content=content)
    assert (mismatch.status_code, mismatch.json()) == (
        400,
        {"error": 'digest mismatch, expected "%s", got "%s"' % (wrong, digest)},
    )
    invalid = api.post("/api/blobs/sha256:abc", content=content)
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid digest format"})


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_list_pull_ps_rm(served: StandinEnv, api: httpx.Client) -> None:
    pulled = served.ollama("pull", "llama3.1")
    bar = "▕" + "█" * 18 + "▏"
    assert pulled.returncode == 0 and pulled.stdout == ""
    lines = pulled.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert re.fullmatch(r"pulling [0-9a-f]{12}: 100%% %s 1\.0 MB" % bar, lines[1])
    listed = served.ollama("list", "llama3.1")
    digest = sha256_hex(manifest_path(served, "llama3.1").read_bytes())[:12]
    header, row = listed.stdout.splitlines()
    # tablewriter: cells padded to the column width, 4 spaces after each (the header's last cell gets 1).
    assert header == "NAME" + " " * 11 + "    ID" + " " * 10 + "    SIZE  " + "    MODIFIED" + " " * 14 + " "
    assert row == "llama3.1:latest    %s    1.0 MB    Less than a second ago    " % digest
    api.post("/api/generate", json={"model": "llama3.1", "keep_alive": "10m"})
    ps_lines = served.ollama("ps").stdout.splitlines()
    assert ps_lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    (row,) = [line for line in ps_lines if line.startswith("llama3.1:latest")]
    assert re.fullmatch(r"llama3\.1:latest +%s +34 MB +100%% CPU +4096 +(9|10) minutes from now +" % digest, row)
    removed = served.ollama("rm", "llama3.1")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, "deleted 'llama3.1'\n", "")
    assert "llama3.1:latest" not in [m["name"] for m in api.get("/api/ps").json()["models"]]
    missing = served.ollama("rm", "llama3.1")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "Error: model 'llama3.1' not found\n")


def test_cli_cp_show_and_stop(served: StandinEnv, api: httpx.Client) -> None:
    copied = served.ollama("cp", "llama3", "cli-copy")
    assert (copied.returncode, copied.stdout) == (0, "copied 'llama3' to 'cli-copy'\n")
    api.post(
        "/api/create", json={"model": "cli-copy", "from": "llama3", "system": "Talk like a robot.", "stream": False}
    )
    assert served.ollama("show", "cli-copy", "--system").stdout == "Talk like a robot.\n"
    summary = served.ollama("show", "cli-copy").stdout.splitlines()
    assert summary[:3] == ["  Model", "    architecture        llama", "    parameters          8.0B"]
    api.post("/api/generate", json={"model": "cli-copy"})
    assert "cli-copy:latest" in [m["name"] for m in api.get("/api/ps").json()["models"]]
    stopped = served.ollama("stop", "cli-copy")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "", "")
    assert "cli-copy:latest" not in [m["name"] for m in api.get("/api/ps").json()["models"]]
    missing = served.ollama("stop", "absent-model")
    assert (missing.returncode, missing.stderr) == (1, 'Error: couldn\'t find model "absent-model" to stop\n')


def test_cli_without_a_server(standin: StandinEnv) -> None:
    for args in (("list",), ("pull", "llama3"), ("ps",), ("rm", "x")):
        result = standin.ollama(*args)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == "Error: could not connect to ollama server, run 'ollama serve' to start it\n"
    unknown = standin.ollama("frobnicate")
    assert (unknown.returncode, unknown.stderr) == (1, 'Error: unknown command "frobnicate" for "ollama"\n')


def test_cli_create_errors(served: StandinEnv) -> None:
    missing = served.ollama("create", "x", "-f", str(served.root / "absent"))
    assert (missing.returncode, missing.stderr) == (1, "Error: specified Modelfile wasn't found\n")
    bad = served.root / "Modelfile.bad"
    bad.write_text("FROM llama3\nPARAMETER temperature hot\n")
    result = served.ollama("create", "x", "-f", str(bad))
    assert (result.returncode, result.stderr) == (1, "gathering model components\nError: invalid float value [hot]\n")
    nofrom = served.root / "Modelfile.nofrom"
    nofrom.write_text("SYSTEM hi\n")
    assert served.ollama("create", "x", "-f", str(nofrom)).stderr.endswith("Error: no FROM line\n")


# --- Faults -----------------------------------------------------------------------------------------------


def test_fault_slow_ms_delays_api_but_not_root(served: StandinEnv, api: httpx.Client) -> None:
    served.set_faults(slow_ms=400)
    began = time.monotonic()
    assert api.get("/").status_code == 200
    root_time = time.monotonic() - began
    began = time.monotonic()
    assert api.get("/api/version").status_code == 200
    api_time = time.monotonic() - began
    assert api_time >= 0.4 and root_time < api_time / 2  # the root answers without the API's delay


def test_fault_http_error(served: StandinEnv, api: httpx.Client) -> None:
    served.set_faults(http_error={"path": "/api/tags", "status": 503, "error": "injected"})
    failing = api.get("/api/tags")
    assert (failing.status_code, failing.json()) == (503, {"error": "injected"})
    assert api.get("/api/version").status_code == 200
    served.clear_faults()
    assert api.get("/api/tags").status_code == 200


def test_fault_oom_fails_the_next_load(served: StandinEnv, api: httpx.Client) -> None:
    copy_model(api, "llama3", "too-big")
    served.set_faults(oom=True)
    answer = api.post("/api/chat", json={"model": "too-big", "messages": [{"role": "user", "content": "x"}]})
    message = (
        "llama-server process has terminated: exit status 1: cudaMalloc failed: out of memory\n"
        "alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296\n"
        "error loading model: unable to allocate CUDA0 buffer"
    )
    assert (answer.status_code, answer.json()) == (500, {"error": message})
    assert re.search(r'level=INFO source=sched\.go:\d+ msg="Load failed" model=\S+ error=', served.log_text())


def test_fault_oom_before_0_30(standin: StandinEnv) -> None:
    start(standin, OLLAMA_STANDIN_VERSION="0.12.0")
    standin.pull("llama3")
    standin.set_faults(oom=True)
    answer = httpx.post(standin.base_url + "/api/generate", json={"model": "llama3", "prompt": "x"}, timeout=30)
    message = "model requires more system memory (8.0 GiB) than is available (4.0 GiB)"
    assert (answer.status_code, answer.json()) == (500, {"error": message})
    assert re.search(
        r'level=INFO source=sched\.go:\d+ msg="NewLlamaServer failed" model=\S+ error="%s"' % re.escape(message),
        standin.log_text(),
    )
    assert runner_events(standin, "llama3:latest") == []


def test_fault_slow_inference_and_hang_inference(served: StandinEnv, api: httpx.Client) -> None:
    body = {"model": "llama3", "prompt": "x", "stream": False}
    api.post("/api/generate", json=body)
    served.set_faults(slow_inference_ms=400)
    began = time.monotonic()
    assert api.post("/api/generate", json=body).json()["response"] == "You said: x"
    assert time.monotonic() - began >= 0.4
    served.set_faults(slow_inference_ms=None, hang_inference=True)
    with pytest.raises(httpx.ReadTimeout):
        api.post("/api/generate", json=body, timeout=0.5)
    assert api.get("/", timeout=2).text == "Ollama is running"


def test_fault_slow_pull(served: StandinEnv, api: httpx.Client) -> None:
    served.set_faults(slow_pull_ms_per_mb=600)
    began = time.monotonic()
    served.pull("llama3.1:slow")
    assert time.monotonic() - began >= 0.6


def test_fault_hang_keeps_the_socket_open(standin: StandinEnv) -> None:
    serve = start(standin)
    standin.set_faults(hang=True)
    with socket.create_connection(("127.0.0.1", standin.port), timeout=2):
        pass
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(standin.base_url + "/", timeout=0.5)
    assert serve.poll() is None


def test_fault_crash_on(standin: StandinEnv) -> None:
    serve = start(standin)
    standin.set_faults(crash_on="/api/tags")
    with pytest.raises(httpx.TransportError):
        httpx.get(standin.base_url + "/api/tags", timeout=5)
    assert serve.wait(timeout=5) == 2
    assert standin.events()[-1]["event"] == "serve_exit" and standin.events()[-1]["code"] == 2


def test_fault_exit_on_start(standin: StandinEnv) -> None:
    result = standin.ollama("serve", extra_env={"OLLAMA_STANDIN_EXIT_ON_START": "3"})
    assert (result.returncode, result.stderr) == (3, "Error: mkdir %s: permission denied\n" % standin.models_dir)


def test_fault_ignore_sigterm(standin: StandinEnv) -> None:
    serve = start(standin, OLLAMA_STANDIN_IGNORE_SIGTERM="1")
    # Ignored, not handled late: the kernel drops the signal as it is sent, so no wait can show more than this.
    ignored = next(
        line for line in Path(f"/proc/{serve.pid}/status").read_text().splitlines() if line.startswith("SigIgn:")
    )
    assert int(ignored.split()[1], 16) & (1 << (signal.SIGTERM - 1))
    serve.send_signal(signal.SIGTERM)
    assert serve.poll() is None
    assert httpx.get(standin.base_url + "/").status_code == 200
    serve.kill()
    assert serve.wait(timeout=5) == -signal.SIGKILL


def test_fault_crash_after(standin: StandinEnv) -> None:
    serve = start(standin, OLLAMA_STANDIN_CRASH_AFTER="0.5")
    assert serve.wait(timeout=10) == 2
