"""Weight inheritance: every element of a new sub-network comes from the sources that hold it, else the backbone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edge_smsp.core.errors import PoolError, PruneError
from edge_smsp.models import prune, pruned_model, zoo
from edge_smsp.models.prune import backbone_group_sizes, kept_indices
from edge_smsp.transfer import inherit
from tests.pruning_helpers import backbone as random_backbone

SIZE = 32


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    return prune.replace_classifier(
        zoo.load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE), 3
    )


def _kept(model: nn.Module, pick) -> dict[str, list[int]]:
    return {
        key: sorted(int(i) for i in pick(np.arange(size)))
        for key, size in backbone_group_sizes(model).items()
    }


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 1.0)
    return model


def _pruned(model: nn.Module, kept: dict[str, list[int]], seed: int | None = None) -> nn.Module:
    pruned, _ = prune.prune(model, keep_indices=kept)
    return pruned if seed is None else _randomised(pruned, seed)


@pytest.fixture(scope="module")
def three_way(backbone):
    """Source A keeps the first half of every group, B the middle half; the target every even unit, so its
    units are held by A only, by both, by B only, or by none."""
    first = _pruned(backbone, _kept(backbone, lambda u: u[: max(1, len(u) // 2)]), seed=1)
    middle = _pruned(
        backbone, _kept(backbone, lambda u: u[len(u) // 4 : max(len(u) // 4 + 1, 3 * len(u) // 4)]), seed=2
    )
    target = _pruned(backbone, _kept(backbone, lambda u: u[::2]))
    return first, middle, target


def _expected(name: str, groups: tuple[str | None, ...], backbone, sources, target) -> torch.Tensor:
    """Element-wise expectation for a tensor whose dims belong to the given unit groups (None: not pruned)."""
    value = backbone.state_dict()[name].to(torch.float64)
    rows = [kept_indices(target)[g] if g else list(range(value.shape[d])) for d, g in enumerate(groups)]
    expected = value[np.ix_(*rows)] if len(rows) > 1 else value[rows[0]]
    total = torch.zeros_like(expected)
    weight_sum = torch.zeros_like(expected)
    for model, weight in sources:
        positions = []
        for d, group in enumerate(groups):
            own = kept_indices(model)[group] if group else list(range(value.shape[d]))
            positions.append([own.index(u) if u in own else -1 for u in rows[d]])
        held = np.ones([len(p) for p in positions], dtype=bool)
        for d, pos in enumerate(positions):
            shape = [1] * len(positions)
            shape[d] = len(pos)
            held = held & (np.array(pos) >= 0).reshape(shape)
        source = model.state_dict()[name].to(torch.float64)
        safe = [np.maximum(np.array(p), 0) for p in positions]
        gathered = source[np.ix_(*safe)] if len(safe) > 1 else source[safe[0]]
        held_tensor = torch.from_numpy(held)
        total += torch.where(held_tensor, weight * gathered, 0.0)
        weight_sum += weight * held_tensor
    return torch.where(weight_sum > 0, total / weight_sum.clamp(min=1e-12), expected)


def test_k1_selection_inherits_the_entrys_weights_exactly(backbone, three_way):
    first, _, _ = three_way
    target = _pruned(backbone, kept_indices(first))
    report = inherit.inherit(target, backbone, [(first, 1.0)])
    assert report.covered_fraction == 1.0 and set(report.covered_by) == {1}
    for name, tensor in target.state_dict().items():
        if tensor.is_floating_point() and not name.startswith("classifier"):
            assert torch.equal(tensor, first.state_dict()[name]), name
    assert not torch.equal(target.classifier.weight, first.classifier.weight)  # the new task's own head


def test_units_take_one_source_the_mean_of_several_or_the_backbone(backbone, three_way):
    first, middle, target = three_way
    sources = [(first, 1.0), (middle, 3.0)]
    before = copy.deepcopy(target)
    report = inherit.inherit(target, backbone, sources)
    assert set(report.covered_by) == {0, 1, 2}
    checks = {
        "conv_stem.weight": ("conv_stem", None, None, None),
        "bn1.running_var": ("conv_stem",),
        "blocks.1.0.conv_pw.weight": ("blocks.1.0.conv_pw", "blocks.0.0.conv_pw", None, None),
    }
    for name, groups in checks.items():
        expected = _expected(name, groups[: target.state_dict()[name].ndim], backbone, sources, before)
        assert torch.allclose(target.state_dict()[name].to(torch.float64), expected, atol=1e-6), name
        values = target.state_dict()[name]
        # All four cases occur: backbone-only elements differ from any randomised source value (in [1, 2)).
        assert bool((values < 1).any()) and bool((values >= 1).any())


def test_inherited_model_stays_a_pruned_model_that_saves_and_reloads(backbone, three_way, tmp_path):
    first, middle, target = three_way
    model = copy.deepcopy(target)
    inherit.inherit(model, backbone, [(first, 1.0), (middle, 1.0)])
    saved = pruned_model.save_pruned(model, tmp_path / "m", {"backbone": "efficientnet_lite0"})
    loaded, _ = pruned_model.load_pruned(saved)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model.eval()(images), loaded(images), atol=1e-5)
    assert kept_indices(loaded) == kept_indices(target)


def test_k1_inheritance_is_exact_on_a_vit_with_heads_and_ffn_nodes():
    vit = prune.replace_classifier(random_backbone("deit_small_patch16_224"), 3)
    entry = _randomised(_pruned(vit, _kept(vit, lambda u: u[1::2])), seed=3)
    target = _pruned(vit, kept_indices(entry))
    inherit.inherit(target, vit, [(entry, 1.0)])
    for name, tensor in target.state_dict().items():
        if tensor.is_floating_point() and not name.startswith("head."):
            assert torch.equal(tensor, entry.state_dict()[name]), name


def test_bad_sources_are_refused(backbone, three_way):
    first, _, target = three_way
    with pytest.raises(PoolError):
        inherit.inherit(copy.deepcopy(target), backbone, [])
    with pytest.raises(PoolError):
        inherit.inherit(copy.deepcopy(target), backbone, [(first, 0.0)])
    with pytest.raises(PruneError):
        inherit.coordinates(first, kept_indices(first))


def test_the_head_takes_the_shared_classes_rows_feature_by_feature(backbone, three_way):
    """inherit_head: a target row of a class the source also has is the source's row, each backbone feature
    from where the source kept it (0 where it did not); the bias too; other rows are left alone."""
    first, _, target = three_way
    target = copy.deepcopy(target)
    features = backbone.classifier.in_features
    (group,) = [
        key
        for key, size in backbone_group_sizes(backbone).items()
        if size == features and len(kept_indices(target)[key]) == target.classifier.in_features
    ]
    before = target.classifier.weight.detach().clone()
    source_classes, target_classes = [("fm", 0), ("fm", 1), ("fm", 2)], [("fm", 2), ("fm", 5), ("fm", 0)]
    rows = inherit.inherit_head(target, backbone, first, source_classes, target_classes)
    assert rows == [0, 2]
    wanted, held = kept_indices(target)[group], kept_indices(first)[group]
    for row, source_row in ((0, 2), (2, 0)):
        expected = torch.tensor(
            [float(first.classifier.weight[source_row, held.index(u)]) if u in held else 0.0 for u in wanted]
        )
        assert torch.equal(
            target.classifier.weight[row].detach(), expected.to(target.classifier.weight.dtype)
        )
        assert target.classifier.bias[row] == first.classifier.bias[source_row]
    assert 0 < sum(u in held for u in wanted) < len(wanted)  # some features held, some not
    assert torch.equal(target.classifier.weight[1], before[1])
