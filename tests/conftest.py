"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from standin.harness import StandinEnv
from tests.support.manager import Manager, cleanup_managers
from tests.support.spawn_guard import (
    MARKER,
    UnmarkedProcess,
    deselects_process_tests,
    marked_as_a_whole,
    refuse_processes,
    unmarked_message,
)
from tests.support.system_install import OllamaService, SystemdStandin, session_manager
from tests.support.users import Account, Accounts, UserRuntime, build_user_runtime, can_switch_users, scratch

# The stand-in's modules import each other by their bare names, as its `ollama` script runs them; they are
# not importable as `standin.*` for doctest collection (tests/test_standin*.py test them through the script).
collect_ignore_glob = ["standin/standin_*.py"]


# --- the `process` marker: a test that starts a process says so, or fails ----------------------------


def _refusing_processes(item: pytest.Item) -> Generator[None, object, object]:
    """Runs one phase of ``item`` (setup, call or teardown); without the marker, starting a process fails it."""
    # The pure run is Linux's; on macOS and Windows CI runs its list of test files whole (packaging/ci_smoke.py).
    if item.get_closest_marker(MARKER) is not None or not sys.platform.startswith("linux"):
        return (yield)
    with refuse_processes(item.nodeid) as attempts:
        try:
            result = yield
        except BaseException as exc:
            if attempts and not isinstance(exc, UnmarkedProcess):
                raise UnmarkedProcess(unmarked_message(item.nodeid, attempts[0])) from exc
            raise
    if attempts:  # refused where the test caught the error, or in a thread of its own
        raise UnmarkedProcess(unmarked_message(item.nodeid, attempts[0]))
    return result


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_refusing_processes)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_refusing_processes)
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(_refusing_processes)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In a run that deselects every ``process`` test, a module marked ``process`` as a whole is not even imported."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if not deselects_process_tests(config.option.markexpr):
        return None
    return marked_as_a_whole(collection_path.read_text(encoding="utf-8")) or None


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandinEnv]:
    """An isolated stand-in Ollama environment (not started); every process it spawned is killed afterwards."""
    env = StandinEnv(tmp_path)
    try:
        yield env
    finally:
        cleanup_managers()  # first: a monitor still running would start a serve that nothing reaps
        env.cleanup()


# --- other users: the manager as a desktop user, Ollama as a system service ------------------------


@pytest.fixture
def session_bus() -> Iterator[str]:
    """A private D-Bus session bus (its address), for notification and tray tests."""
    from tests.support.notification_server import NoDbusDaemon, private_session_bus

    try:
        with private_session_bus() as address:
            yield address
    except NoDbusDaemon:
        pytest.skip("dbus-daemon is not installed")


@pytest.fixture(scope="session")
def user_runtime() -> Iterator[UserRuntime]:
    """A Python (venv from Debian's python3, with the runtime dependencies) and the code, usable by any user."""
    if not can_switch_users():
        pytest.skip("running processes as other users needs root, useradd and Debian's /usr/bin/python3")
    with scratch("om-runtime-") as root:
        yield build_user_runtime(root)


@pytest.fixture
def accounts(user_runtime: UserRuntime) -> Iterator[Accounts]:
    """Creates users for this test (``accounts.regular()``, ``accounts.system(role, home)``); removes them after."""
    with scratch("om-accounts-") as root:
        made = Accounts(root)
        try:
            yield made
        finally:
            made.cleanup()


@pytest.fixture
def desktop_user(accounts: Accounts) -> Account:
    """A regular user, as the person logged in to the desktop."""
    return accounts.regular("desk")


@pytest.fixture
def systemd(user_runtime: UserRuntime) -> Iterator[SystemdStandin]:
    """The stand-in service manager, running (as root) with no units yet."""
    with scratch("om-systemd-") as root:
        manager = SystemdStandin(root, user_runtime)
        manager.start()
        try:
            yield manager
        finally:
            manager.stop()


@pytest.fixture
def ollama_service(accounts: Accounts, user_runtime: UserRuntime, systemd: SystemdStandin) -> Iterator[OllamaService]:
    """Ollama installed by install.sh (not started): ``ollama.service`` running the stand-in as a system account."""
    with scratch("om-install-") as root:
        service = OllamaService(root, accounts, user_runtime, systemd)
        try:
            yield service
        finally:
            service.cleanup()


@pytest.fixture
def desktop_manager(
    desktop_user: Account, user_runtime: UserRuntime, systemd: SystemdStandin, ollama_service: OllamaService
) -> Iterator[Manager]:
    """``ollama-manager`` run by the desktop user, Ollama's service installed beside it."""
    manager = session_manager(desktop_user, user_runtime, systemd, ollama_service)
    try:
        yield manager
    finally:
        manager.cleanup()
