"""Seconds per fine-tuning iteration (batch 32, SGD, 1 thread): NCHW vs channels_last, unpruned and pruned.

Usage: .venv/bin/python -m benchmarks.research.train_speed --model efficientnet_lite0 --size 32 --size 64
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from benchmarks.research import common


def seconds_per_iter(model, size: int, memory_format, iters: int = 30, batch: int = 32) -> float:
    """Median-free simple mean over `iters` steps after 5 warm-up steps."""
    model = copy.deepcopy(model).train().to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 3, (batch,))
    for step in range(iters + 5):
        if step == 5:
            started = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / iters


def main() -> None:
    from edge_smsp.models import prune, zoo
    from edge_smsp.models import unit_scores as importance

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, action="append")
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    common.single_thread()
    for size in args.size or [32, 64]:
        pretrained = args.model == "efficientnet_lite0"
        base = zoo.load_backbone(args.model, pretrained=pretrained, num_classes=3, image_size=size)
        for ratio in args.ratio or [0.0, 0.5, 0.7]:
            model = base if ratio == 0 else prune.prune(base, importance.unit_l1_norms(base), ratio)[0]
            timings = {
                name: min(seconds_per_iter(model, size, fmt) for _ in range(args.repeats))
                for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last))
            }
            common.log(
                f"{args.model} {size}px r={ratio:g}: NCHW {timings['nchw']:.3f} s/iter, channels_last "
                f"{timings['channels_last']:.3f} s/iter ({timings['nchw'] / timings['channels_last']:.2f}x)"
            )


if __name__ == "__main__":
    main()
