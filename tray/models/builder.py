"""Keep the user's model built, current and intact, through Ollama's HTTP API.

``ensure_model_loaded`` is the design notes' method: when the model is listed
and the fingerprint recorded at its last build matches the current Modelfile,
nothing is sent; otherwise the model is built::

    pull the base (if it is a model name that is not installed; free disk space checked first)
    upload local FROM/ADAPTER files (HEAD /api/blobs first, POST when missing)
    POST /api/create (current shape; NDJSON progress)
    confirm it in /api/tags, record the fingerprint, run a one-token test inference,
    report size, parameter count and quantization from /api/show

``rebuild`` forces a build and repairs damaged blobs first. A pull treats a
blob already on disk as a cache hit and never re-downloads it, so a corrupt
base blob is deleted before the base is pulled again.

The HTTP calls are :class:`~tray.ollama.client.OllamaClient`'s. Ollama's
errors, whether an HTTP 4xx/5xx ``{"error": ...}`` or an ``{"error": ...}``
line in a 200 stream, are one-line :class:`~tray.ollama.errors.OllamaError`\\ s;
the builder's own are :class:`ModelError`\\ s (both in ``MODEL_FAILURES``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import filelock
import httpx

from tray.core.names import ModelName
from tray.core.units import human_bytes
from tray.models.errors import (
    MODEL_FAILURES,
    DiskSpaceError,
    ModelError,
    StoreError,
    StoreUnreadable,
)
from tray.models.integrity import (
    HashCache,
    IntegrityReport,
    hash_with_cache,
    verify_model,
    write_json_atomic,
)
from tray.models.modelfile import (
    BuildSources,
    Modelfile,
    fingerprint,
    load_modelfile,
    resolve_sources,
)
from tray.models.progress import (
    ProgressCallback,
    ProgressEvent,
    measured,
    no_progress,
    plain_detail,
    progress_detail,
)
from tray.models.store import (
    Leftovers,
    blob_path,
    check_readable,
    exclusive_size,
    find_leftovers,
    find_manifest_path,
    inside_blobs,
    list_models,
    parse_model_name,
    read_manifest,
    short_digest,
    store_writable,
)
from tray.ollama.client import DEFAULT_TIMEOUTS, OllamaClient, Timeouts
from tray.ollama.errors import OllamaAPIError
from tray.system.resources import nearest_existing_dir

DEFAULT_MIN_FREE_BYTES = 8 * 1000**3  # when the base model's size is unknown (llama3 is ~4.7 GB)
HASH_CACHE_FILE = "blob-hashes.json"
RECORDS_FILE = "models.json"
LOCK_FILE = "model-build.lock"


def pull_model(api: OllamaClient, model: str, progress: ProgressCallback) -> None:
    """Pull ``model``, reporting per-blob download progress; raise unless the pull ends in ``success``."""
    for item in api.pull(model):
        status = str(item.get("status", ""))
        if item.get("digest"):
            completed, total = measured(item.get("completed"), item.get("total"))
            progress(ProgressEvent("pulling", progress_detail(item["digest"], status), completed, total))
        else:
            progress(ProgressEvent("pulling", plain_detail(status)))


def find_listed(tags: list[dict[str, Any]], name: ModelName) -> dict[str, Any] | None:
    """The ``/api/tags`` entry of ``name`` (names compared case-insensitively, tags filled in)."""
    for entry in tags:
        listed = entry.get("name") or entry.get("model")
        if isinstance(listed, str):
            try:
                if parse_model_name(listed).same_as(name):
                    return entry
            except StoreError:
                continue
    return None


# --- build records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRecord:
    """What the manager knows about a model it built."""

    fingerprint: str
    manifest_digest: str  # bare hex, as /api/tags reports it
    modelfile: str
    built_at: str  # wall-clock ISO time, for display only
    overrides: dict[str, int] = field(default_factory=dict)  # PARAMETERs added to the Modelfile's (out of memory)


def load_records(state_dir: Path) -> dict[str, BuildRecord]:
    """Build records by model display name; an unreadable file counts as empty."""
    try:
        raw = json.loads((state_dir / RECORDS_FILE).read_text(encoding="utf-8"))
        models = raw["models"]
        return {name: BuildRecord(**fields) for name, fields in models.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save_records(state_dir: Path, records: Mapping[str, BuildRecord]) -> None:
    """Write all build records atomically."""
    payload = {"version": 1, "models": {name: vars(record) for name, record in sorted(records.items())}}
    write_json_atomic(state_dir / RECORDS_FILE, payload)


def rebuild_reason(
    listed_digest: str | None,
    record: BuildRecord | None,
    current_fingerprint: str,
    overrides: Mapping[str, int] | None = None,
) -> str | None:
    """Why the model must be (re)built, or None when it is current."""
    if listed_digest is None:
        return "not installed"
    if record is None:
        return "installed, but not built by the manager"
    if record.fingerprint != current_fingerprint:
        if dict(record.overrides) != dict(overrides or {}):
            return f"parameter overrides changed (now: {override_words(overrides or {}) or 'none'})"
        return "the Modelfile changed"
    if record.manifest_digest and record.manifest_digest != listed_digest:
        return "the installed model was replaced outside the manager"
    return None


def override_words(overrides: Mapping[str, int]) -> str:
    """``PARAMETER num_ctx 2048, PARAMETER num_gpu 0``: overrides as the Modelfile lines they stand for.

    >>> override_words({"num_ctx": 2048})
    'PARAMETER num_ctx 2048'
    """
    return ", ".join(f"PARAMETER {name} {value}" for name, value in overrides.items())


# --- disk space ----------------------------------------------------------------------------------


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing_dir(Path(path))).free


def bytes_needed_for_pull(models_dir: Path, base: ModelName, fallback: int) -> int:
    """Bytes a pull of ``base`` will write: its blobs not yet on disk when its manifest is known, else ``fallback``."""
    try:
        manifest = read_manifest(models_dir, base)
    except StoreError:
        return fallback
    return sum(blob.size for blob in manifest.blobs if not blob_path(models_dir, blob.digest).exists())


def check_disk_space(needed: int, free: int, what: str, where: Path) -> None:
    """Raise DiskSpaceError when ``free`` is below ``needed``."""
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space to {what}: need {human_bytes(needed)} free in {where}, have {human_bytes(free)}"
        )


# --- reports -------------------------------------------------------------------------------------

Action = Literal["none", "built", "rebuilt"]


@dataclass(frozen=True)
class ModelReport:
    """Outcome of :func:`ensure_model_loaded` / :func:`rebuild`."""

    model: str
    action: Action
    reason: str
    fingerprint: str
    base_model: str | None = None
    pulled_base: bool = False
    uploaded: tuple[str, ...] = ()  # digests sent to /api/blobs
    repaired: tuple[str, ...] = ()  # damaged blobs that were deleted and restored
    size: int | None = None
    parameter_size: str | None = None  # e.g. "8.0B"
    parameter_count: int | None = None
    quantization: str | None = None  # e.g. "Q4_0"
    family: str | None = None
    inference_ok: bool | None = None  # None: no test inference was run
    inference_seconds: float | None = None
    inference_error: str | None = None
    warnings: tuple[str, ...] = ()
    overrides: Mapping[str, int] = field(default_factory=dict)  # PARAMETERs added to the Modelfile's

    @property
    def ok(self) -> bool:
        """The model is installed and, if tested, answered."""
        return self.inference_ok is not False

    def summary(self) -> str:
        """One line for the user."""
        verb = {"none": "is current", "built": "built", "rebuilt": "rebuilt"}[self.action]
        facts = [fact for fact in (self.parameter_size, self.quantization) if fact]
        if self.size is not None:
            facts.append(human_bytes(self.size))
        text = f"{self.model} {verb}"
        if self.overrides:
            text += f" with {override_words(self.overrides)}"
        if facts:
            text += f" ({', '.join(facts)})"
        if self.repaired:
            text += f"; repaired {len(self.repaired)} damaged blob(s)"
        if self.inference_ok:
            text += f"; test inference OK in {self.inference_seconds:.1f} s"
        elif self.inference_ok is False:
            text += f"; test inference failed: {self.inference_error}"
        return text


# --- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build needs, derived from the Modelfile: the create request and its fingerprint."""

    model: ModelName
    modelfile: Modelfile
    sources: BuildSources
    request: dict[str, Any]
    fingerprint: str
    overrides: Mapping[str, int] = field(default_factory=dict)

    @property
    def base(self) -> ModelName | None:
        return parse_model_name(self.sources.from_model) if self.sources.from_model else None


def plan_build(
    model_name: str,
    modelfile_path: Path,
    *,
    quantize: str | None,
    cache: HashCache,
    progress: ProgressCallback = no_progress,
    overrides: Mapping[str, int] | None = None,
) -> BuildPlan:
    """Parse the Modelfile, hash its local files (cached) and form the create request.

    ``overrides`` are PARAMETERs that win over the Modelfile's own (the
    out-of-memory ladder's ``num_ctx``/``num_gpu``); they are part of the
    request, so of the fingerprint.
    """
    model = parse_model_name(model_name)
    modelfile = load_modelfile(modelfile_path)
    base_dir = Path(modelfile_path).expanduser().absolute().parent
    sources = resolve_sources(modelfile, base_dir)
    digests = {}
    for item in sources.local_files:
        try:
            hexdigest, _ = hash_with_cache(item.path, cache, progress=progress, phase="hashing", detail=item.key)
        except OSError as exc:
            raise ModelError(f"cannot read {item.path}: {exc.strerror}") from None
        digests[item.path] = f"sha256:{hexdigest}"
    request = modelfile.to_create_request(model_name, sources, digests, quantize=quantize.upper() if quantize else None)
    overrides = dict(overrides or {})
    if overrides:
        request["parameters"] = {**(request.get("parameters") or {}), **overrides}
    return BuildPlan(model, modelfile, sources, request, fingerprint(request), overrides)


@dataclass
class _Context:
    """Everything one ensure/rebuild call works with."""

    api: OllamaClient
    models_dir: Path
    state_dir: Path
    progress: ProgressCallback
    min_free_bytes: int
    disk_free: Callable[[Path], int]
    clock: Callable[[], float]

    @property
    def cache_path(self) -> Path:
        return self.state_dir / HASH_CACHE_FILE


def _pull_base(ctx: _Context, base: ModelName) -> None:
    needed = bytes_needed_for_pull(ctx.models_dir, base, ctx.min_free_bytes)
    check_disk_space(needed, ctx.disk_free(ctx.models_dir), f"pull {base.display}", ctx.models_dir)
    pull_model(ctx.api, base.display, ctx.progress)


def _upload_local_files(ctx: _Context, plan: BuildPlan) -> tuple[str, ...]:
    uploaded = []
    for item in plan.sources.local_files:
        digest = _request_digest(plan.request, item.key)
        if not ctx.api.has_blob(digest):
            ctx.api.upload_blob(
                digest, item.path, _upload_progress(ctx.progress, f"{item.path.name} {short_digest(digest)}")
            )
            uploaded.append(digest)
    return tuple(uploaded)


def _upload_progress(progress: ProgressCallback, detail: str) -> Callable[[int, int], None]:
    def sent(done: int, size: int) -> None:
        progress(ProgressEvent("uploading", detail, done, size))

    return sent


def _request_digest(request: Mapping[str, Any], key: str) -> str:
    for group in ("files", "adapters", "draft_files"):
        digests = request.get(group) or {}
        if key in digests:
            return str(digests[key])
    raise AssertionError(f"{key} is not in the create request")  # pragma: no cover


def _build(ctx: _Context, plan: BuildPlan, *, pull_base: bool) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    """Pull, upload, create, confirm and record. Returns (pulled, uploaded digests, tags entry)."""
    pulled = False
    base = plan.base
    if base is not None and (pull_base or find_listed(ctx.api.tags(), base) is None):
        _pull_base(ctx, base)
        pulled = True
    uploaded = _upload_local_files(ctx, plan)
    for item in ctx.api.create(plan.request):
        status = str(item.get("status", ""))
        completed, total = measured(item.get("completed"), item.get("total")) if item.get("total") else (None, None)
        ctx.progress(ProgressEvent("creating", plain_detail(status), completed, total))
    listed = find_listed(ctx.api.tags(), plan.model)
    if listed is None:
        raise OllamaAPIError(f"{plan.model.display} was created but /api/tags does not list it", 200)
    records = load_records(ctx.state_dir)
    records[plan.model.display] = BuildRecord(
        fingerprint=plan.fingerprint,
        manifest_digest=str(listed.get("digest", "")),
        modelfile=plan.modelfile.filename,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        overrides=dict(plan.overrides),
    )
    save_records(ctx.state_dir, records)
    return pulled, uploaded, listed


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _describe(ctx: _Context, report: ModelReport, listed: Mapping[str, Any], *, test_inference: bool) -> ModelReport:
    """Fill in size, parameters and quantization, and run the test inference when asked."""
    show = ctx.api.show(report.model)
    details = _mapping(show.get("details"))
    info = _mapping(show.get("model_info"))
    count = info.get("general.parameter_count")
    report = replace(
        report,
        size=listed.get("size") if isinstance(listed.get("size"), int) else None,
        parameter_size=details.get("parameter_size") or None,
        quantization=details.get("quantization_level") or None,
        family=details.get("family") or None,
        parameter_count=count if isinstance(count, int) else None,
    )
    if not test_inference:
        return report
    started = ctx.clock()
    try:
        ctx.api.chat_test(report.model)
    except MODEL_FAILURES as exc:
        return replace(report, inference_ok=False, inference_error=str(exc), inference_seconds=ctx.clock() - started)
    return replace(report, inference_ok=True, inference_seconds=ctx.clock() - started)


def _store_warnings(models_dir: Path, model: ModelName, listed: Mapping[str, Any] | None) -> list[str]:
    """Notice when ``models_dir`` is not the store the server uses (a different OLLAMA_MODELS or user)."""
    if listed is None:
        return []
    try:
        check_readable(models_dir)
    except StoreUnreadable as exc:
        return [str(exc)]
    path = find_manifest_path(models_dir, model)
    if path is None:
        return [
            (
                f"Ollama lists {model.display} but {models_dir} has no manifest for it: the server uses another "
                "model directory (OLLAMA_MODELS or user differs), so integrity checks cannot see it"
            )
        ]
    return []


class _Lock:
    """One build at a time per state directory (tray and CLI may both try)."""

    def __init__(self, state_dir: Path, timeout: float) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._path = state_dir / LOCK_FILE
        self._lock = filelock.FileLock(str(self._path), timeout=timeout)

    def __enter__(self) -> None:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise ModelError(f"another model build is still running (lock {self._path})") from None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@contextmanager
def _locked_context(
    base_url: str,
    client: httpx.Client | None,
    models_dir: Path | str,
    state_dir: Path | str,
    progress: ProgressCallback | None,
    min_free_bytes: int,
    disk_free: Callable[[Path], int],
    clock: Callable[[], float],
    timeouts: Timeouts,
    lock_timeout: float,
) -> Iterator[_Context]:
    """The context of one ensure/rebuild call, holding the build lock throughout."""
    ctx = _Context(
        api=OllamaClient(base_url, http=client, timeouts=timeouts),
        models_dir=Path(models_dir),
        state_dir=Path(state_dir),
        progress=progress or no_progress,
        min_free_bytes=min_free_bytes,
        disk_free=disk_free,
        clock=clock,
    )
    try:
        with _Lock(ctx.state_dir, lock_timeout):
            yield ctx
    finally:
        ctx.api.close()


def _plan(
    ctx: _Context,
    model_name: str,
    modelfile_path: Path | str,
    quantize: str | None,
    overrides: Mapping[str, int] | None,
) -> BuildPlan:
    cache = HashCache(ctx.cache_path)
    try:
        return plan_build(
            model_name, Path(modelfile_path), quantize=quantize, cache=cache, progress=ctx.progress, overrides=overrides
        )
    finally:
        cache.save()


def _new_report(
    ctx: _Context, plan: BuildPlan, action: Action, reason: str, listed: Mapping[str, Any] | None
) -> ModelReport:
    warnings = (*plan.modelfile.warnings, *_store_warnings(ctx.models_dir, plan.model, listed))
    base = plan.base.display if plan.base else None
    overrides = plan.overrides
    return ModelReport(
        plan.model.display, action, reason, plan.fingerprint, base_model=base, warnings=warnings, overrides=overrides
    )


def ensure_model_loaded(
    base_url: str,
    model_name: str,
    modelfile_path: Path | str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    quantize: str | None = None,
    progress: ProgressCallback | None = None,
    client: httpx.Client | None = None,
    test_inference: bool = True,
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    disk_free: Callable[[Path], int] = disk_free_bytes,
    clock: Callable[[], float] = time.monotonic,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    lock_timeout: float = 3600.0,
    overrides: Mapping[str, int] | None = None,
) -> ModelReport:
    """Make sure ``model_name`` exists and is built from the current Modelfile (plus ``overrides``).

    When the model is listed and its recorded fingerprint matches, only
    ``/api/tags`` and ``/api/show`` are asked (no create, no test inference).
    Otherwise it is built and a test inference is run when ``test_inference``.
    Raises :class:`ModelError` (one line) when the model cannot be built.
    """
    locked = _locked_context(
        base_url, client, models_dir, state_dir, progress, min_free_bytes, disk_free, clock, timeouts, lock_timeout
    )
    with locked as ctx:
        plan = _plan(ctx, model_name, modelfile_path, quantize, overrides)
        listed = find_listed(ctx.api.tags(), plan.model)
        record = load_records(ctx.state_dir).get(plan.model.display)
        reason = rebuild_reason(
            str(listed.get("digest", "")) if listed else None, record, plan.fingerprint, plan.overrides
        )
        if reason is None and listed is not None:
            return _describe(ctx, _new_report(ctx, plan, "none", "current", listed), listed, test_inference=False)
        pulled, uploaded, listed = _build(ctx, plan, pull_base=False)
        report = replace(_new_report(ctx, plan, "built", reason or "", listed), pulled_base=pulled, uploaded=uploaded)
        return _describe(ctx, report, listed, test_inference=test_inference)


def _damaged_blobs(ctx: _Context, plan: BuildPlan, full: bool) -> list[IntegrityReport]:
    """Integrity reports of the model (with its base) and, when the model is absent, of the base alone.

    None when the store cannot be read by this user: nothing can be checked, the build goes on.
    """
    try:
        check_readable(ctx.models_dir)
    except StoreUnreadable:
        return []
    reports = []
    model_report = verify_model(ctx.models_dir, plan.model, cache_path=ctx.cache_path, full=full, progress=ctx.progress)
    reports.append(model_report)
    base = plan.base
    base_checked = (
        model_report.base_model is not None
        and base is not None
        and parse_model_name(model_report.base_model).same_as(base)
    )
    if base is not None and not base_checked:
        reports.append(verify_model(ctx.models_dir, base, cache_path=ctx.cache_path, full=full, progress=ctx.progress))
    return reports


def _delete_damaged(ctx: _Context, plan: BuildPlan, reports: list[IntegrityReport]) -> tuple[tuple[str, ...], bool]:
    """Delete damaged blobs. Returns (damaged digests, whether the base model must be pulled again).

    Where this user may not write the store (the server runs as another
    account), the models that use a damaged blob are deleted through the API
    instead: Ollama then removes the blob itself, and the base is pulled again.
    """
    cache = HashCache(ctx.cache_path)
    damaged: dict[str, None] = {}
    base_affected = False
    for report in reports:
        for blob in report.bad:
            damaged[blob.digest] = None
            base_affected = base_affected or _comes_from_base(ctx, plan, report, blob.digest, blob.used_by)
            cache.forget(blob.path)
    cache.save()
    if not damaged:
        return (), base_affected
    if not store_writable(ctx.models_dir):
        _delete_users_through_api(ctx, plan, tuple(damaged))
        return tuple(damaged), True
    for report in reports:
        for blob in report.bad:
            try:
                blob.path.unlink(missing_ok=True)
            except OSError as exc:
                raise ModelError(f"cannot delete damaged blob {blob.path}: {exc.strerror}") from None
    return tuple(damaged), base_affected


def _delete_users_through_api(ctx: _Context, plan: BuildPlan, digests: tuple[str, ...]) -> None:
    """Delete every model that uses one of ``digests`` (``DELETE /api/delete``): Ollama prunes the blobs."""
    users = [
        entry.name.display
        for entry in list_models(ctx.models_dir)
        if entry.manifest is not None and any(blob.digest in digests for blob in entry.manifest.blobs)
    ]
    for name in users:
        try:
            ctx.api.delete(name)
        except OllamaAPIError as exc:
            if exc.status != 404:
                base = plan.base.display if plan.base else name
                raise ModelError(
                    f"{exc}; the store is not writable by this user: "
                    f"run `ollama rm {' '.join(users)} && ollama pull {base}`"
                ) from None


def _comes_from_base(
    ctx: _Context, plan: BuildPlan, report: IntegrityReport, digest: str, used_by: tuple[str, ...]
) -> bool:
    """Whether only a pull of the base model can restore ``digest``: a base blob or the inherited weights."""
    base = plan.base
    if base is None:
        return False
    if any(parse_model_name(user).same_as(base) for user in used_by):
        return True
    try:
        weights = read_manifest(ctx.models_dir, report.model).model_layer
    except StoreError:
        return False
    return weights is not None and weights.digest == digest and not plan.sources.files


def rebuild(
    base_url: str,
    model_name: str,
    modelfile_path: Path | str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    quantize: str | None = None,
    progress: ProgressCallback | None = None,
    client: httpx.Client | None = None,
    full: bool = False,
    pull_base: bool = False,
    test_inference: bool = True,
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    disk_free: Callable[[Path], int] = disk_free_bytes,
    clock: Callable[[], float] = time.monotonic,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    lock_timeout: float = 3600.0,
    overrides: Mapping[str, int] | None = None,
) -> ModelReport:
    """Build ``model_name`` even if it looks current, repairing damaged blobs first.

    Blobs of the model and its base that fail verification are deleted; if one
    belongs to the base (or is the weights layer) the base is pulled again.
    ``pull_base`` also re-pulls an intact base (to update it). After a repair
    the model is verified again and a still-damaged blob raises ModelError.
    """
    locked = _locked_context(
        base_url, client, models_dir, state_dir, progress, min_free_bytes, disk_free, clock, timeouts, lock_timeout
    )
    with locked as ctx:
        plan = _plan(ctx, model_name, modelfile_path, quantize, overrides)
        damaged, base_affected = _delete_damaged(ctx, plan, _damaged_blobs(ctx, plan, full))
        pulled, uploaded, listed = _build(ctx, plan, pull_base=pull_base or base_affected)
        if damaged:
            _confirm_repair(ctx, plan)
        report = replace(
            _new_report(ctx, plan, "rebuilt", "repair" if damaged else "forced", listed),
            pulled_base=pulled,
            uploaded=uploaded,
            repaired=damaged,
        )
        return _describe(ctx, report, listed, test_inference=test_inference)


def _confirm_repair(ctx: _Context, plan: BuildPlan) -> None:
    for report in _damaged_blobs(ctx, plan, full=False):
        if report.manifest_problem is None and not report.ok:
            raise ModelError(f"repair did not help: {report.summary()}")


# --- verify and cleanup --------------------------------------------------------------------------


def verify(
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    full: bool = False,
    progress: ProgressCallback | None = None,
) -> IntegrityReport:
    """Verify the active model and its base against their digests (digest cache in ``state_dir``)."""
    return verify_model(
        Path(models_dir), model_name, cache_path=Path(state_dir) / HASH_CACHE_FILE, full=full, progress=progress
    )


@dataclass(frozen=True)
class StaleModel:
    """A model the manager built earlier that is not the active one; ``size`` is what deleting it frees."""

    name: str
    size: int


@dataclass(frozen=True)
class CleanupReport:
    """What :func:`cleanup` would delete, with sizes."""

    stale_models: tuple[StaleModel, ...]
    leftovers: Leftovers

    @property
    def total_size(self) -> int:
        return sum(model.size for model in self.stale_models) + self.leftovers.total_size

    @property
    def empty(self) -> bool:
        return not self.stale_models and not self.leftovers.files

    def lines(self) -> list[str]:
        """Human-readable lines, one per item, then a total."""
        leftovers = self.leftovers
        out = [f"stale model {model.name}  {human_bytes(model.size)}" for model in self.stale_models]
        out += [f"unreferenced blob {item.path}  {human_bytes(item.size)}" for item in leftovers.unreferenced]
        out += [f"partial download {item.path}  {human_bytes(item.size)}" for item in leftovers.partials]
        out += [f"temporary file {item.path}  {human_bytes(item.size)}" for item in leftovers.others]
        out += [f"left alone (not a file Ollama makes): {item.path}" for item in leftovers.foreign]
        if self.leftovers.withheld:
            out.append(f"note: {self.leftovers.withheld}")
        out.append(f"total {human_bytes(self.total_size)}")
        return out


def cleanup_report(
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    now: float | None = None,
    grace_seconds: float = 3600.0,
) -> CleanupReport:
    """What cleanup would delete: earlier builds other than ``model_name``, unused blobs, partial downloads.

    ``now`` is wall-clock seconds (compared with file mtimes); files younger
    than ``grace_seconds`` are left alone because a pull may still be writing them.
    """
    models_dir = Path(models_dir)
    active = parse_model_name(model_name)
    entries = list_models(models_dir)
    stale = []
    for name in sorted(load_records(Path(state_dir))):
        recorded = parse_model_name(name)
        if not recorded.same_as(active) and any(entry.name.same_as(recorded) for entry in entries):
            stale.append(StaleModel(recorded.display, exclusive_size(entries, recorded)))
    moment = time.time() if now is None else now
    return CleanupReport(tuple(stale), find_leftovers(models_dir, moment, grace_seconds))


@dataclass(frozen=True)
class CleanupResult:
    """What :func:`cleanup` deleted, how many bytes that freed, and what could not be deleted."""

    freed_bytes: int
    deleted: tuple[str, ...]
    errors: tuple[str, ...]


def cleanup(
    base_url: str,
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    client: httpx.Client | None = None,
    now: float | None = None,
    grace_seconds: float = 3600.0,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> CleanupResult:
    """Delete what :func:`cleanup_report` lists: stale models through ``DELETE /api/delete``, files directly."""
    report = cleanup_report(
        model_name, models_dir=models_dir, state_dir=state_dir, now=now, grace_seconds=grace_seconds
    )
    state = Path(state_dir)
    deleted: list[str] = []
    errors: list[str] = []
    freed = 0
    if report.stale_models:
        with OllamaClient(base_url, http=client, timeouts=timeouts) as api:
            records = load_records(state)
            for model in report.stale_models:
                try:
                    api.delete(model.name)
                except OllamaAPIError as exc:
                    if exc.status != 404:
                        errors.append(str(exc))
                        continue
                except MODEL_FAILURES as exc:
                    errors.append(str(exc))
                    continue
                records.pop(model.name, None)
                deleted.append(model.name)
                freed += model.size
            save_records(state, records)
    for item in report.leftovers.files:
        if not inside_blobs(item.path, Path(models_dir)):  # the store changed since it was scanned
            errors.append(f"not deleted: {item.path} is no longer a file of {Path(models_dir) / 'blobs'}")
            continue
        try:
            item.path.unlink(missing_ok=True)
        except OSError as exc:
            errors.append(f"cannot delete {item.path}: {exc.strerror}")
            continue
        deleted.append(str(item.path))
        freed += item.size
    return CleanupResult(freed, tuple(deleted), tuple(errors))
