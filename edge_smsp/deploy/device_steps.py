"""The device-side steps of a deploy whose task images stay on the device (`deploy --device-data DIR`), each a
runtime command over the transport that returns kilobytes: scan, describe, probe, adapt.

Graphs go to the device under content-addressed names (`features/<sha>.onnx`, `bundles/<sha>/`) and are
uploaded only when the device lacks them: they are its cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import DataError, TransportError
from edge_smsp.core.plausible import fraction_problem
from edge_smsp.data.tasks import ImageTensorDataset, Task
from edge_smsp.export.feature_graph import AdaptableBundle, export_feature_graph
from edge_smsp.transfer.entry_models import borrowed_entry_model
from edge_smsp.transfer.entry_probe import ProbedEntry
from edge_smsp.transport.base import Transport, sha256_file

DEVICE_TIMEOUT = 3600.0  # a stage of the light tier on a slow board (the emulated ARM board: minutes)
DESCRIPTOR_SAMPLES = 512  # edge_smsp.transfer.estimators.base.DESCRIPTOR_SAMPLES
DESCRIPTOR_SEED = 0  # edge_smsp.transfer.estimators.base.DESCRIPTOR_SEED


@dataclass(frozen=True)
class DeviceData:
    """The task's ImageFolder on the device, and how the light tier adapts to it there."""

    path: str
    trainable_blocks: int | None = None  # None: the runtime's default (edge_smsp_runtime.adapt)
    sample: int = 512  # images for BN statistics and imprinting
    val_fraction: float = 0.2
    tier: str = "auto"  # --device-train: auto (torch when the device has it), light or torch


@dataclass
class DeviceLog:
    """Seconds per device stage (wall time of its command) and what each stage reported."""

    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    bytes_from_device: dict[str, int] = field(default_factory=dict)  # per stage: its commands' output

    def run(self, transport: Transport, stage: str, args: list[str]) -> dict[str, Any]:
        started = time.perf_counter()
        before = transport.bytes.from_device
        try:
            report = transport.run_runtime(args, timeout=DEVICE_TIMEOUT)
        except TransportError as error:
            raise _data_error(error, stage) from None
        problem = fraction_problem(report)
        if problem:
            raise TransportError(
                f"the device's {stage} reply is not plausible: {problem}; check the device's Python, numpy and "
                "onnxruntime, then run again"
            )
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 3)
        moved = transport.bytes.from_device - before
        self.bytes_from_device[stage] = self.bytes_from_device.get(stage, 0) + moved
        self.reports.setdefault(stage, []).append(report)
        return report


def _data_error(error: TransportError, stage: str) -> Exception:
    """The runtime's own one-line error about the task's folder is bad input (DataError), not a link failure."""
    text = str(error)
    marker = f"edge-smsp-runtime {stage}: error: "
    if marker in text:
        return DataError(f"the device's {stage} refused the task: {text.split(marker, 1)[1]}")
    return error


def scan(transport: Transport, data: DeviceData, log: DeviceLog, seed: int) -> dict[str, Any]:
    """Class names and per-class counts of the device's folder (every image decoded once there)."""
    report = log.run(
        transport,
        "scan",
        ["scan", "--data", data.path, "--seed", str(seed), "--val-fraction", repr(data.val_fraction)],
    )
    if len(report.get("classes") or []) < 2:
        raise DataError(f"{data.path} on the device: need at least two classes")
    return report


def check_adapt_reply(adapted: dict[str, Any], scanned: dict[str, Any]) -> None:
    """TransportError when the device's adapt reply contradicts its own scan of the folder: other classes, or
    more training images than the folder holds (or none)."""
    if adapted.get("classes") != scanned.get("classes"):
        raise TransportError(
            f"the device's adapt reply names classes {shown(adapted.get('classes'))}, but its scan found "
            f"{shown(scanned.get('classes'))}; check the device's Python, then run again"
        )
    held = sum(int(count) for count in scanned.get("train_counts") or ())
    trained = adapted.get("train_images")
    if isinstance(trained, bool) or not isinstance(trained, int) or not 1 <= trained <= held:
        raise TransportError(
            f"the device's adapt reply says it trained on {shown(trained)} images, but its scan found {held} "
            "training images; check the device's Python, then run again"
        )


def described_task(
    scanned: dict[str, Any], data: DeviceData, image_size: int, mean: Any, std: Any, seed: int
) -> Task:
    """The task as the host knows it: its class names and size, no image (they stay on the device)."""
    names = tuple(str(name) for name in scanned["classes"])
    empty = ImageTensorDataset(
        torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8),
        torch.zeros(0, dtype=torch.int64),
        mean,
        std,
    )
    return Task(
        dataset="imagefolder",
        classes=tuple(range(len(names))),
        class_names=names,
        seed=seed,
        image_size=image_size,
        train=empty,
        val=empty,
        mean=tuple(mean),
        std=tuple(std),
        source=scanned.get("data") or data.path,
    )


def upload_graph(transport: Transport, path: Path, folder: str) -> str:
    """A graph uploaded to the device's cache under its SHA-256 (skipped when there); its device path."""
    return transport.upload_cached([(path, f"{folder}/{sha256_file(path)[:16]}.onnx")])[0]


def describe(
    transport: Transport, graph: Path, data: DeviceData, log: DeviceLog, num_classes: int
) -> np.ndarray:
    """The task descriptor (class prototypes of the unpruned backbone), computed on the device."""
    remote = upload_graph(transport, graph, "features")
    report = log.run(
        transport,
        "describe",
        ["describe", "--model", remote, "--data", data.path, "--sample", str(DESCRIPTOR_SAMPLES),
         "--seed", str(DESCRIPTOR_SEED), "--val-fraction", repr(data.val_fraction)],
    )  # fmt: skip
    encoded = report.get("prototypes") or {}
    try:
        values = np.frombuffer(base64.b64decode(encoded["base64"]), dtype="<f2").reshape(encoded["shape"])
    except (KeyError, TypeError, ValueError) as error:
        raise TransportError(f"the device's describe sent no readable prototypes: {error}") from None
    if values.shape[0] != num_classes:
        raise TransportError(f"the device described {values.shape[0]} classes, expected {num_classes}")
    return values.astype(np.float16)


class DeviceProber:
    """The probe stage's prober: each candidate entry's feature graph is exported, cached on the device and run
    there over the task's sample; only their nearest-mean accuracies come back."""

    def __init__(
        self,
        transport: Transport,
        pool: Any,
        data: DeviceData,
        log: DeviceLog,
        work_dir: Path,
        *,
        image_size: int,
        opset: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        self.transport, self.pool, self.data, self.log, self.work_dir = transport, pool, data, log, work_dir
        self.image_size, self.opset, self.mean, self.std, self.seed = image_size, opset, mean, std, seed

    def __call__(self, candidates: Sequence[tuple[Any, float]]) -> list[ProbedEntry]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        remotes = []
        for entry, _ in candidates:
            path = export_feature_graph(
                borrowed_entry_model(self.pool, entry),
                self.work_dir / f"entry-{entry.id}.onnx",
                image_size=self.image_size,
                opset=self.opset,
                mean=self.mean,
                std=self.std,
            )
            remotes.append(upload_graph(self.transport, path, "features"))
        report = self.log.run(
            self.transport,
            "probe",
            ["probe", "--models", *remotes, "--data", self.data.path, "--seed", str(self.seed),
             "--val-fraction", repr(self.data.val_fraction)],
        )  # fmt: skip
        scores = report.get("scores") or []
        if len(scores) != len(candidates):
            raise TransportError(f"the device probed {len(scores)} of {len(candidates)} candidates")
        return [
            ProbedEntry(entry, similarity, float(score["nearest_mean_accuracy"]))
            for (entry, similarity), score in zip(candidates, scores, strict=True)
        ]


def upload_bundle(transport: Transport, bundle: AdaptableBundle) -> str:
    """The bundle's three files in the device's cache (`bundles/<model sha>/`); the device path of model.onnx."""
    folder = f"bundles/{bundle.model_sha256[:16]}"
    return transport.upload_cached([(path, f"{folder}/{path.name}") for path in bundle.files])[0]


def adapt_on_device(
    transport: Transport,
    remote_bundle: str,
    data: DeviceData,
    log: DeviceLog,
    *,
    iters: int,
    trainable_blocks: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    threads: int,
    max_per_class: int | None,
    tier: str = "light",
) -> dict[str, Any]:
    """The light tier on the device: adaptive BN, imprinting, `iters` steps after cut `trainable_blocks`, one
    verified ONNX file written under models/ (named after the bundle and the run's settings); the torch tier:
    the same, every parameter trained (`trainable_blocks` is not passed)."""
    settings = json.dumps(
        [data.path, iters, trainable_blocks, batch_size, lr, seed, max_per_class, data.sample]
        + ([tier] if tier != "light" else [])
    )
    run_id = hashlib.sha256(settings.encode("utf-8")).hexdigest()[:8]
    out = f"models/adapted-{Path(remote_bundle).parent.name}-{run_id}.onnx"
    args = [
        "adapt", "--model", remote_bundle, "--data", data.path, "--iters", str(iters), "--out",
        transport.remote_path(out), "--batch-size", str(batch_size), "--seed", str(seed), "--sample", str(data.sample), "--val-fraction", repr(data.val_fraction),
        "--threads", str(threads),
    ]  # fmt: skip
    args += ["--tier", "torch"] if tier == "torch" else ["--trainable-blocks", str(trainable_blocks)]
    if lr is not None:
        args += ["--lr", repr(float(lr))]
    if max_per_class is not None:
        args += ["--max-per-class", str(max_per_class)]
    transport.run([transport.python, "-c", "import os, sys; os.makedirs(sys.argv[1], exist_ok=True)",
                   transport.remote_path("models")], 60.0)  # fmt: skip
    return log.run(transport, "adapt", args)


def torch_import_mib(transport: Transport, log: DeviceLog) -> float:
    """The peak RSS of a device Python that imports torch (and numpy), MiB: the torch tier's runtime memory."""
    started = time.perf_counter()
    script = "import resource, numpy, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    result = transport.run([transport.python, "-c", script], 300.0)
    log.seconds["torch_check"] = round(time.perf_counter() - started, 3)
    try:
        return round(int(result.stdout.split()[-1]) / 1024.0, 1)
    except (IndexError, ValueError):
        raise TransportError(f"the device could not import torch: {result.stderr.strip()[-300:]}") from None
