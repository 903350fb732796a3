"""The stand-in under load, as real processes: one request at a time per model, the queue, load and token time."""

from __future__ import annotations

import calendar
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest

from standin.harness import StandinEnv

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not true after {timeout} s: {predicate}")


def loaded(env: StandinEnv, **extra_env: str) -> None:
    """Serve with llama3 pulled and loaded."""
    serve(env, **extra_env)
    httpx.post(env.base_url + "/api/generate", json=generate(prompt=""), timeout=30)


def generating(env: StandinEnv, prompt: str = "long", **faults: Any) -> Timed:
    """A streamed generation paced by ``faults``, once its first line has arrived."""
    env.set_faults(**faults)
    busy = Timed(env, "/api/generate", generate(prompt=prompt))
    wait_until(lambda: busy.lines)
    return busy


def created_ns(line: dict[str, Any]) -> int:
    """A chunk's ``created_at`` (set by serve when it writes the chunk) as epoch nanoseconds."""
    stamp = line["created_at"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return int(seconds) * 10**9 + int(fraction.ljust(9, "0"))


def serve(env: StandinEnv, models: tuple[str, ...] = ("llama3",), **extra_env: str) -> None:
    """Start serve with small weights and runners, pull the models."""
    env.env.update({"OLLAMA_STANDIN_BLOB_MB": "1", "OLLAMA_STANDIN_RUNNER_MB": "16"}, **extra_env)
    env.spawn_serve()
    env.wait_ready()
    for model in models:
        env.pull(model)


class Timed:
    """One streamed request in a thread: when its first line and its end arrived, and what it said."""

    def __init__(self, env: StandinEnv, path: str, body: dict[str, Any]) -> None:
        self.first: float | None = None
        self.end: float | None = None
        self.lines: list[dict[str, Any]] = []
        self.status = 0
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(env.base_url + path, body), daemon=True)
        self.thread.start()

    def _run(self, url: str, body: dict[str, Any]) -> None:
        with httpx.stream("POST", url, json=body, timeout=60, trust_env=False) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if self.first is None:
                    self.first = time.monotonic()
                if line.strip():
                    self.lines.append(json.loads(line))
        self.end = time.monotonic()

    def join(self) -> Timed:
        self.thread.join(60)
        assert self.end is not None, "the request did not finish"
        return self

    @property
    def began_ns(self) -> int:
        """When serve wrote the first chunk."""
        return created_ns(self.lines[0])

    @property
    def ended_ns(self) -> int:
        """When serve wrote the last chunk."""
        return created_ns(self.lines[-1])

    @property
    def text(self) -> str:
        return "".join(line.get("response") or line.get("message", {}).get("content", "") for line in self.lines)


def generate(model: str = "llama3", prompt: str = "go", **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, **extra}


@pytest.fixture
def env(standin: StandinEnv) -> Iterator[StandinEnv]:
    yield standin


# --- One request at a time per loaded model ------------------------------------------------------------------


def test_a_loaded_model_serves_one_request_at_a_time(env: StandinEnv) -> None:
    loaded(env)
    env.set_faults(token_ms=100, tokens=8)
    first = Timed(env, "/api/generate", generate(prompt="first"))
    wait_until(lambda: first.first)
    second = Timed(env, "/api/generate", generate(prompt="second"))
    first.join(), second.join()
    assert first.text.startswith("You said: first") and second.text.startswith("You said: second")
    assert second.began_ns > first.ended_ns  # not even the headers before the first answer is complete


def test_num_parallel_gives_parallel_slots(env: StandinEnv) -> None:
    loaded(env, OLLAMA_NUM_PARALLEL="2")
    env.set_faults(token_ms=100, tokens=8)
    first = Timed(env, "/api/generate", generate(prompt="first"))
    wait_until(lambda: first.first)
    second = Timed(env, "/api/generate", generate(prompt="second"))
    first.join(), second.join()
    assert second.began_ns < first.ended_ns


def test_load_and_unload_requests_do_not_wait_behind_a_generation(env: StandinEnv) -> None:
    loaded(env)
    (runner,) = env.events_of("runner_start")
    busy = generating(env, token_ms=100, tokens=20)
    with env.client() as client:
        load = client.post("/api/chat", json={"model": "llama3", "messages": []}).json()
        unload = client.post("/api/generate", json=generate(prompt="", keep_alive=0)).json()
    busy.join()
    assert (load["done_reason"], unload["done_reason"]) == ("load", "unload")
    assert created_ns(load) < busy.ended_ns and created_ns(unload) < busy.ended_ns
    assert busy.lines[-1]["done"] is True and len(busy.lines) == 21
    # The unload took effect once the generation released the runner.
    wait_until(lambda: [e for e in env.events_of("runner_exit") if e["pid"] == runner["pid"]])


def test_a_full_queue_answers_503_with_ollamas_message(env: StandinEnv) -> None:
    serve(env, OLLAMA_MAX_QUEUE="1")
    env.set_faults(load_ms=1500)
    loading = Timed(env, "/api/generate", generate(prompt="a"))
    wait_until(lambda: env.events_of("runner_start"))
    queued = Timed(env, "/api/generate", generate(prompt="b"))
    wait_until(lambda: env.events_of("request_queued")[1:])
    refused = httpx.post(env.base_url + "/api/generate", json=generate(prompt="c"), timeout=30)
    assert (refused.status_code, refused.json()) == (503, {"error": ERR_MAX_QUEUE})
    assert loading.join().text == "You said: a" and queued.join().text == "You said: b"
    assert len(env.events_of("runner_start")) == 1


def test_requests_to_a_loaded_model_wait_for_the_slot_without_a_queue_limit(env: StandinEnv) -> None:
    loaded(env, OLLAMA_MAX_QUEUE="1")
    env.set_faults(token_ms=50, tokens=6)
    requests = [Timed(env, "/api/generate", generate(prompt="n%d" % index)) for index in range(4)]
    assert [request.join().status for request in requests] == [200] * 4
    spans = sorted((request.began_ns, request.ended_ns) for request in requests)
    assert all(later[0] > earlier[1] for earlier, later in itertools.pairwise(spans))


def test_embeddings_take_the_slot_too(env: StandinEnv) -> None:
    serve(env, ("all-minilm",))
    httpx.post(env.base_url + "/api/embed", json={"model": "all-minilm", "input": "warm"}, timeout=30)
    env.set_faults(slow_inference_ms=500)
    ends: list[float] = []

    def embed() -> None:
        response = httpx.post(env.base_url + "/api/embed", json={"model": "all-minilm", "input": "x"}, timeout=30)
        assert response.status_code == 200
        ends.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=embed) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ends) == 2 and max(ends) - started >= 2 * 0.5


# --- Load time ------------------------------------------------------------------------------------------------


def test_a_cold_load_takes_the_load_time_before_the_first_byte(env: StandinEnv) -> None:
    serve(env, OLLAMA_STANDIN_LOAD_MS="700")
    cold = Timed(env, "/api/generate", generate(prompt="x")).join()
    assert cold.first is not None and cold.first - cold.started >= 0.7
    assert cold.lines[-1]["load_duration"] >= 700_000_000
    warm = Timed(env, "/api/generate", generate(prompt="x")).join()
    assert warm.lines[-1]["load_duration"] < cold.lines[-1]["load_duration"] / 10


def test_loads_are_serialized(env: StandinEnv) -> None:
    serve(env, ("llama3", "mistral"))
    env.set_faults(load_ms=500)
    both = [Timed(env, "/api/generate", generate(model=model, prompt="x")) for model in ("llama3", "mistral")]
    assert [request.join().status for request in both] == [200, 200]
    first_ready, second_ready = env.events_of("runner_ready")
    second_start = next(e for e in env.events_of("runner_start") if e["pid"] == second_ready["pid"])
    assert second_start["time"] >= first_ready["time"]


# --- Token time and length ----------------------------------------------------------------------------------------


def test_token_delay_and_answer_length(env: StandinEnv) -> None:
    serve(env, OLLAMA_STANDIN_TOKEN_MS="50")
    env.set_faults(tokens=12)
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="hi", stream=False), timeout=30).json()
    assert answer["response"] == "You said: hi lorem ipsum dolor sit amet consectetur adipiscing elit sed"
    assert (answer["eval_count"], answer["done_reason"]) == (12, "stop")
    assert answer["eval_duration"] >= 11 * 50_000_000
    capped = generate(prompt="hi", stream=False, options={"num_predict": 5})
    answer = httpx.post(env.base_url + "/api/generate", json=capped, timeout=30).json()
    assert (answer["eval_count"], answer["done_reason"]) == (5, "length")


# --- stream:false ------------------------------------------------------------------------------------------------

NON_STREAMED = [
    ("/api/generate", {"model": "llama3", "prompt": "p", "stream": False}),
    ("/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "p"}], "stream": False}),
    ("/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "p"}]}),
    ("/v1/completions", {"model": "llama3", "prompt": "p"}),
]


def first_byte_after(env: StandinEnv, path: str, body: dict[str, Any]) -> tuple[float, bytes]:
    """Seconds from sending the request to its first response byte, and the whole response."""
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {env.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", env.port), timeout=30) as sock:
        sent = time.monotonic()
        sock.sendall(request)
        first = sock.recv(1)
        waited = time.monotonic() - sent
        rest = b"".join(iter(lambda: sock.recv(65536), b""))
    return waited, first + rest


@pytest.mark.parametrize(("path", "body"), NON_STREAMED, ids=[path for path, _ in NON_STREAMED])
def test_stream_false_writes_nothing_before_the_answer_is_complete(
    env: StandinEnv, path: str, body: dict[str, Any]
) -> None:
    loaded(env)
    env.set_faults(token_ms=150, tokens=6)
    waited, response = first_byte_after(env, path, body)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" not in response
    assert b"lorem ipsum dolor" in response
    assert waited >= 5 * 0.15


# --- The runner generates: a stopped runner stalls, serve still answers ------------------------------------------


def runner_process(env: StandinEnv, model: str = "llama3:latest") -> psutil.Process:
    pid = env.runner_pid(model)
    assert pid is not None, "no live runner for " + model
    return psutil.Process(pid)


def runner_health(env: StandinEnv, timeout: float = 2.0) -> httpx.Response:
    (event,) = env.events_of("runner_start")[-1:]
    return httpx.get("http://127.0.0.1:%d/health" % event["port"], timeout=timeout, trust_env=False)


def test_a_stopped_runner_stalls_generation_while_serve_keeps_answering(env: StandinEnv) -> None:
    loaded(env)
    runner = runner_process(env)
    busy = generating(env, token_ms=100, tokens=30)
    runner.suspend()
    try:
        wait_until(lambda: runner.status() == psutil.STATUS_STOPPED)
        received = len(busy.lines)
        with env.client(timeout=2) as client:
            assert client.get("/").text == "Ollama is running"
            assert client.get("/api/version").json() == {"version": "0.33.0"}
            assert "llama3:latest" in [m["name"] for m in client.get("/api/tags").json()["models"]]
            assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["llama3:latest"]
        with pytest.raises(httpx.TimeoutException):
            runner_health(env, timeout=0.5)
        assert len(busy.lines) == received and busy.end is None
    finally:
        runner.resume()
    busy.join()
    assert len(busy.lines) == 31 and busy.lines[-1]["done"] is True


def test_runner_health_says_loading_then_ok(env: StandinEnv) -> None:
    serve(env)
    env.set_faults(load_ms=1500)
    cold = Timed(env, "/api/generate", generate(prompt="x"))
    wait_until(lambda: env.events_of("runner_start"))
    loading = wait_until(lambda: _health_or_none(env))
    assert (loading.status_code, loading.json()) == (503, {"status": "loading model"})
    cold.join()
    ready = runner_health(env)
    assert (ready.status_code, ready.text) == (200, '{"status":"ok"}')


def _health_or_none(env: StandinEnv) -> httpx.Response | None:
    try:
        return runner_health(env, timeout=0.5)
    except httpx.TransportError:
        return None


def test_runner_cpu_time_advances_while_generating_only(env: StandinEnv) -> None:
    loaded(env)
    runner = runner_process(env)

    def cpu() -> float:
        times = runner.cpu_times()
        return times.user + times.system

    idle_from = cpu()
    time.sleep(0.5)
    idle = cpu() - idle_from
    env.set_faults(tokens=100)
    busy_from = cpu()
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x", stream=False), timeout=30).json()
    busy = cpu() - busy_from
    assert answer["eval_count"] == 100
    assert busy >= 100 * 0.002 * 0.8 and idle < busy / 4


# --- A client that goes cancels its request ---------------------------------------------------------------------


class RawRequest:
    """A request on a raw socket, so a test can close the connection at any moment."""

    def __init__(self, env: StandinEnv, path: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", env.port), timeout=30)
        self.sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {env.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            ).encode()
            + payload
        )

    def close(self) -> None:
        self.sock.close()


def cancellations(env: StandinEnv) -> list[tuple[str, str]]:
    return [(e["stage"], e["path"]) for e in env.events_of("request_cancelled")]


def test_a_client_closing_mid_stream_cancels_the_generation_and_frees_the_slot(env: StandinEnv) -> None:
    loaded(env)
    env.set_faults(token_ms=100, tokens=30)
    with httpx.stream("POST", env.base_url + "/api/chat", json={"model": "llama3", "messages": [
            {"role": "user", "content": "abandoned"}]}, timeout=30, trust_env=False) as response:  # fmt: skip
        first = json.loads(next(response.iter_lines()))
        next_in_line = Timed(env, "/api/generate", generate(prompt="next"))
    wait_until(lambda: cancellations(env) == [("generating", "/api/chat")])
    next_in_line.join()
    assert first["message"]["content"] == "You" and next_in_line.text.startswith("You said: next")
    # The abandoned answer would have run 3 s; the next one started as soon as it was cancelled.
    assert next_in_line.began_ns < created_ns(first) + 29 * 100_000_000


def test_a_client_closing_a_non_streamed_request_cancels_it(env: StandinEnv) -> None:
    loaded(env)
    env.set_faults(token_ms=100, tokens=50)
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "x"}]}
    request = RawRequest(env, "/v1/chat/completions", chat)
    time.sleep(0.3)  # a few tokens into the answer
    request.close()
    wait_until(lambda: cancellations(env) == [("generating", "/v1/chat/completions")])
    quick = httpx.post(env.base_url + "/api/generate", json=generate(prompt="after", stream=False), timeout=30)
    assert quick.json()["response"].startswith("You said: after")


def test_a_client_closing_while_waiting_for_the_slot_is_logged_like_ollama(env: StandinEnv) -> None:
    loaded(env)
    busy = generating(env, token_ms=100, tokens=30)
    waiting = RawRequest(env, "/api/generate", generate(prompt="impatient", stream=False))
    time.sleep(0.3)  # let it reach the slot it waits for
    waiting.close()
    wait_until(lambda: cancellations(env) == [("waiting", "/api/generate")])
    assert 'msg="aborting completion request due to client closing the connection"' in env.log_text()
    busy.join()
    assert busy.lines[-1]["done"] is True


def test_a_client_closing_during_the_load_aborts_it(env: StandinEnv) -> None:
    serve(env)
    env.set_faults(load_ms=5000)
    request = RawRequest(env, "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "x"}]})
    (runner,) = wait_until(lambda: env.events_of("runner_start"))
    request.close()
    wait_until(lambda: cancellations(env) == [("loading", "/api/chat")])
    wait_until(lambda: [e for e in env.events_of("runner_exit") if e["pid"] == runner["pid"]])
    assert "client connection closed before llama-server finished loading, aborting load" in env.log_text()
    assert httpx.get(env.base_url + "/api/ps", timeout=5).json() == {"models": []}


def test_a_client_closing_while_queued_is_never_scheduled(env: StandinEnv) -> None:
    serve(env, ("llama3", "mistral"))
    env.set_faults(load_ms=1500)
    loading = Timed(env, "/api/generate", generate(prompt="a"))
    wait_until(lambda: env.events_of("runner_start"))
    queued = RawRequest(env, "/api/generate", generate(model="mistral", prompt="b"))
    wait_until(lambda: env.events_of("request_queued")[1:])
    queued.close()
    wait_until(lambda: cancellations(env) == [("queued", "/api/generate")])
    assert loading.join().text == "You said: a"
    assert [e["model"] for e in env.events_of("runner_start")] == ["llama3:latest"]


# --- A change of runner options reloads the model ------------------------------------------------------------------


def reloads(env: StandinEnv) -> list[tuple[str, dict[str, list[Any]]]]:
    return [(e["reason"], e["changed"]) for e in env.events_of("runner_reload")]


def test_changed_runner_options_reload_the_model_and_back(env: StandinEnv) -> None:
    serve(env)
    with env.client() as client:

        def ask(**options: Any) -> dict[str, Any]:
            body = generate(prompt="x", stream=False, options=options)
            return client.post("/api/generate", json=body).json()

        ask()
        ask(temperature=0.2, num_gpu=-1, num_predict=5)  # not runner options, or automatic: no reload
        assert reloads(env) == [] and len(env.events_of("runner_start")) == 1
        small = ask(num_ctx=2048)
        assert reloads(env) == [("options", {"num_ctx": [4096, 2048]})]
        assert small["load_duration"] >= 200_000_000  # a new load
        assert [m["context_length"] for m in client.get("/api/ps").json()["models"]] == [2048]
        ask(num_ctx=2048)
        ask()  # the default context again: Ollama reloads back
        ask(num_gpu=0)
    assert reloads(env)[1:] == [("options", {"num_ctx": [2048, 4096]}), ("options", {"num_gpu": [-1, 0]})]
    starts = env.events_of("runner_start")
    assert len(starts) == 4 and len({e["pid"] for e in starts}) == 4
    assert [e["pid"] for e in env.events_of("runner_reload")] == [e["pid"] for e in starts[:3]]


def test_a_reload_waits_for_the_busy_runner_to_finish(env: StandinEnv) -> None:
    loaded(env, OLLAMA_DEBUG="1")
    busy = generating(env, token_ms=100, tokens=15, load_ms=600)
    other = Timed(env, "/api/generate", generate(prompt="other", options={"num_ctx": 1024}))
    busy.join(), other.join()
    assert busy.lines[-1]["done"] is True and other.text.startswith("You said: other")
    old, new = env.events_of("runner_start")
    assert new["time"] * 1e9 > busy.ended_ns
    assert other.lines[-1]["load_duration"] >= 600_000_000
    assert [e["pid"] for e in env.events_of("runner_exit")] == [old["pid"]]
    assert "level=DEBUG source=sched.go:259 msg=reloading runner=" in env.log_text()


def test_an_unresponsive_runner_is_replaced(env: StandinEnv) -> None:
    loaded(env, OLLAMA_STANDIN_PING_TIMEOUT_MS="1000")
    runner = runner_process(env)
    runner.suspend()
    try:
        answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x", stream=False), timeout=60)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            runner.resume()
    assert answer.json()["response"] == "You said: x"
    assert reloads(env) == [("unresponsive", {})]
    assert not psutil.pid_exists(runner.pid) or runner.status() == psutil.STATUS_ZOMBIE
    # needsReload pings (10 s in Ollama, 1 s here) twice, in getRunner then processPending, before the reload.
    assert answer.json()["load_duration"] >= 2 * 1_000_000_000


# --- Out of memory, as Ollama >= 0.30 reports it ------------------------------------------------------------------

# The substring of Ollama's outOfMemorySubstrings (llm/status.go) each kind's answer carries.
OLLAMA_OOM_SUBSTRING = {
    "cuda": "cudamalloc failed",
    "host": "failed to allocate",
    "windows": "not enough memory",
    "metal": "insufficient memory",
    "vulkan": "vk_error_out_of_device_memory",
    "compute": "allocation failed",
    "health": "out of memory",
}
TERMINATED = "llama-server process has terminated: exit status 1: "
STARTUP = "llama-server reported out-of-memory during startup: "
CUDA_LINES = (
    "cudaMalloc failed: out of memory\n"
    "alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296\n"
    "error loading model: unable to allocate CUDA0 buffer"
)
OOM_ANSWERS = {
    "cuda": TERMINATED + CUDA_LINES,
    "host": TERMINATED + "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592\n"
    "alloc_tensor_range: failed to allocate CPU buffer of size 8589934592\n"
    "error loading model: unable to allocate CPU buffer",
    "windows": TERMINATED + "error loading model: MapViewOfFile failed: "
    "Not enough memory resources are available to process this command.",
    "metal": TERMINATED + "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
    "vulkan": TERMINATED + "ggml_vulkan: vk::Device::allocateMemory: VK_ERROR_OUT_OF_DEVICE_MEMORY\n"
    "error loading model: unable to allocate Vulkan0 buffer",
    "compute": TERMINATED + "ggml_backend_sched_reserve: compute buffer allocation failed\n"
    "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers",
    "health": STARTUP + 'llama-server error: {"status":"error","message":"out of memory"}',
    "mlx": "model requires 9.1 GiB but only 4.2 GiB are available (after 512.0 MiB overhead)",
    "full": "unable to load full model on GPU",
}


@pytest.mark.parametrize("kind", list(OOM_ANSWERS))
def test_each_out_of_memory_kind_fails_the_load_with_ollamas_text(env: StandinEnv, kind: str) -> None:
    serve(env)
    env.set_faults(oom=kind)
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    assert (answer.status_code, answer.json()) == (500, {"error": OOM_ANSWERS[kind]})
    assert OLLAMA_OOM_SUBSTRING.get(kind, "") in answer.json()["error"].lower()
    assert httpx.get(env.base_url + "/api/ps", timeout=5).json() == {"models": []}
    assert all(not psutil.pid_exists(e["pid"]) or psutil.Process(e["pid"]).status() == psutil.STATUS_ZOMBIE
               for e in env.events_of("runner_start"))  # fmt: skip


def test_an_oom_reported_on_health_while_the_runner_lives(env: StandinEnv) -> None:
    serve(env)
    env.set_faults(oom={"kind": "cuda", "via": "health"})
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    assert (answer.status_code, answer.json()) == (500, {"error": STARTUP + CUDA_LINES})
    (runner,) = env.events_of("runner_start")
    wait_until(lambda: [e for e in env.events_of("runner_exit") if e["pid"] == runner["pid"]])


def test_the_recoverable_sequence_ends_in_a_loaded_model(env: StandinEnv) -> None:
    serve(env)
    env.set_faults(oom="recoverable")
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x", stream=False), timeout=30)
    assert (answer.status_code, answer.json()["response"]) == (200, "You said: x")
    log = env.log_text()
    assert "ggml_backend_sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism" in log
    assert 'msg="waiting for llama-server to become available" status="llm server error"' in log
    assert len(env.events_of("runner_start")) == 1


def test_an_oom_while_generating_breaks_the_answer_and_expires_the_models(env: StandinEnv) -> None:
    serve(env, ("llama3", "mistral"))
    httpx.post(env.base_url + "/api/generate", json=generate(model="mistral", prompt=""), timeout=30)
    env.set_faults(oom="runtime")
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x", stream=False), timeout=30)
    message = "an error was encountered while running the model: CUDA error: out of memory"
    assert (answer.status_code, answer.json()) == (500, {"error": message})
    assert "runtime OOM detected; expiring loaded models to clear memory before next request" in env.log_text()
    wait_until(lambda: httpx.get(env.base_url + "/api/ps", timeout=5).json() == {"models": []})


def test_a_load_oom_with_other_models_loaded_evicts_them_and_retries_once(env: StandinEnv) -> None:
    serve(env, ("llama3", "mistral"))
    httpx.post(env.base_url + "/api/generate", json=generate(model="mistral", prompt=""), timeout=30)
    env.set_faults(oom="cuda")
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    assert (answer.status_code, answer.json()) == (500, {"error": OOM_ANSWERS["cuda"]})
    assert [e["model"] for e in env.events_of("runner_start")] == ["mistral:latest", "llama3:latest", "llama3:latest"]
    assert "llama-server load failed; evicting all other models and retrying once" in env.log_text()
    assert httpx.get(env.base_url + "/api/ps", timeout=5).json() == {"models": []}


def test_an_unknown_oom_kind_is_refused_by_name(env: StandinEnv) -> None:
    serve(env)
    env.set_faults(oom="cosmic-ray")
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    assert answer.status_code == 500 and answer.json()["error"].startswith('stand-in: unknown oom fault "cosmic-ray"')


def test_the_runner_is_llama_server_in_an_install_layout(env: StandinEnv) -> None:
    loaded(env)
    runner = runner_process(env)
    assert runner.name() == "llama-server"
    assert runner.cmdline()[0] == str(env.root / "lib" / "ollama" / "llama-server")
    assert "--model" in runner.cmdline() and runner.cmdline()[runner.cmdline().index("--model") + 1].startswith(
        str(env.models_dir / "blobs" / "sha256-")
    )
    assert runner.parent().pid == env.serve_pids()[0]
    assert re.search(r'msg="starting llama-server" cmd="\S+/lib/ollama/llama-server --model ', env.log_text())
    assert 'msg="llama-server started in ' in env.log_text()


def test_before_0_30_a_runner_oom_reads_as_the_old_runner_message(env: StandinEnv) -> None:
    serve(env, OLLAMA_STANDIN_VERSION="0.12.0")
    env.set_faults(oom="cuda")
    answer = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    # v0.12's StatusWriter keeps only the last line with an error prefix.
    message = "llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer"
    assert (answer.status_code, answer.json()) == (500, {"error": message})
    env.set_faults(oom="mlx")
    refused = httpx.post(env.base_url + "/api/generate", json=generate(prompt="x"), timeout=30)
    assert refused.json()["error"].startswith('stand-in: unknown oom fault "mlx"')
