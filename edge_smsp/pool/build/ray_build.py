"""`ray_build_pool`: a pool build whose tasks run as Ray tasks, on a local Ray cluster or a team's cluster.

The driver (this process) is the pool's single writer: it claims each task in the pool, sends it to a Ray
worker with the backbone's weights and the task's images, and commits each finished entry in one transaction as
it arrives (edge_smsp.pool.build.loop). Workers get and return plain values (safetensors bytes, numpy arrays,
the entry's encoded arrays and files), never pickles of edge-smsp objects, so a worker needs edge-smsp and torch
installed, but neither the dataset nor the backbone's checkpoint. A worker that dies mid-task is retried by Ray;
the claim stays with the driver meanwhile, so nothing is lost or done twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from edge_smsp.adaptation.config import AdaptConfig
from edge_smsp.core.documents import shown
from edge_smsp.core.errors import ClusterError, EdgeSmspError, ModelError
from edge_smsp.data.tasks import ImageTensorDataset, Task
from edge_smsp.models.zoo import BackboneSpec, backbone_spec, load_backbone, weights_hash
from edge_smsp.pool import DEFAULT_LEASE_SECONDS, Pool
from edge_smsp.pool.build.loop import BuildStep, BuiltTask, TaskOutcome, run_build
from edge_smsp.pool.build.tasks import build_entry, build_keys, describe_missing

if TYPE_CHECKING:
    from types import ModuleType

RAY_INSTALL_HINT = "pip install edge-smsp[ray]"
# Ray runs a task again when its worker process dies (killed, out of memory), up to this many times; errors the
# task raises itself are not retried: they would fail again.
WORKER_RETRIES = 3
_CAPACITY_REFRESH_SECONDS = 10.0
# Ray retries an unreachable cluster for minutes; a plain TCP connect says within seconds whether anyone listens,
# and the HTTP/2 greeting whether it is a gRPC server, as the head's GCS is (it answers in well under 1 ms).
REACH_TIMEOUT_SECONDS = 5.0
# A client's HTTP/2 connection preface and an empty SETTINGS frame: an HTTP/2 server must answer with a SETTINGS
# frame (RFC 9113, 3.4), so anything else (silence, a banner, HTTP/1, a closed connection) is not Ray's head.
_HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
_SETTINGS_FRAME = 0x04


def import_ray() -> ModuleType:
    """The ray module, or a ClusterError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def ray_build_pool(
    backbone: nn.Module,
    pool: Pool,
    tasks: Sequence[Task],
    config: AdaptConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    on_task: Callable[[TaskOutcome], None] | None = None,
    on_wait: Callable[[Task, str], None] | None = None,
    on_cluster: Callable[[dict[str, Any]], None] | None = None,
    step: BuildStep = build_entry,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> list[int]:
    """build_pool with each task a Ray task: on a new local cluster (address None; num_cpus workers), or on the
    cluster at `address` ("host:port" of `ray start --head`). Returns the ids of the entries added."""
    ray = import_ray()
    keys = build_keys(backbone, tasks, config)
    describe_missing(pool, backbone, tasks)
    with ray_session(ray, address, num_cpus) as cluster:
        if on_cluster is not None:
            on_cluster(cluster)
        runner = RayRunner(ray, backbone, config, step)
        try:
            return run_build(
                pool, tasks, keys, runner, on_task=on_task, on_wait=on_wait, lease_seconds=lease_seconds
            )
        finally:
            runner.cancel_running()


def check_reachable(address: str) -> None:
    """A ClusterError unless something listens at `address` ("host:port" of `ray start --head`; Ray's other
    address forms, "auto" or "ray://...", are left to Ray)."""
    host, colon, port = address.rpartition(":")
    if not colon or "/" in address or not port.isdigit():
        if address == "auto" or address.startswith("ray://"):
            return
        raise ClusterError(f"--ray {address}: expected HOST:PORT of the cluster's head (`ray start --head`)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_SECONDS) as link:
            answer = _greet(link)
    except (OSError, ValueError, OverflowError) as error:
        reason = "no answer within" if isinstance(error, TimeoutError) else _first_line(error)
        if isinstance(error, TimeoutError):
            reason = f"{reason} {REACH_TIMEOUT_SECONDS:g} s"
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {reason} (is `ray start --head` running there?)"
        ) from None
    if answer is not None:
        raise ClusterError(
            f"--ray {address} is not a Ray cluster's head: {answer} (is this the port `ray start --head` printed?)"
        )


def _greet(link: socket.socket) -> str | None:
    """None when the peer answers the HTTP/2 greeting as a gRPC server does, else what it did instead."""
    if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return None  # a TLS cluster: Ray itself says whether the handshake works
    header = b""
    try:
        link.sendall(_HTTP2_GREETING)
        while len(header) < 9:  # a frame header: length (3), type (1), flags (1), stream (4)
            chunk = link.recv(64)  # more than a frame header: enough of a banner to show
            if not chunk:
                break
            header += chunk
    except TimeoutError:
        return f"it did not answer the gRPC greeting within {REACH_TIMEOUT_SECONDS:g} s"
    except OSError as error:
        return f"it dropped the connection ({_first_line(error)})"
    if len(header) >= 9 and header[3] == _SETTINGS_FRAME and header[5:9] == bytes(4):
        return None
    if not header:
        return "it closed the connection without a word"
    return f"it answered {shown(header.decode('latin-1'), 40)}, not gRPC"


@contextlib.contextmanager
def ray_session(ray: ModuleType, address: str | None, num_cpus: int | None) -> Iterator[dict[str, Any]]:
    """Connected to a Ray cluster (a new local one when address is None) for the block; yields its facts."""
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,  # failures raise; Ray's notices would only crowd the build's own lines
    }
    if address is None:
        options.update(address="local", num_cpus=num_cpus)
    else:
        check_reachable(address)
        options.update(address=address)
    where = "a local Ray cluster" if address is None else f"the Ray cluster at {address}"
    # Ray prints the cluster's notices (a worker died...) on stdout, which belongs to the CLI's --json output.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            ray.init(**options)
        except (
            Exception
        ) as error:  # Ray raises ConnectionError, ValueError, RuntimeError... for a bad address
            raise ClusterError(f"cannot start or reach {where}: {_first_line(error)}") from None
        try:
            yield {
                "address": ray.get_runtime_context().gcs_address,
                "local": address is None,
                "cpus": int(ray.cluster_resources().get("CPU", 0)),
                "nodes": len([node for node in ray.nodes() if node.get("Alive")]),
            }
        finally:
            ray.shutdown()


class RayRunner:
    """Runs claimed tasks as Ray tasks, one CPU each; finished ones come back as BuiltTasks."""

    def __init__(self, ray: ModuleType, backbone: nn.Module, config: AdaptConfig, step: BuildStep) -> None:
        self._ray = ray
        self._remote = ray.remote(run_on_worker).options(
            num_cpus=1, max_retries=WORKER_RETRIES, retry_exceptions=False
        )
        self._backbone = ray.put(backbone_to_wire(backbone))  # once, shared by every task
        self._config = dataclasses.asdict(config)
        self._step = step
        self._running: dict[Any, Task] = {}
        self._capacity, self._capacity_read = 1, -_CAPACITY_REFRESH_SECONDS

    def capacity(self) -> int:
        """The cluster's CPUs: tasks are claimed as workers can take them, leaving the rest to other builds."""
        if time.monotonic() - self._capacity_read >= _CAPACITY_REFRESH_SECONDS:
            self._capacity = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
            self._capacity_read = time.monotonic()
        return self._capacity

    def busy(self) -> int:
        return len(self._running)

    def submit(self, task: Task) -> None:
        ref = self._remote.remote(self._backbone, task_to_wire(task), self._config, self._step)
        self._running[ref] = task

    def finished(self, timeout: float) -> list[tuple[Task, BuiltTask]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        return [(self._running[ref], self._result(ref)) for ref in ready]

    def cancel_running(self) -> None:
        """Stop the tasks still running (the build failed or was interrupted; their claims are released)."""
        for ref in self._running:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._running.clear()

    def _result(self, ref: Any) -> BuiltTask:
        task = self._running.pop(ref)
        exceptions = self._ray.exceptions
        try:
            wire = self._ray.get(ref)
        except exceptions.RayTaskError as error:
            if isinstance(error.cause, EdgeSmspError):
                raise error.cause from None
            raise ClusterError(
                f"task {task.task_id} failed on a Ray worker: {_first_line(error.cause)}"
            ) from None
        except exceptions.RayError as error:
            raise ClusterError(
                f"task {task.task_id} failed on the Ray cluster {WORKER_RETRIES + 1} times: {_first_line(error)}"
            ) from None
        return BuiltTask.from_wire(wire)


def run_on_worker(
    backbone: dict[str, Any], task: dict[str, Any], config: dict[str, Any], step: BuildStep
) -> dict:
    """One task on a Ray worker: plain values in, the finished entry's plain values out."""
    torch.set_num_threads(1)  # one task per CPU: more threads per worker only contend
    return step(_worker_backbone(backbone), task_from_wire(task), AdaptConfig(**config), False).to_wire()


_WORKER_BACKBONES: dict[str, nn.Module] = {}  # a worker process runs many tasks of one build: rebuild once


def _worker_backbone(wire: dict[str, Any]) -> nn.Module:
    if wire["hash"] not in _WORKER_BACKBONES:
        _WORKER_BACKBONES.clear()
        _WORKER_BACKBONES[wire["hash"]] = backbone_from_wire(wire)
    return _WORKER_BACKBONES[wire["hash"]]


def backbone_to_wire(backbone: nn.Module) -> dict[str, Any]:
    """The backbone as its spec, safetensors bytes of its weights, and their hash."""
    state = {name: tensor.detach().contiguous() for name, tensor in backbone.state_dict().items()}
    return {
        "spec": dataclasses.asdict(backbone_spec(backbone)),
        "weights": save_safetensors(state),
        "hash": weights_hash(backbone),
    }


def backbone_from_wire(wire: dict[str, Any]) -> nn.Module:
    """The backbone rebuilt from its architecture and the sent weights, checked against their hash."""
    spec = BackboneSpec(**{key: tuple(v) if isinstance(v, list) else v for key, v in wire["spec"].items()})
    model = load_backbone(
        spec.name, pretrained=False, image_size=spec.input_size, num_classes=spec.num_classes or None
    )
    try:
        model.load_state_dict(load_safetensors(wire["weights"]), strict=True)
    except RuntimeError as error:
        raise ModelError(
            f"the backbone sent to this worker does not fit {spec.name}: {_first_line(error)}"
        ) from None
    model.backbone_spec = spec
    if weights_hash(model) != wire["hash"]:
        raise ModelError(f"the backbone {spec.name} rebuilt on this worker differs from the driver's")
    return model.eval()


def task_to_wire(task: Task) -> dict[str, Any]:
    """A task as plain values: its description and its splits' uint8 images and labels as numpy arrays."""
    fields = {field.name: getattr(task, field.name) for field in dataclasses.fields(task)}
    for split in ("train", "val"):
        data: ImageTensorDataset = fields[split]
        fields[split] = {"images": data.images.numpy(), "labels": data.labels.numpy()}
    return fields


def task_from_wire(wire: dict[str, Any]) -> Task:
    """The task rebuilt from task_to_wire's values."""
    fields = dict(wire)
    for split in ("train", "val"):
        arrays = fields[split]
        # Arrays from Ray's object store are read-only; torch wants its own memory.
        fields[split] = ImageTensorDataset(
            torch.from_numpy(np.array(arrays["images"])),
            torch.from_numpy(np.array(arrays["labels"])),
            wire["mean"],
            wire["std"],
        )
    return Task(**fields)


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
