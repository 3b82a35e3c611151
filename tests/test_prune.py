"""Physical pruning: the right units go, the model still runs, ties/rounding/explicit counts, save and reload."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edge_smsp.core.errors import PruneError, error_text
from edge_smsp.criteria import score_units
from edge_smsp.models.prune import keep_count, kept_indices, kept_mask, prune, replace_classifier
from edge_smsp.models.pruned_model import load_pruned, save_pruned
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.models.units import unit_groups
from tests.pruning_helpers import (  # noqa: F401 (fixtures)
    FIRST_CLASS,
    backbone,
    images,
    make_inert,
    outputs,
    randomize_norms,
)


@pytest.mark.parametrize("name", FIRST_CLASS)
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_pruned_model_runs_and_shrinks(name, ratio):
    model = backbone(name)
    groups = unit_groups(model)
    pruned, summary = prune(model, score_units(model, "random", seed=1), ratio)
    assert outputs(pruned, images()).shape == (2, 1000)
    assert summary.params_after < summary.params_before
    assert summary.macs_after < summary.macs_before
    assert summary.params_after == sum(p.numel() for p in pruned.parameters())
    assert summary.params_before == sum(p.numel() for p in model.parameters())
    for group in groups:
        expected = keep_count(group.size, ratio, group.kind)
        assert summary.groups[group.key] == {"kind": group.kind, "size": group.size, "kept": expected}
        assert len(summary.kept_indices[group.key]) == expected
    assert {g.key: g.size for g in unit_groups(pruned)} == {k: v["kept"] for k, v in summary.groups.items()}


@pytest.mark.parametrize("name", FIRST_CLASS)
def test_removing_inert_units_leaves_outputs_unchanged(name):
    """The surgery proof: units whose outgoing effect is zeroed can be removed without changing any output."""
    model = backbone(name, dtype=torch.float64)
    randomize_norms(model)
    generator = np.random.default_rng(0)
    keep, removed = {}, {}
    for group in unit_groups(model):
        kept = sorted(generator.choice(group.size, max(1, group.size // 2), replace=False).tolist())
        keep[group.key] = kept
        removed[group.key] = sorted(set(range(group.size)) - set(kept))
    make_inert(model, removed)
    batch = images(3, dtype=torch.float64)
    reference = outputs(model, batch)
    pruned, summary = prune(model, keep_indices=keep)
    assert summary.params_after < summary.params_before
    assert torch.allclose(outputs(pruned, batch), reference, rtol=0, atol=1e-5)
    assert reference.abs().max() > 1e-2  # the comparison is not between two near-zero outputs
    # Control: removing the other half (live units) does change the outputs, so the check above can fail.
    live = {key: units if units else keep[key] for key, units in removed.items()}
    other, _ = prune(model, keep_indices=live)
    assert not torch.allclose(outputs(other, batch), reference, rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", FIRST_CLASS)
def test_keeping_every_unit_gives_identical_outputs(name):
    model = backbone(name)
    scores = score_units(model, "random", seed=3)
    batch = images()
    for pruned, _ in (
        prune(model, scores, 0.0),
        prune(model, keep_counts={group.key: group.size for group in unit_groups(model)}),
    ):
        assert torch.equal(outputs(pruned, batch), outputs(model, batch))
        assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters())


def test_deit_blocks_report_new_head_count_and_dims():
    model = backbone("deit_small_patch16_224")
    scores = {group.key: np.arange(group.size, dtype=float) for group in unit_groups(model)}
    pruned, summary = prune(model, scores, 0.5)
    for block in pruned.blocks:
        attention = block.attn
        assert attention.num_heads == 3 and attention.head_dim == 64 and attention.attn_dim == 192
        assert attention.qkv.out_features == 3 * 192 and attention.proj.in_features == 192
        assert block.mlp.fc1.out_features == block.mlp.fc2.in_features == 768
    assert summary.kept_indices["blocks.0.attn.heads"] == [3, 4, 5]  # highest scores kept
    assert summary.kept_indices["blocks.0.mlp.fc1"] == list(range(768, 1536))
    assert pruned.blocks[0].attn.qkv.weight.shape == (576, 384)
    assert outputs(pruned, images()).shape == (2, 1000)


def test_kept_heads_carry_their_own_weights():
    model = backbone("deit_small_patch16_224")
    pruned, _ = prune(model, keep_indices={"blocks.2.attn.heads": [1, 4]})
    original, sliced = model.blocks[2].attn, pruned.blocks[2].attn
    for part in range(3):  # q, k and v rows of heads 1 and 4
        rows = [part * 384 + head * 64 + offset for head in (1, 4) for offset in range(64)]
        assert torch.equal(sliced.qkv.weight[part * 128 : (part + 1) * 128], original.qkv.weight[rows])
    columns = [head * 64 + offset for head in (1, 4) for offset in range(64)]
    assert torch.equal(sliced.proj.weight, original.proj.weight[:, columns])


def test_ties_are_broken_by_l1_norm():
    model = backbone("resnet18")
    norms = unit_l1_norms(model)
    flat = {group.key: np.zeros(group.size) for group in unit_groups(model)}
    _, summary = prune(model, flat, 0.5, round_to=1)
    for key, indices in summary.kept_indices.items():
        expected = sorted(np.argsort(-norms[key], kind="stable")[: len(indices)].tolist())
        assert indices == expected
    # Scores decide before norms do: reversing the norms as scores keeps the lightest units instead.
    reversed_scores = {key: -values for key, values in norms.items()}
    _, lightest = prune(model, reversed_scores, 0.5, round_to=1)
    assert lightest.kept_indices["conv1"] == sorted(np.argsort(norms["conv1"])[:32].tolist())
    # An explicit tie-break replaces the norms.
    _, by_index = prune(
        model, flat, 0.5, round_to=1, tie_break={k: -np.arange(len(v)) for k, v in flat.items()}
    )
    assert by_index.kept_indices["conv1"] == list(range(32))


def test_keep_count_rounding():
    assert keep_count(64, 0.3, "channels") == 48  # ceil(44.8) = 45 -> nearest multiple of 8
    assert keep_count(64, 0.3, "channels", round_to=1) == 45
    assert keep_count(64, 0.95, "channels") == 8  # at least round_to
    assert keep_count(100, 0.0, "channels") == 100  # never above n, even when n is not a multiple
    assert keep_count(100, 0.01, "ffn") == 96
    assert keep_count(10, 0.3, "channels") == 8  # 7 rounds to 8
    assert keep_count(6, 0.5, "channels") == 3  # smaller than round_to: unrounded
    assert keep_count(6, 0.3, "heads", round_to=8) == 5  # heads are never rounded
    assert keep_count(12, 0.99, "heads") == 1  # at least one unit
    assert keep_count(10, 0.3, "channels", round_to=1) == 7  # no float drift: (1-0.3)*10 keeps 7


def test_round_to_is_applied_to_channels_but_not_heads():
    model = backbone("deit_small_patch16_224")
    _, summary = prune(model, ratio=0.3, round_to=64)
    assert summary.groups["blocks.0.attn.heads"]["kept"] == math.ceil(0.7 * 6)
    assert summary.groups["blocks.0.mlp.fc1"]["kept"] == 1088  # ceil(0.7*1536)=1076 -> 17*64


def test_keep_counts_and_keep_indices_override_the_ratio():
    model = backbone("resnet18")
    norms = unit_l1_norms(model)
    _, summary = prune(
        model,
        ratio=0.5,
        keep_counts={"conv1": 5},
        keep_indices={"layer1.0.conv1": [9, 2, 40]},
    )
    assert summary.groups["conv1"]["kept"] == 5
    assert summary.kept_indices["conv1"] == sorted(np.argsort(-norms["conv1"])[:5].tolist())
    assert summary.kept_indices["layer1.0.conv1"] == [2, 9, 40]
    assert summary.groups["layer2.0.conv1"]["kept"] == 64  # the ratio, for every other group
    _, partial = prune(model, keep_counts={"conv1": 16})
    assert partial.groups["layer2.0.conv1"]["kept"] == 128  # no ratio: untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": "half"}, "ratio"),
        ({}, "nothing to prune"),
        ({"ratio": 0.5, "scores": {"nope": np.zeros(3)}}, "unknown group key 'nope'"),
        ({"ratio": 0.5, "scores": {"conv1": np.zeros(63)}}, "shape"),
        ({"ratio": 0.5, "scores": {"conv1": np.full(64, np.nan)}}, "NaN"),
        ({"ratio": 0.5, "scores": {"conv1": np.zeros(64)}}, "missing"),
        ({"keep_counts": {"conv1": 0}}, "keep_counts"),
        ({"keep_counts": {"conv1": 65}}, "keep_counts"),
        ({"keep_indices": {"conv1": []}}, "empty"),
        ({"keep_indices": {"conv1": [1, 1]}}, "distinct"),
        ({"keep_indices": {"conv1": [64]}}, "distinct"),
        ({"keep_indices": {"conv1": [0.5]}}, "integers"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ],
)
def test_bad_input_raises_prune_error(kwargs, message):
    model = backbone("resnet18")
    with pytest.raises(PruneError, match=message) as error:
        prune(model, **kwargs)
    assert "\n" not in str(error.value)


def test_input_model_is_left_untouched():
    model = backbone("resnet18")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prune(model, ratio=0.5)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "edge_smsp_kept_indices")


def test_replace_classifier_uses_current_width():
    model = backbone("resnet18")
    pruned, _ = prune(model, ratio=0.5)
    replace_classifier(pruned, 7)
    assert pruned.fc.in_features == 256 and pruned.fc.out_features == 7
    assert pruned.num_classes == 7
    assert outputs(pruned, images()).shape == (2, 7)
    with pytest.raises(PruneError):
        replace_classifier(pruned, 0)


def test_repeated_pruning_composes_kept_indices():
    model = backbone("resnet18")
    once, first = prune(model, keep_indices={"conv1": [1, 3, 5, 7, 9, 11, 13, 15]})
    twice, second = prune(once, keep_indices={"conv1": [0, 2, 7]})
    assert second.kept_indices["conv1"] == [0, 2, 7]  # relative to the model given
    assert kept_indices(twice)["conv1"] == [1, 5, 15]  # relative to the backbone
    assert kept_indices(twice)["layer1.0.conv1"] == list(range(64))
    mask = kept_mask(twice)["conv1"]
    assert mask.shape == (64,) and mask.sum() == 3 and mask[[1, 5, 15]].all()


@pytest.mark.parametrize("name", ["resnet18", "deit_small_patch16_224"])
def test_saved_pruned_model_reloads_with_same_outputs(tmp_path, name):
    model = backbone(name)
    pruned, summary = prune(model, score_units(model, "random", seed=2), 0.5)
    once, _ = prune(pruned, ratio=0.25)  # a second round must survive the round trip too
    replace_classifier(once, 5)
    out = save_pruned(once, tmp_path / "pruned", {"backbone": name, "class_names": list("abcde"), "note": 1})
    assert sorted(path.name for path in out.iterdir()) == ["model.safetensors", "pruned.json"]
    assert (
        out / "model.safetensors"
    ).stat().st_mode & 0o777 == 0o644  # as pruned.json; safetensors makes 0600
    meta = json.loads((out / "pruned.json").read_text())
    assert meta["backbone"] == name and meta["num_classes"] == 5 and meta["note"] == 1
    assert meta["class_names"] == list("abcde") and meta["image_size"] == 32
    assert meta["kept_indices"] == kept_indices(once)
    header_size = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    assert json.loads(
        (out / "model.safetensors").read_bytes()[8 : 8 + header_size]
    )  # safetensors, not pickle
    loaded, loaded_meta = load_pruned(out)
    assert loaded_meta["backbone"] == name
    batch = images()
    assert torch.allclose(outputs(loaded, batch), outputs(once, batch), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in once.parameters())
    assert kept_indices(loaded) == kept_indices(once)
    # Saving again over the same directory replaces the files.
    save_pruned(pruned, out, {"backbone": name})
    assert json.loads((out / "pruned.json").read_text())["num_classes"] == 1000


def test_loading_missing_or_corrupt_files_raises(tmp_path):
    with pytest.raises(PruneError, match="not a saved pruned model"):
        load_pruned(tmp_path / "absent")
    model = backbone("resnet18")
    pruned, _ = prune(model, ratio=0.5)
    out = save_pruned(pruned, tmp_path / "m", {"backbone": "resnet18"})
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(PruneError, match="corrupt"):
        load_pruned(out)
    (out / "model.safetensors").write_bytes(weights)
    (out / "pruned.json").write_text("{not json")
    with pytest.raises(PruneError, match="corrupt"):
        load_pruned(out)
    meta = {"format": "edge-smsp-pruned", "backbone": "resnet18", "image_size": 32, "num_classes": 1000}
    (out / "pruned.json").write_text(json.dumps({**meta, "kept_indices": {"conv1": [0]}}))
    with pytest.raises(PruneError, match="kept_indices"):
        load_pruned(out)
    full = {group.key: list(range(group.size)) for group in unit_groups(model)}
    (out / "pruned.json").write_text(json.dumps({**meta, "kept_indices": full}))
    # The message names the tensors and both shapes, not torch's heading alone.
    with pytest.raises(
        PruneError,
        match=r"does not match the pruned architecture: shape mismatch: conv1\.weight "
        r"\(file \[32, 3, 7, 7\], model \[64, 3, 7, 7\]\), .* \(\+\d+ more\)$",
    ):
        load_pruned(out)


def test_error_text_keeps_what_a_dependencys_first_line_leaves_out() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = model.state_dict()
    state["0.weight"] = torch.zeros(5, 3)
    del state["1.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as raised:
        model.load_state_dict(state)
    assert (
        error_text(raised.value)
        == "missing: 1.bias; unexpected: extra; shape mismatch: 0.weight (file [5, 3], model [4, 3])"
    )
    lines = RuntimeError(
        "\x1b[31m[ONNXRuntimeError] : 1 : FAIL :\nFatal error: ai.onnx:Foo is not a registered op"
    )
    assert (
        error_text(lines) == "[ONNXRuntimeError] : 1 : FAIL : Fatal error: ai.onnx:Foo is not a registered op"
    )
    assert error_text(RuntimeError("x" * 400)) == "x" * 299 + "…"
    assert error_text(RuntimeError()) == "RuntimeError"


def test_vit_macs_include_the_attention_matmuls():
    model = backbone("deit_small_patch16_224")
    _, summary = prune(model, keep_counts={"blocks.0.attn.heads": 2})
    tokens = 4 + 1  # a 2x2 patch grid at 32 px plus the class token
    linear_macs = sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    linear_macs = linear_macs * tokens - model.head.in_features * model.head.out_features * (tokens - 1)
    patch_macs = model.patch_embed.proj.weight.numel() * 4
    attention_macs = 12 * 2 * 6 * 64 * tokens * tokens
    assert summary.macs_before == pytest.approx(linear_macs + patch_macs + attention_macs, rel=0.01)
    assert (
        summary.macs_before - summary.macs_after > 2 * 4 * 64 * tokens * tokens
    )  # the dropped heads' matmuls


def test_a_tie_at_the_cut_is_when_the_last_kept_and_first_dropped_score_the_same():
    from edge_smsp.models.prune import _tie_at_cut

    scores = np.array([1.0, 3.0, 2.0, 2.0])  # ranked 3, 2, 2, 1
    assert [_tie_at_cut(scores, count) for count in (1, 2, 3, 4)] == [False, True, False, False]
    assert _tie_at_cut(np.array([5.0, 5.0, 1.0]), 1) and not _tie_at_cut(np.array([5.0, 5.0, 1.0]), 2)
