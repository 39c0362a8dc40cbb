import contextlib
import itertools

import pytest

from actors.containment import is_subreaper, set_subreaper
from tests.runtimes import fake_runtime


@pytest.fixture
def make_runtime(tmp_path):
    """`make_runtime(tools={...}, supervisor={...})` → a started Runtime on fake scanners, stopped afterwards."""
    with contextlib.ExitStack() as started:
        directories = (tmp_path / f"fakes{n}" for n in itertools.count())

        def make(**kwargs):
            return started.enter_context(fake_runtime(next(directories), **kwargs))

        yield make


@pytest.fixture
def served(make_runtime):
    """`served(**config)` → (runtime, daemon): a runtime on fake scanners served over HTTP on 127.0.0.1:0."""
    from tests.http_support import running_daemon

    with contextlib.ExitStack() as started:

        def start(**config):
            runtime = make_runtime(**config)
            return runtime, started.enter_context(running_daemon(runtime))

        yield start


@pytest.fixture
def subreaper():
    """This test process as `labrecon serve` runs: a child subreaper, so what a tool detaches comes back to it."""
    before = is_subreaper()
    assert set_subreaper(True)
    yield
    set_subreaper(before)


@pytest.fixture(autouse=True)
def _own_state_directory(tmp_path_factory, monkeypatch):
    """Each test keeps its scans in a store of its own (servers it starts inherit the variable)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
