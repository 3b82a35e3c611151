"""`adapt --tier torch`: the host's whole recipe on a device that has torch but neither edge-smsp nor timm.

The model travels as the light tier's adaptable bundle (graph.json + params.npz + model.onnx); `TorchGraph`
interprets its ONNX-subset nodes as torch.nn.functional calls, so nothing is pickled, traced or scripted and no
model class is needed. Every call exists since torch 1.4 (F.conv2d, F.batch_norm, F.hardtanh, F.max_pool2d,
F.adaptive_avg_pool2d, F.linear, F.pad, torch.clamp/sigmoid/matmul/addmm, torch.optim.SGD, LambdaLR);
channels_last (torch >= 1.5) is used when present.

The recipe is edge_smsp.training.recovery + edge_smsp.training.finetune's:
1. adaptive BatchNorm: every BN layer's running statistics := the average of its batch statistics over a seeded
   class-balanced sample, in batches of 64 (torch's momentum=None);
2. the imprinted classifier (the light tier's `imprint`, on the penultimate features computed in torch);
3. `iters` SGD steps on EVERY parameter (momentum 0.9, weight decay 5e-5 on kernels and matrices only, the
   cosine LambdaLR, BN in train mode), batches drawn as the host draws them (back-to-back torch.randperm epochs
   from a seeded generator);
4. accuracy on the held-out split in torch, the weights written back into model.onnx's bytes (bundle.py), and
   the accuracy of that file in onnxruntime.
"""

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from .errors import RuntimeToolError
from .graph import SGD_MOMENTUM, SGD_WEIGHT_DECAY, default_lr
from .model import import_numpy

OLDEST_TORCH = (1, 4)
TORCH_OPS = (
    "Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "Add", "Mul", "GlobalAveragePool", "Flatten",
    "Reshape", "Identity", "Dropout", "Gemm", "MatMul", "MaxPool",
)  # fmt: skip


def import_torch() -> Any:
    """torch, or a one-line error naming what to install (or to use the light tier)."""
    try:
        import torch
    except ImportError:
        raise RuntimeToolError(
            "--tier torch needs PyTorch on the device (pip install torch, or JetPack's wheel); "
            "--tier light needs only numpy and onnxruntime"
        ) from None
    if _version_tuple(torch.__version__) < OLDEST_TORCH:
        raise RuntimeToolError(f"--tier torch needs torch >= 1.4, found {torch.__version__}")
    return torch


def torch_version() -> Optional[str]:
    """torch's version string read from torch/version.py, without importing torch (seconds and ~100s of MiB
    on a board); None when torch is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            with open(os.path.join(folder, "version.py")) as handle:
                for line in handle:
                    if line.startswith("__version__"):
                        return line.split("=", 1)[1].strip().strip("'\"")
        except OSError:
            continue
    return "unknown"


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _attr(node: Dict[str, Any], name: str, default: Any) -> Any:
    return node.get("attrs", {}).get(name, default)


class TorchGraph:
    """A bundle's nodes run as torch ops. Learnable initializers (weights, biases, BN scales and shifts) are
    leaf tensors with requires_grad, BN running statistics are tensors updated in place, the rest constants."""

    def __init__(self, torch: Any, graph: Any, channels_last: bool = False):
        unknown = sorted({node["op"] for node in graph.nodes} - set(TORCH_OPS))
        if unknown:
            raise RuntimeToolError(f"the graph has operators the torch tier lacks: {', '.join(unknown)}")
        self.torch = torch
        self.graph = graph
        self.learnable = graph.trainable(range(len(graph.nodes)))
        learnable = set(self.learnable)
        self.channels_last = channels_last and hasattr(torch, "channels_last")
        self.tensors = {}  # type: Dict[str, Any]
        for name, array in graph.params.items():
            tensor = torch.from_numpy(import_numpy().array(array, copy=True))
            if tensor.is_floating_point() and tensor.dim() == 4 and self.channels_last:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            if name in learnable:
                tensor.requires_grad_(True)
            self.tensors[name] = tensor
        self.bn_momentum = None  # type: Optional[float]  # overrides every BN's (adaptive BN's average)

    def parameters(self, names: Optional[Sequence[str]] = None) -> List[Any]:
        return [self.tensors[name] for name in (self.learnable if names is None else names)]

    def write_back(self, params: Dict[str, Any]) -> None:
        """Every tensor's current values into the bundle's numpy parameters (what bundle.py writes out)."""
        with self.torch.no_grad():
            for name, tensor in self.tensors.items():
                if tensor.is_floating_point():
                    params[name][...] = tensor.detach().contiguous().numpy()

    def input(self, array: Any) -> Any:
        tensor = self.torch.from_numpy(array)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=self.torch.channels_last)
        return tensor

    def forward(
        self, feeds: Dict[str, Any], indices: Sequence[int], target: str, training: bool = False
    ) -> Any:
        env = dict(feeds)
        for index in indices:
            node = self.graph.nodes[index]
            inputs = [self._value(name, env) for name in node["inputs"]]
            env[node["outputs"][0]] = self._run(node, inputs, training)
        if target not in env:
            raise RuntimeToolError(f"tensor {target!r} was not computed")
        return env[target]

    def _value(self, name: str, env: Dict[str, Any]) -> Any:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.tensors:
            return self.tensors[name]
        raise RuntimeToolError(f"tensor {name!r} is neither computed nor a parameter")

    def _run(self, node: Dict[str, Any], inputs: List[Any], training: bool) -> Any:
        torch = self.torch
        F = torch.nn.functional
        op = node["op"]
        x = inputs[0]
        if op == "Conv":
            if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
                raise RuntimeToolError("Conv: dilation other than 1 is not supported")
            x, padding = _padded(F, x, _attr(node, "pads", [0, 0, 0, 0]), 0.0)
            bias = inputs[2] if len(inputs) > 2 else None
            stride = tuple(_attr(node, "strides", [1, 1]))
            return F.conv2d(x, inputs[1], bias, stride, padding, 1, int(_attr(node, "group", 1)))
        if op == "BatchNormalization":
            momentum = self.bn_momentum
            if momentum is None:
                momentum = 1.0 - float(_attr(node, "momentum", 0.9))
            return F.batch_norm(
                x, inputs[3], inputs[4], inputs[1], inputs[2], training, momentum,
                float(_attr(node, "epsilon", 1e-5)),
            )  # fmt: skip
        if op == "Relu":
            return F.relu(x)
        if op == "Clip":
            low, high = _attr(node, "min", None), _attr(node, "max", None)
            if len(inputs) > 1 and inputs[1] is not None:
                low = float(inputs[1])
            if len(inputs) > 2 and inputs[2] is not None:
                high = float(inputs[2])
            if low is not None and high is not None:
                return F.hardtanh(x, float(low), float(high))  # ReLU6's gradient mask, as the host's
            return torch.clamp(x, min=low, max=high)
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "Add":
            return x + inputs[1]
        if op == "Mul":
            return x * inputs[1]
        if op == "GlobalAveragePool":
            return F.adaptive_avg_pool2d(x, 1)
        if op == "Flatten":
            axis = int(_attr(node, "axis", 1))
            leading = 1
            for size in x.shape[:axis]:
                leading *= int(size)
            return x.reshape(leading, -1)
        if op == "Reshape":
            shape = [int(value) for value in inputs[1].tolist()]
            return x.reshape([int(x.shape[i]) if v == 0 else v for i, v in enumerate(shape)])
        if op in ("Identity", "Dropout"):
            return x
        if op == "Gemm":
            a = x.t() if _attr(node, "transA", 0) else x
            b = inputs[1].t() if _attr(node, "transB", 0) else inputs[1]
            y = float(_attr(node, "alpha", 1.0)) * torch.matmul(a, b)
            if len(inputs) > 2 and inputs[2] is not None:
                y = y + float(_attr(node, "beta", 1.0)) * inputs[2]
            return y
        if op == "MatMul":
            return torch.matmul(x, inputs[1])
        if op == "MaxPool":
            if _attr(node, "ceil_mode", 0) or any(d != 1 for d in _attr(node, "dilations", [1, 1])):
                raise RuntimeToolError("MaxPool: ceil_mode and dilation are not supported")
            x, padding = _padded(F, x, _attr(node, "pads", [0, 0, 0, 0]), -float("inf"))
            kernel = tuple(_attr(node, "kernel_shape", [1, 1]))
            return F.max_pool2d(x, kernel, tuple(_attr(node, "strides", [1, 1])), padding)
        raise RuntimeToolError(f"the torch tier lacks operator {op}")


def _padded(F: Any, x: Any, pads: Sequence[int], value: float) -> Any:
    """ONNX pads [top, left, bottom, right]: symmetric ones go to the op, others to an explicit F.pad."""
    top, left, bottom, right = [int(p) for p in pads]
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, [left, right, top, bottom], value=value), (0, 0)


def _index_stream(torch: Any, size: int, batch: int, generator: Any) -> Any:
    """edge_smsp.training.finetune._index_stream: back-to-back shuffled epochs."""
    pending = torch.zeros(0, dtype=torch.int64)
    while True:
        while len(pending) < batch:
            pending = torch.cat([pending, torch.randperm(size, generator=generator)])
        yield pending[:batch]
        pending = pending[batch:]


def _logits(net: TorchGraph, images: Any, batch: int = 128) -> Any:
    np = import_numpy()
    graph = net.graph
    indices = list(range(len(graph.nodes)))
    parts = []
    with net.torch.no_grad():
        for start in range(0, len(images), batch):
            value = net.forward({graph.input_name: net.input(images[start : start + batch])}, indices,
                                graph.output_name)  # fmt: skip
            parts.append(value.detach().numpy().astype(np.float32))
    return np.concatenate(parts)


def adaptive_bn(net: TorchGraph, images: Any, batch: int) -> int:
    """Running statistics := the mean of the batch statistics of `images` in batches of `batch` (the host's
    momentum=None: the k-th batch enters with momentum 1/k)."""
    graph = net.graph
    indices = list(range(len(graph.nodes)))
    count = 0
    with net.torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            if len(chunk) < 2:
                continue
            count += 1
            net.bn_momentum = 1.0 / count
            net.forward({graph.input_name: net.input(chunk)}, indices, graph.output_name, training=True)
    net.bn_momentum = None
    return len(graph.batchnorms()) if count else 0


def finetune(
    net: TorchGraph, images: Any, labels: Any, *, iters: int, batch: int, lr: float, seed: int
) -> List[float]:
    """The host's finetune: every parameter, SGD with decay on kernels and matrices, cosine LambdaLR, BN in
    train mode (kept in eval mode for a batch of one)."""
    torch = net.torch
    graph = net.graph
    indices = list(range(len(graph.nodes)))
    decayed = [name for name in net.learnable if net.tensors[name].dim() > 1]
    others = [name for name in net.learnable if net.tensors[name].dim() <= 1]
    groups = [
        {"params": net.parameters(decayed), "weight_decay": SGD_WEIGHT_DECAY},
        {"params": net.parameters(others), "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=SGD_MOMENTUM)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / iters))
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    all_images, all_labels = torch.from_numpy(images), torch.from_numpy(labels.astype("int64"))
    losses = []  # type: List[float]
    stream = _index_stream(torch, len(labels), batch, generator)
    for step in range(iters):
        chosen = next(stream)
        optimizer.zero_grad()
        logits = net.forward({graph.input_name: net.input(all_images[chosen].numpy())}, indices,
                             graph.output_name, training=batch > 1)  # fmt: skip
        loss = torch.nn.functional.cross_entropy(logits, all_labels[chosen])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeToolError(f"training diverged at iteration {step + 1} (loss {value}); lower --lr")
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(value)
    return losses


def run_torch_adapt(
    model_path: str,
    data_dir: str,
    *,
    iters: int,
    out_path: str,
    batch_size: int = 128,
    lr: Optional[float] = None,
    seed: int = 0,
    sample: int = 512,
    val_fraction: float = 0.2,
    threads: int = 0,
    providers: Optional[List[str]] = None,
    max_per_class: Optional[int] = None,
) -> Dict[str, Any]:
    """The torch tier (module doc); the report has the light tier's keys, with `tier: "torch"`."""
    from .adapt import BN_BATCH_SIZE, _accuracy, check_output_path, imprint, write_verified
    from .bundle import bundle_dir, load_bundle
    from .device import current_rss_mib, peak_rss_mib
    from .imagefolder import MIN_TRAIN_IMAGES, balanced_sample, cap_per_class, load_images, read_task
    from .model import file_sha256

    np = import_numpy()
    seconds = {}  # type: Dict[str, float]
    started = time.perf_counter()
    check_output_path(out_path, bundle_dir(model_path))
    torch = import_torch()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    bundle = load_bundle(model_path)
    names, train_samples, val_samples = read_task(data_dir, val_fraction, seed)
    if max_per_class is not None:
        train_samples = cap_per_class(train_samples, max(max_per_class, MIN_TRAIN_IMAGES), seed)
        val_samples = cap_per_class(val_samples, max_per_class, seed + 1)
    classes = bundle.spec["classifier"]["num_classes"]
    if len(names) != classes:
        raise RuntimeToolError(
            f"the bundle's classifier has {classes} outputs but {data_dir} has {len(names)} classes: "
            f"make the bundle for {len(names)} classes"
        )
    train_images, train_labels = load_images(train_samples, bundle.spec["preprocessing"])
    val_images, val_labels = load_images(val_samples, bundle.spec["preprocessing"])
    seconds["load"] = time.perf_counter() - started
    load_rss = current_rss_mib()

    graph = bundle.graph
    grouped = any(n["op"] == "Conv" and _attr(n, "group", 1) > 1 for n in graph.nodes)
    net = TorchGraph(torch, graph, channels_last=grouped)  # the host's fast_memory_format
    started = time.perf_counter()
    picked = balanced_sample(train_labels, sample, seed)
    bn_layers = adaptive_bn(net, train_images[picked], BN_BATCH_SIZE)
    seconds["adaptive_bn"] = time.perf_counter() - started

    started = time.perf_counter()
    head = bundle.spec["classifier"]
    features_at = graph.producer[head["features"]]
    with torch.no_grad():
        features = np.concatenate([
            net.forward({graph.input_name: net.input(train_images[picked][s : s + 128])},
                        range(features_at + 1), head["features"]).numpy()
            for s in range(0, len(picked), 128)
        ])  # fmt: skip
    net.write_back(bundle.params)
    scale = imprint(bundle, features, train_labels[picked])
    with torch.no_grad():
        for name in (head["weight"], head["bias"]):
            if name:
                net.tensors[name].copy_(torch.from_numpy(bundle.params[name]))
    del features
    seconds["imprint"] = time.perf_counter() - started

    started = time.perf_counter()
    imprinted = _accuracy(_logits(net, val_images), val_labels)
    seconds["evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    batch = min(batch_size, len(train_labels))
    base_lr = default_lr(batch) if lr is None else lr
    losses = (
        finetune(net, train_images, train_labels, iters=iters, batch=batch, lr=base_lr, seed=seed)
        if iters
        else []
    )
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    torch_logits = _logits(net, val_images)
    accuracy = _accuracy(torch_logits, val_labels)
    seconds["evaluate"] += time.perf_counter() - started

    net.write_back(bundle.params)
    ort_logits = write_verified(bundle, names, out_path, val_images, threads, providers, seconds)
    cuts = bundle.cuts
    return {
        "command": "adapt",
        "tier": "torch",
        "torch_version": torch.__version__,
        "model_path": os.path.abspath(model_path),
        "data": os.path.abspath(data_dir),
        "classes": names,
        "train_images": int(len(train_labels)),
        "val_images": int(len(val_labels)),
        "max_per_class": max_per_class,
        "iters": iters,
        "batch_size": batch,
        "lr": base_lr,
        "seed": seed,
        "sample": int(len(picked)),
        "bn_layers": bn_layers,
        "head_scale": scale,
        "trainable_blocks": len(cuts) - 1,  # everything: the last cut is the input
        "cut": graph.input_name,
        "cuts_available": len(cuts),
        "parameters_trained": int(sum(bundle.params[name].size for name in net.learnable)),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "accuracy_imprinted": imprinted,
        "accuracy": accuracy,
        "accuracy_onnxruntime": _accuracy(ort_logits, val_labels),
        "agreement": float((ort_logits.argmax(axis=1) == torch_logits.argmax(axis=1)).mean()),
        "max_abs_logit_diff": float(np.abs(ort_logits - torch_logits).max()),
        "cache_bytes": 0,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "rss_after_load_mib": load_rss,
        "peak_rss_mib": peak_rss_mib(),
        "out_path": os.path.abspath(out_path),
        "out_sha256": file_sha256(out_path),
        "out_bytes": os.path.getsize(out_path),
    }
