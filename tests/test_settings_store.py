"""Saving settings into the user's TOML file: comments, mode, symlinks and byte order marks kept."""

from __future__ import annotations

from pathlib import Path

from tray.settings.store import set_config_values

COMMENTED = "# my settings\nhealth_check_interval = 30  # every half minute\n"


def test_a_symlinked_settings_file_stays_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "ollama-manager.toml"
    target.parent.mkdir()
    target.write_text(COMMENTED)
    target.chmod(0o600)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    set_config_values(link, {"health_check_interval": 12})
    assert link.is_symlink() and link.readlink() == target
    assert target.read_text() == "# my settings\nhealth_check_interval = 12  # every half minute\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["ollama-manager.toml"]  # no temp file left


def test_a_settings_file_with_a_byte_order_mark_can_be_changed(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_bytes(b"\xef\xbb\xbf" + COMMENTED.encode())
    set_config_values(file, {"health_check_interval": 12})
    assert file.read_text() == "# my settings\nhealth_check_interval = 12  # every half minute\n"
