"""Out-of-memory handling: recognise Ollama's OOM errors and degrade step by step.

Pure: no I/O; every call that depends on time takes ``now`` (monotonic seconds).

The design notes' "GPU Out of Memory" answer, as a ladder walked one rung
per OOM:

1. a smaller context window: halve ``num_ctx``, down to ``min_num_ctx``
   (each halving is a rung);
2. fewer GPU layers: half of the layers Ollama last offloaded
   (``num_gpu``), when the server log told us how many;
3. CPU only: ``num_gpu = 0``;
4. the cloud fallback.

An OOM of *system* memory (``model requires more system memory``) skips
rungs 2 and 3: moving layers off the GPU puts them in the RAM that is
already short.

After ``recover_after_seconds`` without an OOM (and with memory reported
fine), the ladder climbs back one rung; each further rung waits another
full period. An OOM soon after climbing doubles that period (up to
``max_recover_after_seconds``), so a workload that does not fit does not
bounce between rungs every few minutes.

Several log lines describe one failure (``cudaMalloc failed``, then
``failed to allocate CUDA0 buffer``, then the API error); reports within
``settle_seconds`` of the last step down count as that same failure. An
allocation failure Ollama retries by itself (``... retrying without
pipeline parallelism``) is none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum


class OomKind(StrEnum):
    SYSTEM = "system"  # host RAM
    GPU = "gpu"  # device memory (VRAM, or Metal's share of unified memory)
    UNKNOWN = "unknown"


# Ollama's own test (llm/status.go outOfMemorySubstrings), compared lower-case.
OLLAMA_OOM_SUBSTRINGS = (
    "out of memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "vk_error_out_of_device_memory",
    "erroroutofmemory",
)
# Memory failures in words Ollama's list does not hold: the pre-0.30 load check, MLX's load check
# (x/mlxrunner/client.go), ErrLoadRequiredFull (llm/server.go), Ollama's own wrapper ("out-of-memory"),
# llama.cpp's "unable to allocate CUDA0 buffer", and Vulkan's results as vulkan.hpp names them
# ("ErrorOutOfDeviceMemory", which the list's "erroroutofmemory" misses) or as the C enum does.
_OTHER_OOM = re.compile(
    r"model requires more system memory"
    r"|model requires .+ but only .+ are available"
    r"|unable to load full model on GPU"
    r"|out-of-memory"
    r"|unable to allocate (?:a )?\w+ buffer"
    r"|ErrorOutOf(?:Device|Host|Pool)Memory|VK_ERROR_OUT_OF_HOST_MEMORY|out of host memory",
    re.I,
)
# An allocation failure Ollama recovers from by itself: llama.cpp retries without pipeline parallelism
# (llm/status.go recoverableOutOfMemorySubstrings), and the scheduler retries a failed load once with a
# smaller automatic context or after evicting the other models (server/sched.go).
RECOVERABLE_SUBSTRINGS = (
    "retrying without pipeline parallelism",
    "reducing automatic context and retrying once",
    "evicting all other models and retrying once",
)

# First match wins, so specific patterns come before generic ones.
_KIND_PATTERNS: tuple[tuple[re.Pattern[str], OomKind], ...] = (
    (re.compile(r"model requires more system memory", re.I), OomKind.SYSTEM),
    # MLX checks the model against the GPU's free memory; ErrLoadRequiredFull names the GPU.
    (re.compile(r"model requires .+ but only .+ are available|unable to load full model on GPU", re.I), OomKind.GPU),
    (re.compile(r"runtime: out of memory", re.I), OomKind.SYSTEM),  # Go runtime in serve or the runner
    # ggml CUDA/ROCm: "cudaMalloc failed: out of memory", "hipMalloc failed: ...".
    (re.compile(r"\b(?:cuda|hip)Malloc(?:Async|Host)? failed", re.I), OomKind.GPU),
    (re.compile(r"\b(?:CUDA|HIP|ROCm) error: out of memory", re.I), OomKind.GPU),
    # Vulkan host vs device memory, and Metal's kIOGPUCommandBufferCallbackErrorOutOfMemory.
    (re.compile(r"ErrorOutOfHostMemory|VK_ERROR_OUT_OF_HOST_MEMORY|out of host memory", re.I), OomKind.SYSTEM),
    (
        re.compile(r"ErrorOutOf(?:Device|Pool)?Memory|VK_ERROR_OUT_OF_DEVICE_MEMORY|out of device memory", re.I),
        OomKind.GPU,
    ),
    # ggml allocators: "unable to allocate CPU buffer", "failed to allocate CUDA0 buffer of size N".
    (re.compile(r"(?:failed|unable) to allocate (?:a )?CPU(?:_\w+)? buffer", re.I), OomKind.SYSTEM),
    (re.compile(r"cpu_buffer_type_alloc_buffer: failed to allocate", re.I), OomKind.SYSTEM),
    (re.compile(r"(?:failed|unable) to allocate (?:a )?\w+ buffer", re.I), OomKind.GPU),
)

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU", re.I)


def is_oom(text: str) -> bool:
    """True when ``text`` (an API error or a server-log line) reports running out of memory.

    >>> is_oom("failed to allocate context"), is_oom("model 'x' not found")
    (True, False)
    """
    lower = text.lower()
    return any(needle in lower for needle in OLLAMA_OOM_SUBSTRINGS) or _OTHER_OOM.search(text) is not None


def classify_oom(text: str) -> OomKind | None:
    """The kind of out-of-memory error ``text`` reports, or None when it is not one.

    ``model runner has unexpectedly stopped, this may be due to resource
    limitations`` is deliberately not an OOM: it also covers crashes.

    >>> classify_oom("model requires more system memory (8.1 GiB) than is available (4.0 GiB)")
    <OomKind.SYSTEM: 'system'>
    >>> classify_oom("allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory")
    <OomKind.GPU: 'gpu'>
    >>> classify_oom("model 'x' not found") is None
    True
    """
    if not is_oom(text):
        return None
    for pattern, kind in _KIND_PATTERNS:
        if pattern.search(text):
            return kind
    return OomKind.UNKNOWN


def last_line(text: str) -> str:
    """The last non-empty line of ``text``, stripped."""
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def is_recoverable_oom(text: str) -> bool:
    """True when Ollama retries this allocation failure by itself: its last line says so.

    Ollama's own rule (llm/status.go ``isRecoverableOutOfMemoryMessage``):
    the last non-empty line is an OOM that names the retry.

    >>> is_recoverable_oom("ggml_backend_sched_reserve: compute buffer allocation failed, "
    ...                    "retrying without pipeline parallelism")
    True
    >>> is_recoverable_oom("compute buffer allocation failed, retrying without pipeline parallelism\\n"
    ...                    "failed to allocate compute pp buffers")
    False
    """
    line = last_line(text)
    lower = line.lower()
    return is_oom(line) and any(needle in lower for needle in RECOVERABLE_SUBSTRINGS)


def offloaded_layers(line: str) -> int | None:
    """Layers on the GPU from a server-log line like ``offloaded 33/33 layers to GPU``.

    >>> offloaded_layers("load_tensors: offloaded 29/33 layers to GPU")
    29
    """
    match = _OFFLOADED.search(line)
    return int(match.group(1)) if match else None


@dataclass
class OomLogScanner:
    """Out-of-memory failures in server-log lines read batch by batch, without the recoverable ones.

    The OOM lines of one failure form a run (lines between them that are no
    OOM are ignored, as Ollama's status writer ignores them). A run whose last
    line says Ollama retries (``... allocation failed, retrying without pipeline
    parallelism``) is dropped. The retry line may come in the next batch (the
    log was read between the two writes), so a run is held until the end of
    the batch after the one it started in, then reported once.
    """

    _run: list[OomKind] = field(default_factory=list)
    _run_seen_at: float | None = None
    _run_is_held: bool = False  # started in an earlier batch

    def feed(self, now: float, lines: Iterable[str]) -> list[tuple[float, OomKind]]:
        """One batch of new lines; returns (time first seen, kind) of each failure now known to be real."""
        for line in lines:
            if not line.strip() or not is_oom(line):
                continue
            if is_recoverable_oom(line):
                self._clear()
                continue
            kind = classify_oom(line) or OomKind.UNKNOWN
            if not self._run:
                self._run_seen_at = now
            self._run.append(kind)
        if not self._run:
            return []
        if not self._run_is_held:
            self._run_is_held = True
            return []
        failure = (self._run_seen_at if self._run_seen_at is not None else now, _run_kind(self._run))
        self._clear()
        return [failure]

    def _clear(self) -> None:
        self._run = []
        self._run_seen_at = None
        self._run_is_held = False


def _run_kind(kinds: list[OomKind]) -> OomKind:
    """The kind a run of lines tells: the first line that names system or GPU memory."""
    return next((kind for kind in kinds if kind is not OomKind.UNKNOWN), OomKind.UNKNOWN)



class OomStep(StrEnum):
    SMALLER_CONTEXT = "smaller_context"
    FEWER_GPU_LAYERS = "fewer_gpu_layers"
    CPU_ONLY = "cpu_only"
    CLOUD_FALLBACK = "cloud_fallback"


class LadderMove(StrEnum):
    DOWN = "down"  # degraded after an OOM
    UP = "up"  # restored after memory was fine for a while


@dataclass(frozen=True)
class OomSettings:
    """Overrides in force; ``None`` leaves Ollama's own choice."""

    num_ctx: int | None = None
    num_gpu: int | None = None
    cloud_fallback: bool = False

    def options(self) -> dict[str, int]:
        """Ollama request ``options`` for these overrides."""
        chosen = {"num_ctx": self.num_ctx, "num_gpu": self.num_gpu}
        return {key: value for key, value in chosen.items() if value is not None}


@dataclass(frozen=True)
class OomEvent:
    """One move on the ladder, ready to be shown as a notification."""

    move: LadderMove
    step: OomStep  # the rung taken (down) or undone (up)
    level: int  # rungs below normal after the move
    options: dict[str, int]
    cloud_fallback: bool
    title: str
    message: str
    at: float


def next_rung(
    current: OomSettings, kind: OomKind, base_num_ctx: int, min_num_ctx: int, gpu_layers: int | None
) -> tuple[OomStep, OomSettings] | None:
    """The next step down from ``current``, or None at the bottom.

    >>> next_rung(OomSettings(), OomKind.GPU, 8192, 2048, None)
    (<OomStep.SMALLER_CONTEXT: 'smaller_context'>, OomSettings(num_ctx=4096, num_gpu=None, cloud_fallback=False))
    >>> next_rung(OomSettings(num_ctx=2048), OomKind.GPU, 8192, 2048, 33)[1]
    OomSettings(num_ctx=2048, num_gpu=16, cloud_fallback=False)
    """
    ctx = current.num_ctx if current.num_ctx is not None else base_num_ctx
    if ctx > min_num_ctx:
        return OomStep.SMALLER_CONTEXT, replace(current, num_ctx=max(min_num_ctx, ctx // 2))
    if kind is not OomKind.SYSTEM:
        if current.num_gpu is None and gpu_layers is not None and gpu_layers > 1:
            return OomStep.FEWER_GPU_LAYERS, replace(current, num_gpu=gpu_layers // 2)
        if current.num_gpu != 0:
            return OomStep.CPU_ONLY, replace(current, num_gpu=0)
    if not current.cloud_fallback:
        return OomStep.CLOUD_FALLBACK, replace(current, cloud_fallback=True)
    return None


def _down_message(step: OomStep, before: OomSettings, after: OomSettings, base_num_ctx: int, layers: int | None) -> str:
    if step is OomStep.SMALLER_CONTEXT:
        old = before.num_ctx if before.num_ctx is not None else base_num_ctx
        return f"Retrying with a smaller context window ({old} → {after.num_ctx} tokens)"
    if step is OomStep.FEWER_GPU_LAYERS:
        return f"Retrying with fewer layers on the GPU ({after.num_gpu} instead of {layers})"
    if step is OomStep.CPU_ONLY:
        return "Retrying on the CPU only (slower)"
    return "Using the cloud fallback until memory frees up"


def _up_message(step: OomStep, restored: OomSettings, base_num_ctx: int) -> str:
    if step is OomStep.SMALLER_CONTEXT:
        ctx = restored.num_ctx if restored.num_ctx is not None else base_num_ctx
        return f"Context window back to {ctx} tokens"
    if step is OomStep.FEWER_GPU_LAYERS:
        return "GPU layers back to automatic"
    if step is OomStep.CPU_ONLY:
        return "Using the GPU again" if restored.num_gpu is None else f"Back to {restored.num_gpu} layers on the GPU"
    return "Back to the local model"


@dataclass
class OomLadder:
    """Degrade after each OOM, recover after quiet periods.

    ``num_ctx`` is the context window the model normally runs with;
    ``gpu_layers`` how many layers Ollama offloads (learned from the server
    log by :meth:`report_log_lines` when not given).
    """

    num_ctx: int = 4096
    gpu_layers: int | None = None
    min_num_ctx: int = 2048
    recover_after_seconds: float = 600.0
    max_recover_after_seconds: float = 4 * 3600.0
    settle_seconds: float = 5.0

    current: OomSettings = field(default_factory=OomSettings, init=False)
    _taken: list[tuple[OomStep, OomSettings]] = field(default_factory=list, init=False, repr=False)  # (step, before)
    _quiet_since: float | None = field(default=None, init=False, repr=False)
    _last_down_at: float | None = field(default=None, init=False, repr=False)
    _last_up_at: float | None = field(default=None, init=False, repr=False)
    _recover_after: float | None = field(default=None, init=False, repr=False)
    _scanner: OomLogScanner = field(default_factory=OomLogScanner, init=False, repr=False)

    @property
    def level(self) -> int:
        """Rungs below normal (0 = no overrides)."""
        return len(self._taken)

    @property
    def options(self) -> dict[str, int]:
        """Overrides for Ollama request ``options``, e.g. ``{"num_ctx": 2048, "num_gpu": 0}``."""
        return self.current.options()

    @property
    def cloud_fallback(self) -> bool:
        """True when requests should go to the cloud until memory recovers."""
        return self.current.cloud_fallback

    @property
    def recover_after(self) -> float:
        """Quiet time needed before the next step back up."""
        return self._recover_after if self._recover_after is not None else self.recover_after_seconds

    def report_error(self, now: float, text: str) -> OomEvent | None:
        """An API error string; steps down when it is an OOM Ollama does not recover from by itself."""
        kind = classify_oom(text)
        if kind is None or is_recoverable_oom(text):
            return None
        return self.record_oom(now, kind)

    def report_log_lines(self, now: float, lines: Iterable[str]) -> list[OomEvent]:
        """New server-log lines (call every check, with none too); learns the layer count, steps down on OOMs.

        A failure is reported one batch after its first line, unless a retry
        line shows it recoverable (see :class:`OomLogScanner`).
        """
        batch = list(lines)
        for line in batch:
            layers = offloaded_layers(line)
            if layers is not None and self.current.num_gpu is None:
                self.gpu_layers = layers
        moves = [self.record_oom(seen, kind) for seen, kind in self._scanner.feed(now, batch)]
        return [move for move in moves if move is not None]

    def record_oom(self, now: float, kind: OomKind = OomKind.UNKNOWN) -> OomEvent | None:
        """An out-of-memory failure happened: take the next rung (unless it is the same failure)."""
        self._quiet_since = now if self._quiet_since is None else max(self._quiet_since, now)
        if self._last_down_at is not None and now - self._last_down_at < self.settle_seconds:
            return None
        if self._last_up_at is not None and now - self._last_up_at < self.recover_after:
            self._recover_after = min(self.max_recover_after_seconds, self.recover_after * 2)
        rung = next_rung(self.current, kind, self.num_ctx, self.min_num_ctx, self.gpu_layers)
        if rung is None:
            return None
        step, settings = rung
        before = self.current
        self._taken.append((step, before))
        self.current = settings
        self._last_down_at = now
        message = _down_message(step, before, settings, self.num_ctx, self.gpu_layers)
        return self._event(LadderMove.DOWN, step, "Ollama ran out of memory", message, now)

    def tick(self, now: float, memory_ok: bool = True) -> OomEvent | None:
        """Called every monitor tick; steps back up one rung after a quiet period.

        ``memory_ok=False`` (e.g. a memory alert is active) restarts the quiet period.
        """
        if not memory_ok or self._quiet_since is None:
            self._quiet_since = now
            return None
        if now - self._quiet_since < self.recover_after:
            return None
        self._quiet_since = now
        if not self._taken:
            self._recover_after = None  # a full quiet period at normal: forget earlier bouncing
            return None
        step, restored = self._taken.pop()
        self.current = restored
        self._last_up_at = now
        return self._event(LadderMove.UP, step, "Memory is fine again", _up_message(step, restored, self.num_ctx), now)

    def reset(self) -> None:
        """Back to normal at once (e.g. the user changed the model)."""
        self._taken.clear()
        self.current = OomSettings()
        self._quiet_since = self._last_down_at = self._last_up_at = self._recover_after = None

    def _event(self, move: LadderMove, step: OomStep, title: str, message: str, now: float) -> OomEvent:
        return OomEvent(move, step, self.level, self.options, self.cloud_fallback, title, message, now)
