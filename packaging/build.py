"""Build this OS's bundle: ``python packaging/build.py``.

1. icons from ``assets/icon-source.png`` (``make_icons.py``);
2. the Windows version resource and, when signing, the macOS entitlements;
3. PyInstaller with ``packaging/ollama-manager.spec`` (onedir);
4. per OS: Linux gets the ``.desktop`` file, the hicolor icons and
   ``install.sh`` and becomes a ``.tar.gz``; macOS is signed and notarised
   when the identity is given (see packaging/README.md), then zipped with
   ``ditto``; Windows is zipped.

Environment (all optional):
    OLLAMA_MANAGER_CODESIGN_IDENTITY  macOS "Developer ID Application: …" identity to sign with
    OLLAMA_MANAGER_NOTARY_PROFILE     notarytool keychain profile, or else
    APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD   notarytool credentials
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform as platform_module
import plistlib
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from load_packaging import load_packaging

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPEC = HERE / "ollama-manager.spec"
DIST_NAME = "ollama-manager"

IDENTITY_ENV = "OLLAMA_MANAGER_CODESIGN_IDENTITY"
NOTARY_PROFILE_ENV = "OLLAMA_MANAGER_NOTARY_PROFILE"
NOTARY_CREDENTIAL_ENVS = ("APPLE_ID", "APPLE_TEAM_ID", "APPLE_APP_PASSWORD")


info = load_packaging("info")


class BuildError(Exception):
    """A build step failed; ``str()`` is one line."""


@dataclass(frozen=True)
class BuildResult:
    """What the build produced."""

    bundle: Path  # the onedir folder or the .app
    cli_executable: Path
    gui_executable: Path
    archive: Path | None
    seconds: float


# --- plans (pure) ---------------------------------------------------------------------


def pyinstaller_command(python: str, spec: Path, dist_dir: Path, work_dir: Path) -> list[str]:
    """The PyInstaller run for ``spec``; its scratch files go under ``work_dir/pyinstaller``."""
    return [
        python,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist_dir),
        "--workpath",
        str(work_dir / "pyinstaller"),
        str(spec),
    ]


def pyinstaller_env(base: Mapping[str, str], work_dir: Path) -> dict[str, str]:
    """The environment for PyInstaller.

    ``PYSTRAY_BACKEND=dummy`` lets PyInstaller's pystray hook import pystray
    to list its backends on a build machine without a display (the xorg
    backend connects to one on import).
    """
    return {**base, "OLLAMA_MANAGER_BUILD_DIR": str(work_dir), "PYSTRAY_BACKEND": "dummy"}


def notarisation_commands(env: Mapping[str, str], archive: Path, app: Path) -> list[list[str]]:
    """``notarytool submit`` then ``stapler staple``, or nothing without credentials.

    A keychain profile (``xcrun notarytool store-credentials``) wins over the
    Apple ID, team id and app-specific password variables.
    """
    profile = env.get(NOTARY_PROFILE_ENV, "")
    if profile:
        credentials = ["--keychain-profile", profile]
    elif all(env.get(name) for name in NOTARY_CREDENTIAL_ENVS):
        apple_id, team_id, password = (env[name] for name in NOTARY_CREDENTIAL_ENVS)
        credentials = ["--apple-id", apple_id, "--team-id", team_id, "--password", password]
    else:
        return []
    return [
        ["xcrun", "notarytool", "submit", str(archive), *credentials, "--wait"],
        ["xcrun", "stapler", "staple", str(app)],
    ]


def ditto_zip_command(app: Path, archive: Path) -> list[str]:
    """Zip a ``.app`` keeping its symlinks, extended attributes and signature."""
    return ["ditto", "-c", "-k", "--sequesterRsrc", "--keepParent", str(app), str(archive)]


# --- steps (side effects) -------------------------------------------------------------


def run(command: Sequence[str], env: Mapping[str, str] | None = None, secret: str = "") -> None:
    """Run a build command with its output shown; BuildError when it fails."""
    shown = " ".join(command).replace(secret, "***") if secret else " ".join(command)
    print(f"+ {shown}", flush=True)
    try:
        subprocess.run(list(command), check=True, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BuildError(f"{command[0]} not found") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(
            f"{command[0]} {command[1] if len(command) > 1 else ''} exited with status {exc.returncode}"
        ) from None


def write_generated_files(work_dir: Path, version: str, platform: str, env: Mapping[str, str]) -> None:
    """Icons, the Windows version resource and the macOS entitlements the spec reads."""
    make_icons = load_packaging("make_icons")
    make_icons.write_icons(make_icons.load_source(make_icons.DEFAULT_SOURCE), work_dir / "icons")
    (work_dir / "version-info.txt").write_text(info.windows_version_file(version), encoding="utf-8")
    if platform == "darwin" and env.get(IDENTITY_ENV):
        (work_dir / "entitlements.plist").write_bytes(plistlib.dumps(info.entitlements()))


def finish_linux(bundle: Path, work_dir: Path) -> None:
    """Add the launcher, the icon theme and ``install.sh`` to the onedir folder."""
    share = bundle / "share"
    shutil.copytree(work_dir / "icons" / "share" / "icons", share / "icons", dirs_exist_ok=True)
    applications = share / "applications"
    applications.mkdir(parents=True, exist_ok=True)
    (applications / f"{info.CLI_NAME}.desktop").write_text(info.linux_desktop_entry(), encoding="utf-8")
    install = bundle / "install.sh"
    install.write_text(info.linux_install_script(), encoding="utf-8")
    install.chmod(0o755)


def make_tarball(bundle: Path, archive: Path) -> None:
    """``archive`` (.tar.gz) holding the bundle folder, permissions kept, owner reset."""

    def anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name, filter=anonymous)


def finish_macos(app: Path, archive: Path, env: Mapping[str, str]) -> None:
    """Verify the signature (when signed), zip, notarise and staple, and zip again."""
    signed = bool(env.get(IDENTITY_ENV))
    if signed:
        run(["codesign", "--verify", "--deep", "--strict", "--verbose=2", str(app)])
    run(ditto_zip_command(app, archive))
    steps = notarisation_commands(env, archive, app) if signed else []
    if not steps:
        print("not notarised: set OLLAMA_MANAGER_CODESIGN_IDENTITY and notarytool credentials (packaging/README.md)")
        return
    for command in steps:
        run(command, secret=env.get("APPLE_APP_PASSWORD", ""))
    archive.unlink()
    run(ditto_zip_command(app, archive))  # the stapled ticket must be inside the uploaded zip


def build(
    dist_dir: Path,
    work_dir: Path,
    *,
    archive: bool = True,
    platform: str = sys.platform,
    env: Mapping[str, str] | None = None,
) -> BuildResult:
    """Build the bundle for ``platform`` (which must be this machine's) into ``dist_dir``."""
    env = os.environ if env is None else env
    started = time.monotonic()
    try:
        version = importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError("ollama-manager is not installed: run pip install -e '.[bundle]' first") from None
    layout = info.bundle_layout(platform)
    work_dir.mkdir(parents=True, exist_ok=True)
    dist_dir.mkdir(parents=True, exist_ok=True)
    write_generated_files(work_dir, version, platform, env)
    run(pyinstaller_command(sys.executable, SPEC, dist_dir, work_dir), env=pyinstaller_env(env, work_dir))
    bundle = dist_dir / layout.bundle_dir
    archive_path = dist_dir / info.archive_name(version, platform, platform_module.machine()) if archive else None
    if layout.platform == "linux":
        finish_linux(bundle, work_dir)
        if archive_path:
            make_tarball(bundle, archive_path)
    elif archive_path and layout.platform == "darwin":
        finish_macos(bundle, archive_path, env)
    elif archive_path:
        shutil.make_archive(str(archive_path).removesuffix(".zip"), "zip", dist_dir, layout.bundle_dir)
    return BuildResult(
        bundle=bundle,
        cli_executable=dist_dir / layout.cli_executable,
        gui_executable=dist_dir / layout.gui_executable,
        archive=archive_path,
        seconds=time.monotonic() - started,
    )


def folder_size(path: Path) -> int:
    """Bytes of all regular files under ``path`` (symlinks not followed)."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Build this OS's Ollama Manager bundle with PyInstaller.")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="output folder (default dist/)")
    parser.add_argument("--work", type=Path, default=REPO / "build", help="scratch folder (default build/)")
    parser.add_argument("--no-archive", action="store_true", help="leave the bundle unpacked only")
    args = parser.parse_args(argv)
    try:
        result = build(args.dist.absolute(), args.work.absolute(), archive=not args.no_archive)
    except (BuildError, ValueError) as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    print(f"bundle:  {result.bundle} ({folder_size(result.bundle) / 1e6:.1f} MB)")
    print(f"run:     {result.cli_executable}")
    if result.archive:
        print(f"archive: {result.archive} ({result.archive.stat().st_size / 1e6:.1f} MB)")
    print(f"built in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
