"""Following a server's log across the rotations Ollama's app and the manager make."""

from __future__ import annotations

import os

from tray.system.logs import LogTail


def test_lines_written_before_and_after_a_rotation_are_all_read(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("old start\n")
    tail = LogTail(log)
    assert tail.new_lines() == []  # the first look starts at the end
    with log.open("a") as handle:
        handle.write("before rotation\n")
    assert tail.new_lines() == ["before rotation"]
    with log.open("a") as handle:
        handle.write("cudaMalloc failed: out of memory\n")  # written, then the app rotates before the next look
    os.rename(log, tmp_path / "server-1.log")
    log.write_text("Listening on 127.0.0.1:11434\n")
    assert tail.new_lines() == ["cudaMalloc failed: out of memory", "Listening on 127.0.0.1:11434"]
    assert tail.new_lines() == []


def test_a_log_truncated_in_place_is_read_from_its_start(tmp_path):
    log = tmp_path / "ollama-server.log"
    log.write_text("a much longer first line\n")
    tail = LogTail(log)
    tail.new_lines()
    log.write_text("new\n")
    assert tail.new_lines() == ["new"]


def test_the_followed_file_can_change_with_the_servers_owner(tmp_path):
    ours, apps = tmp_path / "ollama-server.log", tmp_path / "app" / "server.log"
    ours.write_text("ours\n")
    apps.parent.mkdir()
    apps.write_text("app's\n")
    current = [ours]
    tail = LogTail(lambda: current[0])
    tail.new_lines()
    current[0] = apps
    assert tail.new_lines() == []  # a new file: its first look starts at its end
    with apps.open("a") as handle:
        handle.write("out of memory\n")
    assert tail.new_lines() == ["out of memory"]
    current[0] = None
    assert tail.new_lines() == []


def test_a_log_that_appears_later_is_read_from_its_start(tmp_path):
    log = tmp_path / "server.log"
    tail = LogTail(log)
    assert tail.new_lines() == []
    log.write_text("first\n")
    assert tail.new_lines() == ["first"]
    with log.open("a") as handle:
        handle.write("second\n")
    assert tail.new_lines() == ["second"]
