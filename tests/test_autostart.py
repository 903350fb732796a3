"""Start at login on all three OSes, exercised here through the Autostart interface."""

from __future__ import annotations

import plistlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_registry import FakeRegistry
from tray.system.autostart import (
    Autostart,
    LaunchAgentAutostart,
    RegistryRunAutostart,
    XdgAutostart,
    autostart_for,
    desktop_exec,
    launch_command,
    quote_exec_argument,
    write_atomically,
)

COMMAND = ["/usr/local/bin/ollama-manager"]


# --- through the interface, on every OS -------------------------------------------


def make_autostart(platform: str, home: Path, registry: FakeRegistry) -> Autostart:
    return autostart_for(platform, home=home, env={}, command=COMMAND, registry=registry)


@pytest.mark.parametrize("platform", ["darwin", "win32", "linux"])
def test_enable_disable_round_trip(platform: str, tmp_path: Path) -> None:
    registry = FakeRegistry()
    autostart = make_autostart(platform, tmp_path, registry)
    assert autostart.is_enabled() is False
    autostart.enable()
    assert autostart.is_enabled() is True
    autostart.enable()  # enabling twice replaces the entry
    assert autostart.is_enabled() is True
    autostart.disable()
    assert autostart.is_enabled() is False
    autostart.disable()  # disabling twice is fine
    assert autostart.is_enabled() is False
    assert registry.values == {}
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("platform", "kind", "description"),
    [
        ("darwin", LaunchAgentAutostart, "LaunchAgent {home}/Library/LaunchAgents/io.github.ollama-manager.plist"),
        (
            "win32",
            RegistryRunAutostart,
            r"registry value HKCU\Software\Microsoft\Windows\CurrentVersion\Run\Ollama Manager",
        ),
        ("linux", XdgAutostart, "XDG autostart entry {home}/.config/autostart/ollama-manager.desktop"),
        ("freebsd12", XdgAutostart, "XDG autostart entry {home}/.config/autostart/ollama-manager.desktop"),
    ],
)
def test_factory_picks_the_platform_mechanism(platform: str, kind: type, description: str, tmp_path: Path) -> None:
    autostart = make_autostart(platform, tmp_path, FakeRegistry())
    assert type(autostart) is kind
    assert autostart.describe() == description.format(home=tmp_path)


def test_factory_defaults_to_the_launch_command(tmp_path: Path) -> None:
    autostart = autostart_for("linux", home=tmp_path, env={})
    assert isinstance(autostart, XdgAutostart)
    assert autostart.command == launch_command()


# --- macOS ------------------------------------------------------------------------


def test_launch_agent_plist(tmp_path: Path) -> None:
    command = ["/Applications/Ollama Manager.app/Contents/MacOS/ollama-manager", "--minimized"]
    autostart = autostart_for("darwin", home=tmp_path, env={}, command=command)
    autostart.enable()
    path = tmp_path / "Library" / "LaunchAgents" / "io.github.ollama-manager.plist"
    with path.open("rb") as file:
        assert plistlib.load(file) == {
            "Label": "io.github.ollama-manager",
            "ProgramArguments": command,
            "RunAtLoad": True,
            "KeepAlive": False,
            "ProcessType": "Interactive",
        }
    assert path.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


@pytest.mark.parametrize(
    "content",
    [
        b"not a plist",
        plistlib.dumps({"Label": "x", "RunAtLoad": False}),
        plistlib.dumps({"Label": "x", "RunAtLoad": True, "Disabled": True}),
    ],
)
def test_launch_agent_that_will_not_run_is_not_enabled(content: bytes, tmp_path: Path) -> None:
    autostart = LaunchAgentAutostart(tmp_path, COMMAND)
    autostart.path.parent.mkdir(parents=True)
    autostart.path.write_bytes(content)
    assert autostart.is_enabled() is False


# --- Windows ----------------------------------------------------------------------


def test_run_value_is_the_quoted_command_line(tmp_path: Path) -> None:
    registry = FakeRegistry()
    command = [r"C:\Program Files\Ollama Manager\ollama-manager.exe", "--profile", 'say "hi"']
    autostart = autostart_for("win32", home=tmp_path, env={}, command=command, registry=registry)
    autostart.enable()
    assert registry.values == {
        "Ollama Manager": r'"C:\Program Files\Ollama Manager\ollama-manager.exe" --profile "say \"hi\""'
    }
    assert registry.values["Ollama Manager"] == subprocess.list2cmdline(command)


def test_run_value_without_spaces_is_unquoted(tmp_path: Path) -> None:
    registry = FakeRegistry()
    autostart_for("win32", home=tmp_path, env={}, command=[r"C:\Apps\om.exe"], registry=registry).enable()
    assert registry.values == {"Ollama Manager": r"C:\Apps\om.exe"}


def test_other_run_values_are_left_alone(tmp_path: Path) -> None:
    registry = FakeRegistry()
    registry.values["OneDrive"] = r'"C:\OneDrive.exe" /background'
    autostart = autostart_for("win32", home=tmp_path, env={}, command=COMMAND, registry=registry)
    autostart.enable()
    autostart.disable()
    assert registry.values == {"OneDrive": r'"C:\OneDrive.exe" /background'}


def test_empty_run_value_is_not_enabled() -> None:
    registry = FakeRegistry()
    registry.values["Ollama Manager"] = ""
    assert RegistryRunAutostart(registry, COMMAND).is_enabled() is False


# --- Linux (XDG) ------------------------------------------------------------------


def test_desktop_entry_text(tmp_path: Path) -> None:
    autostart = autostart_for("linux", home=tmp_path, env={}, command=["/usr/bin/ollama-manager"])
    autostart.enable()
    path = tmp_path / ".config" / "autostart" / "ollama-manager.desktop"
    assert path.read_text(encoding="utf-8") == (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Ollama Manager\n"
        "Comment=Keeps the local Ollama server alive and healthy\n"
        "Exec=/usr/bin/ollama-manager\n"
        "Icon=ollama-manager\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_desktop_entry_follows_xdg_config_home(tmp_path: Path) -> None:
    config_home = tmp_path / "cfg"
    autostart = autostart_for(
        "linux", home=tmp_path / "home", env={"XDG_CONFIG_HOME": str(config_home)}, command=COMMAND
    )
    autostart.enable()
    assert (config_home / "autostart" / "ollama-manager.desktop").is_file()


def test_relative_xdg_config_home_is_ignored(tmp_path: Path) -> None:
    autostart = autostart_for("linux", home=tmp_path, env={"XDG_CONFIG_HOME": "relative/cfg"}, command=COMMAND)
    assert isinstance(autostart, XdgAutostart)
    assert autostart.path == tmp_path / ".config" / "autostart" / "ollama-manager.desktop"


@pytest.mark.parametrize(
    ("argument", "quoted"),
    [
        ("/usr/bin/ollama-manager", "/usr/bin/ollama-manager"),
        ("--flag=value", "--flag=value"),
        ("/opt/My Apps/om", '"/opt/My Apps/om"'),
        ("50%", "50%%"),
        ('a"b', '"a\\"b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("$HOME", '"\\$HOME"'),
        ("`date`", '"\\`date\\`"'),
        ("it's", '"it\'s"'),
        ("a;b", '"a;b"'),
        ("", '""'),
    ],
)
def test_exec_argument_quoting(argument: str, quoted: str) -> None:
    assert quote_exec_argument(argument) == quoted


def test_exec_line_escapes_backslashes_after_quoting() -> None:
    # The spec's example: a literal backslash in a quoted argument is written as four.
    command = ["/opt/My Apps/om", "back\\slash", "$HOME"]
    assert desktop_exec(command) == '"/opt/My Apps/om" "back\\\\\\\\slash" "\\\\$HOME"'


@pytest.mark.parametrize(
    "switched_off",
    ["Hidden=true\n", "X-GNOME-Autostart-enabled=false\n"],
)
def test_desktop_entry_switched_off_by_the_desktop_is_not_enabled(switched_off: str, tmp_path: Path) -> None:
    autostart = XdgAutostart(tmp_path, COMMAND)
    autostart.enable()
    text = autostart.path.read_text().replace("X-GNOME-Autostart-enabled=true\n", "")
    autostart.path.write_text(text + switched_off)
    assert autostart.is_enabled() is False


def test_keys_in_other_groups_do_not_count(tmp_path: Path) -> None:
    autostart = XdgAutostart(tmp_path, COMMAND)
    autostart.enable()
    autostart.path.write_text(autostart.path.read_text() + "\n[Desktop Action Quit]\nHidden=true\n")
    assert autostart.is_enabled() is True


# --- atomic writes ----------------------------------------------------------------


def test_write_atomically_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows refuses the replace with another error")
def test_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# --- the command ------------------------------------------------------------------


def test_frozen_bundle_starts_its_own_executable() -> None:
    mac_binary = "/Applications/Ollama Manager.app/Contents/MacOS/ollama-manager"
    assert launch_command(frozen=True, executable=mac_binary, platform="darwin") == [mac_binary]


def test_console_script_next_to_the_interpreter(tmp_path: Path) -> None:
    (tmp_path / "python3").touch()
    (tmp_path / "ollama-manager").touch()
    command = launch_command(frozen=False, executable=str(tmp_path / "python3"), platform="linux", which=lambda _: None)
    assert command == [str(tmp_path / "ollama-manager")]


def test_windows_from_source_starts_pythonw_not_the_console_script(tmp_path: Path) -> None:
    (tmp_path / "python.exe").touch()
    (tmp_path / "pythonw.exe").touch()
    (tmp_path / "Scripts").mkdir()
    (tmp_path / "Scripts" / "ollama-manager.exe").touch()  # a console launcher: a console window at every login
    command = launch_command(
        frozen=False, executable=str(tmp_path / "python.exe"), platform="win32", which=lambda _: None
    )
    assert command == [str(tmp_path / "pythonw.exe"), "-m", "tray"]


def test_windows_bundle_starts_the_windowed_executable_even_from_the_console_one(tmp_path: Path) -> None:
    bundle = tmp_path / "ollama-manager"
    bundle.mkdir()
    (bundle / "ollama-manager.exe").touch()
    (bundle / "Ollama Manager.exe").touch()
    for executable in ("ollama-manager.exe", "Ollama Manager.exe"):
        command = launch_command(frozen=True, executable=str(bundle / executable), platform="win32")
        assert command == [str(bundle / "Ollama Manager.exe")]
    assert RegistryRunAutostart(FakeRegistry(), command).command_line == f'"{bundle / "Ollama Manager.exe"}"'


def test_console_script_on_path(tmp_path: Path) -> None:
    (tmp_path / "python3").touch()
    command = launch_command(
        frozen=False, executable=str(tmp_path / "python3"), platform="linux", which=lambda name: f"/opt/bin/{name}"
    )
    assert command == ["/opt/bin/ollama-manager"]


def test_module_fallback(tmp_path: Path) -> None:
    interpreter = str(tmp_path / "python3")
    assert launch_command(frozen=False, executable=interpreter, platform="linux", which=lambda _: None) == [
        interpreter,
        "-m",
        "tray",
    ]


def test_default_command_here_is_the_installed_console_script() -> None:
    """The test environment installs the package, so its script sits next to the interpreter."""
    script = Path(sys.executable).parent / "ollama-manager"
    if not script.is_file():
        pytest.skip(f"ollama-manager is not installed next to {sys.executable}")
    assert launch_command() == [str(script)]


# --- `ollama-manager autostart enable|disable|status`, through the same interface --------------


@pytest.mark.parametrize("platform", ["darwin", "win32", "linux"])
def test_autostart_command_round_trip_on_every_os(platform: str, tmp_path: Path) -> None:
    from tray.cli import autostart_action

    registry = FakeRegistry()
    autostart = make_autostart(platform, tmp_path, registry)
    where = autostart.describe()
    assert autostart_action("status", autostart) == f"Start at login: disabled ({where})"
    assert autostart_action("disable", autostart) == "Start at login was not enabled"
    assert autostart_action("enable", autostart) == f"Start at login enabled: {where}"
    assert autostart_action("status", autostart) == f"Start at login: enabled ({where})"
    if platform == "darwin":
        with (tmp_path / "Library" / "LaunchAgents" / "io.github.ollama-manager.plist").open("rb") as file:
            assert plistlib.load(file)["ProgramArguments"] == COMMAND
    elif platform == "win32":
        assert registry.values == {"Ollama Manager": COMMAND[0]}
    else:
        assert (tmp_path / ".config" / "autostart" / "ollama-manager.desktop").read_text().count("Exec=") == 1
    assert autostart_action("disable", autostart) == f"Start at login disabled: removed {where}"
    assert autostart_action("status", autostart) == f"Start at login: disabled ({where})"
    assert registry.values == {}
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(sys.platform == "win32", reason="the message is POSIX's")
def test_autostart_command_failure_is_one_line(tmp_path: Path) -> None:
    from tray.cli import autostart_action
    from tray.errors import CliError

    (tmp_path / ".config").write_text("a file where the config folder belongs")
    autostart = make_autostart("linux", tmp_path, FakeRegistry())
    with pytest.raises(CliError) as raised:
        autostart_action("enable", autostart)
    assert str(raised.value) == (
        f"cannot enable start at login (XDG autostart entry {tmp_path}/.config/autostart/ollama-manager.desktop): "
        "Not a directory"
    )


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG entry is Linux's mechanism")
def test_autostart_subcommand_writes_the_xdg_entry_the_menu_reads(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tray", "autostart", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    entry = tmp_path / "config" / "autostart" / "ollama-manager.desktop"
    assert run("status").stdout == f"Start at login: disabled (XDG autostart entry {entry})\n"
    done = run("enable")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"Start at login enabled: XDG autostart entry {entry}\n",
        "",
    )
    # The tray's "Start at login" checkbox reads the same entry.
    controller_view = autostart_for("linux", home=tmp_path / "home", env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert controller_view.is_enabled() is True
    assert run("status").stdout == f"Start at login: enabled (XDG autostart entry {entry})\n"
    assert run("disable").stdout == f"Start at login disabled: removed XDG autostart entry {entry}\n"
    assert not entry.exists()
    bad = run("sometimes")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "ollama-manager autostart: error: argument enable|disable|status: invalid choice: 'sometimes' "
        "(choose from 'enable', 'disable', 'status')"
    )
    env["XDG_CONFIG_HOME"] = str(tmp_path / "a-file")
    (tmp_path / "a-file").write_text("not a folder")
    failed = run("enable")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == (
        f"ollama-manager: cannot enable start at login (XDG autostart entry {tmp_path}/a-file/autostart/"
        "ollama-manager.desktop): Not a directory\n"
    )
