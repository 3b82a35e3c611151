"""Unit scores: random (seeded), magnitude (group L1) and first-order Taylor, one value per unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from edge_smsp.core.errors import PruneError
from edge_smsp.criteria import score_units
from edge_smsp.models.prune import prune
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.models.units import unit_groups
from tests.pruning_helpers import backbone, images, randomize_norms  # noqa: F401 (fixtures)


def _labelled_batches(count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (images(4, seed=seed + i), torch.randint(0, 1000, (4,), generator=generator)) for i in range(count)
    ]


@pytest.mark.parametrize("name", ["resnet18", "deit_small_patch16_224"])
@pytest.mark.parametrize("method", ["random", "magnitude", "taylor"])
def test_every_method_scores_every_unit(name, method):
    model = backbone(name)
    randomize_norms(model)  # timm zero-inits residual BN gains, which would silence some gradients
    scores = score_units(model, method, batches=_labelled_batches(1) if method == "taylor" else None)
    groups = unit_groups(model)
    assert list(scores) == [group.key for group in groups]
    for group in groups:
        values = scores[group.key]
        assert values.shape == (group.size,) and np.isfinite(values).all() and (values >= 0).all()
        assert np.unique(values).size > 1  # the scores tell units apart
    pruned, _ = prune(model, scores, 0.5)  # any source plugs into prune()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_random_scores_follow_the_seed():
    model = backbone("resnet18")
    first, again, other = (score_units(model, "random", seed=seed) for seed in (4, 4, 5))
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not all(np.array_equal(first[key], other[key]) for key in first)


def test_magnitude_is_the_group_l1_norm():
    model = backbone("resnet18")
    scores = score_units(model, "magnitude")
    assert all(np.array_equal(scores[key], values) for key, values in unit_l1_norms(model).items())
    block = model.layer1[0]  # group layer1.0.conv1: conv1 filters, bn1 gains, conv2 input slices
    expected = (
        block.conv1.weight.abs().sum((1, 2, 3))
        + block.bn1.weight.abs()
        + block.conv2.weight.abs().sum((0, 2, 3))
    )
    assert np.allclose(scores["layer1.0.conv1"], expected.detach().double().numpy(), rtol=1e-5)


@torch.no_grad()
def test_magnitude_of_heads_and_ffn_nodes():
    model = backbone("deit_small_patch16_224")
    scores = unit_l1_norms(model)
    attention, mlp = model.blocks[1].attn, model.blocks[1].mlp
    head = 2
    rows = [part * 384 + head * 64 + offset for part in range(3) for offset in range(64)]
    expected = (
        attention.qkv.weight[rows].abs().sum()
        + attention.proj.weight[:, head * 64 : head * 64 + 64].abs().sum()
    )
    assert scores["blocks.1.attn.heads"][head] == pytest.approx(float(expected), rel=1e-5)
    node = 17
    expected_node = mlp.fc1.weight[node].abs().sum() + mlp.fc2.weight[:, node].abs().sum()
    assert scores["blocks.1.mlp.fc1"][node] == pytest.approx(float(expected_node), rel=1e-5)


def test_taylor_is_weight_times_gradient_and_leaves_the_model_alone():
    model = backbone("resnet18")
    randomize_norms(model)
    model.train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    batches = _labelled_batches(2)
    scores = score_units(model, "taylor", batches=batches)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())

    reference = backbone("resnet18")  # same weights, eval mode: gradients summed over the batches
    randomize_norms(reference)
    for x, y in batches:
        functional.cross_entropy(reference(x), y).backward()
    block = reference.layer1[0]
    conv1, conv2 = block.conv1.weight, block.conv2.weight
    expected = (conv1 * conv1.grad).abs().sum((1, 2, 3)) + (conv2 * conv2.grad).abs().sum((0, 2, 3))
    assert (expected > 0).sum() > expected.numel() // 2
    assert np.allclose(scores["layer1.0.conv1"], expected.detach().double().numpy(), rtol=1e-4)
    other = score_units(model, "taylor", batches=_labelled_batches(2, seed=7))
    assert not np.allclose(other["layer1.0.conv1"], scores["layer1.0.conv1"])  # data-dependent


def test_bad_method_or_missing_batches():
    model = backbone("resnet18")
    with pytest.raises(PruneError, match="unknown criterion"):
        score_units(model, "oracle")
    with pytest.raises(PruneError, match="batches"):
        score_units(model, "taylor")
    with pytest.raises(PruneError, match="at least one batch"):
        score_units(model, "taylor", batches=[])
    with pytest.raises(PruneError, match="labels"):
        score_units(model, "taylor", batches=[(images(2), torch.tensor([0, 1000]))])
