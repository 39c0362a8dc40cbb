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
def subreaper():
    """This test process as `labrecon serve` runs: a child subreaper, so what a tool detaches comes back to it."""
    before = is_subreaper()
    assert set_subreaper(True)
    yield
    set_subreaper(before)
