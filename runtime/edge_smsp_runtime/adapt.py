"""`adapt`: the light tier of on-device adaptation (numpy + onnxruntime only), on an adaptable bundle.

The host's recipe (edge_smsp.recovery.recover, then edge_smsp.train.finetune), on the device's images:
1. adaptive BatchNorm over the whole network: every BN layer's running statistics become the average of its
   batch statistics over a seeded class-balanced sample, in batches of 64 (torch's momentum=None);
2. the imprinted classifier: scaled, centred class-prototype directions of the penultimate features, the scale
   fitted by label-smoothed maximum likelihood (skipped when two classes share a prototype);
3. `iters` SGD steps (momentum 0.9, decay 5e-5 on kernels and matrices, cosine schedule, BN in train mode) on
   every parameterised node after a cut tensor (`--trainable-blocks K` picks the bundle's K-th cut, 0 = the
   classifier alone), on the frozen front's outputs at the cut computed once (eval mode) and cached;
4. accuracy on the held-out split with numpy, and again with onnxruntime on the written file.
"""

import math
import os
import time
from typing import Any, Dict, List, Optional

from .bundle import Bundle, adapted_bytes, bundle_dir, load_bundle, write_atomically
from .device import current_rss_mib, peak_rss_mib
from .errors import RuntimeToolError, one_line
from .graph import SGD, cosine_lr, cross_entropy, default_lr
from .imagefolder import MIN_TRAIN_IMAGES, balanced_sample, cap_per_class, load_images, read_task
from .model import file_sha256, import_numpy
from .paths import check_replaceable

BN_BATCH_SIZE = 64  # edge_smsp.recipe.Recipe.bn_batch_size
SAMPLE_SIZE = 512  # edge_smsp.recipe.Recipe.samples
FORWARD_BATCH = 128
SCALE_LABEL_SMOOTHING = 0.1  # edge_smsp.recovery
SCALE_RANGE = (1e-3, 1e3)
# The classifier, the head's 1x1 conv and the last 5 inverted residuals of EfficientNet-Lite0 (its last two
# stages, 1.35 M parameters at r = 0.3). Measured on the demo task (Fashion-MNIST 0,2,4, r = 0.3, 100 iterations
# at batch 128, 600 held-out images), K = 0/1/2/3/4/6: 72.3/77.0/80.2/80.2/80.5/82.3 % at 64 px and
# 66.0/67.8/71.2/72.2/73.3/75.8 % at 32 px (77.5 % at K = 8), for about twice K = 3's training time.
DEFAULT_TRAINABLE_BLOCKS = 6


def check_output_path(out_path: str, bundle_directory: str) -> None:
    """Refuse, before any work, an output the adaptation could not write (or one that is the bundle's model)."""
    directory = os.path.dirname(os.path.abspath(out_path))
    if os.path.isdir(out_path):
        raise RuntimeToolError(f"--out {out_path} is a directory; give the ONNX file to write")
    check_replaceable(out_path, "--out")  # a device, FIFO or socket: the rename would replace the node itself
    existing = directory
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RuntimeToolError(
            f"--out {out_path}: {existing} is a file, not a folder; name a file in a folder"
        )
    if not os.path.isdir(directory):
        raise RuntimeToolError(f"--out: directory {directory} does not exist")
    if os.path.realpath(out_path) == os.path.realpath(os.path.join(bundle_directory, "model.onnx")):
        raise RuntimeToolError("--out must not be the bundle's own model.onnx")
    try:
        os.unlink(write_atomically(out_path, b""))
    except OSError as error:
        raise RuntimeToolError(f"--out: cannot write in {directory}: {one_line(error)}") from None


def adaptive_bn(bundle: Bundle, images: Any) -> int:
    """Every BN layer's running statistics := the mean of its train-mode batch statistics over `images`."""
    np = import_numpy()
    graph = bundle.graph
    indices = list(range(len(graph.nodes)))
    sums = {}  # type: Dict[int, List[Any]]
    batches = 0
    for start in range(0, len(images), BN_BATCH_SIZE):
        chunk = images[start : start + BN_BATCH_SIZE]
        if len(chunk) < 2:  # train-mode BatchNorm cannot normalise a batch of one
            continue
        _, caches = graph.forward({graph.input_name: chunk}, indices, graph.output_name, training=True)
        for index, cache in caches.items():
            mean, var = cache[4]
            if index in sums:
                sums[index][0] += mean
                sums[index][1] += var
            else:
                sums[index] = [mean.astype(np.float64), var.astype(np.float64)]
        batches += 1
    for index, (mean_sum, var_sum) in sums.items():
        node = graph.nodes[index]
        bundle.params[node["inputs"][3]][...] = mean_sum / batches
        bundle.params[node["inputs"][4]][...] = var_sum / batches
    return len(sums)


def run_to(bundle: Bundle, images: Any, indices: List[int], feed: str, target: str) -> Any:
    """Eval-mode values of `target` for every image, in batches."""
    np = import_numpy()
    parts = []
    for start in range(0, len(images), FORWARD_BATCH):
        value, _ = bundle.graph.forward({feed: images[start : start + FORWARD_BATCH]}, indices, target)
        parts.append(np.array(value, dtype=np.float32, copy=False))
    return np.concatenate(parts)


def _fitted_scale(projections: Any, labels: Any) -> float:
    """The scale s minimising label-smoothed cross-entropy of s * projections: golden-section on log s."""
    np = import_numpy()
    count, classes = projections.shape

    def loss(log_scale: float) -> float:
        logits = math.exp(log_scale) * projections
        logits = logits - logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll = -log_probs[np.arange(count), labels].mean()
        smooth = -log_probs.mean(axis=1).mean()
        return float((1 - SCALE_LABEL_SMOOTHING) * nll + SCALE_LABEL_SMOOTHING * smooth)

    low, high = (math.log(bound) for bound in SCALE_RANGE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(60):
        if loss_left < loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return float(math.exp((low + high) / 2.0))


def imprint(bundle: Bundle, features: Any, labels: Any) -> Optional[float]:
    """The classifier := s * u_k (x - c), u_k the unit direction of class mean k from the mean of the class
    means c; returns s, or None when two classes' prototypes coincide (the head is left as it is)."""
    np = import_numpy()
    head = bundle.spec["classifier"]
    classes = head["num_classes"]
    inputs = features.reshape(len(features), -1).astype(np.float64)
    means = np.stack([inputs[labels == label].mean(axis=0) for label in range(classes)])
    centre = means.mean(axis=0)
    offsets = means - centre
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    if np.any(norms <= 0):
        return None
    directions = offsets / norms
    scale = _fitted_scale((inputs - centre) @ directions.T, labels)
    weight = bundle.params[head["weight"]]
    weight[...] = (scale * directions).T if not head["trans_b"] else scale * directions
    if head["bias"]:
        bundle.params[head["bias"]][...] = -scale * directions @ centre
    return scale


def _accuracy(logits: Any, labels: Any) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def _onnxruntime_logits(path: str, images: Any, threads: int, providers: List[str]) -> Any:
    from .model import open_model

    np = import_numpy()
    _, session, _ = open_model(path, "onnxruntime", providers, threads)
    model_input = session.inputs()[0]
    fixed = model_input["shape"][0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else FORWARD_BATCH
    parts = []
    for start in range(0, len(images), step):
        parts.append(np.asarray(session.run({model_input["name"]: images[start : start + step]})[0]))
    return np.concatenate(parts).astype(np.float32)


def run_adapt(
    model_path: str,
    data_dir: str,
    *,
    iters: int,
    out_path: str,
    trainable_blocks: Optional[int] = None,
    batch_size: int = 128,
    lr: Optional[float] = None,
    seed: int = 0,
    sample: int = SAMPLE_SIZE,
    val_fraction: float = 0.2,
    threads: int = 0,
    providers: Optional[List[str]] = None,
    max_per_class: Optional[int] = None,
) -> Dict[str, Any]:
    """Adapt the bundle's model to the image folder's task and write one ONNX file; returns the report.
    `max_per_class` keeps at most that many training and validation images of each class (seeded): the host
    sizes it to the device's memory budget."""
    np = import_numpy()
    seconds = {}  # type: Dict[str, float]
    started = time.perf_counter()
    check_output_path(out_path, bundle_dir(model_path))
    bundle = load_bundle(model_path)
    cuts = bundle.cuts
    blocks = min(DEFAULT_TRAINABLE_BLOCKS, len(cuts) - 1) if trainable_blocks is None else trainable_blocks
    if not 0 <= blocks < len(cuts):
        raise RuntimeToolError(
            f"--trainable-blocks must be from 0 to {len(cuts) - 1} for this bundle, got {blocks}"
        )
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
    preprocessing = bundle.spec["preprocessing"]
    train_images, train_labels = load_images(train_samples, preprocessing)
    val_images, val_labels = load_images(val_samples, preprocessing)
    seconds["load"] = time.perf_counter() - started
    load_rss = current_rss_mib()

    graph = bundle.graph
    everything = list(range(len(graph.nodes)))
    started = time.perf_counter()
    picked = balanced_sample(train_labels, sample, seed)
    sample_images, sample_labels = train_images[picked], train_labels[picked]
    bn_layers = adaptive_bn(bundle, sample_images)
    seconds["adaptive_bn"] = time.perf_counter() - started

    started = time.perf_counter()
    head = bundle.spec["classifier"]
    features_at = graph.producer[head["features"]]
    features = run_to(
        bundle, sample_images, everything[: features_at + 1], graph.input_name, head["features"]
    )
    scale = imprint(bundle, features, sample_labels)
    del features, sample_images
    seconds["imprint"] = time.perf_counter() - started

    started = time.perf_counter()
    cut = cuts[blocks]
    front, tail = graph.split(cut)
    train_cache = run_to(bundle, train_images, front, graph.input_name, cut) if front else train_images
    val_cache = run_to(bundle, val_images, front, graph.input_name, cut) if front else val_images
    cache_bytes = int(train_cache.nbytes + val_cache.nbytes) if front else 0
    del train_images
    seconds["front_cache"] = time.perf_counter() - started

    started = time.perf_counter()
    imprinted = _accuracy(run_to(bundle, val_cache, tail, cut, graph.output_name), val_labels)
    seconds["evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    trained = graph.trainable(tail)
    batch = min(batch_size, len(train_labels))
    base_lr = default_lr(batch) if lr is None else lr
    optimizer = SGD(bundle.params, trained)
    rng = np.random.RandomState(seed)
    pending = np.empty(0, dtype=np.int64)
    losses = []  # type: List[float]
    for step in range(iters):
        while len(pending) < batch:  # back-to-back shuffled epochs, as the host's _index_stream
            pending = np.concatenate([pending, rng.permutation(len(train_labels))])
        chosen, pending = pending[:batch], pending[batch:]
        logits, caches = graph.forward(
            {cut: train_cache[chosen]}, tail, graph.output_name, training=True, keep=True
        )
        loss, grad = cross_entropy(logits, train_labels[chosen])
        if not math.isfinite(loss):
            raise RuntimeToolError(f"training diverged at iteration {step + 1} (loss {loss}); lower --lr")
        stats = {
            index: cache
            for index, cache in caches.items()
            if graph.nodes[index]["op"] == "BatchNormalization"
        }
        grads = graph.backward(tail, caches, graph.output_name, grad, trained)
        graph.update_running(stats)
        optimizer.step(grads, cosine_lr(base_lr, step, iters))
        losses.append(loss)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    numpy_logits = run_to(bundle, val_cache, tail, cut, graph.output_name)
    accuracy = _accuracy(numpy_logits, val_labels)
    seconds["evaluate"] += time.perf_counter() - started

    ort_logits = write_verified(bundle, names, out_path, val_images, threads, providers, seconds)
    parameters = int(sum(bundle.params[name].size for name in trained))
    return {
        "command": "adapt",
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
        "trainable_blocks": blocks,
        "cut": cut,
        "cuts_available": len(cuts),
        "parameters_trained": parameters,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "accuracy_imprinted": imprinted,
        "accuracy": accuracy,
        "accuracy_onnxruntime": _accuracy(ort_logits, val_labels),
        "agreement": float((ort_logits.argmax(axis=1) == numpy_logits.argmax(axis=1)).mean()),
        "max_abs_logit_diff": float(np.abs(ort_logits - numpy_logits).max()),
        "cache_bytes": cache_bytes,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "rss_after_load_mib": load_rss,
        "peak_rss_mib": peak_rss_mib(),
        "out_path": os.path.abspath(out_path),
        "out_sha256": file_sha256(out_path),
        "out_bytes": os.path.getsize(out_path),
    }


def write_verified(bundle, names, out_path, val_images, threads, providers, seconds):
    # type: (Any, List[str], str, Any, int, Optional[List[str]], Dict[str, float]) -> Any
    """Write the bundle's model with the adapted `names` to a temp file beside `out_path`, run it in onnxruntime
    over `val_images` (the logits are returned), and only then rename it into place; nothing is left on failure."""
    started = time.perf_counter()
    out_path = os.path.realpath(out_path)  # a symlink is written through, as the host's writer does
    try:
        temporary = write_atomically(out_path, adapted_bytes(bundle, names))
    except OSError as error:  # a full disk: said of --out, with what to do
        raise RuntimeToolError(
            f"cannot write {out_path}: {error.strerror or error}; free space there or name another --out"
        ) from None
    seconds["write"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        try:
            ort_logits = _onnxruntime_logits(
                temporary, val_images, threads, list(providers or ["CPUExecutionProvider"])
            )
        except RuntimeToolError:
            raise
        except Exception as error:
            raise RuntimeToolError(f"onnxruntime cannot run the adapted model: {one_line(error)}") from None
        seconds["verify"] = time.perf_counter() - started
        os.replace(temporary, out_path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return ort_logits
