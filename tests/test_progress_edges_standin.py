"""Progress lines of another shape than Ollama's usual one are shown or skipped; the build goes on."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from standin.harness import StandinEnv
from tray.models.builder import ensure_model_loaded
from tray.models.keeper import activity_text
from tray.models.progress import ProgressEvent, ProgressRenderer

pytestmark = pytest.mark.process

MIB = 1024 * 1024

ODD_LINES = [
    {"status": "pulling <b>odd</b>\x1b[2J", "digest": "sha256:not-hex", "total": 100, "completed": 10},
    {"status": "pulling abc", "digest": "md5:1234", "total": 100},
    {"status": "pulling def", "digest": "sha256:" + "ab" * 32, "total": "big", "completed": "half"},
    {"status": "pulling def", "digest": "sha256:" + "ab" * 32, "total": -5, "completed": -1},
    {"status": "pulling def", "digest": "sha256:" + "ab" * 32, "total": 10, "completed": 99},
    {"status": "pulling def", "digest": "sha256:" + "ab" * 32, "total": 10**30, "completed": 1},
    {"status": "pulling def", "digest": ["sha256:x"], "completed": {"n": 1}},
    {"status": 42, "total": None, "completed": None},
]


@pytest.fixture
def served(standin: StandinEnv) -> StandinEnv:
    standin.spawn_serve()
    standin.wait_ready()
    return standin


@pytest.mark.parametrize("streamed_by", ["pull", "create"])
def test_odd_progress_lines_do_not_abort_the_build(served, tmp_path: Path, streamed_by: str) -> None:
    lines = [dict(line) for line in ODD_LINES]
    if streamed_by == "create":
        # the base is already pulled: only /api/create streams the odd lines
        assert served.ollama("pull", "llama3").returncode == 0
    served.set_faults(progress_lines=lines)
    modelfile = tmp_path / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You are brief.\n")
    seen: list[ProgressEvent] = []
    activities = []
    log = io.StringIO()
    renderer = ProgressRenderer(log, is_tty=False)
    bar = ProgressRenderer(io.StringIO(), is_tty=True, width=60)

    def progress(event: ProgressEvent) -> None:
        seen.append(event)
        activities.append(activity_text(event))
        renderer(event)
        bar(event)

    report = ensure_model_loaded(
        served.base_url,
        "uncensored-llama3",
        modelfile,
        models_dir=served.models_dir,
        state_dir=tmp_path / "state",
        progress=progress,
        min_free_bytes=64 * MIB,
    )
    assert report.action == "built"
    assert report.inference_ok is True
    for event in seen:
        assert event.fraction is None or 0.0 <= event.fraction <= 1.0
        assert "<" not in event.detail and "\x1b" not in event.detail
    assert all(fraction is None or 0.0 <= fraction <= 1.0 for _kind, _text, fraction in activities)
    text = log.getvalue()
    assert "\x1b" not in text and "<b>" not in text
    assert "pulling odd" in text or streamed_by == "create"
