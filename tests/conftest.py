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


# The modules with the longest tests (measured: minutes each, one thread), longest first. They start first, so that
# parallel workers (scripts/test.sh), which take whole modules, end together instead of one waiting on the other.
LONGEST_MODULES = (
    "test_benchmarks",
    "test_ray_build",
    "test_bad_input",
    "test_deploy",
    "test_smsp",
    "test_export",
    "test_device_adapt",
    "test_build_claims",
    "test_precision_deploy",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first; the emulated ARM board's tests last, in their order (their modules hold nothing
    else, so workers also take them last): CI builds the board's root beside the rest (.ci/run)."""

    def order(item: pytest.Item) -> tuple[bool, int]:
        module = item.path.stem
        rank = LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)
        return item.get_closest_marker("arm") is not None, rank

    items.sort(key=order)
