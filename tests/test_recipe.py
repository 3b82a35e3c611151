"""The recovery recipe on the bundled EfficientNet-Lite0 and real Fashion-MNIST images: each step does what it says."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edge_smsp.core.errors import EdgeSmspError
from edge_smsp.data import tasks as data
from edge_smsp.data.fashion_mnist import FASHION_MNIST_DIR
from edge_smsp.models import prune, zoo
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.training import features, recipe, recovery

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
SIZE = 32
BN_IMPRINT = recipe.Recipe("bn+imprint")


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    return zoo.load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE)


@pytest.fixture(scope="module")
def task(backbone) -> data.Task:
    spec = zoo.backbone_spec(backbone)
    return data.load_task(
        "fashion-mnist",
        (0, 1, 7),
        image_size=SIZE,
        mean=spec.mean,
        std=spec.std,
        train_per_class=40,
        val_per_class=10,
    )


@pytest.fixture(scope="module")
def pruned(backbone) -> nn.Module:
    with_head = prune.replace_classifier(copy.deepcopy(backbone), 3)
    model, _ = prune.prune(with_head, unit_l1_norms(backbone), 0.5)
    return model


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [
        torch.cat([m.running_mean, m.running_var]).clone()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]


def test_adaptive_bn_replaces_statistics_and_moves_outputs_towards_train_mode(pruned, task):
    model = copy.deepcopy(pruned)
    images, _ = features.task_sample(task, 96, seed=0)
    before = _bn_stats(model)
    with torch.no_grad():
        train_mode = copy.deepcopy(model).train()(images)  # normalised by this batch's own statistics
        eval_before = model.eval()(images)
    layers = recovery.adaptive_bn(model, images, batch_size=96)
    after = _bn_stats(model)
    with torch.no_grad():
        eval_after = model(images)
    assert layers == len(before) > 10
    changed = [not torch.allclose(b, a, rtol=1e-3, atol=1e-5) for b, a in zip(before, after, strict=True)]
    assert all(changed)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not model.training
    # One batch of the whole sample: the running statistics are that batch's, so eval nearly matches train
    # mode (not exactly: running_var stores the unbiased variance, train mode divides by the biased one, and
    # the late 1x1 layers see only 96 values per channel). Measured: the gap shrinks 7x.
    gap_before = (eval_before - train_mode).abs().mean().item()
    gap_after = (eval_after - train_mode).abs().mean().item()
    assert gap_after < 0.3 * gap_before, (gap_before, gap_after)


def test_imprinted_head_classifies_the_prototypes_before_any_step(backbone, task):
    model = prune.replace_classifier(copy.deepcopy(backbone), 3)
    images, labels = features.task_sample(task, 90, seed=0)
    feats = features.penultimate_features(model, images)
    scale = recovery.imprint_head(model, feats, labels)
    means = torch.from_numpy(features.class_means(feats, labels, 3)).float()
    head = features.classifier(model)
    with torch.no_grad():
        logits = head(means)
        sample_accuracy = (head(feats).argmax(1) == labels).float().mean().item()
    assert logits.argmax(1).tolist() == [0, 1, 2]
    assert 0 < scale < 1e3
    # Trouser, T-shirt and Sneaker are far apart even in ImageNet features: the head is already useful.
    assert sample_accuracy > 0.8


def test_recover_runs_the_named_steps_and_plain_runs_none(pruned, task):
    model = copy.deepcopy(pruned)
    untouched = copy.deepcopy(pruned)
    report = recovery.recover(untouched, task, recipe.NOTHING)
    assert report.steps == [] and all(
        torch.equal(a, b)
        for a, b in zip(untouched.state_dict().values(), pruned.state_dict().values(), strict=True)
    )
    report = recovery.recover(model, task, BN_IMPRINT, seed=0)
    assert report.steps == ["adaptive_bn", "imprint"]
    assert report.head_scale is not None and np.isfinite(report.head_scale)
    assert not torch.equal(features.classifier(model).weight, features.classifier(pruned).weight)


def test_invalid_recipe_and_identical_prototypes_are_refused(backbone):
    with pytest.raises(EdgeSmspError):
        recipe.Recipe("bad", samples=1)
    model = prune.replace_classifier(copy.deepcopy(backbone), 2)
    same = torch.ones(4, features.classifier(model).in_features)
    with pytest.raises(EdgeSmspError, match="identical prototypes"):
        recovery.imprint_head(model, same, torch.tensor([0, 1, 0, 1]))


def test_head_steps_are_skipped_when_stale_statistics_kill_the_features(pruned, task):
    """Seen in the study: pruned with the backbone's BatchNorm statistics, the last ReLU6 outputs 0 for every
    image. Stale statistics are simulated here on the last BatchNorm; adaptive BN brings the features back."""
    model = copy.deepcopy(pruned)
    with torch.no_grad():
        model.bn2.running_mean.fill_(1e4)
    images, _ = features.task_sample(task, 60, seed=0)
    assert features.penultimate_features(model, images).abs().max() == 0
    head_before = features.classifier(model).weight.clone()
    report = recovery.recover(model, task, recipe.Recipe("imprint only", adaptive_bn=False), seed=0)
    assert report.steps == ["head skipped: the features do not separate the classes"]
    assert torch.equal(features.classifier(model).weight, head_before)
    report = recovery.recover(model, task, BN_IMPRINT, seed=0)
    assert report.steps == ["adaptive_bn", "imprint"]


def test_adaptive_bn_on_a_model_without_batchnorm_counts_none():
    from torch import nn

    from edge_smsp.training.recovery import adaptive_bn

    assert adaptive_bn(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.zeros(4, 3, 2, 2)) == 0
