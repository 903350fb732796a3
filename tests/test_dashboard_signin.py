"""Opening the dashboard puts no secret where another local user can read it.

``ollama-manager dashboard`` runs the browser (here a recording stand-in named by
``BROWSER``, as ``webbrowser`` honours it) while a second, unprivileged user
polls every ``/proc/*/cmdline`` and tries to redeem whatever it finds; it must
find neither the token nor a usable code. The code the browser's page holds
still signs the owner in, once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from standin.harness import StandinEnv, free_port
from tests.support.manager import Manager, wait_until
from tests.support.users import Accounts, can_switch_users, popen_as, run_as, shared_dir
from tray.dashboard.launch import dashboard_command, open_dashboard
from tray.system.monitor_record import read_record
from tray.system.paths import AppPaths
from tray.web.signin import MINT, REDEEM

PROJECT = Path(__file__).resolve().parent.parent

# Stays open (its argv visible in /proc) until the test lets it go, like a browser that keeps running.
HOLDING_BROWSER = """#!{python}
import json, os, sys, time
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
deadline = time.monotonic() + 30
while not os.path.exists({release!r}) and time.monotonic() < deadline:
    time.sleep(0.02)
"""

# Run by the other user with the system's Python: every argument of every process it can see,
# and every code-looking part of each, is tried on the dashboard's sign-in; the results go to stdout.
POLLER = """
import json, os, re, sys, time, urllib.error, urllib.parse, urllib.request
base, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
stop_file = sys.argv[3]
seen, tried, redeemed = set(), set(), []
def try_code(code):
    if code in tried:
        return
    tried.add(code)
    data = urllib.parse.urlencode({"code": code}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/signin", data=data), timeout=5) as answer:
            if answer.status == 200:
                redeemed.append(code)
    except (urllib.error.URLError, OSError):
        pass
while time.monotonic() < until and not os.path.exists(stop_file):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = tuple(f.read().decode("utf-8", "replace").rstrip("\\0").split("\\0"))
        except OSError:
            continue
        if args in seen:
            continue
        seen.add(args)
        for arg in args:
            for candidate in {arg, *re.findall(r"[A-Za-z0-9_-]{16,}", arg)}:
                try_code(candidate)
    time.sleep(0.005)
print(json.dumps({"seen": [list(a) for a in seen], "redeemed": redeemed}))
"""


class StatusApi:
    """A real ``ollama-manager monitor`` for this user (no Ollama on its host): token rotated at its start,
    monitor.json written. It must be the manager's own process: the CLI trusts monitor.json only then."""

    def __init__(self, env: dict[str, str], paths: AppPaths, workdir: Path) -> None:
        self.paths = paths
        self.log = (workdir / "monitor.log").open("w")
        monitor_env = {
            **env,
            "PATH": "/usr/bin:/bin",
            "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
            "OLLAMA_MANAGER_STATUS_PORT": "0",
            "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "false",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tray", "monitor"], env=monitor_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        record = wait_until(lambda: read_record(paths.monitor_file), 60, what="the monitor to write monitor.json")
        self.port = record.port
        self.token = paths.api_token.read_text().strip()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], AppPaths]:
    """This user's folders, in this process (``monkeypatch``) and for the commands it runs (the env returned)."""
    folders = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    (tmp_path / "run").mkdir(mode=0o700)
    for key, value in folders.items():
        monkeypatch.setenv(key, value)
    paths = AppPaths.default()
    paths.make_private()
    return {**os.environ, **folders, "PYTHONPATH": str(PROJECT)}, paths


@pytest.fixture
def api(user_dirs: tuple[dict[str, str], AppPaths], tmp_path: Path) -> Iterator[StatusApi]:
    running = StatusApi(*user_dirs, tmp_path)
    yield running
    running.stop()


def holding_browser(workdir: Path) -> tuple[Path, Path, Path]:
    command, log, release = workdir / "bin" / "browser", workdir / "browser.jsonl", workdir / "release"
    command.parent.mkdir(parents=True)
    command.write_text(HOLDING_BROWSER.format(python=sys.executable, log=str(log), release=str(release)))
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    return command, log, release


def dashboard(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "import sys; from tray.cli import main; sys.exit(main())", "dashboard", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def redeem(base: str, code: str) -> httpx.Response:
    return httpx.post(base + REDEEM, data={"code": code}, trust_env=False, timeout=10)


def code_in(page: Path) -> str:
    match = re.search(r'name="code" value="([^"]+)"', page.read_text())
    assert match, page.read_text()
    return match.group(1)


@pytest.mark.process
def test_the_browser_opens_a_private_page_that_signs_in_once(
    api: StatusApi, user_dirs: tuple[dict[str, str], AppPaths], tmp_path: Path
) -> None:
    env, paths = user_dirs
    command, log, release = holding_browser(tmp_path)
    release.touch()
    done = dashboard({**env, "BROWSER": str(command)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    [argv] = [json.loads(line) for line in log.read_text().splitlines()]
    page = paths.signin_page
    assert argv[1:] == [page.as_uri()]
    assert page.parent == tmp_path / "run" / "ollama-manager"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    assert api.token not in page.read_text()
    assert f'action="{api.base}/signin"' in page.read_text()
    code = code_in(page)
    first = redeem(api.base, code)
    assert first.status_code == 200
    assert api.token in first.text and "no-store" in first.headers["cache-control"]
    assert redeem(api.base, code).status_code == 403  # once only


@pytest.mark.process
def test_dashboard_url_prints_the_page_address_and_no_secret(
    api: StatusApi, user_dirs: tuple[dict[str, str], AppPaths]
) -> None:
    env, paths = user_dirs
    done = dashboard(env, "--url")
    assert (done.returncode, done.stdout, done.stderr) == (0, paths.signin_page.as_uri() + "\n", "")
    assert redeem(api.base, code_in(paths.signin_page)).status_code == 200


def test_without_a_running_manager_it_says_so_in_one_line(user_dirs: tuple[dict[str, str], AppPaths]) -> None:
    err = io.StringIO()
    assert dashboard_command(argparse.Namespace(url=True), user_dirs[1], out=io.StringIO(), err=err) == 1
    assert err.getvalue() == (
        "ollama-manager: the manager is not running: start the tray app or `ollama-manager monitor` first\n"
    )


@pytest.mark.process
def test_a_browser_that_cannot_start_is_one_line(api: StatusApi, user_dirs: tuple[dict[str, str], AppPaths]) -> None:
    err = io.StringIO()
    status = dashboard_command(argparse.Namespace(url=False), user_dirs[1], open_browser=lambda url: False, err=err)
    assert (status, err.getvalue()) == (
        1,
        "ollama-manager: no web browser could be started: run `ollama-manager dashboard --url`\n",
    )


@pytest.mark.process
def test_the_tray_item_opens_the_same_private_page(api: StatusApi, user_dirs: tuple[dict[str, str], AppPaths]) -> None:
    opened: list[str] = []
    url = open_dashboard(user_dirs[1], open_browser=lambda u: opened.append(u) or True)
    assert opened == [url] == [user_dirs[1].signin_page.as_uri()]
    assert redeem(api.base, code_in(user_dirs[1].signin_page)).status_code == 200


@pytest.mark.process
def test_a_code_needs_the_token_and_a_wrong_code_is_refused(api: StatusApi) -> None:
    assert httpx.post(api.base + MINT, trust_env=False).status_code == 401
    minted = httpx.post(api.base + MINT, headers={"Authorization": f"Bearer {api.token}"}, trust_env=False).json()
    assert minted["ok"] and minted["expires_in"] == 60
    assert redeem(api.base, minted["code"] + "x").status_code == 403
    assert redeem(api.base, "").status_code == 403
    assert redeem(api.base, minted["code"]).status_code == 200


@pytest.mark.process
def test_the_token_rotates_at_each_start_of_the_monitor(standin: StandinEnv, tmp_path: Path) -> None:
    manager = Manager(standin.env, tmp_path)
    token_file = Path(standin.env["XDG_STATE_HOME"]) / "ollama-manager" / "api-token"
    tokens = []
    try:
        for _ in range(2):
            manager.spawn_monitor()
            manager.wait_monitor_ready(60)
            tokens.append(token_file.read_text().strip())
            assert manager.action("check")  # the CLI's way of finding the token finds the new one
            manager.cleanup()
    finally:
        manager.cleanup()
    assert tokens[0] != tokens[1]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


@pytest.mark.process
@pytest.mark.skipif(not can_switch_users(), reason="needs root to run a second user")
def test_another_user_polling_proc_finds_neither_the_token_nor_a_usable_code(
    api: StatusApi, user_dirs: tuple[dict[str, str], AppPaths], accounts: Accounts, tmp_path: Path
) -> None:
    env, paths = user_dirs
    other = accounts.regular("snoop")
    shared = shared_dir("om-snoop-")
    try:
        poller, stop = shared / "poll.py", shared / "stop"
        poller.write_text(textwrap.dedent(POLLER))
        poller.chmod(0o644)
        command, log, release = holding_browser(tmp_path)
        snoop = popen_as(
            other,
            ["/usr/bin/python3", str(poller), api.base, "60", str(stop)],
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.5)  # the poller's first sweep of /proc is under way before the browser starts
            opener = subprocess.Popen(
                [sys.executable, "-c", "import sys; from tray.cli import main; sys.exit(main())", "dashboard"],
                env={**env, "BROWSER": str(command)},
            )
            deadline = time.monotonic() + 30
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            # Hold the browser until the other user's poller has seen it (and tried what it found).
            time.sleep(1.0)
            stop.touch()
            out, err = snoop.communicate(timeout=60)
        finally:
            release.touch()
            if snoop.poll() is None:
                snoop.kill()
                snoop.wait()
        assert opener.wait(timeout=30) == 0
        assert snoop.returncode == 0, err
        report = json.loads(out)
        browser_argv = json.loads(log.read_text().splitlines()[0])
        # The poller did see the browser's command line (run through its interpreter, by the script's first line).
        assert [argv for argv in report["seen"] if argv[-len(browser_argv) :] == browser_argv]
        assert not [argv for argv in report["seen"] if any(api.token in arg for arg in argv)]
        assert report["redeemed"] == []
        # The page's code is the owner's alone: unreadable by the other user, and it still signs the owner in.
        peek = run_as(other, ["/bin/cat", str(paths.signin_page)], env={"PATH": "/usr/bin:/bin"})
        assert peek.returncode != 0
        assert redeem(api.base, code_in(paths.signin_page)).status_code == 200
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_stale_monitor_record_prints_no_token_and_says_why(tmp_path: Path) -> None:
    """monitor.json naming a live process that is not the manager (this one, listening on the port): no URL."""
    import socket

    import psutil

    paths = AppPaths(tmp_path / "c", tmp_path / "l", tmp_path / "d", tmp_path / "s")
    paths.state_dir.mkdir(parents=True)
    paths.api_token.write_text("s3cret\n")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        started = psutil.Process().create_time()
        record = {"pid": os.getpid(), "port": squatter.getsockname()[1], "started": started}
        paths.monitor_file.write_text(json.dumps(record))
        out, err = io.StringIO(), io.StringIO()
        assert dashboard_command(argparse.Namespace(url=True), paths, out=out, err=err) == 1
    assert (out.getvalue(), err.getvalue()) == (
        "",
        f"ollama-manager: the manager is not running (monitor.json is stale: pid {os.getpid()} is another program): "
        "start the tray app or `ollama-manager monitor` first\n",
    )
