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
``settle_seconds`` of the last step down count as that same failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum


class OomKind(StrEnum):
    SYSTEM = "system"  # host RAM
    GPU = "gpu"  # device memory (VRAM, or Metal's share of unified memory)
    UNKNOWN = "unknown"


# First match wins, so specific patterns come before the generic "out of memory".
_OOM_PATTERNS: tuple[tuple[re.Pattern[str], OomKind], ...] = (
    # Ollama <= ~0.2x (and its v0.20 eviction variant), returned as HTTP 500.
    (re.compile(r"model requires more system memory", re.I), OomKind.SYSTEM),
    # Go runtime in serve or the runner.
    (re.compile(r"runtime: out of memory", re.I), OomKind.SYSTEM),
    # ggml CUDA/ROCm: "cudaMalloc failed: out of memory", "hipMalloc failed: ...".
    (re.compile(r"\b(?:cuda|hip)Malloc(?:Async|Host)? failed", re.I), OomKind.GPU),
    (re.compile(r"\b(?:CUDA|HIP|ROCm) error: out of memory", re.I), OomKind.GPU),
    # Vulkan (ErrorOutOfHostMemory / ErrorOutOfDeviceMemory) and Metal (...CallbackErrorOutOfMemory).
    (re.compile(r"ErrorOutOfHostMemory"), OomKind.SYSTEM),
    (re.compile(r"ErrorOutOf(?:Device|Pool)?Memory"), OomKind.GPU),
    # ggml allocators: "unable to allocate CPU buffer", "failed to allocate CUDA0 buffer of size N".
    (re.compile(r"(?:failed|unable) to allocate (?:a )?CPU(?:_\w+)? buffer", re.I), OomKind.SYSTEM),
    (re.compile(r"cpu_buffer_type_alloc_buffer: failed to allocate", re.I), OomKind.SYSTEM),
    (re.compile(r"(?:failed|unable) to allocate (?:a )?\w+ buffer", re.I), OomKind.GPU),
    # Ollama >= 0.30 wraps the runner's own message, which may say more (matched above).
    (re.compile(r"llama-server reported out-of-memory", re.I), OomKind.UNKNOWN),
    (re.compile(r"\bout[ _-]?of[ _-]?memory\b", re.I), OomKind.UNKNOWN),
)

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU", re.I)


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
    for pattern, kind in _OOM_PATTERNS:
        if pattern.search(text):
            return kind
    return None


def is_oom(text: str) -> bool:
    """True when ``text`` (an API error or a server-log line) reports running out of memory."""
    return classify_oom(text) is not None


def offloaded_layers(line: str) -> int | None:
    """Layers on the GPU from a server-log line like ``offloaded 33/33 layers to GPU``.

    >>> offloaded_layers("load_tensors: offloaded 29/33 layers to GPU")
    29
    """
    match = _OFFLOADED.search(line)
    return int(match.group(1)) if match else None


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
    log by :meth:`report_log_line` when not given).
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
        """An API error string; steps down when it is an OOM."""
        kind = classify_oom(text)
        return None if kind is None else self.record_oom(now, kind)

    def report_log_line(self, now: float, line: str) -> OomEvent | None:
        """A server-log line; learns the offloaded layer count, steps down on an OOM."""
        layers = offloaded_layers(line)
        if layers is not None and self.current.num_gpu is None:
            self.gpu_layers = layers
            return None
        return self.report_error(now, line)

    def record_oom(self, now: float, kind: OomKind = OomKind.UNKNOWN) -> OomEvent | None:
        """An out-of-memory failure happened: take the next rung (unless it is the same failure)."""
        self._quiet_since = now
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
