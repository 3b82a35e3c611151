"""SMSP end to end on real data: bundled EfficientNet-Lite0 ImageNet weights and Fashion-MNIST tasks at 32 px."""

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_smsp import adaptation
from edge_smsp.adaptation.state import AdaptRun
from edge_smsp.cli import main
from edge_smsp.core.errors import PoolError, PruneError
from edge_smsp.data.tasks import load_task
from edge_smsp.models.pruned_model import load_pruned
from edge_smsp.models.units import unit_groups
from edge_smsp.models.zoo import backbone_spec, load_backbone
from edge_smsp.pool import Pool
from edge_smsp.pool import build as pool_build

SIZE = 32
SMALL_TASK = [
    "--image-size",
    str(SIZE),
    "--train-per-class",
    "24",
    "--val-per-class",
    "12",
    "--batch-size",
    "16",
]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE)


def task_of(backbone, classes, train_per_class=40, val_per_class=20, image_size=SIZE):
    spec = backbone_spec(backbone)
    return load_task(
        "fashion-mnist",
        classes,
        image_size=image_size,
        mean=spec.mean,
        std=spec.std,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
    )


@pytest.fixture(scope="module")
def built_pool(backbone, tmp_path_factory):
    """Two pool tasks pruned from scratch: tops (0,1,2) and footwear/bags (5,7,8)."""
    path = tmp_path_factory.mktemp("pool") / "pool.sqlite"
    config = adaptation.AdaptConfig(ratio=0.5, iters=60, method="scratch", scratch_rounds=1, batch_size=16)
    with Pool(path) as pool:
        added = pool_build.build_pool(
            backbone, pool, [task_of(backbone, (0, 1, 2)), task_of(backbone, (5, 7, 8))], config
        )
    assert len(added) == 2
    return path


def test_pool_entries_hold_masks_scores_and_loadable_models(backbone, built_pool, tmp_path):
    groups = {group.key: group.size for group in unit_groups(backbone)}
    with Pool(built_pool, create=False) as pool:
        entries = pool.entries()
        assert [entry.task.classes for entry in entries] == [(0, 1, 2), (5, 7, 8)]
        for entry in entries:
            masks = pool.entry_masks(entry.id)
            scores = pool.entry_scores(entry.id)
            assert set(masks) == set(groups)
            assert all(len(masks[key]) == size for key, size in groups.items())
            # The stored mask keeps the units the stored scores rank highest in every group.
            for key in groups:
                kept = int(masks[key].sum())
                top = set(np.argsort(-scores[key], kind="stable")[:kept])
                assert top == set(np.flatnonzero(masks[key])), key
            model, meta = load_pruned(pool.materialise_model_dir(entry.id, tmp_path / str(entry.id)))
            assert meta["num_classes"] == 3
            assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in backbone.parameters())
            assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 3)


def test_smsp_ranks_the_task_sharing_classes_first_and_lands_in_the_pool(backbone, built_pool, tmp_path):
    path = tmp_path / "pool.sqlite"
    path.write_bytes(built_pool.read_bytes())
    new_task = task_of(backbone, (0, 1, 3))
    # probe=1: the most similar entry is the one used (the probe's own test is below).
    config = adaptation.AdaptConfig(ratio=0.5, iters=10, method="smsp", top_k=1, probe=1, batch_size=16)
    with Pool(path) as pool:
        result = adaptation.adapt(backbone, pool, new_task, config)
        entry_id = pool_build.add_to_pool(pool, backbone, result)
        stored = pool.entry(entry_id)
        stored_masks = pool.entry_masks(entry_id)
    ranked = [similar.task_id for similar in result.similar_tasks]
    assert ranked[0] == "fashion-mnist:0-1-2"
    assert [similar.selected for similar in result.similar_tasks] == [True, False]
    # Prototype similarity counts shared classes: two for 0-1-2, none for 5-7-8. Measured 2.00 apart at 1 and 2
    # threads (LEEP, the earlier estimator, flipped this pair between machines).
    assert result.similar_tasks[0].similarity - result.similar_tasks[1].similarity > 1.5
    assert result.init == "pool" and result.config.k == 1
    assert 0.0 <= result.val_accuracy <= 1.0
    assert result.summary.params_after < result.summary.params_before
    assert stored.task.task_key == "fashion-mnist:0-1-3" and stored.method == "smsp"
    # With K=1 the score mask is the selected entry's mask, so the adapted model keeps exactly its units.
    with Pool(path, create=False) as pool:
        selected_masks = pool.entry_masks(result.similar_tasks[0].entry_id)
    for key, mask in selected_masks.items():
        assert np.array_equal(mask, stored_masks[key]), key


def test_a_k1_pool_initialisation_starts_from_the_entrys_weights_exactly(backbone, built_pool):
    from edge_smsp.transfer.entry_models import entry_model

    config = adaptation.AdaptConfig(ratio=0.5, iters=0, method="smsp", recipe="plain", batch_size=16)
    with Pool(built_pool, create=False) as pool:
        result = adaptation.adapt(backbone, pool, task_of(backbone, (0, 1, 3)), config)
        chosen = next(similar for similar in result.similar_tasks if similar.selected)
        source = entry_model(pool, pool.entry(chosen.entry_id))
    assert result.init == "pool" and result.recovery == []
    adapted, stored = result.model.state_dict(), source.state_dict()
    assert adapted.keys() == stored.keys()
    # Every weight and BN statistic of the body; BN's batch counters are not weights (inherit leaves them).
    body = [
        name for name in adapted if not name.startswith("classifier") and "num_batches_tracked" not in name
    ]
    assert len(body) > 100 and all(torch.equal(adapted[name], stored[name]) for name in body)
    # The head is the new task's (three classes, not the entry's rows).
    assert not torch.equal(adapted["classifier.weight"], stored["classifier.weight"])


def test_the_probe_takes_the_candidate_whose_features_fit_the_task_best(backbone, built_pool):
    from edge_smsp.models.prune import kept_mask
    from edge_smsp.training.features import penultimate_features, task_sample
    from edge_smsp.transfer.entry_models import entry_model
    from edge_smsp.transfer.entry_probe import nearest_mean_accuracy

    task = task_of(backbone, (0, 1, 3))
    config = adaptation.AdaptConfig(ratio=0.5, iters=0, method="smsp", recipe="plain", seed=3, batch_size=16)
    with Pool(built_pool, create=False) as pool:
        result = adaptation.adapt(backbone, pool, task, config)
        images, labels = task_sample(task, 512, config.seed)
        measured = {
            entry.task.task_key: nearest_mean_accuracy(
                penultimate_features(entry_model(pool, entry), images), labels, 3
            )
            for entry in pool.entries()
        }
        probed = result.to_dict()["probed"]
        chosen = [candidate for candidate in probed if candidate["chosen"]]
        # Both pool tasks were probed, each accuracy is the one its own model gives, the best one was taken.
        assert sorted(candidate["task_id"] for candidate in probed) == sorted(measured)
        for candidate in probed:
            assert candidate["nearest_mean_accuracy"] == pytest.approx(
                measured[candidate["task_id"]], abs=1e-6
            )
        assert len(chosen) == 1
        assert chosen[0]["nearest_mean_accuracy"] == pytest.approx(max(measured.values()), abs=1e-6)
        selected = [similar for similar in result.similar_tasks if similar.selected]
        assert [similar.entry_id for similar in selected] == [chosen[0]["entry_id"]]
        # The chosen entry's mask is the sub-network's; K=1 still.
        entry_masks = pool.entry_masks(chosen[0]["entry_id"])
    assert result.init == "pool" and result.config.k == 1
    adapted_masks = kept_mask(result.model)
    assert all(np.array_equal(adapted_masks[key], mask.astype(bool)) for key, mask in entry_masks.items())

    with Pool(built_pool, create=False) as pool:
        unprobed = adaptation.adapt(backbone, pool, task, dataclasses.replace(config, probe=1))
    assert unprobed.to_dict()["probed"] == []
    assert next(similar for similar in unprobed.similar_tasks if similar.selected).task_id == (
        unprobed.similar_tasks[0].task_id
    )
    with pytest.raises(PruneError, match="probe"):
        adaptation.AdaptConfig(ratio=0.5, probe=0)


def test_init_and_recipe_are_reported_and_a_backbone_start_keeps_the_papers_k(backbone, built_pool):
    task = task_of(backbone, (0, 1, 3), train_per_class=20, val_per_class=10)
    with Pool(built_pool, create=False) as pool:
        result = adaptation.adapt(
            backbone, pool, task, adaptation.AdaptConfig(ratio=0.5, iters=1, init="backbone", batch_size=16)
        )
    report = result.to_dict()
    assert (report["init"], report["recipe"]) == ("backbone", "recover")
    assert sum(similar["selected"] for similar in report["similar_tasks"]) == 2  # K=5, two pool tasks
    with pytest.raises(PruneError, match="init pool"):
        adaptation.AdaptConfig(ratio=0.5, method="magnitude", init="pool")


def test_score_mask_sums_selected_masks(built_pool):
    with Pool(built_pool, create=False) as pool:
        entries = pool.entries()
        summed = adaptation.score_mask(pool, [(entry, -1.0) for entry in entries])
        masks = [pool.entry_masks(entry.id) for entry in entries]
        weighted = adaptation.score_mask(pool, [(entries[0], -0.1), (entries[1], -5.0)], weighting="leep")
    for key, values in summed.items():
        assert np.array_equal(values, masks[0][key].astype(float) + masks[1][key].astype(float))
        # LEEP weighting leans towards the more similar entry.
        assert np.all((weighted[key] > 0.5) == masks[0][key].astype(bool)) or not np.any(
            masks[0][key] != masks[1][key]
        )


@pytest.mark.parametrize("method", ["random", "magnitude", "taylor", "smsp-random"])
def test_baselines_share_the_same_path_and_size(backbone, built_pool, method):
    task = task_of(backbone, (2, 4, 6), train_per_class=20, val_per_class=10)
    config = adaptation.AdaptConfig(ratio=0.5, iters=2, method=method, top_k=2, batch_size=16)
    with Pool(built_pool, create=False) as pool:
        result = adaptation.adapt(backbone, pool, task, config)
    reference = adaptation.adapt(
        backbone, None, task, adaptation.AdaptConfig(ratio=0.5, iters=0, method="magnitude")
    )
    assert result.summary.params_after == reference.summary.params_after
    assert result.model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 3)


def test_an_adaptation_reports_its_batch_and_chunks_large_images(backbone):
    config = adaptation.AdaptConfig(ratio=0.5, iters=1, method="magnitude")
    assert config.batch_size == 128
    small = adaptation.adapt(backbone, None, task_of(backbone, (2, 4, 6)), config)
    # 120 training images: the batch is the whole set and SGD's rate follows it (0.01 per 32 images)
    assert small.to_dict()["training"] == {
        "batch_size": 120,
        "micro_batch": None,
        "lr": pytest.approx(0.0375),
        "optimizer": "sgd",
    }
    large = task_of(backbone, (2, 4, 6), train_per_class=12, val_per_class=4, image_size=128)
    # at 128 px a step holds at most 32 images: the 36 go through in two chunks of 18, one update
    assert adaptation.adapt(backbone, None, large, config).training["micro_batch"] == 18
    chosen = dataclasses.replace(config, micro_batch=9)
    assert adaptation.adapt(backbone, None, large, chosen).training == {
        "batch_size": 36,
        "micro_batch": 9,
        "lr": pytest.approx(0.01125),
        "optimizer": "sgd",
    }
    # Taylor's scoring batches are cut the same way: the batch (all 36 images) in chunks of at most 32
    assert [len(labels) for _images, labels in AdaptRun(backbone, None, large, config).batches(1)] == [18, 18]
    assert [len(labels) for _images, labels in AdaptRun(backbone, None, small.task, config).batches(1)] == [
        120
    ]
    with pytest.raises(PruneError, match="micro-batch must be >= 1"):
        adaptation.AdaptConfig(ratio=0.5, micro_batch=0)


def test_adapt_cli_json_and_saved_model(built_pool, tmp_path):
    pool = tmp_path / "pool.sqlite"
    pool.write_bytes(built_pool.read_bytes())
    out = tmp_path / "adapted"
    code, report, _ = run_cli(
        [
            "adapt",
            "--classes",
            "0,1,3",
            "--ratio",
            "0.5",
            "--iters",
            "3",
            "--top-k",
            "1",
            "--pool",
            str(pool),
            "--out",
            str(out),
            "--add-to-pool",
            "--json",
            *SMALL_TASK,
        ]
    )
    assert code == 0
    for key in (
        "method",
        "ratio",
        "iters",
        "val_accuracy",
        "params_after",
        "macs_after",
        "similar_tasks",
        "seconds",
    ):
        assert key in report
    assert set(report["seconds"]) >= {"similarity", "pruning", "init", "finetuning"}
    assert report["similar_tasks"][0]["task_id"] == "fashion-mnist:0-1-2"
    assert (report["init"], report["recipe"], report["similarity"]) == ("pool", "recover", "prototype")
    # --batch-size 16 (SMALL_TASK): SGD's default rate is batch 32's, not scaled down
    assert report["training"] == {"batch_size": 16, "micro_batch": None, "lr": 0.01, "optimizer": "sgd"}
    model, meta = load_pruned(out)
    assert meta["class_names"] == ["T-shirt/top", "Trouser", "Dress"]
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    with sqlite3.connect(pool) as connection:
        assert connection.execute("SELECT count(*) FROM entries").fetchone()[0] == 3


def run_cli(argv, capsys=None):
    completed = subprocess.run(
        [sys.executable, "-m", "edge_smsp", *argv], capture_output=True, text=True, timeout=600
    )
    report = json.loads(completed.stdout) if completed.returncode == 0 and "--json" in argv else None
    return completed.returncode, report, completed.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "mnist-digits", "--classes", "0,1", "--method", "magnitude"], "unknown dataset"),
        (["--classes", "0,1,12", "--method", "magnitude"], "out of range"),
        (["--classes", "0,1", "--method", "smsp", "--pool", "{empty}"], "build"),
        (["--classes", "0,1", "--method", "smsp", "--pool", "{corrupt}"], "pool"),
        (["--classes", "0,1", "--method", "smsp", "--pool", "{built}", "--backbone", "resnet18"], "resnet18"),
        (["--classes", "0,1", "--method", "magnitude", "--init", "pool"], "init pool"),
        (["--classes", "0,1", "--shortlist", "0"], "shortlist"),
        (["--classes", "0,1", "--probe", "0"], "--probe"),
    ],
)
def test_adapt_bad_input_one_line_exit_2(argv, message, tmp_path, built_pool, capsys):
    empty = tmp_path / "empty.sqlite"
    Pool(empty).close()
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    paths = {"{empty}": str(empty), "{corrupt}": str(corrupt), "{built}": str(built_pool)}
    argv = [paths.get(part, part) for part in argv]
    out = tmp_path / "out"
    code = main(["adapt", "--ratio", "0.5", "--iters", "1", "--out", str(out), *SMALL_TASK, *argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0].lower(), captured.err
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_pool_of_another_backbone_is_refused(built_pool):
    other = load_backbone("resnet18", image_size=SIZE)
    with Pool(built_pool, create=False) as pool, pytest.raises(PoolError, match="none for these resnet18"):
        adaptation.pool_entries_for(pool, other, SIZE)


def test_killed_pool_build_keeps_finished_entries_and_resumes(tmp_path):
    pool = tmp_path / "pool.sqlite"
    argv = [
        sys.executable,
        "-m",
        "edge_smsp",
        "pool",
        "build",
        "--tasks",
        "3",
        "--classes-per-task",
        "2",
        "--ratio",
        "0.5",
        "--iters",
        "2",
        "--rounds",
        "1",
        "--pool",
        str(pool),
        "--json",
        *SMALL_TASK,
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and count_entries(pool) < 1:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    survivors = count_entries(pool)
    assert 1 <= survivors <= 3
    with Pool(pool, create=False, check="full") as opened:
        assert opened.integrity_check() == []
        finished = {entry.task.task_key for entry in opened.entries()}
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert {row["task_id"] for row in summary["tasks"] if row["skipped"]} == finished
    assert summary["entries"] == 3


def count_entries(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_scratch_prunes_in_rounds_to_the_one_shot_size(backbone):
    task = task_of(backbone, (3, 6, 9), train_per_class=16, val_per_class=8)
    config = adaptation.AdaptConfig(ratio=0.6, iters=3, method="scratch", scratch_rounds=3, batch_size=8)
    model, summary, scores, _ = adaptation.prune_from_scratch(backbone, task, config)
    one_shot = adaptation.adapt(
        backbone, None, task, adaptation.AdaptConfig(ratio=0.6, iters=0, method="magnitude")
    )
    assert summary.params_after == one_shot.summary.params_after
    assert {key: group["kept"] for key, group in summary.groups.items()} == {
        key: group["kept"] for key, group in one_shot.summary.groups.items()
    }
    # Units that survived every round outrank every unit removed in an earlier round.
    for key, kept in summary.kept_indices.items():
        removed = sorted(set(range(len(scores[key]))) - set(kept))
        if removed:
            assert scores[key][kept].min() > scores[key][removed].max(), key


def test_adaptation_is_deterministic_under_its_seed_whatever_the_global_rng(backbone):
    task = task_of(backbone, (0, 1, 3), train_per_class=16, val_per_class=8)
    config = adaptation.AdaptConfig(ratio=0.5, iters=3, method="taylor", batch_size=8, seed=5)
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        result = adaptation.adapt(backbone, None, task, config)
        states.append(result.model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
