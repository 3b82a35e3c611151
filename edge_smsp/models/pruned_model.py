"""Saved pruned models: model.safetensors + pruned.json in a directory (or as a pool stores them), reloaded by
pruning the backbone's cached template to the saved kept indices. No pickle anywhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from edge_smsp.core.documents import DocumentError, load_json, shown
from edge_smsp.core.errors import PruneError, error_text
from edge_smsp.core.paths import kind
from edge_smsp.data.catalog import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_smsp.models import template as templates
from edge_smsp.models.prune import apply_kept_indices, checked_indices, kept_indices, replace_classifier
from edge_smsp.models.units import classifier_of, copy_with_layouts, group_layouts, model_input_size

WEIGHTS_FILE = "model.safetensors"
META_FILE = "pruned.json"
FORMAT_NAME = "edge-smsp-pruned"
FORMAT_VERSION = 1


def check_model_dir_replaceable(out_dir: str | os.PathLike[str]) -> None:
    """PruneError when saving a model into `out_dir` would replace files no save wrote: a pruned.json that is not
    a saved model's, or model.safetensors without one (another tool's model). Called before any work too."""
    out = Path(out_dir)
    meta, weights = out / META_FILE, out / WEIGHTS_FILE
    if not out.is_dir():
        return
    if meta.exists():
        try:
            record = load_json(meta.read_bytes())
        except (OSError, DocumentError):
            record = None
        if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
            raise PruneError(
                f"output folder {out} holds a {META_FILE} that is not an edge-smsp saved model's; saving would "
                "replace it: name another --out (or move that folder)"
            )
    elif weights.exists():
        raise PruneError(
            f"output folder {out} holds a {WEIGHTS_FILE} with no {META_FILE} (another tool's model, or a save cut "
            "short); saving would replace it: name another --out (or move that folder)"
        )


def save_pruned(model: nn.Module, out_dir: str | os.PathLike[str], meta: Mapping[str, Any]) -> Path:
    """Write model.safetensors + pruned.json to out_dir atomically; returns out_dir. ONNX exports of the model
    out_dir held before (a .onnx file with the card that names it and its SHA-256) are removed: they would pass
    for exports of the new model."""
    out = Path(out_dir)
    check_model_dir_replaceable(out)
    record = _pruned_record(model, meta)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    text = json.dumps(record, indent=2, default=_json_default)
    if out.exists() and not out.is_dir():
        raise PruneError(f"output path {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise PruneError(f"cannot write pruned model to {out}: {error.strerror or error}") from None
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / META_FILE).write_text(text + "\n", encoding="utf-8")
        # safetensors writes 0600; a saved model is an ordinary shared file.
        for name in (WEIGHTS_FILE, META_FILE):
            os.chmod(staging / name, 0o644)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the saved model is an ordinary directory
        if not out.exists():
            os.replace(staging, out)
        else:
            # pruned.json marks the directory complete: drop the old one first, so a crash in between leaves
            # an incomplete directory that load_pruned refuses, never new weights under old metadata.
            (out / META_FILE).unlink(missing_ok=True)
            _remove_stale_exports(out)
            os.replace(staging / WEIGHTS_FILE, out / WEIGHTS_FILE)
            os.replace(staging / META_FILE, out / META_FILE)
    except (OSError, SafetensorError) as error:  # a full disk: safetensors raises its own error
        detail = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise PruneError(f"cannot write pruned model to {out}: {detail}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _remove_stale_exports(folder: Path) -> None:
    """Remove the ONNX exports in `folder` that carry their model card (`<name>.json` naming `<name>.onnx` and its
    SHA-256, as the export writes it): they were made from the model being replaced. Other files stay."""
    for onnx_path in folder.glob("*.onnx"):
        card_path = onnx_path.with_suffix(".json")
        if not onnx_path.is_file() or onnx_path.is_symlink() or not card_path.is_file():
            continue
        try:
            card = load_json(card_path.read_bytes())
        except (OSError, DocumentError):
            continue
        if not isinstance(card, dict) or card.get("onnx") != onnx_path.name:
            continue
        digest = hashlib.sha256()
        with onnx_path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if card.get("sha256") == digest.hexdigest():
            onnx_path.unlink()
            card_path.unlink()


def load_pruned(model_dir: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved pruned model: the backbone's architecture at the saved shapes, the saved weights. No pickle."""
    directory = Path(model_dir)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise PruneError(
                f"{directory} is not a saved pruned model (needs {META_FILE} and {WEIGHTS_FILE}; {path.name} is missing)"
            ) from None
        except OSError as error:
            raise PruneError(f"cannot read {path}: {error_text(error)}") from None
        if not stat.S_ISREG(mode):  # /dev/zero would be read forever, a folder fails with a raw errno
            raise PruneError(f"{path} is {kind(mode)}, not a file: {directory} is not a saved pruned model")
    try:
        files = {META_FILE: meta_path.read_bytes(), WEIGHTS_FILE: weights_path.read_bytes()}
    except OSError as error:
        raise PruneError(f"cannot read {directory}: {error}") from error
    return pruned_from_files(files, str(directory))


MAX_CLASSES = 100_000  # outputs of a saved model's head: far beyond any dataset here


def checked_meta(data: bytes, meta_name: str) -> dict[str, Any]:
    """pruned.json read by the bounded loader, its fields' types and ranges checked before anything is built
    from them (num_classes 1e12 would allocate a head of terabytes); PruneError naming the field otherwise."""
    try:
        meta = load_json(data)
    except DocumentError as error:
        raise PruneError(f"corrupt {meta_name}: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise PruneError(f"{meta_name} is not an edge-smsp pruned-model description")
    version = meta.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PruneError(f"{meta_name}: version must be a positive integer, got {shown(version)}")
    if version > FORMAT_VERSION:
        raise PruneError(
            f"{meta_name} is format version {version}, newer than this edge-smsp reads ({FORMAT_VERSION}): "
            "upgrade edge-smsp or save the model again with this one"
        )
    missing = [key for key in ("backbone", "image_size", "num_classes", "kept_indices") if key not in meta]
    if missing:
        raise PruneError(f"{meta_name} lacks {', '.join(missing)}")
    bounds = {"image_size": (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), "num_classes": (1, MAX_CLASSES)}
    for key, (low, high) in bounds.items():
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PruneError(
                f"{meta_name}: {key} must be an integer from {low} to {high:,}, got {shown(value)}"
            )
    if not isinstance(meta["backbone"], str) or not meta["backbone"]:
        raise PruneError(f"{meta_name}: backbone must be a model name, got {shown(meta['backbone'])}")
    if not isinstance(meta["kept_indices"], dict):
        raise PruneError(f"{meta_name}: kept_indices must be a mapping of unit groups to indices")
    _check_labels_and_normalisation(meta, meta_name)
    return meta


def _check_labels_and_normalisation(meta: dict[str, Any], meta_name: str) -> None:
    """class_names and backbone_spec's mean/std, named as pruned.json names them (an export would otherwise
    refuse them later under its own metadata names)."""
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise PruneError(f"{meta_name}: class_names must be a list of strings, got {shown(names)}")
        if len(names) != meta["num_classes"]:
            raise PruneError(
                f"{meta_name}: class_names has {len(names)} entries but num_classes is {meta['num_classes']}; "
                "give one name per class"
            )
    spec = meta.get("backbone_spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise PruneError(f"{meta_name}: backbone_spec must be a mapping, got {shown(spec)}")
    trained_at = spec.get("input_size")
    if (
        trained_at is not None and trained_at != meta["image_size"]
    ):  # the graph would be built at another size
        raise PruneError(
            f"{meta_name}: image_size {meta['image_size']} differs from backbone_spec.input_size {shown(trained_at)}, "
            "the size the model was pruned at; save the model again"
        )
    for key in ("mean", "std"):
        values = spec.get(key)
        if values is None:
            continue
        numbers = isinstance(values, list) and len(values) in (1, 3)
        numbers = numbers and all(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            for value in values
        )
        if not numbers or (key == "std" and min(values) <= 0):
            wanted = "positive numbers" if key == "std" else "finite numbers"
            raise PruneError(
                f"{meta_name}: backbone_spec.{key} must be 1 or 3 {wanted} (one per channel), got {shown(values)}"
            )


def pruned_from_files(files: Mapping[str, bytes], where: str) -> tuple[nn.Module, dict[str, Any]]:
    """A saved pruned model from its files' contents (META_FILE, WEIGHTS_FILE), e.g. as a pool stores them;
    `where` names them in errors."""
    meta_name, weights_name = f"{where}/{META_FILE}", f"{where}/{WEIGHTS_FILE}"
    if META_FILE not in files or WEIGHTS_FILE not in files:
        raise PruneError(f"{where} is not a saved pruned model (needs {META_FILE} and {WEIGHTS_FILE})")
    meta = checked_meta(files[META_FILE], meta_name)
    try:
        state = load_safetensors(bytes(files[WEIGHTS_FILE]))
    except (SafetensorError, ValueError) as error:
        raise PruneError(f"corrupt {weights_name}: {error}") from error
    not_finite = [
        key
        for key, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if not_finite:
        more = f" (+{len(not_finite) - 3} more)" if len(not_finite) > 3 else ""
        raise PruneError(
            f"{weights_name} holds NaN or infinite values in {', '.join(not_finite[:3])}{more}: the saved model "
            "cannot run; prune it again from sound weights"
        )
    negative = [
        key for key, tensor in state.items() if key.endswith("running_var") and bool((tensor < 0).any())
    ]
    if negative:  # a variance below 0 has no square root: every output of the layer would be NaN
        raise PruneError(
            f"{weights_name} holds negative BatchNorm variances in {', '.join(negative[:3])}: the file is "
            "damaged; prune or adapt the model again"
        )

    # Architecture only: every weight comes from the file, so the original checkpoint need not still exist.
    template = templates.template(meta["backbone"], meta["image_size"])
    kept = meta["kept_indices"]
    by_key = {layout.key: layout for layout in group_layouts(template)}
    if not isinstance(kept, dict) or set(kept) != set(by_key):
        raise PruneError(f"{meta_name}: kept_indices do not match the groups of backbone {meta['backbone']}")
    try:
        checked = {key: checked_indices(key, kept[key], by_key[key].size) for key in by_key}
    except PruneError as error:
        raise PruneError(f"{meta_name}: {error}; the file is damaged: prune the model again") from None
    # Pruning a copy of the cached template again is what validates every file shape (resizing the skeleton
    # in place mis-shaped attention heads), so it is the one path.
    model = copy_with_layouts(template)
    apply_kept_indices(model, checked)
    replace_classifier(model, int(meta["num_classes"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PruneError(
            f"{weights_name} does not match the pruned architecture: {error_text(error)}"
        ) from error
    spec_fields = meta.get("backbone_spec")
    spec = getattr(model, "backbone_spec", None)
    if isinstance(spec_fields, dict) and dataclasses.is_dataclass(spec):
        try:
            fields = {
                key: tuple(value) if isinstance(value, list) else value for key, value in spec_fields.items()
            }
            restored = type(spec)(**{**fields, "num_classes": int(meta["num_classes"])})
        except TypeError:
            restored = dataclasses.replace(spec, num_classes=int(meta["num_classes"]))
        model.backbone_spec = restored
    model.eval()
    return model, meta


def _pruned_record(model: nn.Module, meta: Mapping[str, Any]) -> dict[str, Any]:
    spec = getattr(model, "backbone_spec", None)
    classifier = classifier_of(model)
    num_classes = classifier[1].out_features if classifier and isinstance(classifier[1], nn.Linear) else None
    backbone = meta.get("backbone") or getattr(spec, "name", None)
    if not backbone:
        raise PruneError("cannot save: the backbone name is unknown (give meta['backbone'])")
    record: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "backbone": backbone,
        "checkpoint": getattr(spec, "checkpoint", None),
        "pretrained": getattr(spec, "weights", None) in ("bundled-imagenet", "timm-pretrained"),
        "image_size": model_input_size(model),
        "num_classes": num_classes,
        "class_names": None,
    }
    if dataclasses.is_dataclass(spec):
        record["backbone_spec"] = dataclasses.asdict(spec)
    record.update({key: value for key, value in meta.items() if key not in ("kept_indices", "num_classes")})
    record["format"], record["version"] = FORMAT_NAME, FORMAT_VERSION
    record["num_classes"] = num_classes
    record["kept_indices"] = kept_indices(model)
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in pruned.json")
