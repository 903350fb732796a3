"""What each OS's bundle says about itself: pure functions, no I/O.

- macOS: the ``Info.plist`` keys of ``Ollama Manager.app`` (menu-bar only);
- Windows: the version resource text that PyInstaller compiles into the ``.exe``;
- Linux: the ``.desktop`` launcher and the install script shipped in the tarball;
- every OS: the names of the executables and of the archive to upload.

The spec file and ``build.py`` load this module by path (this folder is not a
package: its name would shadow the ``packaging`` library PyInstaller needs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tray.system.autostart import (
    APP_DISPLAY_NAME,
    COMMENT,
    DEFAULT_ICON,
    LAUNCH_AGENT_LABEL,
    WINDOWED_EXECUTABLE,
    desktop_exec,
)

CLI_NAME = "ollama-manager"
BUNDLE_IDENTIFIER = LAUNCH_AGENT_LABEL
ICON_NAME = DEFAULT_ICON
COPYRIGHT = "Copyright (c) Ollama Manager contributors. MIT License."
MINIMUM_MACOS = "11.0"
SUPPORTED_PLATFORMS = ("darwin", "win32", "linux")
LINUX_ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
WINDOWS_ICON_SIZES = (16, 24, 32, 48, 64, 128, 256)

_LEADING_NUMBERS = re.compile(r"^\d+(?:\.\d+)*")


def numeric_version(version: str, parts: int) -> tuple[int, ...]:
    """The leading dotted numbers of ``version``, cut or zero-padded to ``parts``.

    Pre-release and local parts are dropped, since Info.plist and the Windows
    version resource take numbers only.

    >>> numeric_version("0.1.0", 4)
    (0, 1, 0, 0)
    >>> numeric_version("1.2.3rc1.dev4+g1a2b3c", 3)
    (1, 2, 3)
    """
    match = _LEADING_NUMBERS.match(version.strip())
    if match is None:
        raise ValueError(f"version {version!r} does not start with a number")
    numbers = [int(piece) for piece in match.group(0).split(".")][:parts]
    return tuple(numbers + [0] * (parts - len(numbers)))


def dotted(numbers: Sequence[int]) -> str:
    """``(1, 2, 3)`` as ``"1.2.3"``."""
    return ".".join(str(number) for number in numbers)


# --- names -------------------------------------------------------------------


@dataclass(frozen=True)
class BundleLayout:
    """Names of what PyInstaller builds for one OS, relative to the dist folder."""

    platform: str
    bundle_dir: str  # the onedir folder or the .app
    gui_executable: str  # what start-at-login and the launcher run
    cli_executable: str  # what a terminal or a smoke test runs; the same file except on Windows


def bundle_layout(platform: str) -> BundleLayout:
    """Where the executables sit in the built bundle for ``platform`` (``sys.platform`` spelling).

    Windows gets two executables in one folder: a windowed one with no console
    for the tray, and a console one for the command line, whose output a
    windowed program cannot show.
    """
    if platform == "darwin":
        app = f"{APP_DISPLAY_NAME}.app"
        executable = f"{app}/Contents/MacOS/{APP_DISPLAY_NAME}"
        return BundleLayout(platform, app, executable, executable)
    if platform == "win32":
        return BundleLayout(platform, CLI_NAME, f"{CLI_NAME}/{WINDOWED_EXECUTABLE}", f"{CLI_NAME}/{CLI_NAME}.exe")
    if platform.startswith("linux"):
        return BundleLayout("linux", CLI_NAME, f"{CLI_NAME}/{CLI_NAME}", f"{CLI_NAME}/{CLI_NAME}")
    raise ValueError(f"no bundle for platform {platform!r}; supported: {', '.join(SUPPORTED_PLATFORMS)}")


_OS_LABELS = {"darwin": "macos", "win32": "windows", "linux": "linux"}
_ARCH_LABELS = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}


def archive_name(version: str, platform: str, machine: str) -> str:
    """The file to upload: ``ollama-manager-<version>-<os>-<arch>.<ext>``.

    >>> archive_name("0.1.0", "linux", "x86_64")
    'ollama-manager-0.1.0-linux-x86_64.tar.gz'
    >>> archive_name("0.1.0", "win32", "AMD64")
    'ollama-manager-0.1.0-windows-x86_64.zip'
    """
    layout = bundle_layout(platform)
    arch = machine.lower()
    arch = _ARCH_LABELS.get(arch, arch)
    extension = "tar.gz" if layout.platform == "linux" else "zip"
    return f"{CLI_NAME}-{version}-{_OS_LABELS[layout.platform]}-{arch}.{extension}"


# --- macOS ---------------------------------------------------------------------


def info_plist(version: str) -> dict[str, object]:
    """The Info.plist keys PyInstaller merges into ``Ollama Manager.app``.

    ``LSUIElement`` keeps the app out of the Dock and the app switcher: it
    lives in the menu bar only. PyInstaller adds the executable, icon file and
    package type keys itself.
    """
    short_version = dotted(numeric_version(version, 3))
    return {
        "CFBundleName": APP_DISPLAY_NAME,
        "CFBundleDisplayName": APP_DISPLAY_NAME,
        "CFBundleIdentifier": BUNDLE_IDENTIFIER,
        "CFBundleShortVersionString": short_version,
        "CFBundleVersion": short_version,
        "CFBundleDevelopmentRegion": "en",
        "LSUIElement": True,
        "LSMinimumSystemVersion": MINIMUM_MACOS,
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSHumanReadableCopyright": COPYRIGHT,
    }


def entitlements() -> dict[str, object]:
    """Hardened-runtime entitlements for notarisation.

    A PyInstaller app maps its bundled Python libraries at run time; with the
    hardened runtime that needs library validation off for code signed by the
    same team to load, and writable-executable memory for ctypes callbacks.
    """
    return {
        "com.apple.security.cs.allow-unsigned-executable-memory": True,
        "com.apple.security.cs.disable-library-validation": True,
    }


# --- Windows --------------------------------------------------------------------


def windows_version_file(version: str) -> str:
    """The version resource in PyInstaller's ``VSVersionInfo`` text format (``EXE(version=...)``).

    Explorer shows these strings under Properties → Details; the four-part
    numbers drive installers' upgrade checks.
    """
    numbers = numeric_version(version, 4)
    strings = [
        ("CompanyName", "Ollama Manager contributors"),
        ("FileDescription", APP_DISPLAY_NAME),
        ("FileVersion", version),
        ("InternalName", CLI_NAME),
        ("LegalCopyright", COPYRIGHT),
        ("OriginalFilename", f"{APP_DISPLAY_NAME}.exe"),
        ("ProductName", APP_DISPLAY_NAME),
        ("ProductVersion", version),
    ]
    string_structs = ",\n".join(f"          StringStruct({key!r}, {value!r})" for key, value in strings)
    return (
        "# UTF-8\n"
        "VSVersionInfo(\n"
        "  ffi=FixedFileInfo(\n"
        f"    filevers={numbers!r},\n"
        f"    prodvers={numbers!r},\n"
        "    mask=0x3f,\n"
        "    flags=0x0,\n"
        "    OS=0x40004,\n"
        "    fileType=0x1,\n"
        "    subtype=0x0,\n"
        "    date=(0, 0)\n"
        "  ),\n"
        "  kids=[\n"
        "    StringFileInfo([\n"
        "      StringTable(\n"
        "        '040904B0',\n"
        "        [\n"
        f"{string_structs}\n"
        "        ])\n"
        "    ]),\n"
        "    VarFileInfo([VarStruct('Translation', [1033, 1200])])\n"
        "  ]\n"
        ")\n"
    )


# --- Linux ----------------------------------------------------------------------


def linux_desktop_entry(command: Sequence[str] = (CLI_NAME,), icon: str = ICON_NAME) -> str:
    """The application launcher (``share/applications/ollama-manager.desktop``).

    The tarball ships it with ``Exec=ollama-manager``; ``install.sh`` rewrites
    it with the absolute path of the unpacked bundle.
    """
    lines = [
        "[Desktop Entry]",
        "Type=Application",
        f"Name={APP_DISPLAY_NAME}",
        "GenericName=Ollama supervisor",
        f"Comment={COMMENT}",
        f"Exec={desktop_exec(command)}",
        f"Icon={icon}",
        "Terminal=false",
        "Categories=Utility;System;Monitor;",
        "Keywords=ollama;llm;tray;",
        "StartupNotify=false",
    ]
    return "\n".join(lines) + "\n"


def linux_install_script() -> str:
    """``install.sh`` for the tarball: a per-user install of the launcher, icons and a PATH link.

    Nothing is copied: the bundle stays where it was unpacked, so moving it
    means running the script again.
    """
    return f"""#!/bin/sh
# Per-user install of {APP_DISPLAY_NAME} from this unpacked folder: a launcher in the
# applications menu, the icons, and {CLI_NAME} on PATH (~/.local/bin).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data="${{XDG_DATA_HOME:-$HOME/.local/share}}"
mkdir -p "$HOME/.local/bin" "$data/applications"
ln -sf "$here/{CLI_NAME}" "$HOME/.local/bin/{CLI_NAME}"
cp -R "$here/share/icons" "$data/"
# Exec= quoting (Desktop Entry Spec): backslash-escape \\ " ` $ inside quotes, then double every backslash.
escaped=$(printf '%s' "$here/{CLI_NAME}" | sed -e 's/\\\\/\\\\\\\\\\\\\\\\/g' -e 's/["`$]/\\\\\\\\&/g')
{{
    grep -v '^Exec=' "$here/share/applications/{CLI_NAME}.desktop"
    printf 'Exec="%s"\\n' "$escaped"
}} > "$data/applications/{CLI_NAME}.desktop"
echo "Installed $data/applications/{CLI_NAME}.desktop for $here/{CLI_NAME}"
"""


def linux_icon_paths(sizes: Sequence[int] = LINUX_ICON_SIZES, name: str = ICON_NAME) -> dict[int, str]:
    """Where each PNG size goes in the hicolor theme, relative to ``share/``.

    >>> linux_icon_paths((16,))
    {16: 'icons/hicolor/16x16/apps/ollama-manager.png'}
    """
    return {size: f"icons/hicolor/{size}x{size}/apps/{name}.png" for size in sizes}


# --- what PyInstaller must be told --------------------------------------------------

# Modules loaded by name at run time, which PyInstaller's import scan cannot see:
# pystray picks its backend with importlib, plyer its notification backend likewise.
_HIDDEN_IMPORTS_COMMON = ("pystray._base", "pystray._dummy", "tray.doctor", "pynvml")
_HIDDEN_IMPORTS = {
    "linux": (
        "pystray._xorg",
        "pystray._appindicator",
        "pystray._gtk",
        "pystray._util.gtk",
        "pystray._util.notify_dbus",
        "plyer.platforms.linux",
        "plyer.platforms.linux.notification",
        "jeepney.io.blocking",
    ),
    "win32": (
        "pystray._win32",
        "pystray._util.win32",
        "plyer.platforms.win",
        "plyer.platforms.win.notification",
        "plyer.platforms.win.libs.balloontip",
        "plyer.platforms.win.libs.win_api_defs",
    ),
    "darwin": (
        "pystray._darwin",
        "plyer.platforms.macosx",
        "plyer.platforms.macosx.notification",
    ),
}

# Distributions whose metadata the app reads at run time (tray.__version__, the doctor).
METADATA_DISTRIBUTIONS = ("ollama-manager", "plyer", "nvidia-ml-py", "pystray")

# Reached only through optional imports of the dependencies, never used by the app:
# GUI toolkits and numpy (Pillow), httpx's command line (pygments, rich), trio
# (httpcore, anyio), YAML logging configs (uvicorn), templates (starlette),
# packaging tools, test frameworks.
EXCLUDED_MODULES = (
    "tkinter",
    "_tkinter",
    "PIL.ImageTk",
    "PIL.ImageQt",
    "numpy",
    "pygments",
    "rich",
    "trio",
    "yaml",
    "jinja2",
    "setuptools",
    "pkg_resources",
    "distutils",
    "pytest",
    "_pytest",
    "IPython",
)


def hidden_imports(platform: str) -> list[str]:
    """The modules to bundle for ``platform`` although no import statement names them.

    >>> hidden_imports("darwin")[-1]
    'plyer.platforms.macosx.notification'
    """
    layout = bundle_layout(platform)
    return [*_HIDDEN_IMPORTS_COMMON, *_HIDDEN_IMPORTS[layout.platform]]
