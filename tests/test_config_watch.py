"""The config watcher sees the file change however it is replaced: in place, renamed over, or a symlink swapped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from transports.config_watch import ConfigWatcher

DEADLINE = 30.0  # a hang guard only


def watched(path: Path) -> tuple[ConfigWatcher, threading.Event]:
    changed = threading.Event()
    watcher = ConfigWatcher(path, changed.set).start()
    assert watcher.watching.wait(DEADLINE)
    return watcher, changed


def test_a_symlinked_config_is_seen_when_its_link_is_swapped_to_a_new_version(tmp_path):
    # The layout a mounted config map has: labrecon.toml -> ..data/labrecon.toml, ..data -> the version.
    for version, level in (("v1", "info"), ("v2", "debug")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "labrecon.toml").write_text(f'[logging]\nlevel = "{level}"\n')
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "labrecon.toml").symlink_to("..data/labrecon.toml")
    watcher, changed = watched(tmp_path / "labrecon.toml")
    try:
        (tmp_path / "..data_new").symlink_to("v2")
        os.replace(tmp_path / "..data_new", tmp_path / "..data")  # one atomic swap, as the kubelet does
        assert changed.wait(DEADLINE)
        assert 'level = "debug"' in (tmp_path / "labrecon.toml").read_text()
    finally:
        watcher.stop()


def test_a_file_renamed_over_the_config_is_seen(tmp_path):
    config = tmp_path / "labrecon.toml"
    config.write_text('[logging]\nlevel = "info"\n')
    watcher, changed = watched(config)
    try:
        saved = tmp_path / ".labrecon.toml.swp"
        saved.write_text('[logging]\nlevel = "debug"\n')
        os.replace(saved, config)
        assert changed.wait(DEADLINE)
    finally:
        watcher.stop()
