"""Build claims: concurrent `pool build`s on one pool do each task once (real SQLite, real processes)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from edge_smsp.pool import BuildKey, Pool, Writer
from edge_smsp.pool.claims import MAX_LEASE_SECONDS, machine_id, process_start
from edge_smsp.pool.schema import BASE_SCHEMA, MIGRATIONS, SCHEMA_VERSION, statements
from tests.build_steps import TASK_CLASSES, training_runs
from tests.test_pool import LITE0, add_example_entry, make_task

REPO = Path(__file__).resolve().parents[1]
ALL_TASKS = {f"fashion-mnist:{a}-{b}" for a, b in TASK_CLASSES}


def key_of(index: int) -> BuildKey:
    return BuildKey(make_task(index).task_key, LITE0.weights_hash, LITE0.image_size, 0.5, "taylor", 200)


def other_writer(machine: str | None = None, pid: int | None = None, start: str | None = None) -> Writer:
    """Another build: by default a live one (this very process, under another id)."""
    return Writer(
        id=uuid.uuid4().hex,
        machine=machine or machine_id(),
        pid=pid or os.getpid(),
        process_start=start if start is not None else process_start(os.getpid()),
    )


def test_a_claim_keeps_others_off_until_committed_and_the_commit_releases_it(tmp_path):
    with Pool(tmp_path / "pool.sqlite") as pool:
        first, second = other_writer(), other_writer()
        assert pool.claim(key_of(1), first).status == "claimed"
        assert pool.claim(key_of(1), first).status == "claimed"  # its own claim again (a retried task)
        held = pool.claim(key_of(1), second)
        assert (held.status, held.holder) == ("held", f"pid {os.getpid()} on {machine_id().split('/')[0]}")
        assert pool.claim(key_of(2), second).status == "claimed"
        assert [claim.key for claim in pool.claims()] == [key_of(1), key_of(2)]

        entry_id = pool.commit_claimed(_new_entry(index=1), first)
        assert [claim.key for claim in pool.claims()] == [key_of(2)]
        assert pool.claim(key_of(1), second).status == "committed"
        pool.release_claims(first, [key_of(2)])  # not its claim: stays
        assert [claim.key for claim in pool.claims()] == [key_of(2)]
        pool.release_claims(second, [key_of(2)])
        assert pool.claims() == []
        assert pool.entry(entry_id).task.task_key == key_of(1).task_key


def test_commit_releases_the_claim_and_a_filled_key_drops_the_late_entry(tmp_path):
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        writer, late = other_writer(), other_writer()
        pool.claim(key_of(1), writer)
        early = add_example_entry(pool, 1, val_accuracy=0.5)
        entry = _new_entry(index=1, val_accuracy=0.9)
        assert pool.commit_claimed(entry, late) is None  # the key was filled meanwhile
        assert pool.claims() == []
        assert [(e.id, e.val_accuracy) for e in pool.entries()] == [(early, 0.5)]

        pool.claim(key_of(2), writer)
        added = pool.commit_claimed(_new_entry(index=2), writer)
        assert pool.claims() == [] and pool.entry(added).task.task_key == key_of(2).task_key


def test_a_dead_holder_on_this_machine_is_taken_over_at_once_and_a_foreign_one_when_its_lease_ends(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child_writer = other_writer(pid=child.pid, start=process_start(child.pid))
    finally:
        child.kill()
        child.wait()
    with Pool(tmp_path / "pool.sqlite") as pool:
        rerun = other_writer()
        pool.claim(key_of(1), child_writer, lease_seconds=3600)
        assert (
            pool.claim(key_of(1), rerun).status == "claimed"
        )  # its process is gone: no waiting out the lease

        elsewhere = other_writer(machine="build-host-2/boot/ns", pid=os.getpid())
        pool.claim(key_of(2), elsewhere, lease_seconds=3600)
        assert pool.claim(key_of(2), rerun).status == "held"  # cannot see its process: trusts the lease
        pool.claim(key_of(3), elsewhere, lease_seconds=-1)
        assert pool.claim(key_of(3), rerun).status == "claimed"
        assert pool.renew_claims(rerun, lease_seconds=3600) == 2
        # A lease no heartbeat writes (a day or more ahead: a clock far off, a hand-edited row) is not honoured.
        pool.claim(key_of(4), elsewhere, lease_seconds=1e300)
        assert pool.claim(key_of(4), rerun).status == "claimed"
        pool.claim(key_of(5), elsewhere, lease_seconds=MAX_LEASE_SECONDS - 60)
        assert pool.claim(key_of(5), rerun).status == "held"


def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path):
    with Pool(tmp_path / "pool.sqlite") as pool:
        same_pid_earlier_process = other_writer(start="1")  # this pid, but a process started at another time
        pool.claim(key_of(1), same_pid_earlier_process, lease_seconds=3600)
        assert pool.claim(key_of(1), other_writer()).status == "claimed"


def test_a_version_3_pool_is_migrated_to_claims(tmp_path):
    path = tmp_path / "v3.sqlite"
    raw = sqlite3.connect(path)
    for statement in statements(BASE_SCHEMA) + [s for version in (1, 2) for s in MIGRATIONS[version]]:
        raw.execute(statement)
    raw.execute("INSERT INTO schema_version (version, created) VALUES (3, 'then')")
    raw.commit()
    raw.close()
    with Pool(path, create=False) as pool:
        assert pool.schema_version() == SCHEMA_VERSION  # migrated to claims and every schema after them
        assert pool.claim(key_of(1), other_writer()).status == "claimed"


def _new_entry(index: int, val_accuracy: float = 0.875):
    from edge_smsp.pool import new_entry
    from tests.test_pool import make_masks_scores, make_model_files

    masks, scores = make_masks_scores(index)
    return new_entry(
        task=make_task(index),
        backbone=LITE0,
        ratio=0.5,
        method="taylor",
        iters=200,
        val_accuracy=val_accuracy,
        masks=masks,
        scores=scores,
        model_files=make_model_files(index),
    )


# --- real builds in separate processes ------------------------------------------------------------------------


def start_build(pool: Path, markers: Path, *extra: str) -> subprocess.Popen:
    """`python -m tests.build_steps`: a build of the 4 tiny tasks with a traced step, as its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.build_steps", str(pool), str(markers), *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 400) -> list[dict]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return [json.loads(line) for line in stdout.splitlines()]


def assert_each_task_once(pool_path: Path, markers: Path) -> list:
    runs = training_runs(markers)
    assert set(runs) == ALL_TASKS
    with Pool(pool_path, create=False, check="full") as pool:
        entries = pool.entries()
        assert pool.integrity_check() == []
        assert pool.claims() == []
    assert sorted(entry.task.task_key for entry in entries) == sorted(ALL_TASKS)
    # AUTOINCREMENT ids are never reused: 1..4 means no entry was ever replaced or deleted.
    assert [entry.id for entry in entries] == [1, 2, 3, 4]
    return entries


def start_together(pool: Path, markers: Path, go: Path, *extra: str) -> list[subprocess.Popen]:
    """Two builds that begin claiming at the same moment, once both have loaded everything."""
    builds = [start_build(pool, markers, "--go", str(go), *extra) for _ in range(2)]
    for build in builds:
        assert build.stdout.readline().strip() == "ready", build.stderr.read()[-3000:]
    go.touch()
    return builds


def test_two_concurrent_builds_train_each_task_once_and_replace_nothing(tmp_path):
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    lines = [finish(build) for build in start_together(pool, markers, tmp_path / "go")]
    assert_each_task_once(pool, markers)
    assert all(len(pids) == 1 for pids in training_runs(markers).values()), training_runs(markers)
    added = [set(output[-1]["added"]) for output in lines]
    assert added[0] and added[1], "both builds started together, so both trained some tasks"
    assert added[0].isdisjoint(added[1]) and added[0] | added[1] == {1, 2, 3, 4}
    for output in lines:  # each build ends knowing every task is in the pool
        statuses = {line["task_id"]: line["status"] for line in output if "status" in line}
        assert set(statuses) == ALL_TASKS and set(statuses.values()) <= {"added", "in pool"}


def test_a_sigkilled_builds_claim_is_taken_over_by_a_rerun_at_once(tmp_path):
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    stalled = "fashion-mnist:2-3"
    build = start_build(pool, markers, "--stall-task", stalled, "--lease", "3600")
    try:
        deadline = time.monotonic() + 300
        while stalled not in training_runs(markers):
            assert build.poll() is None and time.monotonic() < deadline, build.stderr.read()[-3000:]
            time.sleep(0.1)
        os.kill(build.pid, signal.SIGKILL)
    finally:
        build.kill()
        build.communicate()
    with Pool(pool, create=False) as opened:
        (claim,) = opened.claims()
        assert (claim.key.task_key, claim.pid) == (stalled, build.pid)
        finished_before = {entry.task.task_key for entry in opened.entries()}
    assert finished_before == {"fashion-mnist:0-1"}

    output = finish(start_build(pool, markers))
    assert not [line for line in output if "waiting_for" in line]  # a dead holder is not waited for
    statuses = {line["task_id"]: line["status"] for line in output if "status" in line}
    assert statuses == {task: "in pool" if task in finished_before else "added" for task in ALL_TASKS}
    assert_each_task_once(pool, markers)
    runs = training_runs(markers)
    assert len(runs[stalled]) == 2 and all(len(runs[task]) == 1 for task in ALL_TASKS - {stalled})


def test_sigkills_while_an_entry_commit_is_in_the_wal_lose_and_duplicate_nothing(tmp_path):
    """Five SIGKILLs, each with an entry's commit in flight (its model blobs already in the WAL), at several depths
    of the transaction and after 0, 1 or 2 committed entries: the pool stays intact, keeps every committed
    entry, and a rerun finishes each task exactly once."""
    pool, markers = tmp_path / "pool.sqlite", tmp_path / "runs.txt"
    wal = Path(f"{pool}-wal")
    committed: list[str] = []
    # (which commit of this run stalls, how deep into its transaction)
    for kill, (entry, depth) in enumerate(((1, 1), (1, 12), (2, 5), (2, 30), (1, 20))):
        report = tmp_path / f"stalled-{kill}.txt"
        build = start_build(pool, markers, "--stall-commit", f"{entry}:{depth}:{report}")
        try:
            deadline = time.monotonic() + 300
            while not report.exists() or not report.read_text().endswith("\n"):
                assert build.poll() is None, f"kill {kill}: the build ended without stalling"
                assert time.monotonic() < deadline, f"kill {kill}: no stall within 300 s"
                time.sleep(0.05)
            growth, wal_then = map(int, report.read_text().split())
            os.kill(build.pid, signal.SIGKILL)
            build.wait(timeout=30)
        finally:
            build.kill()
            build.communicate()
        assert growth >= 64 * 1024 and wal.stat().st_size >= wal_then  # the half-written commit is in the WAL
        in_flight = training_runs(markers)
        with Pool(pool, create=False, check="full") as opened:
            assert opened.integrity_check() == []
            entries = opened.entries()
            keys = [entry.task.task_key for entry in entries]
            assert len(keys) == len(set(keys))
            for (
                stored
            ) in entries:  # every committed entry is whole: its files are there and match their hashes
                assert opened.entry_files(stored.id)
        assert keys[: len(committed)] == committed, f"kill {kill} lost a committed entry"
        assert len(keys) == len(committed) + entry - 1, f"kill {kill}: the in-flight entry must not land"
        committed = keys
        assert set(in_flight) >= set(keys)

    output = finish(start_build(pool, markers))
    statuses = {line["task_id"]: line["status"] for line in output if "status" in line}
    assert {task for task, status in statuses.items() if status == "in pool"} == set(committed)
    assert_each_task_once(pool, markers)  # ids 1..4: no entry was ever replaced, none half-inserted


class _FailingRunner:
    """A task runner whose task ends with an error, as a crashing step does, in this (live) process."""

    def __init__(self) -> None:
        self.submitted: list[object] = []

    def capacity(self) -> int:
        return 1

    def busy(self) -> int:
        return len(self.submitted)

    def submit(self, task: object) -> None:
        self.submitted.append(task)

    def finished(self, timeout: float) -> list:
        raise RuntimeError("the step failed")


def test_a_build_ending_with_an_error_releases_its_claims_at_once(tmp_path):
    """A build that fails in a live process must not block other builds for its lease: its claims go with it."""
    import pytest

    from edge_smsp.pool.build.loop import run_build

    tasks = [object(), object()]
    keys = [key_of(1), key_of(2)]
    with Pool(tmp_path / "pool.sqlite") as pool:
        runner = _FailingRunner()
        with pytest.raises(RuntimeError, match="the step failed"):
            run_build(pool, tasks, keys, runner, lease_seconds=3600)
        assert runner.submitted == [tasks[0]]  # it claimed the first task, then failed on it
        assert pool.claims() == []
        # Another build (live, in this very process) takes the task at once, not after the hour's lease.
        assert pool.claim(key_of(1), other_writer()).status == "claimed"


def test_a_lease_has_run_out_at_its_end():
    from edge_smsp.pool.claims import Claim

    elsewhere = Claim(key_of(1), "w", "build-host-2/boot/ns", 1, "1", expires=1000.0)
    assert elsewhere.is_live(999.5) and not elsewhere.is_live(1000.0) and not elsewhere.is_live(1000.5)
