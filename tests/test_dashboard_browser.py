"""The dashboard end to end: headless Chromium, the running app, the stand-in Ollama.

The app runs as its own process (monitor, status API with the dashboard
mounted) against the stand-in ``ollama``; Debian's ``chromium`` is driven by
Playwright without its own browser download. Set ``DASHBOARD_SCREENSHOT`` to a
path to keep the dashboard screenshot taken at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from standin.harness import StandinEnv, free_port, same_process
from tests.support.manager import in_thread, wait_until
from tray.dashboard.launch import dashboard_command
from tray.settings.config import Config
from tray.system.paths import AppPaths

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# What `ollama-manager monitor` runs, with the dashboard mounted in its status API,
# for as long as the CLI does not mount it itself.
APP_SCRIPT = """
import os, signal, sys, threading
import uvicorn
from tray.settings.config import load_config
from tray.dashboard.routes import Dashboard, mount_dashboard
from tray.history import History
from tray.service.monitor import Monitor
from tray.system.paths import AppPaths
from tray.web.status_api import build_app, load_or_create_token, write_monitor_file
from tray.service.supervisor import Supervisor

paths = AppPaths.default()
config = load_config(sys.argv[1], paths=paths)
history = History(paths.history_db)
monitor = Monitor(Supervisor(config, paths, history), config, history)
token = load_or_create_token(paths.api_token)
dashboard = Dashboard(monitor, history, token)
app = mount_dashboard(build_app(monitor, history, token), dashboard)
server = uvicorn.Server(
    uvicorn.Config(app, host="127.0.0.1", port=config.status_port, log_level="warning", lifespan="off")
)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
serving = threading.Thread(target=server.run)
serving.start()
monitor.start()
write_monitor_file(paths.monitor_file, os.getpid(), config.status_port)
stop.wait()
dashboard.close()
server.should_exit = True
serving.join(10)
monitor.stop()
history.close()
"""


def app_command(config: Path) -> list[str]:
    """The app's command line: ``ollama-manager monitor`` once the CLI serves the dashboard."""
    from tray.cli import COMMANDS

    if "dashboard" in COMMANDS:
        return [sys.executable, "-m", "tray", "--config", str(config), "monitor"]
    return [sys.executable, "-c", APP_SCRIPT, str(config)]


def config_text(status_port: int, modelfile: Path, auto_build: bool) -> str:
    return f"""# Dashboard test settings; this comment must survive saves.
health_check_interval = 0.5  # fast, for the test
health_check_timeout = 2
stop_timeout = 1
startup_timeout = 10
status_port = {status_port}
auto_build_model = {"true" if auto_build else "false"}
modelfile = "{modelfile}"
"""


class App:
    """The manager as a process, restartable, always reaped."""

    def __init__(self, standin: StandinEnv, workdir: Path, auto_build: bool) -> None:
        self.standin = standin
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "config.toml"
        modelfile = workdir / "uncensored.Modelfile"
        modelfile.write_text("FROM llama3\nSYSTEM You answer briefly.\n")
        self.config.write_text(config_text(self.port, modelfile, auto_build))
        env = standin.env
        self.paths = AppPaths(
            config_dir=Path(env["XDG_CONFIG_HOME"]) / "ollama-manager",
            log_dir=Path(env["XDG_STATE_HOME"]) / "ollama-manager" / "log",
            data_dir=Path(env["XDG_DATA_HOME"]) / "ollama-manager",
            state_dir=Path(env["XDG_STATE_HOME"]) / "ollama-manager",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.workdir / f"app-{self.runs}.log", "wb")  # noqa: SIM115 - handed to the child
        self.runs += 1
        with log:
            self.process = subprocess.Popen(
                app_command(self.config),
                env=self.standin.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.wait_answering()

    def wait_answering(self, timeout: float = 15.0) -> None:
        def answering() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                return httpx.get(self.base + "/api/status", timeout=1, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answering, timeout, interval=0.05, what="the app's status API")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
                raise AssertionError(f"the app did not stop on SIGTERM:\n{self.log()}") from None
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self) -> str:
        """The address `ollama-manager dashboard --url` prints: a private sign-in page, good once."""
        out = io.StringIO()

        def printed() -> bool:
            # The status API answers a moment before the app has written where it listens.
            out.seek(0)
            out.truncate()
            return dashboard_command(argparse.Namespace(url=True), self.paths, out=out, err=io.StringIO()) == 0

        wait_until(printed, 10, interval=0.05, what="`ollama-manager dashboard --url`")
        return out.getvalue().strip()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("app-*.log")))


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def start_app(standin: StandinEnv, tmp_path: Path, auto_build: bool) -> App:
    app = App(standin, tmp_path, auto_build)
    app.start()
    return app


@pytest.fixture
def app(standin: StandinEnv, tmp_path: Path) -> Iterator[App]:
    running = start_app(standin, tmp_path, auto_build=False)
    try:
        yield running
    finally:
        running.stop()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A new tab at ``url``, and the list its script errors are collected in."""
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


def open_signed_in(browser: Any, app: App, page: str = "/") -> tuple[Any, list[str]]:
    """A new tab signed in the way `ollama-manager dashboard` does it, then at ``page`` of the dashboard."""
    tab, errors = open_page(browser, app.url())
    tab.wait_for_url(app.base + "/")
    if page != "/":
        tab.goto(app.base + page)
    return tab, errors


def wait_until_true(page: Any, expression: str, timeout_ms: int = TIMEOUT_MS) -> None:
    page.wait_for_function(f"() => {expression}", timeout=timeout_ms)  # a function: the page's CSP forbids eval


def wait_for_text(page: Any, element_id: str, text: str, timeout_ms: int = TIMEOUT_MS) -> None:
    wait_until_true(page, f"document.getElementById({element_id!r}).textContent === {text!r}", timeout_ms)


def wait_for_outcome(page: Any, element_id: str, outcome: str) -> None:
    wait_until_true(page, f"document.getElementById({element_id!r}).dataset.outcome === {outcome!r}")


def serve_pid(standin: StandinEnv) -> int:
    """The newest ``ollama serve``; it must be alive."""
    pid = standin.serve_pids()[-1]
    assert same_process(pid, None) is not None
    return pid


WATCH_HEALTH = """() => {
  window.stillTheSamePage = true;
  window.healthSeen = [];
  const word = document.getElementById("health-word");
  new MutationObserver(() => window.healthSeen.push(word.textContent))
    .observe(word, { childList: true, characterData: true, subtree: true });
}"""


def test_health_stays_live_through_a_kill_and_restart_from_the_page(
    app: App, standin: StandinEnv, browser: Any
) -> None:
    page, errors = open_signed_in(browser, app)
    assert page.url == app.base + "/"  # signed in, and no secret in the address or the history
    wait_for_text(page, "health-word", "healthy")
    wait_for_text(page, "connection", "live")
    assert page.is_enabled("button[data-action=restart]")

    page.evaluate(WATCH_HEALTH)
    killed = serve_pid(standin)
    os.kill(killed, signal.SIGKILL)
    wait_until_true(page, "window.healthSeen.includes('down')")
    wait_for_text(page, "health-word", "healthy")
    page.wait_for_selector("#timeline li[data-kind=crash]")
    assert serve_pid(standin) != killed

    before = serve_pid(standin)
    page.click("button[data-action=restart]")
    wait_for_outcome(page, "action-result", "ok")
    assert serve_pid(standin) != before
    assert len(standin.serve_pids()) == 3  # the first, the one after the kill, the one the page asked for
    wait_for_text(page, "health-word", "healthy")
    page.wait_for_selector("#timeline li[data-kind=restart]")
    assert "Ollama restarted by the user" in page.text_content("#timeline")
    assert page.evaluate("window.stillTheSamePage") is True
    assert errors == []


def test_settings_are_saved_survive_an_app_restart_and_bad_values_are_refused(
    standin: StandinEnv, tmp_path: Path, browser: Any
) -> None:
    app = start_app(standin, tmp_path, auto_build=True)
    try:
        dashboard, dashboard_errors = open_signed_in(browser, app)
        wait_for_text(dashboard, "connection", "live")
        check_settings_page(app, browser)
        # The dashboard's stream did not stop the app from stopping; it comes back by itself.
        wait_for_text(dashboard, "connection", "live")
        wait_for_text(dashboard, "health-word", "healthy")
        screenshot_dashboard(dashboard, tmp_path)
        assert dashboard_errors == []
    finally:
        app.stop()


def check_settings_page(app: App, browser: Any) -> None:
    page, errors = open_signed_in(browser, app, "/settings")
    interval = "[data-key=health_check_interval] input"
    cpu = "[data-key='alerts.cpu_percent'] input"
    page.wait_for_selector(interval)
    assert page.input_value(interval) == "0.5"
    original = app.config.read_bytes()
    check_command_only_keys_are_read_only(app, page)

    page.fill(interval, "-1")
    page.click("#save")
    wait_for_outcome(page, "save-result", "failed")
    error = "health_check_interval must be at least 0.1, got -1"
    assert page.text_content("#error-health_check_interval") == error
    assert page.text_content("#save-result") == f"Not saved: {error}"
    assert app.config.read_bytes() == original

    page.fill(interval, "0.75")
    page.fill(cpu, "70")
    page.click("#save")
    wait_for_outcome(page, "save-result", "ok")
    assert page.text_content("#save-result") == (
        f"Saved 2 settings to {app.config}. Applied now: health_check_interval. "
        "After the app restarts: alerts.cpu_percent."
    )
    saved = app.config.read_text()
    assert saved.startswith("# Dashboard test settings; this comment must survive saves.\n")
    assert "health_check_interval = 0.75  # fast, for the test\n" in saved
    assert saved.endswith("\n[alerts]\ncpu_percent = 70\n")
    assert page.is_visible("[data-key='alerts.cpu_percent'] .badge.pending")

    refused = httpx.post(app.base + "/api/settings", json={"values": {"stop_timeout": 2}}, trust_env=False)
    assert refused.status_code == 401
    assert app.config.read_text() == saved
    assert errors == []

    app.restart()
    page, errors = open_page(browser, app.base + "/settings")  # a new tab, without the token: read only
    page.wait_for_selector(interval)
    assert (page.input_value(interval), page.input_value(cpu)) == ("0.75", "70")
    assert not page.is_visible("[data-key='alerts.cpu_percent'] .badge.pending")
    assert page.is_disabled("#save")
    assert errors == []


POST_WITH_THE_PAGES_TOKEN = """async (values) => {
  const token = sessionStorage.getItem("ollama-manager-token");
  const response = await fetch("/api/settings", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({ values }),
  });
  return [response.status, await response.json()];
}"""


def check_command_only_keys_are_read_only(app: App, page: Any) -> None:
    """What chooses a program, an address or where data goes is shown, not editable, with its command."""
    binary = "[data-key=ollama_binary] input"
    modelfile = "[data-key=modelfile] input"
    assert page.input_value(modelfile) == str(app.workdir / "uncensored.Modelfile")
    assert not page.is_editable(binary) and not page.is_editable(modelfile)
    assert page.is_disabled("[data-key='ollama_server.expose'] input")
    assert page.text_content("[data-key=ollama_binary] .command code") == (
        f"ollama-manager --config {app.config} config set ollama_binary /path/to/ollama"
    )
    assert page.is_visible("[data-key='cloud.base_url'] .badge.read-only")
    status, answer = page.evaluate(POST_WITH_THE_PAGES_TOKEN, {"ollama_binary": "/tmp/evil/ollama"})
    assert (status, answer["error"]) == (
        403,
        "ollama_binary is changed only from a terminal on this machine: "
        f"ollama-manager --config {app.config} config set ollama_binary /tmp/evil/ollama",
    )


def screenshot_dashboard(page: Any, tmp_path: Path) -> None:
    wait_for_text(page, "model-parameters", "8.0B", timeout_ms=60_000)
    page.wait_for_timeout(1500)  # one more history refresh, so the charts have points
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


@pytest.mark.skipif(
    "ollama_server" not in Config.__dataclass_fields__,
    reason="the [ollama_server] section is not wired into Config yet",
)
def test_server_settings_reach_the_next_ollama_the_page_starts(app: App, standin: StandinEnv, browser: Any) -> None:
    page, errors = open_signed_in(browser, app, "/settings")
    page.fill("[data-key='ollama_server.keep_alive'] input", "45m")
    page.fill("[data-key='ollama_server.num_parallel'] input", "2")
    page.click("#save")
    wait_for_outcome(page, "save-result", "ok")
    assert page.text_content("#save-result") == (
        f"Saved 2 settings to {app.config}. "
        "When Ollama next starts: ollama_server.keep_alive, ollama_server.num_parallel."
    )
    before = serve_pid(standin)
    page.click("nav a[href='/']")
    wait_for_text(page, "health-word", "healthy")
    page.click("button[data-action=restart]")
    wait_for_outcome(page, "action-result", "ok")
    environment = psutil.Process(serve_pid(standin)).environ()
    assert serve_pid(standin) != before
    assert (environment["OLLAMA_KEEP_ALIVE"], environment["OLLAMA_NUM_PARALLEL"]) == ("45m", "2")
    assert errors == []


def model_row(model: str) -> str:
    return f"#models tr[data-model='{model}']"


def test_choosing_a_model_on_the_page_switches_the_probe_and_status_while_the_old_answer_finishes(
    standin: StandinEnv, tmp_path: Path, browser: Any
) -> None:
    app = App(standin, tmp_path, auto_build=False)
    with app.config.open("a") as config:
        config.write('ollama_model = "llama3"  # the Modelfile model, pulled here rather than built\n')
    app.start()
    try:
        page, errors = open_signed_in(browser, app)
        wait_for_text(page, "health-word", "healthy")
        standin.pull("llama3")
        standin.pull("mistral")
        page.wait_for_selector(model_row("mistral:latest"))
        assert page.is_checked(f"{model_row('llama3:latest')} input")
        assert page.text_content(f"{model_row('llama3:latest')} .badge") == "Modelfile"
        assert not page.is_checked(f"{model_row('mistral:latest')} input")
        assert page.is_disabled("#use-modelfile")

        standin.set_faults(token_ms=40, tokens=100, load_ms=2000)

        answer = in_thread(lambda: standin.generate("llama3", "go on"))
        wait_until(lambda: standin.runner_pid("llama3:latest"), 30, what="llama3 loaded for the long answer")
        page.click(f"{model_row('mistral:latest')} input")
        wait_for_outcome(page, "model-result", "ok")
        assert page.text_content("#model-result") == "Using mistral:latest"
        wait_until_true(page, "document.getElementById('model-loading').textContent.startsWith('Loading mistral')")
        page.wait_for_selector(f"{model_row('mistral:latest')}[data-active=true]")
        assert not page.is_checked(f"{model_row('llama3:latest')} input")
        wait_for_text(page, "model-loading", "", timeout_ms=30_000)
        page.wait_for_selector(f"{model_row('mistral:latest')} .in-memory:text-is('loaded')")
        done = answer()
        assert done["done"] is True and done["eval_count"] == 100  # the old model finished its answer
        standin.clear_faults()
        wait_until(lambda: standin.probes_answered("mistral:latest") >= 2, 30, what="the health probe asking mistral")
        status = httpx.get(app.base + "/api/status", timeout=5, trust_env=False).json()
        assert (status["model"], status["model_loaded"]) == ("mistral:latest", "mistral:latest")

        page.click("#use-modelfile")
        wait_for_outcome(page, "model-result", "ok")
        page.wait_for_selector(f"{model_row('llama3:latest')}[data-active=true]")
        assert page.is_checked(f"{model_row('llama3:latest')} input")
        assert errors == []
    finally:
        app.stop()
