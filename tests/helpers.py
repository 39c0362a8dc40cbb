"""Waiting on conditions instead of sleeping, and asking whether a process still runs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import psutil
import pytest

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie left for init to reap has stopped running."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def can_unshare_network() -> bool:
    """Whether a fresh network namespace with only loopback can be made here (`unshare -n`, as root)."""
    try:
        return subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_private_network = pytest.mark.skipif(
    not can_unshare_network(), reason="needs a private network namespace (unshare -n)"
)
"""For a test that listens beyond loopback or may resolve names: it runs only inside such a namespace."""
