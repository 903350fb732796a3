"""OOM recognition and the degrade/recover ladder, with a scripted clock."""

from __future__ import annotations

import pytest

from tray.core.oom import (
    LadderMove,
    OomKind,
    OomLadder,
    OomSettings,
    OomStep,
    classify_oom,
    is_oom,
    offloaded_layers,
)

# --- Recognition ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        # Ollama <= ~0.2x, returned as HTTP 500 (ollama.md section 8).
        ("model requires more system memory (8.1 GiB) than is available (4.0 GiB)", OomKind.SYSTEM),
        (
            "Error: 500 Internal Server Error: model requires more system memory (8.1 GiB) than is available (4.0 GiB)",
            OomKind.SYSTEM,
        ),
        # v0.20 eviction variant.
        ("model requires more system memory than is currently available", OomKind.SYSTEM),
        # >= v0.30.
        ("llama-server reported out-of-memory during startup: exit status 1", OomKind.UNKNOWN),
        (
            "llama-server reported out-of-memory during startup: ggml_backend_cuda_buffer_type_alloc_buffer: "
            "allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory",
            OomKind.GPU,
        ),
        # Server-log lines from the runner (ggml / CUDA / ROCm / Metal / Vulkan).
        (
            "time=2025-04-03T22:48:12.000Z level=ERROR source=server.go:100 "
            'msg="ggml_backend_cuda_buffer_type_alloc_buffer: '
            'allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory"',
            OomKind.GPU,
        ),
        ("ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824", OomKind.GPU),
        ("hipMalloc failed: out of memory", OomKind.GPU),
        ("CUDA error: out of memory", OomKind.GPU),
        ("error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)", OomKind.GPU),
        ("vk::Device::allocateMemory: ErrorOutOfDeviceMemory", OomKind.GPU),
        ("vk::Device::allocateMemory: ErrorOutOfHostMemory", OomKind.SYSTEM),
        ("llama_model_load: error loading model: unable to allocate CPU buffer", OomKind.SYSTEM),
        ("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592", OomKind.SYSTEM),
        ("fatal error: runtime: out of memory", OomKind.SYSTEM),
        ("Out of memory", OomKind.UNKNOWN),
    ],
)
def test_oom_errors_are_recognised(text: str, kind: OomKind) -> None:
    assert classify_oom(text) is kind
    assert is_oom(text) is True


@pytest.mark.parametrize(
    "text",
    [
        # A runner dying is not proof of an OOM: it also covers crashes.
        "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
        "check ollama server logs for details",
        "llama runner process has terminated: exit status 2",
        "model 'uncensored-llama3' not found",
        "server busy, please try again.  maximum pending requests exceeded",
        "digest mismatch, file must be downloaded again",
        '[GIN] 2025/04/03 - 22:48:12 | 200 |      28.1µs |       127.0.0.1 | HEAD     "/"',
        'memory.available="[7.5 GiB]" memory.required.full="4.9 GiB"',
    ],
)
def test_other_errors_are_not_oom(text: str) -> None:
    assert classify_oom(text) is None
    assert is_oom(text) is False


def test_offloaded_layers_from_the_server_log() -> None:
    assert offloaded_layers("llm_load_tensors: offloaded 33/33 layers to GPU") == 33
    assert offloaded_layers("load_tensors: offloaded 20/29 layers to GPU") == 20
    assert offloaded_layers("Listening on 127.0.0.1:11434") is None


# --- Walking down ---------------------------------------------------------------------------------

CUDA_OOM = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory"
)


def test_each_oom_takes_one_rung_down() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33)
    assert (ladder.level, ladder.options, ladder.cloud_fallback) == (0, {}, False)

    steps = []
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        event = ladder.report_error(now, CUDA_OOM)
        assert event is not None and event.move is LadderMove.DOWN and event.at == now
        steps.append((event.step, event.level, event.options, event.cloud_fallback, event.message))
    assert steps == [
        (
            OomStep.SMALLER_CONTEXT,
            1,
            {"num_ctx": 4096},
            False,
            "Retrying with a smaller context window (8192 → 4096 tokens)",
        ),
        (
            OomStep.SMALLER_CONTEXT,
            2,
            {"num_ctx": 2048},
            False,
            "Retrying with a smaller context window (4096 → 2048 tokens)",
        ),
        (
            OomStep.FEWER_GPU_LAYERS,
            3,
            {"num_ctx": 2048, "num_gpu": 16},
            False,
            "Retrying with fewer layers on the GPU (16 instead of 33)",
        ),
        (OomStep.CPU_ONLY, 4, {"num_ctx": 2048, "num_gpu": 0}, False, "Retrying on the CPU only (slower)"),
        (
            OomStep.CLOUD_FALLBACK,
            5,
            {"num_ctx": 2048, "num_gpu": 0},
            True,
            "Using the cloud fallback until memory frees up",
        ),
    ]
    assert ladder.report_error(50.0, CUDA_OOM) is None  # the bottom: nothing further to give up
    assert (ladder.level, ladder.options, ladder.cloud_fallback) == (5, {"num_ctx": 2048, "num_gpu": 0}, True)


def test_lines_of_one_failure_take_a_single_rung() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33, settle_seconds=5)
    first = ladder.report_log_line(100.0, CUDA_OOM)
    assert first is not None and first.options == {"num_ctx": 4096}
    assert (
        ladder.report_log_line(100.2, "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824")
        is None
    )
    assert ladder.report_error(101.0, "llama-server reported out-of-memory during startup: exit status 1") is None
    assert ladder.level == 1
    second = ladder.report_error(105.0, CUDA_OOM)  # settle time over: a new failure
    assert second is not None and second.options == {"num_ctx": 2048}


def test_a_system_memory_oom_skips_the_gpu_rungs() -> None:
    ladder = OomLadder(num_ctx=4096, gpu_layers=33)
    text = "model requires more system memory (8.1 GiB) than is available (4.0 GiB)"
    first = ladder.report_error(0.0, text)
    second = ladder.report_error(10.0, text)
    assert first is not None and (first.step, first.options) == (OomStep.SMALLER_CONTEXT, {"num_ctx": 2048})
    assert second is not None and (second.step, second.options, second.cloud_fallback) == (
        OomStep.CLOUD_FALLBACK,
        {"num_ctx": 2048},
        True,
    )


def test_without_a_known_layer_count_the_gpu_step_is_cpu_only() -> None:
    ladder = OomLadder(num_ctx=2048)
    event = ladder.record_oom(0.0, OomKind.GPU)
    assert event is not None and (event.step, event.options) == (OomStep.CPU_ONLY, {"num_gpu": 0})


def test_the_layer_count_is_learned_from_the_server_log() -> None:
    ladder = OomLadder(num_ctx=2048)
    assert ladder.report_log_line(0.0, "load_tensors: offloaded 29/29 layers to GPU") is None
    assert ladder.gpu_layers == 29
    event = ladder.report_log_line(1.0, "CUDA error: out of memory")
    assert event is not None and (event.step, event.options) == (OomStep.FEWER_GPU_LAYERS, {"num_gpu": 14})
    # With our own num_gpu in force, the log reports our choice; it is not the model's layer count.
    assert ladder.report_log_line(2.0, "load_tensors: offloaded 14/29 layers to GPU") is None
    assert ladder.gpu_layers == 29


def test_non_oom_errors_change_nothing() -> None:
    ladder = OomLadder()
    assert ladder.report_error(0.0, "model 'x' not found") is None
    assert (ladder.level, ladder.options, ladder.cloud_fallback) == (0, {}, False)


# --- Climbing back --------------------------------------------------------------------------------


def test_steps_back_up_one_rung_per_quiet_period() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33, recover_after_seconds=600)
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        ladder.report_error(now, CUDA_OOM)
    assert ladder.level == 5

    ups = []
    now = 40.0
    while ladder.level:
        assert ladder.tick(now + 599, memory_ok=True) is None  # not quiet long enough yet
        now += 600
        event = ladder.tick(now, memory_ok=True)
        assert event is not None and event.move is LadderMove.UP and event.title == "Memory is fine again"
        ups.append((now, event.step, event.level, event.options, event.cloud_fallback, event.message))
    assert ups == [
        (640.0, OomStep.CLOUD_FALLBACK, 4, {"num_ctx": 2048, "num_gpu": 0}, False, "Back to the local model"),
        (1240.0, OomStep.CPU_ONLY, 3, {"num_ctx": 2048, "num_gpu": 16}, False, "Back to 16 layers on the GPU"),
        (1840.0, OomStep.FEWER_GPU_LAYERS, 2, {"num_ctx": 2048}, False, "GPU layers back to automatic"),
        (2440.0, OomStep.SMALLER_CONTEXT, 1, {"num_ctx": 4096}, False, "Context window back to 4096 tokens"),
        (3040.0, OomStep.SMALLER_CONTEXT, 0, {}, False, "Context window back to 8192 tokens"),
    ]
    assert ladder.current == OomSettings()
    assert ladder.tick(10_000.0) is None


def test_memory_pressure_restarts_the_quiet_period() -> None:
    ladder = OomLadder(num_ctx=4096, recover_after_seconds=600)
    ladder.report_error(0.0, CUDA_OOM)
    assert ladder.tick(500.0, memory_ok=False) is None
    assert ladder.tick(1000.0, memory_ok=True) is None  # only 500 s since the pressure
    event = ladder.tick(1100.0, memory_ok=True)
    assert event is not None and event.options == {}


def test_an_oom_right_after_climbing_doubles_the_wait() -> None:
    ladder = OomLadder(num_ctx=4096, recover_after_seconds=600, max_recover_after_seconds=1500)
    ladder.report_error(0.0, CUDA_OOM)
    assert ladder.tick(600.0) is not None and ladder.level == 0
    ladder.report_error(700.0, CUDA_OOM)  # 100 s after climbing: the workload does not fit
    assert (ladder.level, ladder.recover_after) == (1, 1200.0)
    assert ladder.tick(1300.0) is None
    assert ladder.tick(1900.0) is not None and ladder.level == 0
    ladder.report_error(2000.0, CUDA_OOM)
    assert ladder.recover_after == 1500.0  # capped
    assert ladder.tick(3500.0) is not None
    # A full quiet period at normal forgets the bouncing.
    assert ladder.tick(5000.0) is None
    assert ladder.recover_after == 600.0


def test_reset_returns_to_normal_at_once() -> None:
    ladder = OomLadder(num_ctx=8192)
    ladder.report_error(0.0, CUDA_OOM)
    ladder.reset()
    assert (ladder.level, ladder.options, ladder.cloud_fallback) == (0, {}, False)
