"""A pool row edited by hand (text or a number where an entry's .npz masks/scores belong) is a PoolError that names
the entry and calls the pool corrupt, never a TypeError from the decoder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge_smsp.core.errors import PoolError
from edge_smsp.pool import Pool
from tests.pruning_helpers import add_tiny_entry


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
    connection = sqlite3.connect(path)
    try:
        connection.execute(f"UPDATE entries SET {column} = {value}")
        connection.commit()
    finally:
        connection.close()
    with Pool(path) as pool:
        read = pool.entry_masks if column == "masks" else pool.entry_scores
        with pytest.raises(PoolError) as caught:
            read(entry_id)
    message = str(caught.value)
    assert f"{column} of entry {entry_id}" in message
    assert "corrupt" in message and "rebuild" in message
    assert "\n" not in message
