"""Prunable unit groups: stable keys, sizes, coupling from Torch-Pruning's dependency graph."""

from __future__ import annotations

import pytest
from torch import nn

from edge_smsp.models.prune import prune
from edge_smsp.models.units import UnitGroup, dependency_graph, full_channel_group, group_layouts, unit_groups
from tests.pruning_helpers import FIRST_CLASS, backbone  # noqa: F401 (fixture)


@pytest.mark.parametrize("name", FIRST_CLASS)
def test_keys_are_unique_stable_and_sized(name):
    groups = unit_groups(backbone(name))
    again = unit_groups(backbone(name))
    assert groups == again
    assert len({group.key for group in groups}) == len(groups)
    assert all(isinstance(group, UnitGroup) and group.size >= 1 for group in groups)
    assert {group.kind for group in groups} <= {"channels", "heads", "ffn"}


def test_resnet18_groups_follow_residual_coupling_and_spare_the_classifier():
    model = backbone("resnet18")
    groups = {group.key: group for group in unit_groups(model)}
    # 4 residual streams + one inner conv per basic block (8 blocks) = 12 groups, keyed by their first conv.
    assert len(groups) == 12
    assert {"conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2", "layer1.0.conv1"} <= set(groups)
    assert groups["conv1"].size == 64 and groups["layer4.0.conv2"].size == 512
    assert all(group.kind == "channels" for group in groups.values())
    assert not any(key.startswith("fc") for key in groups)
    layout = {layout.key: layout for layout in group_layouts(model)}["conv1"]
    members = {
        name
        for dep, _ in full_channel_group(dependency_graph(model), model, layout)
        for name, module in model.named_modules()
        if module is dep.target.module
    }
    assert {
        "conv1",
        "bn1",
        "layer1.0.bn2",
        "layer1.1.bn2",
        "layer1.0.conv2",
        "layer2.0.downsample.0",
    } <= members


def test_resnet18_residual_channels_stay_consistent_after_pruning():
    model = backbone("resnet18")
    pruned, summary = prune(model, keep_counts={"conv1": 24, "layer4.0.conv2": 100})
    assert pruned.conv1.out_channels == 24 and pruned.bn1.num_features == 24
    for block in pruned.layer1:
        assert block.conv1.in_channels == 24
        assert block.conv2.out_channels == 24 and block.bn2.num_features == 24
    assert pruned.layer2[0].conv1.in_channels == 24 and pruned.layer2[0].downsample[0].in_channels == 24
    assert pruned.layer4[0].downsample[0].out_channels == 100 and pruned.layer4[1].conv2.out_channels == 100
    assert pruned.fc.in_features == 100 and pruned.fc.out_features == 1000
    assert pruned.num_features == 100
    assert summary.groups["conv1"] == {"kind": "channels", "size": 64, "kept": 24}


def test_resnet50_bottleneck_keys():
    keys = [group.key for group in unit_groups(backbone("resnet50"))]
    assert keys[:5] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.1.conv1"]
    assert len(keys) == 1 + 4 + 2 * 16  # stem, four residual streams, two inner convs per bottleneck


def test_efficientnet_lite0_depthwise_convs_follow_their_expansion():
    model = backbone("efficientnet_lite0")
    groups = {group.key: group for group in unit_groups(model)}
    assert "conv_stem" in groups and "conv_head" in groups and "blocks.1.0.conv_pw" in groups
    assert not any("conv_dw" in key for key in groups)  # depthwise convs never start a group
    pruned, _ = prune(model, keep_counts={"blocks.1.0.conv_pw": 40, "conv_head": 640})
    block = pruned.blocks[1][0]
    assert block.conv_pw.out_channels == block.conv_dw.out_channels == block.conv_dw.groups == 40
    assert block.conv_pwl.in_channels == 40
    assert pruned.classifier.in_features == 640 and pruned.num_features == 640


def test_deit_groups_are_heads_and_ffn_per_block():
    model = backbone("deit_small_patch16_224")
    groups = unit_groups(model)
    assert len(groups) == 24
    assert groups[0] == UnitGroup("blocks.0.attn.heads", "heads", 6)
    assert groups[1] == UnitGroup("blocks.0.mlp.fc1", "ffn", 1536)
    assert [group.key for group in groups[-2:]] == ["blocks.11.attn.heads", "blocks.11.mlp.fc1"]


def test_groups_of_a_pruned_model_report_its_new_sizes():
    model = backbone("deit_small_patch16_224")
    pruned, _ = prune(model, keep_counts={"blocks.3.attn.heads": 2, "blocks.3.mlp.fc1": 64})
    sizes = {group.key: group.size for group in unit_groups(pruned)}
    assert sizes["blocks.3.attn.heads"] == 2 and sizes["blocks.3.mlp.fc1"] == 64
    assert sizes["blocks.4.attn.heads"] == 6
    assert {group.key: group.size for group in unit_groups(model)}["blocks.3.attn.heads"] == 6


def test_classifier_is_never_a_group():
    for name in ("resnet18", "efficientnet_lite0"):
        model = backbone(name)
        classifier = model.get_classifier()
        names = {module: key for key, module in model.named_modules()}
        assert isinstance(classifier, nn.Linear)
        assert names[classifier] not in {group.key for group in unit_groups(model)}
