import subprocess
import sys

import pytest

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


@pytest.mark.process
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
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == -9 and done.stdout == "written\n"
    events = History(db).events()
    assert [e.message for e in events] == [f"event {i}" for i in range(50)]


def test_unwritable_database_keeps_events_in_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    history = History(blocker / "h.sqlite3")
    history.record("start", "still recorded")
    assert [e.message for e in history.events()] == ["still recorded"]


def test_a_simulated_week_of_samples_stays_bounded(tmp_path):
    from tray.history import Retention

    now = [0.0]
    history = History(tmp_path / "h.sqlite3", wall_clock=lambda: now[0])
    retention = Retention(raw_seconds=24 * 3600, bucket_seconds=600, keep_seconds=3 * 24 * 3600)
    interval = 30.0
    for tick in range(7 * 24 * 3600 // int(interval)):
        now[0] = tick * interval
        history.record_sample(
            {"health": "down" if tick == 5 else "healthy", "latency_ms": 100.0 + tick % 2, "memory_mb": 4096.0}
        )
        if tick % 120 == 0:  # hourly, as the monitor does
            history.compact(retention)
    history.compact(retention)
    samples = history.samples()
    raw = [s for s in samples if s["span"] == 0]
    averaged = [s for s in samples if s["span"] == 600]
    assert len(raw) <= 24 * 3600 / interval + 20 + 1  # a day of raw samples (plus one unaligned bucket)
    assert len(averaged) <= (3 * 24 * 3600 - 24 * 3600) / 600 + 2  # two more days of 10-minute rows
    assert samples[0]["time"] >= now[0] - 3 * 24 * 3600
    assert all(s["latency_ms"] == 100.5 and s["memory_mb"] == 4096.0 for s in averaged)
    size_after_week = (tmp_path / "h.sqlite3").stat().st_size
    # Another week adds nothing to the bound.
    for tick in range(7 * 24 * 3600 // int(interval), 14 * 24 * 3600 // int(interval)):
        now[0] = tick * interval
        history.record_sample({"health": "healthy", "latency_ms": 100.0, "memory_mb": 4096.0})
        if tick % 120 == 0:
            history.compact(retention)
    history.compact(retention)
    assert len(history.samples()) <= len(samples) + 21
    history.close()
    wal = tmp_path / "h.sqlite3-wal"
    total = (tmp_path / "h.sqlite3").stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert total < 4 * size_after_week + 2**20


def test_compaction_keeps_the_worst_health_of_a_bucket(tmp_path):
    from tray.history import Retention

    now = [0.0]
    history = History(tmp_path / "h.sqlite3", wall_clock=lambda: now[0])
    for t, health in [(0, "healthy"), (30, "down"), (60, "unhealthy")]:
        now[0] = t
        history.record_sample({"health": health, "latency_ms": 10.0})
    now[0] = 10 * 3600
    history.compact(Retention(raw_seconds=3600, bucket_seconds=600))
    assert [(s["time"], s["span"], s["health"], s["latency_ms"]) for s in history.samples()] == [(0, 600, "down", 10.0)]


# --------------------------------------------------------------------------- a damaged or deleted database


def damage(db) -> None:
    """A history database whose first page is overwritten, as a crash of the disk or a stray write leaves it."""
    history = History(db)
    history.record("start", "Ollama started")
    history.close()  # the last connection checkpoints the log into the file and removes it
    with open(db, "r+b") as handle:
        handle.write(b"this is no longer a database" * 4)


def test_a_damaged_database_is_moved_aside_and_started_afresh_with_an_event(tmp_path):
    db = tmp_path / "history.sqlite3"
    damage(db)
    history = History(db, repair=True)
    assert history.problem is None
    aside = [path for path in tmp_path.iterdir() if path.name.startswith("history.sqlite3.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is no longer a database")
    events = history.events()
    assert [event.kind for event in events] == ["error"]
    assert events[0].message.startswith("the history database was damaged (file is not a database); moved it to ")
    assert events[0].message.endswith(f"{aside[0]} and started afresh")
    history.record("start", "Ollama started")
    assert [event.kind for event in History(db).events()] == ["error", "start"]  # written to the new file


def test_a_reader_says_the_database_is_damaged_and_leaves_it_alone(tmp_path):
    db = tmp_path / "history.sqlite3"
    damage(db)
    history = History(db)
    assert history.problem == (
        f"{db} is damaged (file is not a database); Ollama Manager starts it afresh at its next start"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["history.sqlite3"]


def test_a_database_deleted_while_in_use_is_started_afresh_at_the_next_sample(tmp_path):
    db = tmp_path / "history.sqlite3"
    history = History(db, repair=True)
    history.record("start", "Ollama started")
    for path in tmp_path.iterdir():
        path.unlink()
    history.record_sample({"health": "healthy", "latency_ms": 12})
    events = History(db).events()
    assert [(event.kind, event.message) for event in events] == [
        ("error", f"the history database {db} was deleted; started afresh")
    ]
    assert len(History(db).samples()) == 1


def test_events_and_metrics_say_when_the_history_is_unavailable(tmp_path, monkeypatch, capsys):
    from tray.cli import main

    for name, folder in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.delenv("OLLAMA_MANAGER_CONFIG", raising=False)
    db = tmp_path / "data" / "ollama-manager" / "history.sqlite3"
    db.parent.mkdir(parents=True)
    damage(db)
    for argv in (["events"], ["metrics"], ["events", "--json"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"ollama-manager: the history is unavailable: {db} is damaged (file is not a database); "
            "Ollama Manager starts it afresh at its next start\n"
        )
