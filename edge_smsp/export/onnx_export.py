"""ONNX export of a (pruned) model: export, simplify, check, parity with torch, metadata, model card.

Exporters, by requested opset (measured on efficientnet_lite0, resnet18 and deit_small, opsets 15 to 28):
- opset 18 and newer: torch.onnx's torch.export-based exporter (dynamo=True), the default and maintained path in
  torch 2.14 (the TorchScript exporter is deprecated there). It builds the graph at its own opset 18; the ONNX
  version converter then lifts it to the requested opset. Asking the dynamo exporter for a newer opset directly
  breaks DeiT from opset 26 (its Attention op lands in a graph stamped 18).
- older opsets (old ONNX Runtime builds on devices, e.g. opset 15 on a Jetson Nano): the TorchScript exporter,
  because down-converting the dynamo graph fails for common ops (Pad, Squeeze) and silently keeps opset 18.
The IR version is lowered to the one of the ONNX release that introduced the opset, so that any runtime that
runs the opset also reads the file (onnxruntime 1.14 runs opset 18 but only IR 8, the dynamo exporter writes 10).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_smsp.core.documents import DocumentError, load_json
from edge_smsp.core.errors import ExportError, OutputPathError, error_text
from edge_smsp.core.fileio import checked_output_path, write_atomically
from edge_smsp.data.catalog import image_size_problem
from edge_smsp.devices.stack import DEFAULT_OPSET, NEWEST_KNOWN_OPSET, onnxruntime_max_opset, opset_problem
from edge_smsp.export.metadata import METADATA_KEYS, build_metadata, decode_metadata
from edge_smsp.export.parity import (
    INPUT_NAME,
    OUTPUT_NAME,
    onnxruntime_max_diff,
    parity_batch,
    scores_as_numpy,
)

DYNAMO_OPSET = 18  # the opset the dynamo exporter builds graphs at
PARITY_TOLERANCE = 1e-4
EXPORTERS = ("dynamo", "torchscript")
CARD_FORMAT = "edge-smsp-model-card"


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX model went and how it checked out."""

    onnx_path: Path
    card_path: Path
    max_abs_diff: float
    size_bytes: int
    opset: int
    sha256: str
    seconds: float
    metadata: dict[str, str]
    dynamic_batch: bool
    simplified: bool
    exporter: str
    parity_samples: int
    parity_inputs: str  # "given" | "random"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (paths as strings)."""
        payload = asdict(self)
        payload["onnx_path"], payload["card_path"] = str(self.onnx_path), str(self.card_path)
        return payload


@contextlib.contextmanager
def _interruptions_kept() -> Iterator[None]:
    """Ctrl-C during the export is raised once it has returned (a second one at once): a KeyboardInterrupt raised
    inside torch's exporter, onnxsim or a lazy import is caught there, reported as an export failure, or leaves a
    module half-initialised, so that the export failed with a traceback or finished as if nothing had happened."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):  # Ctrl-C ignored (a background job) or not set from Python
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        interrupted.append(signum)
        if len(interrupted) > 1:  # a second Ctrl-C acts at once
            handler = previous if callable(previous) else signal.default_int_handler
            handler(signum, frame)

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if interrupted:
            raise KeyboardInterrupt from None


def is_own_card(path: Path, onnx_name: str | None = None) -> bool:
    """Whether `path` holds a model card an export wrote (for the file `onnx_name`, when given)."""
    try:
        card = load_json(path.read_bytes())
    except (OSError, DocumentError):
        return False
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        return False
    return onnx_name is None or card.get("onnx") == onnx_name


def check_replaceable(out: Path, sidecar: bool = False) -> None:
    """ExportError, before any work, when the export would replace a file no export wrote: the model card beside
    `out` (a saved model's pruned.json, a settings file of the user's), and `out` itself when the user did not
    name it (`sidecar`: the fp32 reference of an INT8 or FP16 export)."""
    card = out.with_suffix(".json")
    if card.exists() and not is_own_card(card):
        raise ExportError(
            f"output path {out}: its model card would replace {card}, which is not an edge-smsp model card; "
            "name another --out (or move that file)"
        )
    if sidecar and out.exists() and not is_own_card(card, out.name):
        raise ExportError(
            f"the fp32 reference {out} would replace a file no export wrote; name another --out (or move that file)"
        )
    if out.is_symlink() and out.exists() and not is_own_card(card, out.name):  # the write lands on its target
        raise ExportError(
            f"output path {out} is a link to {out.resolve()}, which no export wrote: name the file itself as --out"
        )
    if out.is_file() and not _starts_like_onnx(out):
        raise ExportError(
            f"output path {out} holds a file that is not an ONNX model: name another --out (or move that file)"
        )


def _starts_like_onnx(path: Path) -> bool:
    """Whether a file is empty or begins as an ONNX ModelProto does (field 1, ir_version, a varint)."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return handle.read(1) in (b"", b"\x08")
    return True  # the write reports what is wrong with the path


@_interruptions_kept()
def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    *,
    image_size: int,
    metadata: Mapping[str, Any],
    dynamic_batch: bool = False,
    parity_inputs: torch.Tensor | None = None,
    opset: int | None = None,
    exporter: str | None = None,
    tolerance: float = PARITY_TOLERANCE,
    simplify: bool = True,
) -> ExportResult:
    """Export to ONNX (batch 1 unless dynamic_batch), simplify, check, verify parity, write model + card.

    opset: the ai.onnx opset of the file (default DEFAULT_OPSET), OLDEST_EXPORT_OPSET to newest_export_opset();
    a device runs it when its runtime runs that opset or newer.
    """
    started = time.perf_counter()
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ExportError(f"output path {out} must end in .onnx")
    check_replaceable(out)
    try:
        checked_output_path(out, directory=False)  # refused now, not after the export's minutes
    except OutputPathError as error:
        raise ExportError(f"output path {error}") from None
    image_size = _checked_image_size(image_size)
    opset = checked_opset(DEFAULT_OPSET if opset is None else opset)
    exporter = exporter or ("dynamo" if opset >= DYNAMO_OPSET else "torchscript")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and opset < DYNAMO_OPSET:
        raise ExportError(
            f"the dynamo exporter needs opset >= {DYNAMO_OPSET} (got {opset}); use exporter='torchscript'"
        )

    was_training = model.training
    model.eval()
    try:
        inputs, inputs_kind = parity_batch(model, parity_inputs, image_size)
        with torch.no_grad():
            reference = scores_as_numpy(model(inputs))
        if reference.ndim != 2:
            raise ExportError(f"the model must output [batch, classes] logits, got shape {reference.shape}")
        if not np.isfinite(reference).all():  # said before the export's seconds, and as the model's fault
            raise ExportError(
                f"the model computes NaN or infinite scores on {inputs_kind} inputs (in torch, before any export): "
                "its weights overflow float32 or its BatchNorm statistics are damaged; adapt or prune it again"
            )
        meta = build_metadata(metadata, image_size=image_size, num_classes=reference.shape[1])
        proto = _export(model, inputs[:1], opset, exporter, dynamic_batch, meta["backbone"])
    finally:
        model.train(was_training)

    simplified = False
    if simplify:
        proto, simplified = _simplify(proto)
    _lower_ir_version(proto)
    del proto.metadata_props[:]
    for key in METADATA_KEYS:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, meta[key]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # checker and shape inference raise several types
        raise ExportError(f"exported ONNX graph fails onnx.checker: {error_text(error)}") from None
    payload = proto.SerializeToString()
    max_abs_diff = onnxruntime_max_diff(payload, inputs.detach().cpu().numpy(), reference, dynamic_batch)
    # float32 error grows with the outputs' scale (an imprinted head gives logits of ~10-100), so the tolerance
    # is absolute up to |output| 1 and relative beyond.
    allowed = tolerance * max(1.0, float(np.abs(reference).max()))
    if not max_abs_diff <= allowed:
        raise ExportError(
            f"parity check failed: max |onnxruntime - torch| = {max_abs_diff:.2e} > {allowed:.1e} "
            f"on {len(inputs)} {inputs_kind} input(s)"
        )

    opset_used = _onnx_opset(proto)
    digest = hashlib.sha256(payload).hexdigest()
    card_path = out.with_suffix(".json")
    seconds = time.perf_counter() - started
    card = {
        "format": CARD_FORMAT,
        "onnx": out.name,
        "sha256": digest,
        "size_bytes": len(payload),
        "opset": opset_used,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch" if dynamic_batch else 1, 3, image_size, image_size],
            "dtype": "float32",
            "layout": "NCHW",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch" if dynamic_batch else 1, reference.shape[1]]},
        "metadata": decode_metadata(meta),
        "params": sum(parameter.numel() for parameter in model.parameters()),
        "parity": {
            "max_abs_diff": max_abs_diff,
            "tolerance": tolerance,
            "samples": len(inputs),
            "inputs": inputs_kind,
            "runtime": "onnxruntime CPUExecutionProvider",
        },
        "dynamic_batch": dynamic_batch,
        "simplified": simplified,
        "exporter": exporter,
        "seconds": round(seconds, 3),
    }
    _write_atomically(out, payload)
    _write_atomically(card_path, (json.dumps(card, indent=2) + "\n").encode("utf-8"))
    return ExportResult(
        onnx_path=out,
        card_path=card_path,
        max_abs_diff=max_abs_diff,
        size_bytes=len(payload),
        opset=int(opset_used),
        sha256=digest,
        seconds=time.perf_counter() - started,
        metadata=meta,
        dynamic_batch=dynamic_batch,
        simplified=simplified,
        exporter=exporter,
        parity_samples=len(inputs),
        parity_inputs=inputs_kind,
    )


def newest_export_opset() -> int:
    """The newest opset export_onnx writes here: what the onnx package defines and the host's onnxruntime (which
    checks parity) runs, within the runtime's table."""
    import onnxruntime

    runtime_opset = onnxruntime_max_opset(onnxruntime.__version__) or DEFAULT_OPSET
    return min(onnx.defs.onnx_opset_version(), runtime_opset, NEWEST_KNOWN_OPSET)


def checked_opset(opset: Any) -> int:
    """`opset` if export_onnx can write it, else ExportError naming the range."""
    problem = opset_problem(opset, newest_export_opset())
    if problem:
        raise ExportError(f"opset: {problem}")
    return opset


def load_onnx_checked(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file and run onnx.checker on it; any problem -> ExportError."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, RuntimeError or ValueError on corrupt bytes
        raise ExportError(f"{path}: not a readable ONNX model ({error_text(error)})") from None
    if not proto.graph.node:
        raise ExportError(f"{path}: not an ONNX model (empty graph)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # checker and shape inference raise several types
        raise ExportError(f"{path}: invalid ONNX model ({error_text(error)})") from None
    return proto


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict (checked load)."""
    return {entry.key: entry.value for entry in load_onnx_checked(path).metadata_props}


def _export(
    model: nn.Module, example: torch.Tensor, opset: int, exporter: str, dynamic_batch: bool, backbone: str
) -> onnx.ModelProto:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model,
                    (example,),
                    None,
                    dynamo=True,
                    verbose=False,
                    opset_version=DYNAMO_OPSET,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},)
                    if dynamic_batch
                    else None,
                    optimize=True,
                )
                proto = program.model_proto
                if opset != _onnx_opset(proto):
                    proto = onnx.version_converter.convert_version(proto, opset)
            else:
                import io

                buffer = io.BytesIO()
                torch.onnx.export(
                    model,
                    (example,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                    if dynamic_batch
                    else None,
                    do_constant_folding=True,
                )
                proto = onnx.load_from_string(buffer.getvalue())
    except Exception as error:  # the exporters raise many unrelated types for unsupported graphs
        raise ExportError(
            f"ONNX export of {backbone} at opset {opset} failed ({exporter} exporter): {error_text(error)}"
        ) from None
    written = _onnx_opset(proto)
    if written != opset:  # an exporter that silently kept another opset
        raise ExportError(f"the {exporter} exporter wrote opset {written} when asked for opset {opset}")
    return proto


def _onnx_opset(proto: onnx.ModelProto) -> int | None:
    """The ai.onnx opset a model imports."""
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)


def _lower_ir_version(proto: onnx.ModelProto) -> None:
    """Stamp the IR version of the ONNX release that introduced the model's opsets (if lower than the exporter's)."""
    oldest = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.ir_version = min(proto.ir_version, oldest)


def _simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception:  # onnxsim fails on some graphs; the unsimplified graph is still a valid export
        return proto, False
    return (simplified, True) if ok else (proto, False)


def _checked_image_size(image_size: Any) -> int:
    problem = image_size_problem(image_size)
    if problem:
        raise ExportError(f"image_size {problem}")
    return image_size


def _write_atomically(path: Path, payload: bytes) -> None:
    try:
        write_atomically(path, payload)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error}") from None
