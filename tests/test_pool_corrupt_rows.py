"""A pool row edited by hand (text or a number where an entry's .npz masks/scores belong) is a PoolError that names
the entry and calls the pool corrupt, never a TypeError from the decoder."""

from __future__ import annotations

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
