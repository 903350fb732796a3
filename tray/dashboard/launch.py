"""Opening the dashboard: ``ollama-manager dashboard [--url]`` and the tray's "Open dashboard".

No secret goes on the browser's command line (any local user reads
``/proc/<pid>/cmdline``) or into its history: the running manager hands out a
one-time code (:mod:`tray.web.signin`), which is written into a small page only
the user can read (0600, in the runtime folder), and the browser opens that
page's ``file://`` address. The page posts the code to the dashboard, which
signs the tab in and moves on to its plain address. The code works once, for a
minute.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Callable
from typing import TextIO

from tray.atomic import private_dir, write_atomically
from tray.errors import CliError
from tray.system.paths import AppPaths
from tray.web.signin import REDEEM

PROG = "ollama-manager"

BrowserOpener = Callable[[str], bool]


class DashboardUnavailable(Exception):
    """Why the dashboard cannot be opened; ``str()`` is the one line for the user."""


def not_running(why: str | None = None) -> str:
    """The one line when no manager is proven to run; ``why``: what was wrong with its record."""
    reason = f" ({why})" if why else ""
    return f"the manager is not running{reason}: start the tray app or `ollama-manager monitor` first"


def signin_page(base: str, code: str) -> str:
    """The page the browser opens: it posts ``code`` to the dashboard at ``base`` at once.

    >>> 'action="http://127.0.0.1:11436/signin"' in signin_page("http://127.0.0.1:11436", "abc")
    True
    """
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Ollama Manager</title></head>"
        f'<body><form method="post" action="{html.escape(base + REDEEM)}">'
        f'<input type="hidden" name="code" value="{html.escape(code)}">'
        '<noscript><button type="submit">Open the dashboard</button></noscript></form>'
        "<script>document.forms[0].submit()</script></body></html>"
    )


def write_signin_page(paths: AppPaths) -> str:
    """Ask the running manager for a one-time code, write the page holding it (0600); its ``file://`` address."""
    from tray.web.link import MonitorLink

    link = MonitorLink(paths, report=lambda line: None)  # the stale reason goes into the one line raised
    base = link.address()
    if base is None:
        raise DashboardUnavailable(not_running(link.stale))
    try:
        code = link.signin_code()
    except CliError as exc:
        raise DashboardUnavailable(str(exc)) from None
    if code is None:
        raise DashboardUnavailable(not_running())
    page = paths.signin_page
    try:
        private_dir(page.parent)
        write_atomically(page, signin_page(base, code).encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise DashboardUnavailable(f"cannot write {page}: {exc.strerror or exc}") from None
    return page.as_uri()


def open_dashboard(paths: AppPaths, open_browser: BrowserOpener | None = None) -> str:
    """Open the running manager's dashboard in the default browser (``webbrowser.open``); the address opened.

    For the tray's "Open dashboard" item; raises DashboardUnavailable.
    """
    url = write_signin_page(paths)
    if open_browser is None:
        import webbrowser

        open_browser = webbrowser.open
    if not open_browser(url):
        raise DashboardUnavailable("no web browser could be started: run `ollama-manager dashboard --url`")
    return url


def add_dashboard_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``dashboard`` to the CLI's subcommands."""
    parser = subparsers.add_parser("dashboard", help="open the dashboard of the running manager in a web browser")
    parser.add_argument(
        "--url",
        action="store_true",
        help="print the address of a sign-in page (it works once, for a minute) instead of opening a browser",
    )
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
            print(write_signin_page(paths), file=out)
        else:
            open_dashboard(paths, open_browser)
    except DashboardUnavailable as exc:
        print(f"{PROG}: {exc}", file=err)
        return 1
    return 0
