"""A pool row edited by hand (text or a number where an entry's .npz masks/scores belong) is a PoolError that names
the entry and calls the pool corrupt, never a TypeError from the decoder."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge_smsp.core.errors import PoolError
from edge_smsp.pool import Pool
from tests.pruning_helpers import add_tiny_entry, sql


def _tiny_pool(path: Path) -> int:
    with Pool(path) as pool:
        add_tiny_entry(pool, scores={"layer1": np.array([0.1, 0.2, 0.3, 0.4])})
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT id FROM entries").fetchone()[0])
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("masks", "'not json{'"),
        ("masks", "12345"),
        ("scores", "'zzz'"),
        ("scores", "1.5"),
        ("masks", "x'00ff'"),
    ],
)
def test_a_hand_edited_masks_or_scores_cell_is_a_corrupt_pool_naming_the_entry(
    tmp_path: Path, column: str, value: str
) -> None:
    path = tmp_path / "p.sqlite"
    entry_id = _tiny_pool(path)
    sql(path, f"UPDATE entries SET {column} = {value}")
    with Pool(path) as pool:
        read = pool.entry_masks if column == "masks" else pool.entry_scores
        with pytest.raises(PoolError) as caught:
            read(entry_id)
    message = str(caught.value)
    assert f"{column} of entry {entry_id}" in message
    assert "corrupt" in message and "rebuild" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("classes", "why"),
    [
        ("'[0, 99]'", r"from 0 to 9"),  # beyond Fashion-MNIST's 10 classes
        ("'[1, 1]'", r"not distinct"),
        ("'[\"a\", 2]'", r"not distinct"),
        ("'[-1, 2]'", r"not distinct"),
        ("'[]'", r"not distinct"),
    ],
)
def test_a_hand_edited_task_classes_cell_is_a_damaged_pool_naming_the_task(
    tmp_path: Path, classes: str, why: str
) -> None:
    path = tmp_path / "p.sqlite"
    _tiny_pool(path)
    sql(path, f"UPDATE tasks SET classes = {classes}")
    with Pool(path, create=False) as pool, pytest.raises(PoolError) as caught:
        pool.entry_dicts()
    message = str(caught.value)
    assert "lists classes" in message and "damaged" in message and "rebuild" in message
    assert why in message and "\n" not in message


def test_a_pool_without_its_entries_table_is_named_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    _tiny_pool(path)
    sql(path, "DROP TABLE entries")
    with Pool(path, create=False) as pool, pytest.raises(PoolError) as caught:
        pool.entry_dicts()
    assert "is not a whole edge-smsp pool (no such table: entries" in str(caught.value)
    assert "rebuild" in str(caught.value)


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        (
            "UPDATE task_descriptors SET data = x'00'",
            r"the descriptor of task \S+ is 1 bytes, not a whole number",
        ),
        (
            "UPDATE task_descriptors SET data = x'0000'",
            r"the descriptor of task \S+ holds 1 values, not 3 x 8",
        ),
        ("UPDATE task_descriptors SET data = 'text'", r"the descriptor of task \S+ is str, not bytes"),
        (
            "UPDATE task_descriptors SET sketch = x'0000'",
            r"the sketch of task \S+ holds 1 values, not 3 x 128",
        ),
        ("UPDATE descriptor_sums SET total = zeroblob(8 * 7 + 3)", r"the descriptors' sum is 59 bytes"),
        (
            "UPDATE descriptor_sums SET total = x'000000000000f07f'",
            r"the descriptors' sum holds NaN or infinite",
        ),
        ("UPDATE descriptor_sums SET rows = 0", r"the descriptors' sum counts 0 rows but 3 are stored"),
        ("UPDATE descriptor_sums SET rows = 'x'", r"the descriptors' sum counts 'x' rows but 3 are stored"),
    ],
)
def test_a_hand_edited_descriptor_is_a_damaged_pool_not_a_numpy_error(
    tmp_path: Path, statement: str, what: str
) -> None:
    path = tmp_path / "p.sqlite"
    _tiny_pool(path)
    with Pool(path) as pool:
        entry = pool.entries()[0]
        pool.put_descriptor(entry.task, entry.backbone, np.ones((3, 8)), samples=10, seed=0)
    sql(path, statement)
    with Pool(path, create=False) as pool, pytest.raises(PoolError) as caught:
        entries = pool.entries()
        pool.entry_descriptors(entries)
        pool.sketch_rows(entries[0].backbone)
        pool.descriptor_centre(entries[0].backbone)
    assert (
        re.search(what, str(caught.value))
        and "damaged" in str(caught.value)
        and "rebuild" in str(caught.value)
    )


def test_an_escape_code_stored_in_a_row_never_reaches_the_terminal_raw(tmp_path: Path, capsys) -> None:
    from edge_smsp.cli import main

    path = tmp_path / "p.sqlite"
    _tiny_pool(path)
    sql(path, "UPDATE tasks SET task_key = char(27) || '[2J' || char(27) || '[31mEVIL'")
    sql(path, "UPDATE entries SET method = 'taylor' || char(7) || char(9) || 'x' || char(10) || 'forged row'")
    assert main(["pool", "list", "--pool", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and "\x07" not in listed
    assert "\\x1b[2J\\x1b[31mEVIL" in listed and "taylor\\x07\\tx\\nforged row" in listed
    assert (
        len(listed.splitlines()) == 3
    )  # the header, the one entry, the count: a stored newline forges no row
    assert main(["pool", "list", "--pool", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["task_id"] == "\x1b[2J\x1b[31mEVIL"  # JSON keeps the value


def test_a_measurement_no_benchmark_gives_is_neither_stored_nor_used(tmp_path: Path) -> None:
    from edge_smsp.pool.measurements import DeviceMeasurement

    path = tmp_path / "p.sqlite"
    honest = DeviceMeasurement("board", "resnet18", 32, 0.5, 10, 10, 1.0, 2.0, 3.0, peak_rss_mib=90.0)
    with Pool(path) as pool:
        first = pool.add_measurement(honest)
        for lie, named in (
            ({"latency_p50_ms": -3.0}, "latency_p50_ms -3.0"),
            ({"latency_p99_ms": 1e300}, "latency_p99_ms 1e+300"),
            ({"peak_rss_mib": -100.0}, "peak_rss_mib -100.0"),
            ({"latency_p90_ms": 0.5}, "latency statistics out of order"),
            ({"macs": 0}, "macs 0 (a benchmarked model has more than 0)"),
        ):
            with pytest.raises(PoolError, match=re.escape(named)):
                pool.add_measurement(DeviceMeasurement(**{**honest.__dict__, **lie}))
        assert [m.id for m in pool.measurements()] == [first]
    sql(path, f"UPDATE device_measurements SET latency_p50_ms = -3 WHERE id = {first}")  # an altered row
    with Pool(path) as pool, pytest.raises(PoolError) as caught:
        pool.measurements(device="board")
    assert f"device measurement {first} of this pool is not plausible: latency_p50_ms -3.0" in str(
        caught.value
    )
    assert f"sqlite3 {path} 'DELETE FROM device_measurements WHERE id = {first}'" in str(caught.value)
    sql(path, f"UPDATE device_measurements SET latency_p50_ms = 1, params = 0 WHERE id = {first}")
    with Pool(path) as pool, pytest.raises(PoolError, match=f"measurement {first} .* params 0 "):
        pool.measurements(device="board")
