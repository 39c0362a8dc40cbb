import pytest

from actors.containment import is_subreaper, set_subreaper
from tests.runtimes import fake_runtime


@pytest.fixture
def make_runtime(tmp_path):
    """`make_runtime(tools={...}, supervisor={...})` → a started Runtime on fake scanners, stopped afterwards."""
    contexts = []

    def make(**kwargs):
        context = fake_runtime(tmp_path / f"fakes{len(contexts)}", **kwargs)
        contexts.append(context)
        return context.__enter__()

    yield make
    for context in reversed(contexts):
        context.__exit__(None, None, None)


@pytest.fixture
def subreaper():
    """This test process as `labrecon serve` runs: a child subreaper, so what a tool detaches comes back to it."""
    before = is_subreaper()
    assert set_subreaper(True)
    yield
    set_subreaper(before)
