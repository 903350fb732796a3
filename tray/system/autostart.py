"""Start at login: a LaunchAgent on macOS, a Run registry value on Windows, an XDG autostart entry on Linux.

All three sit behind :class:`Autostart`; :func:`autostart_for` picks one for a
platform. Paths, environment, the command and the registry are parameters, so
every implementation can be exercised on any OS.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tray.atomic import write_atomically
from tray.system.registry import RegistryValues, WinregKey

APP_DISPLAY_NAME = "Ollama Manager"
LAUNCH_AGENT_LABEL = "io.github.ollama-manager"
RUN_KEY_PATH = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE_NAME = APP_DISPLAY_NAME
DESKTOP_FILE_NAME = "ollama-manager.desktop"
CONSOLE_SCRIPT = "ollama-manager"
WINDOWED_EXECUTABLE = f"{APP_DISPLAY_NAME}.exe"  # the bundle's tray executable on Windows (packaging/info.py)
COMMENT = "Keeps the local Ollama server alive and healthy"
DEFAULT_ICON = "ollama-manager"


class Autostart(Protocol):
    """Start-at-login for one OS."""

    def enable(self) -> None:
        """Register the app to start at login (replacing an older entry)."""
        ...

    def disable(self) -> None:
        """Remove the registration; no error when there is none."""
        ...

    def is_enabled(self) -> bool:
        """Whether the app will start at the next login."""
        ...

    def describe(self) -> str:
        """One line naming the mechanism and where it lives."""
        ...


# --- the command to start -----------------------------------------------------


def launch_command(
    *,
    frozen: bool | None = None,
    executable: str | None = None,
    platform: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[Path], bool] = Path.is_file,
) -> list[str]:
    """The argv that starts this app at login: always a program without a console window.

    A frozen bundle (PyInstaller) starts its own executable, which on macOS is
    the ``.app``'s ``Contents/MacOS/…`` file; on Windows it is the windowed
    ``Ollama Manager.exe`` beside the console ``ollama-manager.exe``, even when
    start at login is enabled from the command line (the console one would open
    a console window at every login). From source on Windows, ``pythonw.exe -m tray``
    for the same reason. Elsewhere the installed ``ollama-manager`` console script
    next to the interpreter (or on PATH), else ``python -m tray``.
    """
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    executable = executable or sys.executable
    if frozen:
        program = Path(executable).absolute()
        if platform == "win32":
            windowed = program.with_name(WINDOWED_EXECUTABLE)
            if exists(windowed):
                return [str(windowed)]
        return [str(program)]
    interpreter_dir = Path(executable).parent
    if platform == "win32":
        pythonw = interpreter_dir / "pythonw.exe"
        return [str(pythonw if exists(pythonw) else Path(executable)), "-m", "tray"]
    if exists(interpreter_dir / CONSOLE_SCRIPT):
        return [str(interpreter_dir / CONSOLE_SCRIPT)]
    on_path = which(CONSOLE_SCRIPT)
    if on_path:
        return [str(Path(on_path).absolute())]
    return [executable, "-m", "tray"]


# --- files ------------------------------------------------------------------


# --- macOS ------------------------------------------------------------------


def launch_agent_plist(command: Sequence[str], label: str = LAUNCH_AGENT_LABEL) -> dict[str, object]:
    """The LaunchAgent dictionary for ``command``."""
    return {
        "Label": label,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        "KeepAlive": False,  # the user may quit the tray; launchd must not bring it back
        "ProcessType": "Interactive",
    }


class LaunchAgentAutostart:
    """``~/Library/LaunchAgents/<label>.plist``; launchd loads it at the next login."""

    def __init__(self, home: Path, command: Sequence[str], label: str = LAUNCH_AGENT_LABEL) -> None:
        self.path = home / "Library" / "LaunchAgents" / f"{label}.plist"
        self.command = list(command)
        self.label = label

    def enable(self) -> None:
        """Write the plist (not loaded now: this app is already running)."""
        write_atomically(self.path, plistlib.dumps(launch_agent_plist(self.command, self.label)), mode=0o644)

    def disable(self) -> None:
        """Delete the plist."""
        self.path.unlink(missing_ok=True)

    def is_enabled(self) -> bool:
        """Whether the plist exists and asks to run at load."""
        try:
            with self.path.open("rb") as file:
                plist = plistlib.load(file)
        except (OSError, plistlib.InvalidFileException, ValueError):
            return False
        return isinstance(plist, dict) and plist.get("RunAtLoad") is True and plist.get("Disabled") is not True

    def describe(self) -> str:
        """Where the LaunchAgent lives."""
        return f"LaunchAgent {self.path}"


# --- Windows ----------------------------------------------------------------


class RegistryRunAutostart:
    """A value named ``Ollama Manager`` under HKCU's ``…\\CurrentVersion\\Run`` key."""

    def __init__(self, registry: RegistryValues, command: Sequence[str], name: str = RUN_VALUE_NAME) -> None:
        self.registry = registry
        self.command = list(command)
        self.name = name

    @property
    def command_line(self) -> str:
        """The command quoted the way Windows parses it back (``subprocess.list2cmdline``)."""
        return subprocess.list2cmdline(self.command)

    def enable(self) -> None:
        """Write the Run value."""
        self.registry.set(self.name, self.command_line)

    def disable(self) -> None:
        """Delete the Run value."""
        self.registry.delete(self.name)

    def is_enabled(self) -> bool:
        """Whether the Run value exists and is not empty."""
        return bool(self.registry.get(self.name))

    def describe(self) -> str:
        """Where the Run value lives."""
        return f"registry value HKCU\\{RUN_KEY_PATH}\\{self.name}"


# --- Linux (XDG) --------------------------------------------------------------

# Characters that force quoting in an Exec argument (Desktop Entry Spec, "The Exec key").
_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")
_EXEC_ESCAPED_IN_QUOTES = set('"`$\\')


def quote_exec_argument(argument: str) -> str:
    """Quote one argument for an ``Exec=`` line, before string escaping.

    >>> quote_exec_argument("/usr/bin/app"), quote_exec_argument("/opt/My App/app")
    ('/usr/bin/app', '"/opt/My App/app"')
    """
    argument = argument.replace("%", "%%")  # a single % starts a field code
    if argument and not _EXEC_RESERVED.intersection(argument):
        return argument
    escaped = "".join("\\" + char if char in _EXEC_ESCAPED_IN_QUOTES else char for char in argument)
    return f'"{escaped}"'


def escape_desktop_string(value: str) -> str:
    """Escape a value of type string (backslash first, then control characters)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def desktop_exec(command: Sequence[str]) -> str:
    """The ``Exec=`` value for ``command``: quoting rule, then string escaping.

    A literal backslash inside a quoted argument therefore becomes four.
    """
    return escape_desktop_string(" ".join(quote_exec_argument(argument) for argument in command))


def desktop_entry(command: Sequence[str], icon: str = DEFAULT_ICON) -> str:
    """The text of the autostart ``.desktop`` file."""
    lines = [
        "[Desktop Entry]",
        "Type=Application",
        f"Name={APP_DISPLAY_NAME}",
        f"Comment={COMMENT}",
        f"Exec={desktop_exec(command)}",
        f"Icon={escape_desktop_string(icon)}",
        "Terminal=false",
        "X-GNOME-Autostart-enabled=true",
    ]
    return "\n".join(lines) + "\n"


def _desktop_entry_keys(text: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    in_main_group = False
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("["):
            in_main_group = line == "[Desktop Entry]"
        elif in_main_group and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def xdg_config_home(home: Path, env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME`` when set to an absolute path, else ``~/.config``."""
    configured = env.get("XDG_CONFIG_HOME", "")
    return Path(configured) if configured and Path(configured).is_absolute() else home / ".config"


class XdgAutostart:
    """``$XDG_CONFIG_HOME/autostart/ollama-manager.desktop``."""

    def __init__(self, config_home: Path, command: Sequence[str], icon: str = DEFAULT_ICON) -> None:
        self.path = config_home / "autostart" / DESKTOP_FILE_NAME
        self.command = list(command)
        self.icon = icon

    def enable(self) -> None:
        """Write the desktop entry."""
        write_atomically(self.path, desktop_entry(self.command, self.icon).encode("utf-8"), mode=0o644)

    def disable(self) -> None:
        """Delete the desktop entry."""
        self.path.unlink(missing_ok=True)

    def is_enabled(self) -> bool:
        """Whether the entry exists and was not switched off (``Hidden`` or the GNOME key)."""
        try:
            keys = _desktop_entry_keys(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return False
        return keys.get("Hidden") != "true" and keys.get("X-GNOME-Autostart-enabled") != "false"

    def describe(self) -> str:
        """Where the desktop entry lives."""
        return f"XDG autostart entry {self.path}"


def autostart_for(
    platform: str = sys.platform,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    registry: RegistryValues | None = None,
) -> Autostart:
    """The start-at-login implementation for ``platform``.

    ``command`` defaults to :func:`launch_command`; ``registry`` (Windows only)
    defaults to the real HKCU Run key.
    """
    home = Path.home() if home is None else home
    env = os.environ if env is None else env
    command = launch_command(platform=platform) if command is None else list(command)
    if platform == "darwin":
        return LaunchAgentAutostart(home, command)
    if platform == "win32":
        return RegistryRunAutostart(registry if registry is not None else WinregKey(RUN_KEY_PATH), command)
    return XdgAutostart(xdg_config_home(home, env), command)
