"""OOM recognition, where each rung acts, and the degrade/recover ladder, with a scripted clock."""

from __future__ import annotations

import pytest

from standin import standin_status
from tray.core.ollama_env import GPU_OFF_ENV
from tray.core.oom import (
    OLLAMA_OOM_SUBSTRINGS,
    RECOVERABLE_SUBSTRINGS,
    LadderMove,
    OomKind,
    OomLadder,
    OomLogScanner,
    OomSettings,
    OomSituation,
    OomStep,
    Place,
    classify_oom,
    describe_move,
    is_oom,
    is_recoverable_oom,
    offloaded_layers,
    oom_targets,
    route,
)
from tray.system.host import host_for
from tray.system.ollama_app import app_os_for

# --- Recognition ----------------------------------------------------------------------------------


def test_the_substrings_are_ollamas_own_list_as_the_stand_in_has_it() -> None:
    # The stand-in copies llm/status.go of v0.33 on its own; the two copies must agree.
    assert OLLAMA_OOM_SUBSTRINGS == standin_status.OUT_OF_MEMORY_SUBSTRINGS
    assert RECOVERABLE_SUBSTRINGS == standin_status.RECOVERABLE_OUT_OF_MEMORY_SUBSTRINGS


@pytest.mark.parametrize("needle", OLLAMA_OOM_SUBSTRINGS)
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title])
def test_every_substring_of_ollamas_list_is_an_oom_in_any_case(needle: str, case) -> None:
    text = f"llama_init_from_model: {case(needle)} (while loading)"
    assert is_oom(text) is True
    assert classify_oom(text) is not None


# Current messages (Ollama v0.33 and the runners it starts), and what they say about the memory.
CURRENT_MESSAGES = [
    # ggml CUDA / ROCm, wrapped by llama-server's startup check (llm/llama_server.go).
    (
        "llama-server reported out-of-memory during startup: ggml_backend_cuda_buffer_type_alloc_buffer: "
        "allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory",
        OomKind.GPU,
    ),
    ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 512.00 MiB on device 0: hipMalloc failed", OomKind.GPU),
    ("CUDA error: out of memory", OomKind.GPU),
    ("ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824", OomKind.GPU),
    ("ggml_gallocr_reserve_n: failed to allocate ROCm0 buffer of size 1073741824", OomKind.GPU),
    # MLX checks the model against the GPU's free memory (x/mlxrunner/client.go).
    ("model requires 9.1 GiB but only 6.0 GiB are available (after 512.0 MiB overhead)", OomKind.GPU),
    ("unable to load full model on GPU", OomKind.GPU),  # llm.ErrLoadRequiredFull
    # ... and the line the scheduler logs for it.
    ('level=INFO source=sched.go:632 msg="model is too large for system memory" requireFull=false', OomKind.SYSTEM),
    # Metal.
    ("error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)", OomKind.GPU),
    # Vulkan: device vs host memory, in vulkan.hpp's words and the C enum's.
    ("ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory", OomKind.GPU),
    ("ggml_vulkan: vk::Device::allocateMemory: VK_ERROR_OUT_OF_DEVICE_MEMORY", OomKind.GPU),
    ("llama_model_load: error loading model: unable to allocate Vulkan0 buffer", OomKind.GPU),
    (
        "llama_model_load: error loading model: MapViewOfFile failed: "
        "Not enough memory resources are available to process this command.",
        OomKind.UNKNOWN,
    ),
    (
        "an error was encountered while running the model: CUDA error: out of memory\n"
        "  current device: 0, in function ggml_backend_cuda_graph_compute at ggml/src/ggml-cuda/ggml-cuda.cu:2773",
        OomKind.GPU,
    ),
    ("vkAllocateMemory failed: VK_ERROR_OUT_OF_DEVICE_MEMORY", OomKind.GPU),
    ("ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfHostMemory", OomKind.SYSTEM),
    ("vkAllocateMemory failed: VK_ERROR_OUT_OF_HOST_MEMORY", OomKind.SYSTEM),
    # CPU buffer vs device buffer.
    ("llama_model_load: error loading model: unable to allocate CPU buffer", OomKind.SYSTEM),
    ("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592", OomKind.SYSTEM),
    ("fatal error: runtime: out of memory", OomKind.SYSTEM),
    # Words that tell no kind.
    ("llama_init_from_model: compute buffer allocation failed", OomKind.UNKNOWN),
    ("failed to allocate compute pp buffers", OomKind.UNKNOWN),
    ("insufficient memory - required allocations: {InputWeights:0 CPU:[...] GPUs:[...]}", OomKind.UNKNOWN),
    ("ggml_aligned_malloc: not enough memory to allocate 4096 MiB", OomKind.UNKNOWN),
    ("llama-server reported out-of-memory during startup: exit status 1", OomKind.UNKNOWN),
    # Ollama <= ~0.2x (the integration tests still match it), returned as HTTP 500.
    (
        "Error: 500 Internal Server Error: model requires more system memory (8.1 GiB) than is available (4.0 GiB)",
        OomKind.SYSTEM,
    ),
    ("model requires more system memory than is currently available", OomKind.SYSTEM),
]


@pytest.mark.parametrize(("text", "kind"), CURRENT_MESSAGES)
def test_oom_errors_are_recognised_with_their_kind(text: str, kind: OomKind) -> None:
    assert classify_oom(text) is kind
    assert is_oom(text) is True


@pytest.mark.parametrize(
    "text",
    [
        # A runner dying is not proof of an OOM: it also covers crashes.
        "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
        "check ollama server logs for details",
        "llama-server process has terminated: exit status 2",
        "model 'uncensored-llama3' not found",
        "server busy, please try again.  maximum pending requests exceeded",
        "digest mismatch, file must be downloaded again",
        '[GIN] 2025/04/03 - 22:48:12 | 200 |      28.1µs |       127.0.0.1 | HEAD     "/"',
        'memory.available="[7.5 GiB]" memory.required.full="4.9 GiB"',
        'level=INFO source=sched.go:613 msg="system memory" total="31.0 GiB" free="20.2 GiB" free_swap="2.0 GiB"',
    ],
)
def test_other_errors_are_not_oom(text: str) -> None:
    assert classify_oom(text) is None
    assert is_oom(text) is False


def test_offloaded_layers_from_the_server_log() -> None:
    assert offloaded_layers("llm_load_tensors: offloaded 33/33 layers to GPU") == 33
    assert offloaded_layers("load_tensors: offloaded 20/29 layers to GPU") == 20
    assert offloaded_layers("Listening on 127.0.0.1:11434") is None


# --- The recoverable sequence ---------------------------------------------------------------------

# What llama.cpp writes when its first compute-buffer reservation fails and it retries (Ollama waits).
RECOVERABLE_LINES = [
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1024.00 MiB on device 0: cudaMalloc failed: out of memory",
    "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824",
    "graph_reserve: failed to allocate compute buffers",
    "llama_context: compute buffer allocation failed, retrying without pipeline parallelism",
]
# The retry failing as well, then Ollama's verdict.
FAILED_RETRY_LINES = [
    "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824",
    "llama_init_from_model: failed to allocate compute pp buffers",
    'time=2026-08-01T10:00:02.000Z level=INFO source=sched.go:643 msg="Load failed" model=/m/blobs/sha256-ab '
    'error="llama-server reported out-of-memory during startup: llama_init_from_model: failed to allocate compute pp '
    'buffers"',
]


def test_the_recoverable_message_is_judged_by_its_last_line_as_ollama_does() -> None:
    assert is_recoverable_oom("\n".join(RECOVERABLE_LINES)) is True
    assert is_recoverable_oom("\n".join(RECOVERABLE_LINES + FAILED_RETRY_LINES)) is False
    assert is_recoverable_oom("retrying without pipeline parallelism") is False  # the retry alone is no OOM
    # A log line quoting the message: its last escaped line decides, as the message's last line would.
    quoted = 'level=INFO source=sched.go:641 msg="Load failed" error="llama-server reported out-of-memory: {}"'
    assert is_recoverable_oom(quoted.format(r"cudaMalloc failed\nllama_context: " + RECOVERABLE_LINES[-1][15:]))
    assert not is_recoverable_oom(quoted.format(RECOVERABLE_LINES[-1] + r"\nfailed to allocate compute pp buffers"))
    # The scheduler's own retry of a failed load (server/sched.go).
    assert is_recoverable_oom(
        'level=WARN source=sched.go:652 msg="llama-server load failed; reducing automatic context and retrying once" '
        'error="llama-server reported out-of-memory during startup: cudaMalloc failed: out of memory"'
    )


def test_the_recoverable_sequence_as_one_api_message_does_not_step_the_ladder() -> None:
    ladder = OomLadder(num_ctx=8192)
    assert ladder.report_error(0.0, "\n".join(RECOVERABLE_LINES)) is None
    assert ladder.level == 0
    event = ladder.report_error(10.0, "\n".join(RECOVERABLE_LINES + FAILED_RETRY_LINES))
    assert event is not None and event.level == 1


def feed_batches(ladder: OomLadder, batches: list[list[str]], start: float = 100.0, every: float = 2.0):
    """Feed each batch at its own tick, then two empty ticks; the moves made, in order."""
    moves = []
    now = start
    for batch in [*batches, [], []]:
        moves.extend(ladder.report_log_lines(now, batch))
        now += every
    return moves


def test_the_recoverable_sequence_in_one_batch_of_log_lines_does_not_step_the_ladder() -> None:
    ladder = OomLadder(num_ctx=8192)
    assert feed_batches(ladder, [RECOVERABLE_LINES]) == []
    assert ladder.level == 0


@pytest.mark.parametrize("split", range(1, len(RECOVERABLE_LINES)))
def test_the_recoverable_sequence_split_over_two_ticks_does_not_step_the_ladder(split: int) -> None:
    ladder = OomLadder(num_ctx=8192)
    assert feed_batches(ladder, [RECOVERABLE_LINES[:split], RECOVERABLE_LINES[split:]]) == []
    assert ladder.level == 0


def test_other_lines_between_the_failure_and_the_retry_change_nothing() -> None:
    ladder = OomLadder(num_ctx=8192)
    gin = '[GIN] 2026/08/01 - 10:00:01 | 200 |      28.1µs |       127.0.0.1 | GET      "/api/tags"'
    assert feed_batches(ladder, [[*RECOVERABLE_LINES[:3], gin], [gin, RECOVERABLE_LINES[3]]]) == []


def test_a_failed_retry_after_the_recoverable_sequence_steps_once() -> None:
    ladder = OomLadder(num_ctx=8192)
    moves = feed_batches(ladder, [RECOVERABLE_LINES + FAILED_RETRY_LINES])
    assert [(m.move, m.step, m.kind, m.after.num_ctx) for m in moves] == [
        (LadderMove.DOWN, OomStep.SMALLER_CONTEXT, OomKind.GPU, 4096)
    ]


def test_a_failure_is_reported_one_tick_after_it_is_read_with_the_time_it_was_read() -> None:
    scanner = OomLogScanner()
    assert scanner.feed(100.0, FAILED_RETRY_LINES) == []  # the retry line could still come
    assert scanner.feed(102.0, []) == [(100.0, OomKind.GPU)]
    assert scanner.feed(104.0, []) == []


@pytest.mark.parametrize(("text", "kind"), CURRENT_MESSAGES)
def test_each_current_message_steps_the_ladder_once_from_the_api(text: str, kind: OomKind) -> None:
    ladder = OomLadder(num_ctx=8192)
    first = ladder.report_error(0.0, text)
    assert first is not None and (first.move, first.kind, first.level) == (LadderMove.DOWN, kind, 1)
    assert ladder.report_error(1.0, text) is None  # the same failure, reported again
    assert ladder.level == 1


@pytest.mark.parametrize(("text", "kind"), CURRENT_MESSAGES)
def test_each_current_message_steps_the_ladder_once_from_the_log(text: str, kind: OomKind) -> None:
    ladder = OomLadder(num_ctx=8192)
    moves = feed_batches(ladder, [[text, text]])
    assert [(m.move, m.kind, m.level) for m in moves] == [(LadderMove.DOWN, kind, 1)]


def test_the_api_error_and_the_log_lines_of_one_failure_step_once() -> None:
    ladder = OomLadder(num_ctx=8192, settle_seconds=5)
    assert ladder.report_error(100.0, FAILED_RETRY_LINES[-1]) is not None
    moves = feed_batches(ladder, [FAILED_RETRY_LINES], start=100.0, every=30.0)  # read on the same tick
    assert moves == [] and ladder.level == 1


# --- Where each rung acts -------------------------------------------------------------------------

MANAGER = OomSituation(server="manager", builds_model=False)
MANAGER_BUILDS = OomSituation(server="manager", builds_model=True)
SYSTEMD = OomSituation(server="systemd", builds_model=False)
SYSTEMD_BUILDS = OomSituation(server="systemd", builds_model=True)


def app_env_setter(platform: str) -> tuple[str, ...]:
    """How a user sets a server variable for the Ollama app of ``platform``, as its per-OS module says."""
    app = app_os_for(platform)
    assert app is not None
    return app.env_setter()


MAC_APP_SETTER = app_env_setter("darwin")
WINDOWS_APP_SETTER = app_env_setter("win32")


def test_each_os_says_whether_a_variable_turns_its_gpu_off() -> None:
    assert [host_for(platform).gpu_off_by_env() for platform in ("linux", "darwin", "win32")] == [True, False, True]
    assert app_os_for("linux") is None  # no app, so no way to set its variables


@pytest.mark.parametrize(
    ("setting", "value", "situation", "place"),
    [
        ("num_ctx", 2048, MANAGER, Place.SERVER_ENV),
        ("num_ctx", 2048, MANAGER_BUILDS, Place.SERVER_ENV),  # one variable reaches every model
        # ... except a model whose Modelfile sets num_ctx itself: that outranks OLLAMA_CONTEXT_LENGTH.
        (
            "num_ctx",
            2048,
            OomSituation(builds_model=True, modelfile_parameters=frozenset({"num_ctx"})),
            Place.MODEL_PARAMETER,
        ),
        ("num_ctx", 2048, SYSTEMD_BUILDS, Place.MODEL_PARAMETER),
        ("num_ctx", 2048, SYSTEMD, Place.SUGGESTION),
        ("num_ctx", 2048, OomSituation(server="ollama-app"), Place.SUGGESTION),
        ("num_ctx", 2048, OomSituation(server="external"), Place.SUGGESTION),
        ("num_gpu", 16, MANAGER_BUILDS, Place.MODEL_PARAMETER),
        ("num_gpu", 16, SYSTEMD_BUILDS, Place.MODEL_PARAMETER),
        ("num_gpu", 0, MANAGER_BUILDS, Place.MODEL_PARAMETER),  # one model, every platform, no restart
        ("num_gpu", 0, MANAGER, Place.SERVER_ENV),
        ("num_gpu", 0, OomSituation(server="manager", gpu_off_env=False), Place.SUGGESTION),  # Metal: no variable
        ("num_gpu", 0, SYSTEMD, Place.SUGGESTION),
    ],
)
def test_each_setting_acts_where_it_has_effect(setting: str, value: int, situation: OomSituation, place: Place) -> None:
    assert route(setting, value, situation) is place


def test_targets_put_each_override_in_its_place() -> None:
    settings = OomSettings(num_ctx=2048, num_gpu=0)
    assert oom_targets(settings, MANAGER).server_env == {"OLLAMA_CONTEXT_LENGTH": "2048", **GPU_OFF_ENV}
    assert oom_targets(settings, MANAGER).model_parameters == {}
    builds = oom_targets(settings, MANAGER_BUILDS)
    assert (builds.server_env, builds.model_parameters) == ({"OLLAMA_CONTEXT_LENGTH": "2048"}, {"num_gpu": 0})
    assert oom_targets(settings, SYSTEMD_BUILDS).model_parameters == {"num_ctx": 2048, "num_gpu": 0}
    external = oom_targets(settings, SYSTEMD)
    assert (external.server_env, external.model_parameters) == ({}, {})
    assert external.suggested == {"num_ctx": 2048, "num_gpu": 0}
    assert oom_targets(OomSettings(), MANAGER).server_env == {}


def test_cpu_only_hides_every_gpu_ollama_can_use() -> None:
    assert dict(GPU_OFF_ENV) == {
        "CUDA_VISIBLE_DEVICES": "-1",
        "HIP_VISIBLE_DEVICES": "-1",
        "ROCR_VISIBLE_DEVICES": "-1",
        "GPU_DEVICE_ORDINAL": "-1",
        "GGML_VK_VISIBLE_DEVICES": "-1",
        "OLLAMA_VULKAN": "0",
    }


SMALLER = (OomStep.SMALLER_CONTEXT, OomSettings(), OomSettings(num_ctx=2048))


@pytest.mark.parametrize(
    ("situation", "place", "message", "done"),
    [
        (
            MANAGER,
            Place.SERVER_ENV,
            "Ollama ran out of memory: Ollama restarts with OLLAMA_CONTEXT_LENGTH=2048 as soon as nothing runs on it",
            "Context window reduced to 2048 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=2048",
        ),
        (
            SYSTEMD_BUILDS,
            Place.MODEL_PARAMETER,
            "Ollama ran out of memory: rebuilding uncensored-llama3 with PARAMETER num_ctx 2048",
            "Context window reduced to 2048 tokens: uncensored-llama3 rebuilt with PARAMETER num_ctx 2048",
        ),
        (
            SYSTEMD,
            Place.SUGGESTION,
            "Ollama ran out of memory. The systemd service ollama.service keeps its own settings: to use a context "
            "window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
            "(sudo systemctl edit ollama, then sudo systemctl restart ollama)",
            "",
        ),
        (
            OomSituation(server="systemd", systemd_unit="ollama.service", systemd_user=True),
            Place.SUGGESTION,
            "Ollama ran out of memory. The systemd service ollama.service keeps its own settings: to use a context "
            "window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
            "(systemctl --user edit ollama, then systemctl --user restart ollama)",
            "",
        ),
        (
            OomSituation(server="ollama-app", app_env_setter=MAC_APP_SETTER),
            Place.SUGGESTION,
            "Ollama ran out of memory. The Ollama app keeps its own settings: to use a context window of 2048 tokens, "
            "set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
            "(launchctl setenv OLLAMA_CONTEXT_LENGTH 2048, then quit and reopen Ollama)",
            "",
        ),
        (
            OomSituation(server="ollama-app", app_env_setter=WINDOWS_APP_SETTER),
            Place.SUGGESTION,
            "Ollama ran out of memory. The Ollama app keeps its own settings: to use a context window of 2048 tokens, "
            "set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
            "(setx OLLAMA_CONTEXT_LENGTH 2048, then quit and reopen Ollama)",
            "",
        ),
        (
            OomSituation(server="external"),
            Place.SUGGESTION,
            "Ollama ran out of memory. This Ollama was started outside the manager, which cannot change its settings: "
            "to use a context window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
            "(where you start ollama serve, then restart it)",
            "",
        ),
    ],
)
def test_a_smaller_context_is_described_where_it_acts(situation, place, message, done) -> None:
    text = describe_move(LadderMove.DOWN, *SMALLER, situation)
    assert (text.place, text.message, text.done_message) == (place, message, done)
    assert "retrying" not in text.message.lower()


def test_the_gpu_rungs_are_described_where_they_act() -> None:
    cpu = (OomStep.CPU_ONLY, OomSettings(num_ctx=2048), OomSettings(num_ctx=2048, num_gpu=0))
    env = describe_move(LadderMove.DOWN, *cpu, MANAGER)
    assert env.done_message == (
        "Running on the CPU only (slower): Ollama restarted with CUDA_VISIBLE_DEVICES=-1 HIP_VISIBLE_DEVICES=-1 "
        "ROCR_VISIBLE_DEVICES=-1 GPU_DEVICE_ORDINAL=-1 GGML_VK_VISIBLE_DEVICES=-1 OLLAMA_VULKAN=0"
    )
    model = describe_move(LadderMove.DOWN, *cpu, MANAGER_BUILDS)
    assert model.done_message == "Running on the CPU only (slower): uncensored-llama3 rebuilt with PARAMETER num_gpu 0"
    metal = describe_move(LadderMove.DOWN, *cpu, OomSituation(server="manager", gpu_off_env=False, model="llama3"))
    assert metal.message == (
        "Ollama ran out of memory. Metal has no setting that turns the GPU off, and the manager does not build llama3: "
        "to run on the CPU only, add PARAMETER num_gpu 0 to the Modelfile of llama3 and create it again "
        "(ollama create llama3 -f Modelfile)"
    )
    fewer = (OomStep.FEWER_GPU_LAYERS, OomSettings(num_ctx=2048), OomSettings(num_ctx=2048, num_gpu=16))
    assert describe_move(LadderMove.DOWN, *fewer, MANAGER_BUILDS, layers=33).done_message == (
        "16 of 33 layers on the GPU: uncensored-llama3 rebuilt with PARAMETER num_gpu 16"
    )


def test_climbing_back_is_described_where_it_acts() -> None:
    back = (OomStep.SMALLER_CONTEXT, OomSettings(num_ctx=2048), OomSettings())
    assert describe_move(LadderMove.UP, *back, MANAGER).done_message == (
        "Context window back to normal: Ollama restarted without OLLAMA_CONTEXT_LENGTH=2048"
    )
    assert describe_move(LadderMove.UP, *back, SYSTEMD_BUILDS).done_message == (
        "Context window back to normal: uncensored-llama3 rebuilt without PARAMETER num_ctx 2048"
    )
    halfway = (OomStep.SMALLER_CONTEXT, OomSettings(num_ctx=2048), OomSettings(num_ctx=4096))
    assert describe_move(LadderMove.UP, *halfway, MANAGER).done_message == (
        "Context window back to 4096 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=4096"
    )
    suggested = describe_move(LadderMove.UP, *back, SYSTEMD)
    assert (suggested.place, suggested.done_message) == (Place.SUGGESTION, "")
    assert suggested.message == (
        "Memory has been fine for a while: if you made the change suggested after the out-of-memory error "
        "(PARAMETER num_ctx 2048), you can undo it now"
    )


def test_the_cloud_rung_says_whether_the_cloud_fallback_is_on() -> None:
    cloud = (OomStep.CLOUD_FALLBACK, OomSettings(num_ctx=2048), OomSettings(num_ctx=2048, cloud_fallback=True))
    on = describe_move(LadderMove.DOWN, *cloud, OomSituation(cloud_enabled=True))
    assert (on.place, on.message) == (
        Place.CLOUD,
        "Ollama keeps running out of memory: using the cloud fallback until memory frees up",
    )
    off = describe_move(LadderMove.DOWN, *cloud, OomSituation(cloud_enabled=False))
    assert "turn on the cloud fallback" in off.message and "using the cloud" not in off.message


# --- Walking down ---------------------------------------------------------------------------------

CUDA_OOM = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory"
)


def test_each_oom_takes_one_rung_down() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33, situation=MANAGER_BUILDS)
    assert (ladder.level, ladder.current, ladder.cloud_fallback) == (0, OomSettings(), False)

    steps = []
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        event = ladder.report_error(now, CUDA_OOM)
        assert event is not None and event.move is LadderMove.DOWN and event.at == now
        steps.append((event.step, event.level, event.after, event.place, event.change))
    assert steps == [
        (OomStep.SMALLER_CONTEXT, 1, OomSettings(num_ctx=4096), Place.SERVER_ENV, "OLLAMA_CONTEXT_LENGTH=4096"),
        (OomStep.SMALLER_CONTEXT, 2, OomSettings(num_ctx=2048), Place.SERVER_ENV, "OLLAMA_CONTEXT_LENGTH=2048"),
        (
            OomStep.FEWER_GPU_LAYERS,
            3,
            OomSettings(num_ctx=2048, num_gpu=16),
            Place.MODEL_PARAMETER,
            "PARAMETER num_gpu 16",
        ),
        (OomStep.CPU_ONLY, 4, OomSettings(num_ctx=2048, num_gpu=0), Place.MODEL_PARAMETER, "PARAMETER num_gpu 0"),
        (
            OomStep.CLOUD_FALLBACK,
            5,
            OomSettings(num_ctx=2048, num_gpu=0, cloud_fallback=True),
            Place.CLOUD,
            "cloud fallback on",
        ),
    ]
    assert ladder.report_error(50.0, CUDA_OOM) is None  # the bottom: nothing further to give up
    assert ladder.targets.server_env == {"OLLAMA_CONTEXT_LENGTH": "2048"}
    assert ladder.targets.model_parameters == {"num_gpu": 0}
    assert ladder.cloud_fallback is True


def test_fewer_gpu_layers_is_skipped_where_only_a_variable_can_act() -> None:
    ladder = OomLadder(num_ctx=2048, gpu_layers=33, situation=MANAGER)
    event = ladder.record_oom(0.0, OomKind.GPU)
    assert event is not None and (event.step, event.after, event.place) == (
        OomStep.CPU_ONLY,
        OomSettings(num_gpu=0),
        Place.SERVER_ENV,
    )


def test_lines_of_one_failure_take_a_single_rung() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33, settle_seconds=5)
    first = ladder.report_error(100.0, CUDA_OOM)
    assert first is not None and first.after == OomSettings(num_ctx=4096)
    assert ladder.report_error(100.2, "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1") is None
    assert ladder.report_error(101.0, "llama-server reported out-of-memory during startup: exit status 1") is None
    assert ladder.level == 1
    second = ladder.report_error(105.0, CUDA_OOM)  # settle time over: a new failure
    assert second is not None and second.after == OomSettings(num_ctx=2048)


def test_ooms_while_the_last_change_is_carried_out_are_the_same_failure() -> None:
    ladder = OomLadder(num_ctx=8192, settle_seconds=5)
    assert ladder.report_error(0.0, CUDA_OOM) is not None
    ladder.awaiting_effect = True  # e.g. the restart waits until nothing runs on the server
    assert ladder.report_error(60.0, CUDA_OOM) is None
    assert ladder.report_error(600.0, CUDA_OOM) is None
    assert ladder.level == 1
    ladder.awaiting_effect = False  # the new setting is in force: a new OOM means it is not enough
    event = ladder.report_error(601.0, CUDA_OOM)
    assert event is not None and event.level == 2


def test_a_system_memory_oom_skips_the_gpu_rungs() -> None:
    ladder = OomLadder(num_ctx=4096, gpu_layers=33, situation=MANAGER_BUILDS)
    text = "model requires more system memory (8.1 GiB) than is available (4.0 GiB)"
    first = ladder.report_error(0.0, text)
    second = ladder.report_error(10.0, text)
    assert first is not None and (first.step, first.after) == (OomStep.SMALLER_CONTEXT, OomSettings(num_ctx=2048))
    assert second is not None and (second.step, second.after) == (
        OomStep.CLOUD_FALLBACK,
        OomSettings(num_ctx=2048, cloud_fallback=True),
    )


def test_without_a_known_layer_count_the_gpu_step_is_cpu_only() -> None:
    ladder = OomLadder(num_ctx=2048, situation=MANAGER_BUILDS)
    event = ladder.record_oom(0.0, OomKind.GPU)
    assert event is not None and (event.step, event.after) == (OomStep.CPU_ONLY, OomSettings(num_gpu=0))


def test_the_layer_count_is_learned_from_the_server_log() -> None:
    ladder = OomLadder(num_ctx=2048, situation=MANAGER_BUILDS)
    assert ladder.report_log_lines(0.0, ["load_tensors: offloaded 29/29 layers to GPU"]) == []
    assert ladder.gpu_layers == 29
    moves = feed_batches(ladder, [["CUDA error: out of memory"]], start=1.0)
    assert [(m.step, m.after) for m in moves] == [(OomStep.FEWER_GPU_LAYERS, OomSettings(num_gpu=14))]
    # With our own num_gpu in force, the log reports our choice; it is not the model's layer count.
    ladder.report_log_lines(20.0, ["load_tensors: offloaded 14/29 layers to GPU"])
    assert ladder.gpu_layers == 29


def test_non_oom_errors_change_nothing() -> None:
    ladder = OomLadder()
    assert ladder.report_error(0.0, "model 'x' not found") is None
    assert (ladder.level, ladder.current) == (0, OomSettings())


# --- Climbing back --------------------------------------------------------------------------------


def test_steps_back_up_one_rung_per_quiet_period() -> None:
    ladder = OomLadder(num_ctx=8192, gpu_layers=33, recover_after_seconds=600, situation=MANAGER_BUILDS)
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        ladder.report_error(now, CUDA_OOM)
    assert ladder.level == 5

    ups = []
    now = 40.0
    while ladder.level:
        assert ladder.tick(now + 599, memory_ok=True) is None  # not quiet long enough yet
        now += 600
        event = ladder.tick(now, memory_ok=True)
        assert event is not None and event.move is LadderMove.UP
        ups.append((now, event.step, event.level, event.after, event.done_message or event.message))
    assert ups == [
        (
            640.0,
            OomStep.CLOUD_FALLBACK,
            4,
            OomSettings(num_ctx=2048, num_gpu=0),
            "Memory is fine again: back to the local model",
        ),
        (
            1240.0,
            OomStep.CPU_ONLY,
            3,
            OomSettings(num_ctx=2048, num_gpu=16),
            "Back to 16 layers on the GPU: uncensored-llama3 rebuilt with PARAMETER num_gpu 16",
        ),
        (
            1840.0,
            OomStep.FEWER_GPU_LAYERS,
            2,
            OomSettings(num_ctx=2048),
            "GPU layers back to automatic: uncensored-llama3 rebuilt without PARAMETER num_gpu 16",
        ),
        (
            2440.0,
            OomStep.SMALLER_CONTEXT,
            1,
            OomSettings(num_ctx=4096),
            "Context window back to 4096 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=4096",
        ),
        (
            3040.0,
            OomStep.SMALLER_CONTEXT,
            0,
            OomSettings(),
            "Context window back to normal: Ollama restarted without OLLAMA_CONTEXT_LENGTH=4096",
        ),
    ]
    assert ladder.current == OomSettings()
    assert ladder.tick(10_000.0) is None


def test_memory_pressure_restarts_the_quiet_period() -> None:
    ladder = OomLadder(num_ctx=4096, recover_after_seconds=600)
    ladder.report_error(0.0, CUDA_OOM)
    assert ladder.tick(500.0, memory_ok=False) is None
    assert ladder.tick(1000.0, memory_ok=True) is None  # only 500 s since the pressure
    event = ladder.tick(1100.0, memory_ok=True)
    assert event is not None and event.after == OomSettings()


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
    ladder.awaiting_effect = True
    ladder.reset()
    assert (ladder.level, ladder.current, ladder.awaiting_effect) == (0, OomSettings(), False)
