"""Backbones: bundled ImageNet weights classify real images; checkpoints, errors, hashes."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from edge_smsp.core.errors import ModelError
from edge_smsp.models import zoo

IMAGENET = ImageNetInfo()
BUILDING_WORDS = ("church", "bell cote", "palace", "monastery", "mosque", "castle", "boathouse", "stupa")
BUILDING_CLASSES = {
    index
    for index in range(1000)
    if any(IMAGENET.index_to_description(index).lower().startswith(word) for word in BUILDING_WORDS)
}
DAISY = next(i for i in range(1000) if IMAGENET.index_to_description(i).startswith("daisy"))


def _preprocess(pixels: np.ndarray, spec: zoo.BackboneSpec) -> torch.Tensor:
    """Standard ImageNet evaluation crop (resize to size / 0.875, centre crop) with the spec's normalisation."""
    image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    height, width = image.shape[-2:]
    scale = spec.input_size / 0.875 / min(height, width)
    image = torch.nn.functional.interpolate(
        image, size=(round(height * scale), round(width * scale)), mode="bilinear", antialias=True
    )
    height, width = image.shape[-2:]
    top, left = (height - spec.input_size) // 2, (width - spec.input_size) // 2
    image = image[..., top : top + spec.input_size, left : left + spec.input_size]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (image - mean) / std


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return zoo.load_backbone("efficientnet_lite0", pretrained=True)


@pytest.fixture(scope="module")
def sample_predictions(lite0) -> dict[str, torch.Tensor]:
    spec = zoo.backbone_spec(lite0)
    names = ("china.jpg", "flower.jpg")
    batch = torch.cat([_preprocess(load_sample_image(name), spec) for name in names])
    with torch.no_grad():
        probabilities = lite0(batch).softmax(dim=1)
    return dict(zip(names, probabilities, strict=True))


def test_bundled_lite0_spec_carries_tf_normalisation(lite0):
    spec = zoo.backbone_spec(lite0)
    assert spec.weights == "bundled-imagenet"
    assert spec.input_size == 224 and spec.num_classes == 1000
    # EfficientNet-Lite was trained on (pixel - 127) / 128, not ImageNet mean/std.
    assert spec.mean == pytest.approx((127 / 255,) * 3)
    assert spec.std == pytest.approx((128 / 255,) * 3)
    assert not lite0.training


def test_bundled_lite0_sees_a_building_in_china_jpg(sample_predictions):
    top5 = sample_predictions["china.jpg"].topk(5).indices.tolist()
    assert top5[0] in BUILDING_CLASSES, [IMAGENET.index_to_description(i) for i in top5]
    assert len(BUILDING_CLASSES.intersection(top5)) >= 3


def test_bundled_lite0_sees_a_daisy_in_flower_jpg(sample_predictions):
    probabilities = sample_predictions["flower.jpg"]
    assert int(probabilities.argmax()) == DAISY
    # 0.33 with (pixel - 127) / 128; ImageNet mean/std gives 0.11, 0..1 pixels 0.15 (see the test below).
    assert float(probabilities[DAISY]) > 0.2


IMAGENET_SPEC = zoo.BackboneSpec("x", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000, "random")
UNIT_SPEC = zoo.BackboneSpec("x", 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1000, "random")
BYTE_SPEC = zoo.BackboneSpec("x", 224, (0.0, 0.0, 0.0), (1 / 255,) * 3, 1000, "random")


def _batchnorm_disagreement(model: torch.nn.Module, images: torch.Tensor) -> float:
    """How far the inputs of the first BatchNorms are from their running means, in running std units."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][:6]
    inputs = []
    hooks = [norm.register_forward_hook(lambda _m, args, _out: inputs.append(args[0])) for norm in norms]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    errors = []
    for norm, value in zip(norms, inputs, strict=True):
        alive = norm.running_var > 1e-3
        gap = (value.mean(dim=(0, 2, 3)) - norm.running_mean)[alive].abs() / norm.running_var[alive].sqrt()
        errors.append(float(gap.mean()))
    return sum(errors) / len(errors)


def test_spec_normalisation_matches_the_weights_batchnorm_statistics(lite0):
    # Principled check of the normalisation: ImageNet-trained BatchNorms remember the statistics of their
    # training inputs; real images normalised as the weights expect land closest to them.
    spec = zoo.backbone_spec(lite0)
    names = ("china.jpg", "flower.jpg")
    errors = {
        label: _batchnorm_disagreement(
            lite0, torch.cat([_preprocess(load_sample_image(n), s) for n in names])
        )
        for label, s in (
            ("spec", spec),
            ("imagenet", IMAGENET_SPEC),
            ("unit", UNIT_SPEC),
            ("byte", BYTE_SPEC),
        )
    }
    assert min(errors, key=errors.get) == "spec", errors
    assert errors["spec"] < 0.75 * errors["imagenet"], errors


def test_wrong_normalisation_or_mapping_would_be_caught(lite0):
    # The image tests above must be able to fail: other normalisations lose the confident daisy, and a
    # mapping that swaps each BatchNorm's gain and bias (same shapes: only images can tell) loses the building.
    for wrong in (IMAGENET_SPEC, UNIT_SPEC, BYTE_SPEC):
        with torch.no_grad():
            probabilities = lite0(_preprocess(load_sample_image("flower.jpg"), wrong)).softmax(dim=1)[0]
        assert float(probabilities[DAISY]) < 0.2
    broken = zoo.load_backbone("efficientnet_lite0", pretrained=True)
    state = broken.state_dict()
    for key in [key for key in state if key.endswith("bn1.weight")]:
        bias_key = key.replace(".weight", ".bias")
        state[key], state[bias_key] = state[bias_key], state[key]
    broken.load_state_dict(state)
    with torch.no_grad():
        top5 = broken(_preprocess(load_sample_image("china.jpg"), zoo.backbone_spec(lite0))).topk(5).indices
    assert not BUILDING_CLASSES.intersection(top5[0].tolist())


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_other_bundled_lites_see_a_building(name):
    if not {row["name"]: row for row in zoo.list_models()}[name]["offline_weights"]:
        pytest.skip(f"{zoo.BUNDLED[name].pip_name} not installed")
    model = zoo.load_backbone(name, pretrained=True)
    spec = zoo.backbone_spec(model)
    with torch.no_grad():
        top5 = model(_preprocess(load_sample_image("china.jpg"), spec)).topk(5).indices[0].tolist()
    assert top5[0] in BUILDING_CLASSES


def test_num_classes_replaces_only_the_classifier(lite0):
    model = zoo.load_backbone("efficientnet_lite0", pretrained=True, num_classes=5)
    assert zoo.backbone_spec(model).num_classes == 5
    assert model.classifier.out_features == 5
    assert torch.equal(model.conv_head.weight, lite0.conv_head.weight)
    # The fresh head is the same on every load, so the backbone hash of a task model is reproducible.
    again = zoo.load_backbone("efficientnet_lite0", pretrained=True, num_classes=5)
    assert torch.equal(model.classifier.weight, again.classifier.weight)


@pytest.mark.parametrize("name", zoo.FIRST_CLASS)
def test_first_class_backbones_build_at_small_size(name):
    model = zoo.load_backbone(name, num_classes=3, image_size=32)
    spec = zoo.backbone_spec(model)
    assert (spec.name, spec.input_size, spec.num_classes) == (name, 32, 3)
    assert spec.weights == "random"
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_vit_image_size_reaches_timm():
    model = zoo.load_backbone("deit_small_patch16_224", image_size=48)
    assert model.patch_embed.img_size == (48, 48)
    assert model.pos_embed.shape[1] == 1 + (48 // 16) ** 2


def test_list_models_and_default_pretrained():
    rows = {row["name"]: row for row in zoo.list_models()}
    assert set(zoo.FIRST_CLASS) <= set(rows)
    assert rows["efficientnet_lite0"]["bundled"] and rows["efficientnet_lite0"]["offline_weights"]
    assert rows["resnet18"]["first_class"] and not rows["resnet18"]["bundled"]
    assert rows["resnet18"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert zoo.default_pretrained("efficientnet_lite0")
    assert not zoo.default_pretrained("resnet18")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelError, match="did you mean.*resnet18"):
        zoo.load_backbone("resnet81")
    with pytest.raises(ModelError, match="unknown model 'not-a-model'"):
        zoo.load_backbone("not-a-model")


def test_weights_hash_is_stable_and_tracks_weights():
    first = zoo.load_backbone("resnet18", image_size=32)
    second = zoo.load_backbone("resnet18", image_size=32)
    digest = zoo.weights_hash(first)
    assert len(digest) == 64
    assert zoo.weights_hash(second) == digest
    with torch.no_grad():
        second.conv1.weight[0, 0, 0, 0] += 1e-3
    assert zoo.weights_hash(second) != digest


def test_checkpoint_round_trip_plain_timm_and_safetensors(tmp_path):
    source = zoo.load_backbone("efficientnet_lite0", pretrained=True, num_classes=4)
    with torch.no_grad():
        source.classifier.weight.mul_(3.0)  # weights a fresh load would not have
    plain = tmp_path / "plain.pth"
    torch.save(source.state_dict(), plain)
    # The layout timm's train script writes, arguments included.
    timm_style = tmp_path / "timm.pth.tar"
    torch.save(
        {"epoch": 3, "state_dict": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, timm_style
    )
    safetensors_file = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(safetensors_file))

    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(images)
    for path in (plain, timm_style, safetensors_file):
        loaded = zoo.load_backbone("efficientnet_lite0", checkpoint=path)
        spec = zoo.backbone_spec(loaded)
        assert (spec.weights, spec.checkpoint, spec.num_classes) == ("checkpoint", str(path.resolve()), 4)
        assert zoo.weights_hash(loaded) == zoo.weights_hash(source)
        with torch.no_grad():
            assert torch.equal(loaded(images), expected)
    # The bundled package's own file (original names) also works as a checkpoint.
    original = zoo._bundled_weights_file("efficientnet_lite0")
    from_original = zoo.load_backbone("efficientnet_lite0", checkpoint=original, num_classes=4)
    assert torch.equal(from_original.conv_head.weight, source.conv_head.weight)


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        zoo.load_backbone("resnet18", checkpoint=tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        zoo.load_backbone("resnet18", checkpoint=corrupt)
    corrupt_safetensors = tmp_path / "corrupt.safetensors"
    corrupt_safetensors.write_bytes(b"garbage" * 100)
    with pytest.raises(ModelError, match="not a PyTorch or safetensors file"):
        zoo.load_backbone("resnet18", checkpoint=corrupt_safetensors)
    truncated = tmp_path / "truncated.pth"
    torch.save(zoo.load_backbone("resnet18").state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        zoo.load_backbone("resnet18", checkpoint=truncated)
    other = tmp_path / "resnet18.pth"
    torch.save(zoo.load_backbone("resnet18").state_dict(), other)
    with pytest.raises(ModelError, match="does not match resnet50"):
        zoo.load_backbone("resnet50", checkpoint=other)
    state = zoo.load_backbone("resnet18").state_dict()
    poisoned = tmp_path / "poisoned.pth"
    torch.save({**state, "bn1.running_var": torch.full_like(state["bn1.running_var"], float("nan")),
                "fc.weight": state["fc.weight"].to(torch.int64)}, poisoned)  # fmt: skip
    with pytest.raises(ModelError, match=r"not floating point: fc\.weight torch\.int64 vs torch\.float32; "
                       r"NaN or infinite values: bn1\.running_var$"):  # fmt: skip
        zoo.load_backbone("resnet18", checkpoint=poisoned)
    half = tmp_path / "half.pth"
    torch.save(
        {key: value.half() if value.is_floating_point() else value for key, value in state.items()}, half
    )
    assert (
        zoo.load_backbone("resnet18", checkpoint=half).fc.weight.dtype == torch.float32
    )  # fp16 weights load
    negative = tmp_path / "negative.pth"
    torch.save({**state, "bn1.running_var": -state["bn1.running_var"]}, negative)
    with pytest.raises(
        ModelError, match=r"values unusable for resnet18: negative BatchNorm variances: bn1\.running_var$"
    ):
        zoo.load_backbone("resnet18", checkpoint=negative)
    stranger = tmp_path / "stranger.pth"  # named like no tensor of the bundled model, and fewer of them
    torch.save({"state_dict": {"x": torch.zeros(3)}}, stranger)
    with pytest.raises(
        ModelError,
        match=r"holds 1 tensors, none named as efficientnet_lite0's \d+: it is not a checkpoint of",
    ):
        zoo.load_backbone("efficientnet_lite0", checkpoint=stranger)
    int_keys = tmp_path / "int-keys.pth"  # tensors, but named by numbers
    torch.save({0: torch.zeros(3), 1: torch.ones(3)}, int_keys)
    with pytest.raises(ModelError, match="no state dict"):
        zoo.load_backbone("resnet18", checkpoint=int_keys)
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"a": 1}, not_tensors)
    with pytest.raises(ModelError, match="no state dict"):
        zoo.load_backbone("resnet18", checkpoint=not_tensors)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Exploit(str(marker))}, evil)
    with pytest.raises(ModelError, match=r"Python objects besides tensors \(io.open\).*could run code"):
        zoo.load_backbone("resnet18", checkpoint=evil)
    assert not marker.exists()


def test_timm_pretrained_offline_is_a_clear_error(monkeypatch):
    # Point the hub at a closed local port: the same answer whether or not this machine is online.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for variable in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ModelError, match="pre-trained weights for resnet18.*--checkpoint"):
        zoo.load_backbone("resnet18", pretrained=True)


def test_backbone_spec_needs_a_zoo_model():
    with pytest.raises(ModelError, match="not loaded through"):
        zoo.backbone_spec(torch.nn.Linear(2, 2))
