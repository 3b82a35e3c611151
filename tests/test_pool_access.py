"""Who may write a pool: read-only pools read as usual and refuse writes in one line (never "damaged"), and two
concurrent `adapt --add-to-pool` runs of one key never report an entry id the other deleted."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_smsp.core.errors import PoolError
from edge_smsp.pool import Pool
from tests.required import skip_or_fail
from tests.test_pool import add_example_entry

REPO = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pool_with_entries(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pool.sqlite"
    with Pool(path) as pool:
        for index in range(1, count + 1):
            add_example_entry(pool, index)
    return path


def test_a_pool_opened_read_only_reads_and_refuses_writes_in_one_line(tmp_path: Path) -> None:
    path = _pool_with_entries(tmp_path / "p")
    before = _digest(path)
    with Pool(path, create=False, read_only=True) as pool:
        assert [entry.task.task_key for entry in pool.entries()] == [
            "fashion-mnist:0,3,5:seed1",
            "fashion-mnist:0,3,5:seed2",
        ]
        assert pool.entry_files(1) and pool.integrity_check() == []
        with pytest.raises(PoolError, match="is read-only") as caught:
            add_example_entry(pool, 3)
        assert "damaged" not in str(caught.value) and "rebuild" not in str(caught.value)
        with pytest.raises(PoolError, match="is read-only"):
            pool.check_writable()
    assert _digest(path) == before
    assert sorted(os.listdir(path.parent)) == ["pool.sqlite"]  # the reader's empty -wal and -shm went with it
    with Pool(path, create=False) as pool:
        pool.check_writable()  # an ordinary pool can be written


def _in_read_only_mount(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """`command` in a private mount namespace where `folder` is a read-only bind mount of itself (nothing is
    mounted outside that process; needs root or CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        skip_or_fail("unshare (util-linux) is needed to test a pool on a read-only file system")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    probe = subprocess.run(
        [unshare, "--mount", "sh", "-c", script, "sh", str(folder), "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        skip_or_fail(f"cannot bind-mount read-only here (not root?): {probe.stderr.strip()[:200]}")
    return subprocess.run(
        [unshare, "--mount", "sh", "-c", script, "sh", str(folder), *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_a_pool_on_a_read_only_file_system_lists_and_refuses_adapt_before_any_work(tmp_path: Path) -> None:
    """The issue's case: a healthy pool on a read-only file system was called damaged ("move it aside and
    rebuild"). It lists as usual; `adapt --add-to-pool` refuses in one line before writing --out."""
    path = _pool_with_entries(tmp_path / "ro")
    before = _digest(path)
    cli = [sys.executable, "-m", "edge_smsp"]
    listed = _in_read_only_mount(path.parent, *cli, "pool", "list", "--json", "--pool", str(path))
    assert listed.returncode == 0, listed.stderr
    assert '"task_id": "fashion-mnist:0,3,5:seed2"' in listed.stdout and listed.stderr == ""
    out = tmp_path / "adapted"
    adapt = [*cli, "adapt", "--classes", "0,1", "--ratio", "0.5", "--method", "smsp", "--pool", str(path)]
    refused = _in_read_only_mount(path.parent, *adapt, "--add-to-pool", "--out", str(out))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "read-only file system" in refused.stderr and "damaged" not in refused.stderr
    assert not out.exists()
    # deploy stores the device's measurement in the pool: refused before it adapts, exports or uploads anything
    deploy = [
        *cli,
        "deploy",
        "--profile",
        "localhost",
        "--classes",
        "0,1",
        "--ratio",
        "0.5",
        "--pool",
        str(path),
    ]
    refused = _in_read_only_mount(path.parent, *deploy, "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "is read-only (on a read-only file system)" in refused.stderr and not out.exists()
    assert _digest(path) == before and sorted(p.name for p in path.parent.iterdir()) == ["pool.sqlite"]


def test_concurrent_add_to_pool_keeps_the_first_entry_and_refuses_the_second(tmp_path: Path) -> None:
    """Two `adapt --add-to-pool` runs of one key, both started before either stored: the first stores its entry,
    the second is refused (before, it replaced the first's entry, whose id the first had already reported). A run
    that started after an entry was stored replaces it, as before."""
    from edge_smsp import adaptation
    from edge_smsp.models.zoo import load_backbone
    from edge_smsp.pool import build as pool_build
    from tests.test_smsp import task_of

    backbone = load_backbone("efficientnet_lite0", pretrained=True, image_size=32)
    task = task_of(backbone, (0, 1), train_per_class=8, val_per_class=4)
    config = adaptation.AdaptConfig(ratio=0.5, iters=1, method="magnitude", batch_size=8)
    result = adaptation.adapt(backbone, None, task, config)
    path = tmp_path / "pool.sqlite"
    with Pool(path, lazy=True) as pool:
        first_began = pool_build.entry_before(pool, backbone, task, config)
        second_began = pool_build.entry_before(pool, backbone, task, config)
        assert first_began is None and second_began is None and not path.exists()
        first = pool_build.add_to_pool(pool, backbone, result, replacing=first_began)
        with pytest.raises(PoolError, match=f"another run stored entry {first} .* while this one ran"):
            pool_build.add_to_pool(pool, backbone, result, replacing=second_began)
        assert [entry.id for entry in pool.entries()] == [first]  # the id the first run reported exists
        # A later run (it began with `first` in the pool) replaces it.
        third_began = pool_build.entry_before(pool, backbone, task, config)
        assert third_began == first
        third = pool_build.add_to_pool(pool, backbone, result, replacing=third_began)
        assert [entry.id for entry in pool.entries()] == [third] and third != first


def test_a_first_build_that_fails_leaves_no_empty_pool_but_a_used_pool_stays(tmp_path: Path) -> None:
    """A new pool whose build is stopped before its first entry (or whose Ray never starts) is removed with
    SQLite's -wal and -shm; a pool holding anything is never removed."""
    import os
    import signal
    import time

    from edge_smsp.pool.store import remove_unused_pool

    path = tmp_path / "new.sqlite"
    argv = ["pool", "build", "--pool", str(path), "--tasks", "1", "--classes-per-task", "2", "--ratio", "0.5",
            "--iters", "500", "--image-size", "32", "--train-per-class", "20", "--val-per-class", "10"]  # fmt: skip
    build = subprocess.Popen(
        [sys.executable, "-m", "edge_smsp", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not path.exists() and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), build.stderr.read() if build.poll() is not None else "no pool file after 120 s"
    build.send_signal(signal.SIGTERM)
    assert build.wait(timeout=120) == 128 + signal.SIGTERM
    assert sorted(os.listdir(tmp_path)) == []
    used = _pool_with_entries(tmp_path / "used", count=1)
    assert remove_unused_pool(used) is False and used.exists()


def test_a_pool_locked_past_its_wait_leaves_the_deploy_whole_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy whose pool stayed locked when the bench was stored ended in an error with no report: the
    measurement is now reported as not stored, and the deploy's report is still written."""
    import sqlite3

    from edge_smsp.data.tasks import load_task
    from edge_smsp.deploy.bench import DeviceRun
    from edge_smsp.deploy.steps import record
    from edge_smsp.devices.profiles import load_profile
    from edge_smsp.models.cost import ModelCost
    from edge_smsp.pool import store

    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 300)
    path = _pool_with_entries(tmp_path, count=1)
    task = load_task("fashion-mnist", [0, 1], image_size=32, train_per_class=2, val_per_class=2)
    cost = ModelCost(
        ratio=0.5, input_size=32, params=1000, weight_bytes=4000, macs=10**6, peak_activation_bytes=1
    )
    measured = {"latency_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0}, "peak_rss_mib": 80.0}
    run = DeviceRun(measured=measured, latency_ms=1.5, fallback_providers=())
    holder = sqlite3.connect(path, isolation_level=None)
    with Pool(path) as pool:
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not done within the wait
        recorded = record(pool, load_profile("localhost"), "efficientnet_lite0", 0.5, cost, run, task)
        holder.execute("ROLLBACK")
        assert recorded.measurement_id is None
        assert recorded.note is not None and recorded.note.startswith(
            f"not stored in the pool (pool {path} stayed"
        )
        stored = record(pool, load_profile("localhost"), "efficientnet_lite0", 0.5, cost, run, task)
        assert stored.measurement_id is not None and stored.note is None
    holder.close()
