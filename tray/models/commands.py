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

from tray.models.builder import (
    ModelReport,
    cleanup,
    cleanup_report,
    ensure_model_loaded,
    load_records,
    override_words,
    rebuild,
    verify,
)
from tray.models.errors import ModelError
from tray.models.progress import ProgressRenderer, human_bytes
from tray.models.store import list_models, parse_model_name

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DAMAGED = 2


def _streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    return out or sys.stdout, err or sys.stderr


def _fail(err: TextIO, exc: ModelError) -> int:
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
    except ModelError as exc:
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
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``model list``: the models in the store, marking the active one and the manager's builds."""
    out, err = _streams(out, err)
    try:
        active = parse_model_name(model_name)
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
    except ModelError as exc:
        return _fail(err, exc)
    for problem in result.errors:
        err.write(f"error: {problem}\n")
    out.write(f"deleted {len(result.deleted)} item(s), freed {human_bytes(result.freed_bytes)}\n")
    return EXIT_FAILED if result.errors else EXIT_OK
