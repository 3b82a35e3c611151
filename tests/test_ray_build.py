"""`pool build --ray` on a real local Ray cluster: the same entries as the in-process build, a killed worker's
task retried, a killed driver resumed, two drivers on one pool. Tasks are tiny (32 px, 2 iterations)."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_smsp.pool import Pool
from edge_smsp.pool import build as pool_build
from tests.build_steps import TASK_CLASSES, tiny_build, training_runs
from tests.required import skip_or_fail
from tests.test_build_claims import (
    ALL_TASKS,
    REPO,
    assert_each_task_once,
    finish,
    start_build,
    start_together,
)

try:
    import ray
except ImportError:
    ray = None


@pytest.fixture(scope="module")
def needs_ray() -> None:
    if ray is None:
        skip_or_fail("Ray is not installed: pip install edge-smsp[dev] (or [ray])")


BUILD_FLAGS = [
    "--classes-per-task",
    "2",
    "--ratio",
    "0.5",
    "--iters",
    "2",
    "--rounds",
    "1",
    "--image-size",
    "32",
    "--train-per-class",
    "24",
    "--val-per-class",
    "12",
    "--batch-size",
    "16",
    "--json",
]


def cli(*argv: str, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """edge-smsp in its own process (`prelude`: Python run first, e.g. to hide a package)."""
    code = f"{prelude}\nimport sys\nfrom edge_smsp.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ray_missing_is_one_line_naming_the_extra_and_writes_nothing(tmp_path):
    pool = tmp_path / "pool.sqlite"
    hide_ray = "import sys; sys.modules['ray'] = None  # what `import ray` meets where Ray is not installed"
    done = cli("pool", "build", "--ray", "--tasks", "2", "--pool", str(pool), *BUILD_FLAGS, prelude=hide_ray)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install edge-smsp[ray]" in done.stderr, done.stderr
    assert done.stdout == "" and not pool.exists()


@pytest.mark.parametrize("address", ["127.0.0.1:{free_port}", "no-port-here"])
def test_an_unreachable_or_malformed_address_is_one_line_and_writes_nothing(needs_ray, tmp_path, address):
    with socket.socket() as probe:  # a loopback port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    pool = tmp_path / "pool.sqlite"
    address = address.format(free_port=free_port)
    done = cli("pool", "build", "--ray", address, "--tasks", "2", "--pool", str(pool), *BUILD_FLAGS)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and address in done.stderr, done.stderr
    assert done.stdout == "" and not pool.exists()


class _NotRay:
    """A loopback TCP listener that is not Ray: it keeps silent, sends a banner, or hangs up on each client."""

    def __init__(self, behaviour: str) -> None:
        import threading

        self.behaviour, self.clients = behaviour, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.clients.append(client)
            if self.behaviour == "banner":
                client.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x1b[31m")
            elif self.behaviour == "close":
                client.close()

    def close(self) -> None:
        self.server.close()
        for client in self.clients:
            client.close()


def test_a_port_that_is_not_ray_fails_in_seconds_in_one_line_and_leaves_no_pool(needs_ray, tmp_path):
    """The issue's case: a listener that accepts and says nothing hung `pool build` for 150 s and left an
    empty pool. Now the HTTP/2 greeting Ray's head answers at once tells it apart within seconds."""
    from edge_smsp.core.errors import ClusterError
    from edge_smsp.pool.build import ray_build

    silent = _NotRay("silent")
    try:
        pool = tmp_path / "pool.sqlite"
        started = time.monotonic()
        done = cli(
            "pool", "build", "--ray", silent.address, "--tasks", "2", "--pool", str(pool), *BUILD_FLAGS
        )
        assert time.monotonic() - started < 30
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and silent.address in done.stderr, done.stderr
        assert "not a Ray cluster's head" in done.stderr and "did not answer" in done.stderr
        assert done.stdout == "" and not pool.exists() and not list(tmp_path.iterdir())
    finally:
        silent.close()
    for behaviour, said in (("banner", "SSH-2.0-OpenSSH_9.6"), ("close", "connection")):
        server = _NotRay(behaviour)
        try:
            with pytest.raises(ClusterError, match="not a Ray cluster's head") as caught:
                ray_build.check_reachable(server.address)
        finally:
            server.close()
        assert said in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_real_head_answers_the_greeting(cluster):
    from edge_smsp.pool.build.ray_build import check_reachable

    assert check_reachable(cluster) is None


def test_cli_on_a_new_local_cluster_stores_what_the_in_process_build_stores(needs_ray, tmp_path):
    ray_pool, local_pool = tmp_path / "ray.sqlite", tmp_path / "local.sqlite"
    done = cli("pool", "build", "--ray", "--tasks", "2", "--pool", str(ray_pool), *BUILD_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["ray"]["local"] and summary["ray"]["cpus"] >= 1
    assert summary["added"] == [1, 2] and summary["entries"] == 2
    assert {row["status"] for row in summary["tasks"]} == {"added"}

    backbone, _, config = tiny_build()
    with Pool(ray_pool, create=False) as built_on_ray:
        entries = built_on_ray.entries()
        tasks = [_task_like(backbone, entry.task) for entry in entries]
        with Pool(local_pool) as built_here:
            pool_build.build_pool(backbone, built_here, tasks, config)
            for entry, here in zip(entries, built_here.entries(), strict=True):
                assert entry.task == here.task and entry.val_accuracy == here.val_accuracy
                for ours, theirs in (
                    (built_on_ray.entry_masks(entry.id), built_here.entry_masks(here.id)),
                    (built_on_ray.entry_scores(entry.id), built_here.entry_scores(here.id)),
                ):
                    assert ours.keys() == theirs.keys()
                    assert all(np.array_equal(ours[key], theirs[key]) for key in ours)
                # Same seed, one thread, same code: the weights are bit-identical too.
                ray_model = built_on_ray.materialise_model_dir(entry.id, tmp_path / f"ray{entry.id}")
                here_model = built_here.materialise_model_dir(here.id, tmp_path / f"here{here.id}")
                for name in entry.file_names:
                    assert (ray_model / name).read_bytes() == (here_model / name).read_bytes(), name


def _task_like(backbone, record):
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    spec = backbone_spec(backbone)
    return load_task(
        record.dataset,
        record.classes,
        image_size=32,
        mean=spec.mean,
        std=spec.std,
        seed=record.seed,
        train_per_class=24,
        val_per_class=12,
    )


@pytest.fixture(scope="module")
def cluster(needs_ray):
    """One local Ray cluster (2 CPUs) for the fault tests; their drivers join it by address."""
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the build ended before {what}: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost_or_doubled(cluster, tmp_path):
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    stalled = "fashion-mnist:2-3"
    driver = start_build(pool, markers, "--ray", cluster, "--stall-task", stalled)
    wait_for(lambda: stalled in training_runs(markers), driver, "the stalled task's start")
    (worker_pid,) = training_runs(markers)[stalled]
    assert worker_pid != driver.pid
    os.kill(worker_pid, signal.SIGKILL)
    output = finish(driver)

    runs = training_runs(markers)
    assert len(runs[stalled]) == 2 and runs[stalled][1] != worker_pid  # retried by Ray in another worker
    assert all(len(runs[task]) == 1 for task in ALL_TASKS - {stalled})
    assert {line["task_id"]: line["status"] for line in output if "status" in line} == dict.fromkeys(
        ALL_TASKS, "added"
    )
    assert_each_task_once(pool, markers)


def test_a_sigkilled_driver_is_resumed_by_a_rerun_that_skips_every_committed_entry(cluster, tmp_path):
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    stalled = f"fashion-mnist:{TASK_CLASSES[-1][0]}-{TASK_CLASSES[-1][1]}"
    driver = start_build(pool, markers, "--ray", cluster, "--stall-task", stalled)
    committed: list[str] = []

    def some_committed_and_the_last_running() -> bool:
        line = driver.stdout.readline()
        if '"added"' in line:
            committed.append(json.loads(line)["task_id"])
        return len(committed) >= 1 and stalled in training_runs(markers)

    wait_for(some_committed_and_the_last_running, driver, "a committed entry")
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    with Pool(pool, create=False, check="full") as opened:
        assert opened.integrity_check() == []
        in_pool = {entry.task.task_key for entry in opened.entries()}
        assert set(committed) <= in_pool and stalled not in in_pool
        assert {claim.pid for claim in opened.claims()} == {driver.pid}  # left by the dead driver

    rerun = finish(start_build(pool, markers, "--ray", cluster))
    statuses = {line["task_id"]: line["status"] for line in rerun if "status" in line}
    assert statuses == {task: "in pool" if task in in_pool else "added" for task in ALL_TASKS}
    assert not [line for line in rerun if "waiting_for" in line]  # the dead driver's claims: taken at once
    runs = training_runs(markers)
    assert all(len(runs[task]) == 1 for task in in_pool)  # nothing committed is trained again
    assert_each_task_once(pool, markers)


def test_two_drivers_on_one_pool_make_no_duplicate_entries(cluster, tmp_path):
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    outputs = [finish(driver) for driver in start_together(pool, markers, tmp_path / "go", "--ray", cluster)]
    assert_each_task_once(pool, markers)
    assert all(len(pids) == 1 for pids in training_runs(markers).values()), training_runs(markers)
    added = [set(output[-1]["added"]) for output in outputs]
    assert added[0].isdisjoint(added[1]) and added[0] | added[1] == {1, 2, 3, 4}
