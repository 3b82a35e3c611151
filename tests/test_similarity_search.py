"""Task descriptors in the pool, the sketch search and `pool index`, on the bundled EfficientNet-Lite0 and real
Fashion-MNIST images (32 px, small splits)."""

from __future__ import annotations

import itertools
import json
import sqlite3

import numpy as np
import pytest

from edge_smsp.cli import main
from edge_smsp.core.errors import PoolError
from edge_smsp.data import descriptors as descriptors
from edge_smsp.data import tasks as data
from edge_smsp.data.fashion_mnist import FASHION_MNIST_DIR
from edge_smsp.models import zoo
from edge_smsp.pool import Pool
from edge_smsp.pool import build as pool_build
from edge_smsp.transfer.estimators import TaskQuery, shortlist, similarity_estimator

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
SIZE = 32
# 20 of the 120 three-class tasks; none is a query task below.
POOL_TASKS = [classes for classes in itertools.combinations(range(10), 3) if 2 not in classes][::2][:20]
QUERIES = [(0, 1, 2), (2, 5, 9), (2, 3, 7)]


@pytest.fixture(scope="module")
def backbone():
    return zoo.load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE)


def load(backbone, classes):
    spec = zoo.backbone_spec(backbone)
    return data.load_task(
        "fashion-mnist",
        classes,
        image_size=SIZE,
        mean=spec.mean,
        std=spec.std,
        train_per_class=30,
        val_per_class=2,
    )


def add_entry(pool, backbone, task) -> int:
    sizes = pool_build.backbone_record(backbone, SIZE)
    masks = {"conv_stem": np.array([1, 0, 1, 1])}
    return pool.add_entry(
        task=pool_build.task_record(task),
        backbone=sizes,
        ratio=0.5,
        method="test",
        iters=1,
        val_accuracy=None,
        masks=masks,
    )


@pytest.fixture(scope="module")
def described_pool(backbone, tmp_path_factory):
    """Entries (masks only) of 20 real tasks, each task described by the backbone."""
    path = tmp_path_factory.mktemp("search") / "pool.sqlite"
    with Pool(path) as pool:
        for classes in POOL_TASKS:
            task = load(backbone, classes)
            add_entry(pool, backbone, task)
            pool_build.describe_task(pool, backbone, task)
    return path


def test_descriptors_are_stored_per_task_with_their_sketch_and_the_pool_centre(backbone, described_pool):
    record = pool_build.backbone_record(backbone, SIZE)
    with Pool(described_pool, create=False) as pool:
        entries = pool.entries()
        stored = pool.entry_descriptors(entries)
        rows = pool.sketch_rows(record)
        centre = pool.descriptor_centre(record)
    assert set(stored) == {entry.id for entry in entries}
    assert all(value.shape == (3, 1280) and value.dtype == np.float16 for value in stored.values())
    assert rows.rows == (3,) * len(POOL_TASKS) and rows.sketches.shape == (60, descriptors.SKETCH_WIDTH)
    every_row = np.concatenate([value.astype(np.float64) for value in stored.values()])
    np.testing.assert_allclose(centre, every_row.mean(axis=0), rtol=1e-9, atol=1e-12)
    first = stored[entries[0].id]
    np.testing.assert_array_equal(rows.sketches[:3], descriptors.sketch(first))


def test_replacing_a_descriptor_keeps_the_centre_the_mean_of_what_is_stored(
    backbone, described_pool, tmp_path
):
    path = tmp_path / "pool.sqlite"
    path.write_bytes(described_pool.read_bytes())
    record = pool_build.backbone_record(backbone, SIZE)
    with Pool(path) as pool:
        entry = pool.entries()[0]
        pool.put_descriptor(entry.task, record, np.ones((3, 1280)), samples=10, seed=0)
        stored = pool.entry_descriptors(pool.entries())
        centre = pool.descriptor_centre(record)
        with pytest.raises(PoolError, match="rows"):
            pool.put_descriptor(entry.task, record, np.ones((2, 1280)), samples=10, seed=0)
    every_row = np.concatenate([value.astype(np.float64) for value in stored.values()])
    np.testing.assert_allclose(centre, every_row.mean(axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("query_classes", QUERIES)
def test_the_shortlist_holds_the_exhaustive_winner(backbone, described_pool, query_classes):
    query = TaskQuery(load(backbone, query_classes), backbone)
    estimator = similarity_estimator("prototype")
    with Pool(described_pool, create=False) as pool:
        entries = pool.entries()
        exhaustive = estimator.rank(entries, pool, query)
        short = shortlist(entries, pool, query, 4)
        reranked = estimator.rank(short, pool, query)
    assert len(short) == 4
    assert reranked[0][0].id == exhaustive[0][0].id
    # The winner shares as many classes with the query as any pool task does.
    best = max(len(set(classes) & set(query_classes)) for classes in POOL_TASKS)
    assert len(set(exhaustive[0][0].task.classes) & set(query_classes)) == best


def test_sketch_search_honours_the_allowed_tasks_and_orders_by_score():
    rng = np.random.default_rng(0)
    sketches = rng.normal(size=(9, 16))
    index = descriptors.SketchIndex(["a", "b", "c"], [3, 3, 3], sketches, np.zeros(16))
    query = sketches[3:6] + 0.01 * rng.normal(size=(3, 16))
    assert index.search(query, 1) == ["b"]
    assert index.search(query, 3)[0] == "b"
    assert index.search(query, 3, allowed=np.array([True, False, True])) in (["a", "c"], ["c", "a"])


def test_prototype_similarity_without_descriptors_names_pool_index(backbone, described_pool, tmp_path):
    path = tmp_path / "pool.sqlite"
    path.write_bytes(described_pool.read_bytes())
    with sqlite3.connect(path) as raw:
        raw.execute(
            "DELETE FROM task_descriptors WHERE rowid IN (SELECT rowid FROM task_descriptors LIMIT 2)"
        )
    query = TaskQuery(load(backbone, QUERIES[0]), backbone)
    with Pool(path, create=False) as pool, pytest.raises(PoolError, match="pool index"):
        similarity_estimator("prototype").rank(pool.entries(), pool, query)


def test_pool_index_describes_what_is_missing_and_resumes(backbone, tmp_path, capsys):
    path = tmp_path / "pool.sqlite"
    tasks = [load(backbone, classes) for classes in POOL_TASKS[:3]]
    with Pool(path) as pool:
        for task in tasks:
            add_entry(pool, backbone, task)
        pool_build.describe_task(
            pool, backbone, tasks[0]
        )  # as if an earlier run was interrupted after one task
    argv = ["pool", "index", "--pool", str(path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert sorted(first["described"]) == sorted(task.task_id for task in tasks[1:]) and first["already"] == 1
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["described"] == [] and again["already"] == 3
    with Pool(path, create=False) as pool:
        assert len(pool.entry_descriptors(pool.entries())) == 3


def test_pool_index_on_a_missing_pool_is_one_line_exit_2(tmp_path, capsys):
    assert main(["pool", "index", "--pool", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pool" in err[0]


def test_an_empty_sketch_index_scores_no_task():
    from edge_smsp.data.descriptors import SketchIndex

    empty = SketchIndex([], [], np.zeros((0, 8), dtype=np.float32), np.zeros(8, dtype=np.float32))
    assert len(empty) == 0 and empty.scores(np.ones((2, 8), dtype=np.float32)).shape == (0,)
