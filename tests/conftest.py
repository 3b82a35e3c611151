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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The emulated ARM board's tests run last, in their order (their modules hold nothing else, so parallel workers,
    which take whole modules, also take them last): CI builds its root beside the rest (.ci/run)."""
    items.sort(key=lambda item: item.get_closest_marker("arm") is not None)
