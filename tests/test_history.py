import json
import os
import subprocess
import sys

from tray.history import History


def test_events_round_trip_in_order(tmp_path):
    clock = iter([1000.0, 1001.0, 1002.5])
    history = History(tmp_path / "h.sqlite3", wall_clock=lambda: next(clock))
    history.record("start", "Ollama started", {"pid": 1})
    history.record("crash", "Ollama exited unexpectedly (status -9)")
    history.record("restart", "restart attempt 1 succeeded")
    events = history.events()
    assert [(e.time, e.kind, e.message) for e in events] == [
        (1000.0, "start", "Ollama started"),
        (1001.0, "crash", "Ollama exited unexpectedly (status -9)"),
        (1002.5, "restart", "restart attempt 1 succeeded"),
    ]
    assert events[0].data == {"pid": 1}
    assert [e.kind for e in history.events(limit=2)] == ["crash", "restart"]
    assert events[1].to_json() == {
        "time": "1970-01-01T00:16:41.000+00:00",
        "kind": "crash",
        "message": "Ollama exited unexpectedly (status -9)",
    }


def test_recorded_events_survive_kill_9_of_the_writer(tmp_path):
    db = tmp_path / "h.sqlite3"
    script = (
        "import os, signal, sys\n"
        "from tray.history import History\n"
        "from pathlib import Path\n"
        f"h = History(Path({str(db)!r}))\n"
        "for i in range(50): h.record('tick', f'event {i}')\n"
        "print('written', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == -9 and done.stdout == "written\n"
    events = History(db).events()
    assert [e.message for e in events] == [f"event {i}" for i in range(50)]


def test_unwritable_database_keeps_events_in_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    history = History(blocker / "h.sqlite3")
    history.record("start", "still recorded")
    assert [e.message for e in history.events()] == ["still recorded"]
