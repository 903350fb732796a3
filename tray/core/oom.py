"""Out-of-memory handling: recognise Ollama's OOM errors and degrade step by step.

Pure: no I/O; every call that depends on time takes ``now`` (monotonic seconds).

The design notes' "GPU Out of Memory" answer, as a ladder walked one rung
per OOM:

1. a smaller context window: halve ``num_ctx``, down to ``min_num_ctx``
   (each halving is a rung);
2. fewer GPU layers: half of the layers Ollama last offloaded
   (``num_gpu``), when the server log told us how many and the manager
   builds the model (only a Modelfile ``PARAMETER`` can hold it);
3. CPU only: ``num_gpu = 0``;
4. the cloud fallback.

An OOM of *system* memory (``model requires more system memory``) skips
rungs 2 and 3: moving layers off the GPU puts them in the RAM that is
already short.

A rung is a setting, never a per-request option (a request whose runner
options differ from the loaded model's makes Ollama reload it). Where the
setting acts is decided by :func:`route` from the :class:`OomSituation`:

| setting           | first choice                      | then                               | else         |
|-------------------|-----------------------------------|------------------------------------|--------------|
| context num_ctx   | a manager-started server:         | the Modelfile model the manager    | suggest the  |
|                   | ``OLLAMA_CONTEXT_LENGTH=N``       | builds: ``PARAMETER num_ctx N``    | variable     |
| GPU num_gpu       | the Modelfile model:              | CPU only, on a manager-started     | suggest the  |
|                   | ``PARAMETER num_gpu N`` (one      | server: every GPU-off variable     | PARAMETER    |
|                   | model, every platform, no restart)| (not macOS: Metal has none)        |              |

A Modelfile ``PARAMETER num_ctx`` outranks ``OLLAMA_CONTEXT_LENGTH``, so a
model the manager builds with its own ``num_ctx`` gets the PARAMETER.
:func:`oom_targets` turns the settings in force into what each place
should hold; the monitor carries that out (a restart once nothing runs on
the server, a rebuild) and reports it once done.

After ``recover_after_seconds`` without an OOM (and with memory reported
fine), the ladder climbs back one rung; each further rung waits another
full period. An OOM soon after climbing doubles that period (up to
``max_recover_after_seconds``), so a workload that does not fit does not
bounce between rungs every few minutes.

Several log lines describe one failure (``cudaMalloc failed``, then
``failed to allocate CUDA0 buffer``, then the API error); reports within
``settle_seconds`` of the last step down count as that same failure, and
so does every report while the last step's change is still being carried
out (:attr:`OomLadder.awaiting_effect`). An allocation failure Ollama
retries by itself (``... retrying without pipeline parallelism``) is none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tray.core.ollama_env import CONTEXT_VARIABLE, GPU_OFF_ENV


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
# (x/mlxrunner/client.go), ErrLoadRequiredFull (llm/server.go) with the line the scheduler logs for it
# (server/sched.go), Ollama's own wrapper ("out-of-memory"), llama.cpp's "unable to allocate CUDA0
# buffer", and Vulkan's results as vulkan.hpp names them ("ErrorOutOfDeviceMemory", which the list's
# "erroroutofmemory" misses) or as the C enum does.
_OTHER_OOM = re.compile(
    r"model requires more system memory"
    r"|model is too large for system memory"
    r"|model requires .+ but only .+ are available"
    r"|unable to load full model on GPU"
    r"|out-of-memory"
    r"|unable to allocate (?:a )?\w+ buffer"
    r"|ErrorOutOf(?:Device|Host|Pool)Memory|VK_ERROR_OUT_OF_HOST_MEMORY|out of host memory",
    re.I,
)
# An allocation failure Ollama recovers from by itself: llama.cpp retries without pipeline parallelism
# (llm/status.go recoverableOutOfMemorySubstrings) ...
RECOVERABLE_SUBSTRINGS = ("retrying without pipeline parallelism",)
# ... and the scheduler's notices that it retries a failed load once, with a smaller automatic context
# or after evicting the other models (server/sched.go); a failed retry logs "Load failed" again.
SCHEDULER_RETRIES = (
    "reducing automatic context and retrying once",
    "evicting all other models and retrying once",
)
# A message quoted in a log line (slog's error="...") keeps its newlines as the two characters \n.
_ESCAPED_NEWLINE = re.compile(r"\\n")

# First match wins, so specific patterns come before generic ones.
_KIND_PATTERNS: tuple[tuple[re.Pattern[str], OomKind], ...] = (
    (re.compile(r"model requires more system memory|model is too large for system memory", re.I), OomKind.SYSTEM),
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
    the last non-empty line is an OOM that names the retry; in a log line
    quoting a message, its last (escaped) line. The scheduler's notice that
    it retries a load once counts as well.

    >>> is_recoverable_oom("ggml_backend_sched_reserve: compute buffer allocation failed, "
    ...                    "retrying without pipeline parallelism")
    True
    >>> is_recoverable_oom("compute buffer allocation failed, retrying without pipeline parallelism\\n"
    ...                    "failed to allocate compute pp buffers")
    False
    """
    line = last_line(text)
    if not is_oom(line):
        return False
    if any(needle in line.lower() for needle in SCHEDULER_RETRIES):
        return True
    tail = _ESCAPED_NEWLINE.split(line)[-1]
    return is_oom(tail) and any(needle in tail.lower() for needle in RECOVERABLE_SUBSTRINGS)


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


# --- Where each setting acts ----------------------------------------------------------------------------


class Place(StrEnum):
    """Where a rung's setting takes effect."""

    SERVER_ENV = "server_env"  # the environment of the next start of a server the manager started
    MODEL_PARAMETER = "model_parameter"  # a PARAMETER of the model the manager builds from the Modelfile
    SUGGESTION = "suggestion"  # nowhere the manager can act: the user is told the change to make
    CLOUD = "cloud"  # the cloud fallback


@dataclass(frozen=True)
class OomSituation:
    """Who owns the server and the model, as far as the ladder cares."""

    server: str = "manager"  # Supervisor.managed_by: "manager", "systemd", "ollama-app", "external", "none"
    systemd_unit: str = "ollama.service"
    systemd_user: bool = False
    # The OS's facts, from its per-OS modules: whether server variables can turn the GPU off (macOS: Metal has
    # none), and the command that, followed by a name and a value, sets a variable the Ollama app hands its
    # server (``("launchctl", "setenv")``, ``("setx",)``; empty where there is no app).
    gpu_off_env: bool = True
    app_env_setter: tuple[str, ...] = ()
    model: str = "uncensored-llama3"
    builds_model: bool = False  # the manager builds ``model`` from the Modelfile (auto_build_model)
    modelfile_parameters: frozenset[str] = frozenset()  # PARAMETERs the Modelfile sets itself
    cloud_enabled: bool = False

    @property
    def sets_server_env(self) -> bool:
        """The manager starts the server, so it chooses its environment."""
        return self.server == "manager"


def route(setting: str, value: int, situation: OomSituation) -> Place:
    """Where ``setting`` (``num_ctx`` or ``num_gpu``) at ``value`` acts in ``situation``.

    >>> route("num_ctx", 2048, OomSituation(server="manager", builds_model=True))
    <Place.SERVER_ENV: 'server_env'>
    >>> route("num_ctx", 2048, OomSituation(server="systemd", builds_model=True))
    <Place.MODEL_PARAMETER: 'model_parameter'>
    >>> route("num_gpu", 0, OomSituation(server="manager", gpu_off_env=False))
    <Place.SUGGESTION: 'suggestion'>
    """
    if setting == "num_ctx":
        own_num_ctx = situation.builds_model and "num_ctx" in situation.modelfile_parameters
        if situation.sets_server_env and not own_num_ctx:
            return Place.SERVER_ENV
    elif situation.builds_model:
        return Place.MODEL_PARAMETER  # one model, every platform, no restart
    elif value == 0 and situation.sets_server_env and situation.gpu_off_env:
        return Place.SERVER_ENV
    return Place.MODEL_PARAMETER if situation.builds_model else Place.SUGGESTION


def server_env_change(setting: str, value: int) -> dict[str, str]:
    """The server variables that carry ``setting`` at ``value``."""
    if setting == "num_ctx":
        return {CONTEXT_VARIABLE: str(value)}
    return dict(GPU_OFF_ENV)


class OomStep(StrEnum):
    SMALLER_CONTEXT = "smaller_context"
    FEWER_GPU_LAYERS = "fewer_gpu_layers"
    CPU_ONLY = "cpu_only"
    CLOUD_FALLBACK = "cloud_fallback"

    @property
    def label(self) -> str:
        return self.replace("_", " ")


class LadderMove(StrEnum):
    DOWN = "down"  # degraded after an OOM
    UP = "up"  # restored after memory was fine for a while


@dataclass(frozen=True)
class OomSettings:
    """Overrides in force; ``None`` leaves Ollama's own choice."""

    num_ctx: int | None = None
    num_gpu: int | None = None
    cloud_fallback: bool = False

    def values(self) -> dict[str, int]:
        """The overrides that are set, e.g. ``{"num_ctx": 2048}``."""
        chosen = {"num_ctx": self.num_ctx, "num_gpu": self.num_gpu}
        return {key: value for key, value in chosen.items() if value is not None}


@dataclass(frozen=True)
class OomTargets:
    """What each place should hold for a set of overrides."""

    server_env: Mapping[str, str] = field(default_factory=dict)  # overlay on a manager-started server's env
    model_parameters: Mapping[str, int] = field(default_factory=dict)  # PARAMETERs added to the Modelfile's
    suggested: Mapping[str, int] = field(default_factory=dict)  # settings only the user can make
    cloud_fallback: bool = False


def oom_targets(settings: OomSettings, situation: OomSituation) -> OomTargets:
    """Each override in ``settings`` put where it acts.

    >>> oom_targets(OomSettings(num_ctx=2048, num_gpu=0), OomSituation(server="manager")).server_env
    {'OLLAMA_CONTEXT_LENGTH': '2048', 'CUDA_VISIBLE_DEVICES': '-1', 'HIP_VISIBLE_DEVICES': '-1', \
'ROCR_VISIBLE_DEVICES': '-1', 'GPU_DEVICE_ORDINAL': '-1', 'GGML_VK_VISIBLE_DEVICES': '-1', 'OLLAMA_VULKAN': '0'}
    >>> oom_targets(OomSettings(num_ctx=2048), OomSituation(server="systemd", builds_model=True)).model_parameters
    {'num_ctx': 2048}
    """
    env: dict[str, str] = {}
    parameters: dict[str, int] = {}
    suggested: dict[str, int] = {}
    for setting, value in settings.values().items():
        place = route(setting, value, situation)
        if place is Place.SERVER_ENV:
            env.update(server_env_change(setting, value))
        elif place is Place.MODEL_PARAMETER:
            parameters[setting] = value
        else:
            suggested[setting] = value
    return OomTargets(env, parameters, suggested, settings.cloud_fallback)


# --- What the user is told -------------------------------------------------------------------------------


def env_words(env: Mapping[str, str]) -> str:
    """``A=1 B=2``, in the order given.

    >>> env_words({"OLLAMA_CONTEXT_LENGTH": "2048"})
    'OLLAMA_CONTEXT_LENGTH=2048'
    """
    return " ".join(f"{key}={value}" for key, value in env.items())


def parameter_words(setting: str, value: int) -> str:
    return f"PARAMETER {setting} {value}"


def env_suggestion(env: Mapping[str, str], situation: OomSituation) -> str:
    """How the user sets ``env`` on a server the manager does not start.

    >>> env_suggestion({"OLLAMA_CONTEXT_LENGTH": "2048"}, OomSituation(server="systemd"))  # doctest: +ELLIPSIS
    "set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment (sudo systemctl edit ollama, then ...)"
    >>> env_suggestion({"OLLAMA_CONTEXT_LENGTH": "2048"}, OomSituation(server="ollama-app", app_env_setter=("setx",)))
    "set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment (setx OLLAMA_CONTEXT_LENGTH 2048, then quit and \
reopen Ollama)"
    """
    if situation.server == "systemd":
        unit = situation.systemd_unit.removesuffix(".service")
        systemctl = "systemctl --user" if situation.systemd_user else "sudo systemctl"
        how = f"{systemctl} edit {unit}, then {systemctl} restart {unit}"
    elif situation.server == "ollama-app" and situation.app_env_setter:
        how = "; ".join(" ".join((*situation.app_env_setter, key, value)) for key, value in env.items())
        how += ", then quit and reopen Ollama"
    else:
        how = "where you start ollama serve, then restart it"
    return f"set {env_words(env)} in the server's environment ({how})"


def parameter_suggestion(setting: str, value: int, model: str) -> str:
    """How the user sets a PARAMETER on a model the manager does not build.

    >>> parameter_suggestion("num_gpu", 0, "llama3")
    'add PARAMETER num_gpu 0 to the Modelfile of llama3 and create it again (ollama create llama3 -f Modelfile)'
    """
    return (
        f"add {parameter_words(setting, value)} to the Modelfile of {model} "
        f"and create it again (ollama create {model} -f Modelfile)"
    )


def _why_not(setting: str, situation: OomSituation) -> str:
    """Why the manager cannot make a change itself."""
    if setting == "num_ctx":
        if situation.server == "systemd":
            return f"The systemd service {situation.systemd_unit} keeps its own settings"
        if situation.server == "ollama-app":
            return "The Ollama app keeps its own settings"
        return "This Ollama was started outside the manager, which cannot change its settings"
    if situation.sets_server_env:
        return f"Metal has no setting that turns the GPU off, and the manager does not build {situation.model}"
    return f"The manager does not build {situation.model} and cannot change the server's settings"


def _setting_of(step: OomStep) -> str:
    return "num_ctx" if step is OomStep.SMALLER_CONTEXT else "num_gpu"


def _value_of(step: OomStep, settings: OomSettings) -> int | None:
    return settings.num_ctx if step is OomStep.SMALLER_CONTEXT else settings.num_gpu


def _degraded(step: OomStep, settings: OomSettings, layers: int | None) -> str:
    """The state after ``step`` in words: 'Context window reduced to 2048 tokens'."""
    if step is OomStep.SMALLER_CONTEXT:
        return f"Context window reduced to {settings.num_ctx} tokens"
    if step is OomStep.FEWER_GPU_LAYERS:
        of = f" of {layers}" if layers else ""
        return f"{settings.num_gpu}{of} layers on the GPU"
    return "Running on the CPU only (slower)"


def _restored(step: OomStep, settings: OomSettings) -> str:
    """The state after undoing ``step`` in words: 'Context window back to 4096 tokens'."""
    if step is OomStep.SMALLER_CONTEXT:
        if settings.num_ctx is None:
            return "Context window back to normal"
        return f"Context window back to {settings.num_ctx} tokens"
    if step is OomStep.FEWER_GPU_LAYERS:
        return "GPU layers back to automatic"
    return f"Back to {settings.num_gpu} layers on the GPU" if settings.num_gpu else "Using the GPU again"


def _goal(step: OomStep, after: OomSettings) -> str:
    if step is OomStep.SMALLER_CONTEXT:
        return f"use a context window of {after.num_ctx} tokens"
    if step is OomStep.FEWER_GPU_LAYERS:
        return f"put {after.num_gpu} layers on the GPU"
    return "run on the CPU only"


@dataclass(frozen=True)
class MoveText:
    """Where a move acts and what to say about it."""

    place: Place
    change: str  # the exact change: "OLLAMA_CONTEXT_LENGTH=2048", "PARAMETER num_ctx 2048"
    message: str  # true when the move is made
    done_message: str  # for once the manager carried it out; empty when there is nothing to carry out


def describe_move(
    move: LadderMove,
    step: OomStep,
    before: OomSettings,
    after: OomSettings,
    situation: OomSituation,
    layers: int | None = None,
) -> MoveText:
    """What one move of the ladder changes, where, and the words for it before and after.

    >>> describe_move(LadderMove.DOWN, OomStep.SMALLER_CONTEXT, OomSettings(), OomSettings(num_ctx=2048),
    ...               OomSituation(server="manager")).done_message
    'Context window reduced to 2048 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=2048'
    """
    if step is OomStep.CLOUD_FALLBACK:
        if move is LadderMove.UP:
            return MoveText(Place.CLOUD, "cloud fallback off", "Memory is fine again: back to the local model", "")
        if situation.cloud_enabled:
            text = "Ollama keeps running out of memory: using the cloud fallback until memory frees up"
        else:
            text = (
                "Ollama keeps running out of memory with every setting the manager can change: "
                "free memory, use a smaller model, or turn on the cloud fallback"
            )
        return MoveText(Place.CLOUD, "cloud fallback on", text, "")
    setting = _setting_of(step)
    new = _value_of(step, after)
    shown = new if new is not None else _value_of(step, before)  # on the way up: the value taken away
    shown = shown if shown is not None else 0
    place = route(setting, shown, situation)
    if place is Place.SERVER_ENV:
        change = env_words(server_env_change(setting, shown))
    else:
        change = parameter_words(setting, shown)
    if place is Place.SUGGESTION:
        if move is LadderMove.UP:
            return MoveText(
                place,
                change,
                "Memory has been fine for a while: if you made the change suggested after the out-of-memory "
                f"error ({change}), you can undo it now",
                "",
            )
        if setting == "num_ctx":
            how = env_suggestion(server_env_change(setting, shown), situation)
        else:
            how = parameter_suggestion(setting, shown, situation.model)
        text = f"Ollama ran out of memory. {_why_not(setting, situation)}: to {_goal(step, after)}, {how}"
        return MoveText(place, change, text, "")
    with_or_without = "with" if new is not None else "without"
    if place is Place.SERVER_ENV:
        later = f"Ollama restarts {with_or_without} {change} as soon as nothing runs on it"
        done = f"Ollama restarted {with_or_without} {change}"
    else:
        later = f"rebuilding {situation.model} {with_or_without} {change}"
        done = f"{situation.model} rebuilt {with_or_without} {change}"
    if move is LadderMove.DOWN:
        done = f"{_degraded(step, after, layers)}: {done}"
        return MoveText(place, change, f"Ollama ran out of memory: {later}", done)
    return MoveText(place, change, f"Memory is fine again: {later}", f"{_restored(step, after)}: {done}")


# --- The ladder ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OomEvent:
    """One move on the ladder, with where it acts and what to tell the user.

    ``message`` is true when the move is made: for a change the manager carries
    out it says what comes next ("Ollama restarts with ... as soon as nothing
    runs on it"), and ``done_message`` is for once it did. A suggestion and the
    cloud fallback have nothing left to carry out (``done_message`` is empty).
    """

    move: LadderMove
    step: OomStep  # the rung taken (down) or undone (up)
    level: int  # rungs below normal after the move
    before: OomSettings
    after: OomSettings
    kind: OomKind  # of the OOM that made the move down
    place: Place
    change: str  # the exact change: "OLLAMA_CONTEXT_LENGTH=2048", "PARAMETER num_ctx 2048"
    message: str
    done_message: str
    at: float

    @property
    def cloud_fallback(self) -> bool:
        return self.after.cloud_fallback

    @property
    def acts(self) -> bool:
        """The manager itself carries this move out (a restart or a rebuild)."""
        return self.place in (Place.SERVER_ENV, Place.MODEL_PARAMETER)


def next_rung(
    current: OomSettings,
    kind: OomKind,
    base_num_ctx: int,
    min_num_ctx: int,
    gpu_layers: int | None,
    layers_settable: bool = True,
) -> tuple[OomStep, OomSettings] | None:
    """The next step down from ``current``, or None at the bottom.

    ``layers_settable`` is False when nothing can hold a layer count (only a
    Modelfile PARAMETER can): the ladder then goes straight to CPU only.

    >>> next_rung(OomSettings(), OomKind.GPU, 8192, 2048, None)
    (<OomStep.SMALLER_CONTEXT: 'smaller_context'>, OomSettings(num_ctx=4096, num_gpu=None, cloud_fallback=False))
    >>> next_rung(OomSettings(num_ctx=2048), OomKind.GPU, 8192, 2048, 33)[1]
    OomSettings(num_ctx=2048, num_gpu=16, cloud_fallback=False)
    """
    ctx = current.num_ctx if current.num_ctx is not None else base_num_ctx
    if ctx > min_num_ctx:
        return OomStep.SMALLER_CONTEXT, replace(current, num_ctx=max(min_num_ctx, ctx // 2))
    if kind is not OomKind.SYSTEM:
        fewer = layers_settable and current.num_gpu is None and gpu_layers is not None and gpu_layers > 1
        if fewer and gpu_layers is not None:
            return OomStep.FEWER_GPU_LAYERS, replace(current, num_gpu=gpu_layers // 2)
        if current.num_gpu != 0:
            return OomStep.CPU_ONLY, replace(current, num_gpu=0)
    if not current.cloud_fallback:
        return OomStep.CLOUD_FALLBACK, replace(current, cloud_fallback=True)
    return None


@dataclass
class OomLadder:
    """Degrade after each OOM, recover after quiet periods.

    ``num_ctx`` is the context window the model normally runs with;
    ``gpu_layers`` how many layers Ollama offloads (learned from the server
    log by :meth:`report_log_lines` when not given). ``situation`` says where
    each rung acts; the caller keeps it current.
    """

    num_ctx: int = 4096
    gpu_layers: int | None = None
    min_num_ctx: int = 2048
    recover_after_seconds: float = 600.0
    max_recover_after_seconds: float = 4 * 3600.0
    settle_seconds: float = 5.0
    situation: OomSituation = field(default_factory=OomSituation)
    # True while the last move's change is still being carried out: OOMs until then are the same failure.
    awaiting_effect: bool = False

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

    def saved(self) -> dict[str, object]:
        """The rungs taken, as JSON-ready data, so the ladder outlives a restart of the app.

        >>> ladder = OomLadder(num_ctx=4096)
        >>> _ = ladder.record_oom(0.0)
        >>> ladder.saved()
        {'taken': [['smaller_context', {'num_ctx': None, 'num_gpu': None, 'cloud_fallback': False}]], \
'current': {'num_ctx': 2048, 'num_gpu': None, 'cloud_fallback': False}}
        >>> again = OomLadder(num_ctx=4096)
        >>> again.restore(ladder.saved()), again.level, again.current.num_ctx
        (True, 1, 2048)
        """
        return {
            "taken": [[str(step), _settings_data(before)] for step, before in self._taken],
            "current": _settings_data(self.current),
        }

    def restore(self, data: Mapping[str, object]) -> bool:
        """Take back the rungs :meth:`saved` gave; False, and nothing changed, when ``data`` does not fit.

        >>> OomLadder().restore({"taken": [["sideways", {}]], "current": {}})
        False
        """
        raw_taken, raw_current = data.get("taken"), data.get("current")
        if not isinstance(raw_taken, list) or not isinstance(raw_current, dict):
            return False
        try:
            taken = [(OomStep(step), OomSettings(**before)) for step, before in raw_taken]
            current = OomSettings(**raw_current)
        except (TypeError, ValueError):
            return False
        self._taken, self.current = taken, current
        return True

    @property
    def targets(self) -> OomTargets:
        """What each place should hold now."""
        return oom_targets(self.current, self.situation)

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
        if self.awaiting_effect:
            return None
        if self._last_down_at is not None and now - self._last_down_at < self.settle_seconds:
            return None
        if self._last_up_at is not None and now - self._last_up_at < self.recover_after:
            self._recover_after = min(self.max_recover_after_seconds, self.recover_after * 2)
        rung = next_rung(
            self.current,
            kind,
            self.num_ctx,
            self.min_num_ctx,
            self.gpu_layers,
            layers_settable=self.situation.builds_model,
        )
        if rung is None:
            return None
        step, settings = rung
        before = self.current
        self._taken.append((step, before))
        self.current = settings
        self._last_down_at = now
        return self._event(LadderMove.DOWN, step, before, kind, now)

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
        before = self.current
        self.current = restored
        self._last_up_at = now
        return self._event(LadderMove.UP, step, before, OomKind.UNKNOWN, now)

    def reset(self) -> None:
        """Back to normal at once (e.g. the user changed the model)."""
        self._taken.clear()
        self.current = OomSettings()
        self.awaiting_effect = False
        self._quiet_since = self._last_down_at = self._last_up_at = self._recover_after = None

    def _event(self, move: LadderMove, step: OomStep, before: OomSettings, kind: OomKind, now: float) -> OomEvent:
        text = describe_move(move, step, before, self.current, self.situation, self.gpu_layers)
        return OomEvent(
            move,
            step,
            self.level,
            before,
            self.current,
            kind,
            text.place,
            text.change,
            text.message,
            text.done_message,
            now,
        )


def _settings_data(settings: OomSettings) -> dict[str, object]:
    return {"num_ctx": settings.num_ctx, "num_gpu": settings.num_gpu, "cloud_fallback": settings.cloud_fallback}
