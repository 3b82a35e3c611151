import dataclasses
import hashlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_smsp.cli import main
from edge_smsp.core.errors import PoolError
from edge_smsp.pool import (
    SCHEMA_VERSION,
    BackboneRecord,
    DeviceMeasurement,
    Pool,
    TaskRecord,
    default_pool_path,
)

LITE0 = BackboneRecord(name="efficientnet_lite0", weights_hash="a" * 64, image_size=32)
RESNET = BackboneRecord(name="resnet18", weights_hash="b" * 64, image_size=32, checkpoint="/ckpt/r18.pth")
GROUP_SIZES = {"conv_stem": 32, "blocks.0.0.conv_dw": 16, "blocks.3.attn.heads": 6}


def make_task(index: int, classes: tuple[int, ...] = (0, 3, 5)) -> TaskRecord:
    return TaskRecord(
        task_key=f"fashion-mnist:{','.join(map(str, classes))}:seed{index}",
        dataset="fashion-mnist",
        classes=classes,
        seed=index,
        n_train=300,
        n_val=60,
        class_names=tuple(f"class{c}" for c in classes),
    )


def make_masks_scores(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scores = {key: rng.normal(size=size) for key, size in GROUP_SIZES.items()}
    masks = {key: score >= np.median(score) for key, score in scores.items()}
    return masks, scores


def make_model_files(seed: int, size: int = 4096) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "model.safetensors": rng.bytes(size),
        "pruned.json": json.dumps({"backbone": "efficientnet_lite0", "seed": seed}).encode(),
    }


def add_example_entry(pool: Pool, index: int, backbone: BackboneRecord = LITE0, **overrides) -> int:
    masks, scores = make_masks_scores(index)
    arguments = dict(
        task=make_task(index),
        backbone=backbone,
        ratio=0.5,
        method="taylor",
        iters=200,
        val_accuracy=0.875,
        masks=masks,
        scores=scores,
        model_files=make_model_files(index),
        extra={"params_after": 1234},
    )
    arguments.update(overrides)
    return pool.add_entry(**arguments)


def test_entries_round_trip_with_masks_scores_and_model_files(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "pool.sqlite"
    model_dir = tmp_path / "pruned"
    model_dir.mkdir()
    for name, data in make_model_files(1, size=100_000).items():
        (model_dir / name).write_bytes(data)
    (model_dir / ".model.safetensors.tmp").write_bytes(b"left over by an interrupted write")
    with Pool(path) as pool:
        first = add_example_entry(pool, 1, model_files=None, model_dir=model_dir)
        second = add_example_entry(pool, 2, backbone=RESNET, ratio=0.3, method="magnitude", scores=None)
    assert path.is_file()

    with Pool(path, create=False) as pool:
        entries = pool.entries()
        assert [entry.id for entry in entries] == [first, second]
        entry = pool.entry(first)
        assert entry.task == make_task(1)
        assert entry.backbone == LITE0
        assert (entry.ratio, entry.method, entry.iters, entry.val_accuracy) == (0.5, "taylor", 200, 0.875)
        assert entry.extra == {"params_after": 1234}
        assert entry.file_names == ("model.safetensors", "pruned.json")
        assert [e.id for e in pool.entries(backbone_hash=RESNET.weights_hash)] == [second]
        assert [e.id for e in pool.entries(backbone_name="efficientnet_lite0")] == [first]
        assert pool.entries(backbone_hash=RESNET.weights_hash, backbone_name="efficientnet_lite0") == []
        assert pool.entry(second).backbone.checkpoint == "/ckpt/r18.pth"

        masks, scores = make_masks_scores(1)
        stored_masks, stored_scores = pool.entry_masks(first), pool.entry_scores(first)
        assert set(stored_masks) == set(GROUP_SIZES)
        for key in GROUP_SIZES:
            assert stored_masks[key].dtype == np.bool_
            np.testing.assert_array_equal(stored_masks[key], masks[key])
            np.testing.assert_array_equal(stored_scores[key], scores[key])
        assert pool.entry_scores(second) is None

        out = pool.materialise_model_dir(first, tmp_path / "restored")
        assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "pruned.json"]
        for name in ("model.safetensors", "pruned.json"):
            assert (out / name).read_bytes() == (model_dir / name).read_bytes()

        assert pool.has_entry(make_task(1).task_key, LITE0.weights_hash, 0.5, "taylor", 200)
        assert pool.has_entry(
            make_task(1).task_key, LITE0.weights_hash, 0.5000000001, "taylor", 200, image_size=32
        )
        assert not pool.has_entry(
            make_task(1).task_key, LITE0.weights_hash, 0.5, "taylor", 200, image_size=64
        )
        assert not pool.has_entry(make_task(1).task_key, LITE0.weights_hash, 0.5, "taylor", 100)
        assert not pool.has_entry(make_task(1).task_key, LITE0.weights_hash, 0.5, "magnitude", 200)
        assert not pool.has_entry(make_task(1).task_key, RESNET.weights_hash, 0.5, "taylor", 200)

        rows = pool.entry_dicts()
        assert rows[0]["task_id"] == make_task(1).task_key
        assert rows[1]["backbone"] == "resnet18"
        for key in (
            "task_id",
            "dataset",
            "classes",
            "backbone",
            "ratio",
            "iters",
            "val_accuracy",
            "method",
            "created",
        ):
            assert key in rows[0]
        json.dumps(rows)


def test_wal_mode_and_schema_version_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        assert pool.journal_mode() == "wal"
        assert pool.schema_version() == SCHEMA_VERSION
        add_example_entry(pool, 1)
        assert pool.integrity_check() == []
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        raw.close()


def test_newer_schema_and_foreign_database_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    Pool(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(PoolError, match="newer than this edge-smsp"):
        Pool(path)

    other = tmp_path / "other.sqlite"
    raw = sqlite3.connect(other)
    with raw:
        raw.execute("CREATE TABLE photos (id INTEGER)")
    raw.close()
    with pytest.raises(PoolError, match="not an edge-smsp pool"):
        Pool(other)
    raw = sqlite3.connect(other)
    assert raw.execute("SELECT name FROM sqlite_master").fetchall() == [("photos",)]
    raw.close()


def test_missing_pool_is_not_created_when_only_reading(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite"
    with pytest.raises(PoolError, match="no pool at"):
        Pool(path, create=False)
    assert not path.exists()
    with pytest.raises(PoolError, match="is a directory"):
        Pool(tmp_path)
    path.touch()
    with pytest.raises(PoolError, match="empty file"):
        Pool(path, create=False)


def test_random_bytes_file_is_refused_with_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(PoolError, match="not an SQLite pool database; move .* aside") as raised:
        Pool(path)
    assert "\n" not in str(raised.value)
    # A file that looks like SQLite only by its header is caught by SQLite itself.
    path.write_bytes(b"SQLite format 3\x00" + np.random.default_rng(1).bytes(8192))
    with pytest.raises(PoolError, match="move .* aside"):
        Pool(path)


def test_truncated_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        for index in range(3):
            add_example_entry(pool, index, model_files=make_model_files(index, size=50_000))
    assert not Path(f"{path}-wal").exists(), "closing the last connection checkpoints the WAL"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PoolError, match="move .* aside") as raised:
        Pool(path, create=False)
    assert "\n" not in str(raised.value)


def test_damaged_blobs_are_detected_on_read(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        entry_id = add_example_entry(pool, 1)
    # Bit rot inside blob pages passes SQLite's own checks; the checksums and the npz CRCs must catch it.
    raw = sqlite3.connect(path)
    with raw:
        stored = raw.execute("SELECT masks FROM entries WHERE id = ?", (entry_id,)).fetchone()[0]
        damaged = stored[:40] + bytes(b ^ 0xFF for b in stored[40:80]) + stored[80:]
        raw.execute("UPDATE entries SET masks = ? WHERE id = ?", (damaged, entry_id))
        raw.execute("UPDATE entry_files SET data = ? WHERE name = 'model.safetensors'", (b"rotten",))
    raw.close()
    with Pool(path, create=False) as pool:
        with pytest.raises(PoolError, match="masks of entry .* cannot be decoded"):
            pool.entry_masks(entry_id)
        with pytest.raises(PoolError, match="fails its checksum"):
            pool.materialise_model_dir(entry_id, tmp_path / "restored")
        assert pool.entry_scores(entry_id)["conv_stem"].shape == (32,)


def test_duplicate_entry_is_refused_unless_replaced(tmp_path: Path) -> None:
    with Pool(tmp_path / "pool.sqlite") as pool:
        first = add_example_entry(pool, 1)
        with pytest.raises(PoolError, match="already has entry"):
            add_example_entry(pool, 1)
        second = add_example_entry(
            pool, 1, val_accuracy=0.9, model_files={"model.safetensors": b"new"}, replace=True
        )
        assert [e.id for e in pool.entries()] == [second]
        assert second != first
        assert pool.entry(second).val_accuracy == 0.9
        assert pool.entry(second).file_names == ("model.safetensors",)
        pool.delete_entry(second)
        assert pool.entries() == []
        assert pool.integrity_check() == []


def test_failed_add_rolls_back_everything_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        add_example_entry(pool, 1)
        clashing_task = TaskRecord(
            task_key=make_task(1).task_key,
            dataset="fashion-mnist",
            classes=(1, 2),
            seed=1,
            n_train=1,
            n_val=1,
        )
        # The backbone row is inserted before the task clash is found; the rollback must take it away again.
        with pytest.raises(PoolError, match="already stores task"):
            add_example_entry(pool, 2, task=clashing_task, backbone=RESNET)
        assert len(pool.entries()) == 1
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT name FROM backbones").fetchall() == [("efficientnet_lite0",)]
    raw.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"masks": {"conv_stem": np.array([0, 2, 1])}}, "only 0 and 1"),
        ({"masks": {}}, "at least one"),
        ({"scores": {"conv_stem": np.zeros(32)}}, "same unit groups"),
        ({"scores": {**make_masks_scores(0)[1], "conv_stem": np.full(32, np.nan)}}, "finite"),
        ({"ratio": 1.0}, "ratio"),
        ({"val_accuracy": 87.5}, "val_accuracy"),
        ({"model_files": {"../escape": b"x"}}, "plain file name"),
        ({"extra": {"bad": object()}}, "JSON"),
    ],
)
def test_bad_entry_is_refused_before_writing(tmp_path: Path, overrides: dict, message: str) -> None:
    with Pool(tmp_path / "pool.sqlite") as pool:
        with pytest.raises(PoolError, match=message):
            add_example_entry(pool, 0, **overrides)
        assert pool.entries() == []


def test_second_connection_sees_committed_entries(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as writer, Pool(path, create=False) as reader:
        assert reader.entries() == []
        entry_id = add_example_entry(writer, 1)
        assert [e.id for e in reader.entries()] == [entry_id]


def _shared_lock_held_elsewhere(path: Path) -> bool:
    """Whether some process holds SQLite's SHARED lock on the pool file, asked from a fresh process (F_GETLK
    reports only other processes' locks)."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, struct
        fd = os.open({str(path)!r}, os.O_RDONLY)
        shared_first = 0x40000000 + 2  # SQLite's PENDING_BYTE + 2: its SHARED lock range, 510 bytes
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, shared_first, 510, 0)
        print(struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0] != fcntl.F_UNLCK)
        """
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return answer.stdout.strip() == "True"


def test_a_second_store_in_the_same_process_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """A build's heartbeat opens its own store every few seconds beside the build's. Reading the file's header
    from Python dropped the build's SQLite locks; another process closing the pool then deleted the WAL under
    the build, and the build's next commit found the database 'malformed' (seen with two real `pool build`s)."""
    from edge_smsp.pool.claims import ClaimStore

    path = tmp_path / "pool.sqlite"
    Pool(path).close()
    with Pool(path, create=False) as build:
        add_example_entry(build, 1)
        assert _shared_lock_held_elsewhere(path)
        with ClaimStore(path, create=False, check="none"):  # what the heartbeat does
            pass
        assert _shared_lock_held_elsewhere(path)
        other_build = f"from edge_smsp.pool import Pool; p = Pool({str(path)!r}); p.entries(); p.close()"
        subprocess.run([sys.executable, "-c", other_build], check=True, cwd=Path(__file__).parent.parent)
        assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        second = add_example_entry(build, 2)
        assert [entry.id for entry in build.entries()][-1] == second
        assert build.integrity_check() == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from tests.test_pool import LITE0, add_example_entry, make_model_files
    from edge_smsp.pool import Pool

    path, stop_at = sys.argv[1], int(sys.argv[2])
    pool = Pool(path)
    files_inserted = []

    def stall_inside_entry(statement):
        if statement.startswith("INSERT INTO entry_files"):
            files_inserted.append(statement[:40])
            # Two files per entry: the second insert of entry `stop_at` runs after its first 3 MB file.
            if len(files_inserted) == 2 * stop_at + 2:
                print("inside", flush=True)
                time.sleep(120)

    # The trace hook only pauses the real SQLite connection mid-transaction so the kill lands there.
    pool._connection.set_trace_callback(stall_inside_entry)
    for index in range(stop_at + 1):
        entry_id = add_example_entry(pool, index, model_files=make_model_files(index, size=3_000_000))
        print(f"committed {entry_id}", flush=True)
    """
)


def test_sigkill_mid_entry_keeps_finished_entries_and_no_half_entry(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    stop_at = 3
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(stop_at)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in child.stdout], daemon=True).start()
    committed = []
    try:
        while True:
            line = lines.get(timeout=90)
            if line == "inside":
                break
            committed.append(int(line.split()[1]))
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert len(committed) == stop_at

    with Pool(path, create=False, check="full") as pool:
        assert pool.integrity_check() == []
        assert [entry.id for entry in pool.entries()] == committed
        for index, entry_id in enumerate(committed):
            assert pool.entry(entry_id).file_names == ("model.safetensors", "pruned.json")
            expected_masks, _ = make_masks_scores(index)
            np.testing.assert_array_equal(
                pool.entry_masks(entry_id)["conv_stem"], expected_masks["conv_stem"]
            )
            restored = pool.materialise_model_dir(entry_id, tmp_path / f"restored{index}")
            expected = make_model_files(index, size=3_000_000)["model.safetensors"]
            restored_bytes = (restored / "model.safetensors").read_bytes()
            assert hashlib.sha256(restored_bytes).digest() == hashlib.sha256(expected).digest()
        assert not pool.has_entry(make_task(stop_at).task_key, LITE0.weights_hash, 0.5, "taylor", 200)
        # Resuming finishes the interrupted entry.
        add_example_entry(pool, stop_at)
        assert pool.has_entry(make_task(stop_at).task_key, LITE0.weights_hash, 0.5, "taylor", 200)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT COUNT(*) FROM entry_files").fetchone()[0] == 2 * (stop_at + 1)
    raw.close()


JETSON_MEASUREMENT = DeviceMeasurement(
    device="jetson_nano",
    backbone="efficientnet_lite0",
    image_size=224,
    ratio=0.25,
    params=2_500_000,
    macs=250_000_000,
    latency_p50_ms=9.0,
    latency_p90_ms=9.5,
    latency_p99_ms=11.0,
)


def test_device_measurements_round_trip_and_filter(tmp_path: Path) -> None:
    report = {"latency_ms": {"p50": 3.5}, "providers": ["CPUExecutionProvider"]}
    first = DeviceMeasurement(
        device="localhost",
        backbone="efficientnet_lite0",
        image_size=224,
        ratio=0.5,
        params=1_500_000,
        macs=120_000_000,
        latency_p50_ms=3.5,
        latency_p90_ms=4.0,
        latency_p99_ms=5.25,
        peak_rss_mib=80.5,
        report=report,
    )
    second = JETSON_MEASUREMENT
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        first_id = pool.add_measurement(first)
        pool.add_measurement(second)
        with pytest.raises(PoolError, match="ratio"):
            pool.add_measurement(DeviceMeasurement(**{**first.__dict__, "ratio": -0.1}))
    with Pool(path, create=False) as pool:
        everything = pool.measurements()
        assert len(everything) == 2
        local = pool.measurements(device="localhost", backbone="efficientnet_lite0", image_size=224)
        assert len(local) == 1
        stored = local[0]
        assert stored.id == first_id
        assert stored.created
        assert stored.report == report
        assert (stored.ratio, stored.params, stored.macs) == (0.5, 1_500_000, 120_000_000)
        assert (stored.latency_p50_ms, stored.latency_p90_ms, stored.latency_p99_ms) == (3.5, 4.0, 5.25)
        assert stored.peak_rss_mib == 80.5
        assert pool.measurements(device="jetson_nano")[0].peak_rss_mib is None
        assert pool.measurements(image_size=64) == []


def test_pool_list_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        add_example_entry(pool, 1)
        add_example_entry(pool, 2, backbone=RESNET)
    assert main(["pool", "list", "--pool", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["task_id"] for row in rows] == [make_task(1).task_key, make_task(2).task_key]
    assert rows[0]["classes"] == [0, 3, 5]
    assert (rows[0]["backbone"], rows[0]["ratio"], rows[0]["iters"], rows[0]["val_accuracy"]) == (
        "efficientnet_lite0",
        0.5,
        200,
        0.875,
    )

    assert main(["pool", "list", "--pool", str(path), "--backbone", "resnet18", "--json"]) == 0
    assert [row["backbone"] for row in json.loads(capsys.readouterr().out)] == ["resnet18"]

    assert main(["pool", "list", "--pool", str(path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["ID", "TASK", "DATASET"]
    assert make_task(2).task_key in table
    assert "87.50%" in table


def test_pool_list_uses_default_path_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "env-pool.sqlite"
    monkeypatch.setenv("EDGE_SMSP_POOL", str(path))
    assert default_pool_path() == path
    Pool(path).close()
    assert main(["pool", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_pool_list_on_missing_or_corrupt_pool_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sqlite"
    assert main(["pool", "list", "--pool", str(missing), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("edge-smsp: error: no pool at")
    assert not missing.exists()

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    assert main(["pool", "list", "--pool", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "move" in err and "--pool" in err


def test_stored_file_names_that_leave_the_directory_are_refused(tmp_path):
    path = tmp_path / "pool.sqlite"
    with Pool(path) as pool:
        entry_id = add_example_entry(pool, 1)
    # A pool file shared by someone else is untrusted: rename a stored file to escape the destination.
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE entry_files SET name = '../escaped' WHERE name = 'pruned.json'")
    destination = tmp_path / "model"
    with Pool(path, create=False) as pool, pytest.raises(PoolError, match="plain file name"):
        pool.materialise_model_dir(entry_id, destination)
    assert not (tmp_path / "escaped").exists()


def test_the_same_classes_with_another_seed_are_the_same_task(tmp_path):
    with Pool(tmp_path / "pool.sqlite") as pool:
        first = add_example_entry(pool, 1)
        reseeded = dataclasses.replace(make_task(1), seed=7)
        second = add_example_entry(pool, 2, task=reseeded, method="magnitude")
        assert pool.entry(first).task.task_key == pool.entry(second).task.task_key


V1_POOL = Path(__file__).parent / "data" / "pool_v1.sqlite"  # written by edge-smsp 9bb472c (schema version 1)


def test_a_version_1_pool_is_migrated_in_place_and_keeps_entries_and_measurements(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    path.write_bytes(V1_POOL.read_bytes())
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    raw.close()

    with Pool(path, create=False) as pool:  # opening for reading migrates too
        assert pool.schema_version() == SCHEMA_VERSION == 5
        assert pool.integrity_check() == []
        (entry,) = pool.entries()
        assert (entry.task.task_key, entry.task.classes, entry.backbone.name) == (
            "fashion-mnist:0-1-2",
            (0, 1, 2),
            "efficientnet_lite0",
        )
        assert (entry.ratio, entry.method, entry.iters, entry.val_accuracy) == (
            0.5,
            "scratch-taylor-r2",
            100,
            0.8,
        )
        np.testing.assert_array_equal(pool.entry_masks(entry.id)["conv_stem"], [True, False, True, True])
        np.testing.assert_array_equal(pool.entry_scores(entry.id)["blocks.0.0.conv_dw"], [0.2, 0.8])
        restored = pool.materialise_model_dir(entry.id, tmp_path / "model")
        assert (restored / "model.safetensors").read_bytes() == b"weights"
        old = pool.measurements()
        assert [(row.ratio, row.latency_p90_ms) for row in old] == [(0.0, 2.5), (0.3, 2.0)]
        # Everything measured before version 2 ran on onnxruntime in fp32.
        assert {(row.runtime, row.precision) for row in old} == {("onnxruntime", "fp32")}
        assert {row.adapt_peak_rss_mib for row in old} == {None}  # all adapted on the host
        assert pool.measurements(runtime="onnxruntime", precision="fp32") == old
        assert pool.measurements(precision="int8") == []
        new_id = pool.add_measurement(
            dataclasses.replace(old[0], id=None, created=None, runtime="tensorrt", precision="int8")
        )
        assert [row.id for row in pool.measurements(runtime="tensorrt", precision="int8")] == [new_id]
    with Pool(path, create=False) as pool:  # already current: opened as is
        assert pool.schema_version() == SCHEMA_VERSION and len(pool.measurements()) == 3


def test_a_fresh_pool_has_the_schema_of_a_migrated_one(tmp_path: Path) -> None:
    migrated, fresh = tmp_path / "migrated.sqlite", tmp_path / "fresh.sqlite"
    migrated.write_bytes(V1_POOL.read_bytes())
    for path in (migrated, fresh):
        Pool(path).close()
    schemas = []
    for path in (migrated, fresh):
        raw = sqlite3.connect(path)
        schemas.append(raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall())
        raw.close()
    assert schemas[0] == schemas[1]


def test_only_comparable_measurements_calibrate_a_latency_model(tmp_path: Path) -> None:
    base = dataclasses.replace(JETSON_MEASUREMENT, device="test-device", image_size=32)
    settings = {
        0.1: {"report": {"batch_size": 1, "threads": 1}},
        0.2: {"report": {"batch_size": 4, "threads": 1}},
        0.3: {"report": {"batch_size": 1, "threads": 2}},
        0.4: {"report": {"batch_size": 1, "threads": 1}},
        0.5: {"report": {"batch_size": 1, "threads": 1}, "precision": "int8"},
        0.6: {"report": {"batch_size": 1, "threads": 1}, "runtime": "tensorrt"},
    }
    with Pool(tmp_path / "pool.sqlite") as pool:
        for ratio, changes in settings.items():
            pool.add_measurement(dataclasses.replace(base, ratio=ratio, **changes))

        def comparable(**changes: object) -> list[float]:
            query = dict(
                device="test-device", backbone="efficientnet_lite0", image_size=32, batch_size=1, threads=1
            )
            return [row.ratio for row in pool.comparable_measurements(**{**query, **changes})]

        assert comparable() == [0.1, 0.4]
        assert comparable(batch_size=4) == [0.2]
        assert comparable(threads=2) == [0.3]
        assert comparable(precision="int8") == [0.5]
        assert comparable(runtime="tensorrt") == [0.6]
        assert comparable(image_size=64) == []
