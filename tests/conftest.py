import os

import pytest
import torch

pytest_plugins = ["tests.sshd_fixture"]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One intra-op thread by default: on 2 shared cores, more threads thrash (measured 10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("EDGE_SMSP_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The emulated ARM board's tests run one at a time, on one pytest-xdist worker (scripts/test.sh runs
    --dist loadgroup): two qemu instances on one root share its libraries' file pages, and a board's peak RSS,
    which its memory model is fitted to, would then depend on what the other runs."""
    for item in items:
        if item.get_closest_marker("arm"):
            item.add_marker(pytest.mark.xdist_group("arm-board"))
