"""Opening the dashboard: ``ollama-manager dashboard [--url]`` and the tray's "Open dashboard".

The page is opened with the status API's token in the URL fragment
(``#token=...``): browsers never send a fragment to a server, and the page
keeps it for that browser tab only and takes it out of the address bar at once.
Only someone who can read the token file (mode 0600) can build this URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from tray.system.paths import AppPaths

PROG = "ollama-manager"

BrowserOpener = Callable[[str], bool]


class DashboardUnavailable(Exception):
    """Why the dashboard cannot be opened; ``str()`` is the one line for the user."""


def dashboard_url(base: str, token: str | None, page: str = "/") -> str:
    """The address to open: ``base`` + ``page``, with the token in the fragment when there is one.

    >>> dashboard_url("http://127.0.0.1:11436", "s3cret")
    'http://127.0.0.1:11436/#token=s3cret'
    >>> dashboard_url("http://127.0.0.1:11436", None, "/settings")
    'http://127.0.0.1:11436/settings'
    """
    return f"{base}{page}#token={token}" if token else f"{base}{page}"


def running_dashboard_url(paths: AppPaths) -> str:
    """The dashboard of the monitor or tray running for this user; DashboardUnavailable otherwise."""
    from tray.web.link import MonitorLink

    link = MonitorLink(paths, report=lambda line: None)  # the stale reason goes into the one line raised
    base = link.address()
    if base is None:
        stale = f" ({link.stale})" if link.stale else ""
        raise DashboardUnavailable(
            f"the manager is not running{stale}: start the tray app or `ollama-manager monitor` first"
        )
    try:
        token = paths.api_token.read_text().strip()
    except OSError:
        raise DashboardUnavailable(f"cannot read the manager's token at {paths.api_token}") from None
    return dashboard_url(base, token)


def open_dashboard(paths: AppPaths, open_browser: BrowserOpener | None = None) -> str:
    """Open the running manager's dashboard in the default browser (``webbrowser.open``); the URL opened.

    For the tray's "Open dashboard" item; raises DashboardUnavailable.
    """
    url = running_dashboard_url(paths)
    if open_browser is None:
        import webbrowser

        open_browser = webbrowser.open
    if not open_browser(url):
        raise DashboardUnavailable("no web browser could be started: run `ollama-manager dashboard --url`")
    return url


def add_dashboard_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``dashboard`` to the CLI's subcommands."""
    parser = subparsers.add_parser("dashboard", help="open the dashboard of the running manager in a web browser")
    parser.add_argument("--url", action="store_true", help="print its address instead of opening a browser")
    return parser


def dashboard_command(
    args: argparse.Namespace,
    paths: AppPaths,
    *,
    open_browser: BrowserOpener | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``ollama-manager dashboard [--url]``: the exit status; a failure is one line on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.url:
            print(running_dashboard_url(paths), file=out)
        else:
            open_dashboard(paths, open_browser)
    except DashboardUnavailable as exc:
        print(f"{PROG}: {exc}", file=err)
        return 1
    return 0
