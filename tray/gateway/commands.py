"""``ollama-manager gateway``, ``ollama-manager cloud set-key``, and the gateway inside the monitor.

The command functions take the parsed arguments, the loaded ``Config`` and
the ``AppPaths``, print one line on failure and return the exit status.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from tray.core.status import Status
from tray.settings.gateway import CloudSettings, GatewaySettings
from tray.system.stopping import sleep_until, stop_on_signals

if TYPE_CHECKING:  # the server, its libraries and the key store load when used, not with the CLI's parser
    from tray.gateway.app import Gateway, GatewayServer
    from tray.gateway.cloud import KeyStore

log = logging.getLogger(__name__)

PROG = "ollama-manager"


def cloud_settings(config: Any) -> CloudSettings:
    return config.cloud


def gateway_settings(config: Any) -> GatewaySettings:
    return config.gateway


def add_gateway_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``gateway`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway", help="run the local gateway (Ollama first, the cloud fallback when it fails)"
    )
    from tray.settings.config import setting_argument

    parser.add_argument(
        "--port",
        type=setting_argument(GatewaySettings, "port"),
        default=None,
        help="loopback port (default: gateway.port, 11435)",
    )
    return parser


def add_cloud_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cloud set-key`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser("cloud", help="cloud fallback settings")
    actions = parser.add_subparsers(dest="cloud_command", metavar="ACTION")
    actions.add_parser("set-key", help="store the provider's API key in the OS keyring (read from stdin)")
    return parser


def same_address(local_url: str, port: int) -> bool:
    """Would the gateway on ``port`` forward to itself?"""
    from urllib.parse import urlsplit

    from tray.web.loopback import host_allowed

    parts = urlsplit(local_url)
    return parts.port == port and host_allowed(parts.netloc)


def monitor_check(paths: Any) -> Callable[[str], None]:
    """Report a problem the gateway saw to a running monitor: it checks Ollama now (status API, with its token).

    The monitor's probe decides what follows; a restart, if any, is recorded with its own cause.
    """

    def check(why: str) -> None:
        from tray.web.link import MonitorLink

        message = MonitorLink(paths).action("check")
        if message is None:
            log.warning("no running monitor to check Ollama (%s); start 'ollama-manager monitor' or the tray app", why)
        else:
            log.info("monitor: %s", message)

    return check


def monitor_status(paths: Any) -> Callable[[], Status | None]:
    """A running monitor's status (health, loaded models, busy), None when no monitor answers."""

    def status() -> Status | None:
        from tray.web.link import MonitorLink

        return MonitorLink(paths).status()

    return status


def build_gateway(config: Any, **kwargs: Any) -> Gateway:
    """A gateway for the app's settings."""
    from tray.gateway.app import Gateway

    settings = gateway_settings(config)
    if settings.restart_interval != GatewaySettings().restart_interval:
        log.info("gateway.restart_interval is ignored: the gateway never restarts Ollama, the monitor decides")
    return Gateway(local_url=config.host.url, cloud=cloud_settings(config), settings=gateway_settings(config), **kwargs)


def gateway_command(args: argparse.Namespace, config: Any, paths: Any, *, stop: threading.Event | None = None) -> int:
    """Run the gateway in the foreground until SIGINT/SIGTERM (or ``stop`` is set); the exit status."""
    from tray.gateway.app import GatewayServer
    from tray.history import History
    from tray.system.notify import Notifier

    settings = gateway_settings(config)
    port = args.port if getattr(args, "port", None) is not None else settings.port
    if same_address(config.host.url, port):
        print(f"{PROG}: the gateway port {port} is Ollama's own port; set gateway.port to another one", file=sys.stderr)
        return 1
    history = History(paths.history_db)
    gateway = build_gateway(
        config,
        report_problem=monitor_check(paths),
        status_source=monitor_status(paths),
        history=history,
        notifier=Notifier(enabled=config.notifications),
        probe=True,
    )
    server = GatewayServer(gateway, port)
    try:
        server.start()
    except OSError as exc:
        history.close()
        print(f"{PROG}: {exc}; set gateway.port to a free port", file=sys.stderr)
        return 1
    cloud = cloud_settings(config)
    fallback = f"cloud fallback: {cloud.host_label} ({cloud.model})" if cloud.enabled else "cloud fallback off"
    print(f"Gateway on {server.url} for Ollama at {config.host.url}; {fallback}", flush=True)
    if stop is None:
        stop = stop_on_signals()
    try:
        sleep_until(stop)
    finally:
        server.stop()
        history.close()
    return 0


def read_secret(stdin: TextIO, prompt: str) -> str:
    """A secret from the terminal without echo, or one line from a pipe."""
    if stdin.isatty():
        return getpass.getpass(prompt)
    return stdin.readline().strip()


def cloud_set_key_command(
    args: argparse.Namespace, config: Any, paths: Any, *, stdin: TextIO | None = None, key_store: KeyStore | None = None
) -> int:
    """Store the provider's API key in the OS keyring; the exit status. The key is never printed or logged."""
    from tray.gateway.cloud import KeyStoreError, SystemKeyStore, key_account

    cloud = cloud_settings(config)
    account = key_account(cloud)
    secret = read_secret(stdin or sys.stdin, f"API key for {account}: ").strip()
    if not secret:
        print(f"{PROG}: no key given (type it, or pipe it in on one line)", file=sys.stderr)
        return 1
    if any(ch.isspace() for ch in secret):
        print(f"{PROG}: an API key has no spaces; nothing stored", file=sys.stderr)
        return 1
    try:
        (key_store or SystemKeyStore()).set(account, secret)
    except KeyStoreError as exc:
        print(f"{PROG}: cannot store the key: {exc}; set ${cloud.key_env} instead", file=sys.stderr)
        return 1
    print(f"Stored the API key for {account} in the OS keyring")
    if cloud.key_env:
        print(f"(${cloud.key_env}, when set, is used instead)")
    return 0


def gateway_for_monitor(
    config: Any, request_check: Callable[[], object], history: Any = None, notifier: Any = None
) -> Gateway | None:
    """The gateway to run inside the monitor when ``gateway.enabled``; None otherwise.

    Built before the monitor, which reads it from its first check on. It
    reports what it sees by ``request_check()`` (the monitor's ``check``,
    never ``restart``), called only once it serves (:func:`serve_beside_monitor`).
    Raises OSError (one line) when its port is Ollama's.
    """
    settings = gateway_settings(config)
    if not settings.enabled:
        return None
    if same_address(config.host.url, settings.port):
        raise OSError(f"the gateway port {settings.port} is Ollama's own port; set gateway.port to another one")
    return build_gateway(config, report_problem=lambda why: request_check(), history=history, notifier=notifier)


class MonitorStatusFeed(Protocol):
    """The monitor's status, as :func:`serve_beside_monitor` follows it."""

    def snapshot(self) -> Status: ...

    def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]: ...


def serve_beside_monitor(gateway: Gateway, port: int, monitor: MonitorStatusFeed) -> GatewayServer:
    """Serve ``gateway`` on ``port``, following the monitor's status until the returned server stops.

    Raises OSError (one line) when the port cannot be had.
    """
    from tray.gateway.app import GatewayServer

    server = GatewayServer(gateway, port)
    server.start()
    unsubscribe = monitor.subscribe(gateway.observe_status)
    server.on_stop(unsubscribe)
    gateway.observe_status(monitor.snapshot())
    return server
