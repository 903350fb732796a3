"""``ollama-manager model ...`` subcommands: plain parameters in, text out, an exit code back.

Exit codes: 0 success, 1 failure (one ``ollama-manager: ...`` line), 2 verification
found damage. Progress goes to ``err`` (stderr by default), results to ``out``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import httpx

from tray.core.text import one_line
from tray.core.units import human_bytes
from tray.models.builder import (
    ModelReport,
    cleanup,
    cleanup_report,
    ensure_model_loaded,
    load_records,
    override_words,
    pull_model,
    rebuild,
    verify,
)
from tray.models.errors import MODEL_FAILURES, ModelError
from tray.models.progress import ProgressRenderer
from tray.models.store import list_models, parse_model_name
from tray.ollama.client import OllamaClient
from tray.ollama.errors import OllamaAPIError, OllamaError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DAMAGED = 2


def _streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    return out or sys.stdout, err or sys.stderr


def _fail(err: TextIO, exc: ModelError | OllamaError) -> int:
    err.write(f"ollama-manager: {exc}\n")
    return EXIT_FAILED


def _print_model_report(report: ModelReport, out: TextIO, err: TextIO) -> int:
    err.writelines(f"warning: {warning}\n" for warning in report.warnings)
    out.write(report.summary() + "\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def _run_build(build: Callable[[ProgressRenderer], ModelReport], out: TextIO, err: TextIO) -> int:
    """Run a build with progress on ``err``; the report on ``out``, or one error line."""
    renderer = ProgressRenderer(err)
    try:
        report = build(renderer)
    except MODEL_FAILURES as exc:
        renderer.close()  # end the progress line before the error
        return _fail(err, exc)
    renderer.close()
    return _print_model_report(report, out, err)


def run_ensure(
    base_url: str,
    model_name: str,
    modelfile: Path | str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    quantize: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """``model ensure``: build the model unless it is current."""
    out, err = _streams(out, err)
    return _run_build(
        lambda progress: ensure_model_loaded(
            base_url,
            model_name,
            modelfile,
            models_dir=models_dir,
            state_dir=state_dir,
            quantize=quantize,
            progress=progress,
            client=client,
        ),
        out,
        err,
    )


def run_rebuild(
    base_url: str,
    model_name: str,
    modelfile: Path | str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    quantize: str | None = None,
    full: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """``model rebuild [--quantize Q]``: repair damaged blobs and build again."""
    out, err = _streams(out, err)
    return _run_build(
        lambda progress: rebuild(
            base_url,
            model_name,
            modelfile,
            models_dir=models_dir,
            state_dir=state_dir,
            quantize=quantize,
            full=full,
            progress=progress,
            client=client,
        ),
        out,
        err,
    )


def run_verify(
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    full: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``model verify [--full]``: 0 when intact, 2 when damaged or missing."""
    out, err = _streams(out, err)
    renderer = ProgressRenderer(err)
    try:
        report = verify(model_name, models_dir=models_dir, state_dir=state_dir, full=full, progress=renderer)
    except ModelError as exc:
        renderer.close()
        return _fail(err, exc)
    renderer.close()
    if report.base_note:
        err.write(f"note: {report.base_note}\n")
    for blob in report.bad[1:]:
        out.write(blob.problem + "\n")
    out.write(report.summary() + "\n")
    return EXIT_OK if report.ok else EXIT_DAMAGED


def run_list(
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    modelfile_model: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``model list``: the models in the store, marking the active one, the Modelfile one and the manager's builds."""
    out, err = _streams(out, err)
    try:
        active = parse_model_name(model_name)
        modelfile = parse_model_name(modelfile_model) if modelfile_model else None
    except ModelError as exc:
        return _fail(err, exc)
    entries = list_models(Path(models_dir))
    if not entries:
        out.write(f"no models in {models_dir}\n")
        return EXIT_OK
    records = load_records(Path(state_dir))
    rows = [("NAME", "ID", "SIZE", "MODIFIED", "NOTE")]
    for entry in entries:
        notes = []
        if entry.name.same_as(active):
            notes.append("active")
        if modelfile is not None and entry.name.same_as(modelfile):
            notes.append("Modelfile model")
        record = records.get(entry.name.display)
        if record is not None:
            notes.append("built by manager")
            if record.overrides:
                notes.append(f"with {override_words(record.overrides)} (out of memory)")
        if entry.manifest is None:
            rows.append((entry.name.display, "?", "?", "?", "unreadable manifest"))
            continue
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.path.stat().st_mtime))
        size = human_bytes(entry.manifest.size)
        rows.append((entry.name.display, entry.manifest.digest[:12], size, modified, ", ".join(notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    return EXIT_OK


NO_NETWORK_SIGNS = (
    "no such host",
    "dial tcp",
    "network is unreachable",
    "i/o timeout",
    "tls handshake timeout",
    "temporary failure in name resolution",
    "server misbehaving",
)


def pull_failure_line(model: str, error: str, models_dir: Path | str) -> str:
    """Why a pull failed, in one line, from Ollama's error text.

    >>> pull_failure_line("mistral", 'pull mistral failed: pull model manifest: Get "https://r/v2/m": '
    ...     'dial tcp: lookup r: no such host', "/m")
    'cannot pull mistral: no network (the model registry cannot be reached)'
    >>> pull_failure_line("mistral", "pull mistral failed: write /m/blobs/x-partial-0: no space left on device", "/m")
    'cannot pull mistral: the disk is full (no space left in /m)'
    >>> pull_failure_line("nosuch", "pull nosuch failed: pull model manifest: file does not exist", "/m")
    'cannot pull nosuch: the registry has no model of that name'
    """
    text = error.lower()
    if "no space left on device" in text:
        reason = f"the disk is full (no space left in {models_dir})"
    elif "pull model manifest" in text and "file does not exist" in text:
        reason = "the registry has no model of that name"
    elif any(sign in text for sign in NO_NETWORK_SIGNS):
        reason = "no network (the model registry cannot be reached)"
    else:
        reason = one_line(error).removeprefix(f"pull {model} failed: ")
    return f"cannot pull {model}: {reason}"


def run_pull(
    base_url: str,
    model_name: str,
    *,
    models_dir: Path | str,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """``model pull NAME``: download a model with progress on ``err``; one line saying why when it fails."""
    out, err = _streams(out, err)
    renderer = ProgressRenderer(err)
    try:
        with OllamaClient(base_url, http=client) as api:
            pull_model(api, model_name, renderer)
    except OllamaAPIError as exc:
        renderer.close()
        err.write(f"ollama-manager: {pull_failure_line(model_name, str(exc), models_dir)}\n")
        return EXIT_FAILED
    except MODEL_FAILURES as exc:
        renderer.close()
        return _fail(err, exc)
    renderer.close()
    out.write(f"pulled {model_name}; make it the active model with `ollama-manager model use {model_name}`\n")
    return EXIT_OK


def run_cleanup(
    base_url: str,
    model_name: str,
    *,
    models_dir: Path | str,
    state_dir: Path | str,
    delete: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """``model cleanup [--delete]``: list what can go; delete it only with ``delete``."""
    out, err = _streams(out, err)
    try:
        report = cleanup_report(model_name, models_dir=models_dir, state_dir=state_dir)
        if report.empty:
            out.write("nothing to clean up\n")
            for item in report.leftovers.foreign:
                out.write(f"left alone (not a file Ollama makes): {item.path}\n")
            if report.leftovers.withheld:
                out.write(f"note: {report.leftovers.withheld}\n")
            return EXIT_OK
        for line in report.lines():
            out.write(line + "\n")
        if not delete:
            out.write("run with --delete to remove these\n")
            return EXIT_OK
        result = cleanup(base_url, model_name, models_dir=models_dir, state_dir=state_dir, client=client)
    except MODEL_FAILURES as exc:
        return _fail(err, exc)
    for problem in result.errors:
        err.write(f"error: {problem}\n")
    out.write(f"deleted {len(result.deleted)} item(s), freed {human_bytes(result.freed_bytes)}\n")
    return EXIT_FAILED if result.errors else EXIT_OK
