"""`edge-smsp adapt`: prune the backbone for a new task (SMSP or a baseline), fine-tune, save."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from edge_smsp.cli.common import (
    add_backbone_arguments,
    add_task_arguments,
    parse_classes,
    print_json,
    ratio_arg,
    show_progress,
)
from edge_smsp.cli.pool_commands import add_pool_argument, pool_path
from edge_smsp.errors import DataError
from edge_smsp.methods import METHODS, POOL_METHODS
from edge_smsp.pool import Pool

if TYPE_CHECKING:  # torch loads only when a command runs, so --help stays fast
    from edge_smsp.data import Task
    from edge_smsp.smsp import AdaptConfig


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `adapt`."""
    parser = subcommands.add_parser(
        "adapt",
        help="prune the backbone for a new task with SMSP (or a baseline) and fine-tune it",
        description="One-shot pruning for a new task: pool similarity (LEEP) -> score mask -> physical pruning "
        "-> a fresh head -> a few fine-tuning iterations -> val accuracy.",
    )
    add_backbone_arguments(parser)
    add_task_arguments(parser, classes=True)
    add_adapt_arguments(parser)
    add_pool_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the adapted model is saved")
    parser.add_argument("--add-to-pool", action="store_true", help="store the adapted model in the pool too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_adapt)


def add_adapt_arguments(parser: argparse.ArgumentParser, *, ratio_required: bool = True) -> None:
    """The adaptation knobs shared by adapt and deploy."""
    if ratio_required:
        parser.add_argument(
            "--ratio", type=ratio_arg, required=True, help="fraction of units removed per group"
        )
    parser.add_argument("--iters", type=int, default=100, help="fine-tuning iterations (default 100)")
    parser.add_argument("--method", choices=METHODS, default="smsp")
    parser.add_argument("--top-k", type=int, default=5, help="pool tasks whose masks are summed (default 5)")
    parser.add_argument(
        "--weighting",
        choices=("uniform", "leep"),
        default="uniform",
        help="sum masks uniformly or weighted by normalised LEEP",
    )
    parser.add_argument(
        "--mask-source",
        choices=("masks", "scores"),
        default="masks",
        help="sum the entries' binary masks (the paper) or their real-valued unit scores",
    )
    parser.add_argument(
        "--round-to", type=int, default=8, help="kept channels rounded to a multiple (1: off)"
    )
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")


def backbone_from_args(args: argparse.Namespace) -> Any:
    """The backbone named on the command line, at the requested input size."""
    from edge_smsp.zoo import default_pretrained, load_backbone

    pretrained = default_pretrained(args.backbone) if args.pretrained is None else args.pretrained
    return load_backbone(
        args.backbone, checkpoint=args.checkpoint, pretrained=pretrained, image_size=args.image_size
    )


def task_from_args(args: argparse.Namespace, backbone: Any, classes: tuple[int, ...] | None = None) -> Task:
    """The new task named by --dataset/--classes, normalised as the backbone expects."""
    from edge_smsp.data import load_task
    from edge_smsp.zoo import backbone_spec

    classes = classes if classes is not None else parse_classes(args.classes)
    if classes is None:
        raise DataError("name the new task's classes with --classes, e.g. --classes 0,3,5")
    spec = backbone_spec(backbone)
    return load_task(
        args.dataset,
        classes,
        data_dir=args.data_dir,
        image_size=args.image_size,
        mean=spec.mean,
        std=spec.std,
        seed=args.seed,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
    )


def config_from_args(args: argparse.Namespace, ratio: float) -> AdaptConfig:
    from edge_smsp.smsp import AdaptConfig

    return AdaptConfig(
        ratio=ratio,
        iters=args.iters,
        method=args.method,
        top_k=args.top_k,
        weighting=args.weighting,
        mask_source=args.mask_source,
        round_to=args.round_to,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
    )


def open_pool_for(args: argparse.Namespace, method: str) -> Pool | None:
    """The pool, opened read-write when the method needs it or the result is stored in it."""
    if method in POOL_METHODS or getattr(args, "add_to_pool", False):
        return Pool(pool_path(args), create=method not in POOL_METHODS)
    return None


def run_adapt(args: argparse.Namespace) -> int:
    from edge_smsp import smsp

    config = config_from_args(args, args.ratio)
    backbone = backbone_from_args(args)
    task = task_from_args(args, backbone)
    pool = open_pool_for(args, config.method)
    try:
        result = smsp.adapt(backbone, pool, task, config, progress=show_progress(args))
        smsp.save_adapted(result, args.out)
        report = result.to_dict()
        report["backbone"] = args.backbone
        report["out"] = str(args.out)
        if args.add_to_pool and pool is not None:
            report["pool_entry"] = smsp.add_to_pool(pool, backbone, result)
    finally:
        if pool is not None:
            pool.close()
    if args.json:
        print_json(report)
    else:
        print(describe_adaptation(report))
    return 0


def describe_adaptation(report: dict[str, Any]) -> str:
    """A few readable lines about one adaptation."""
    lines = [
        f"{report['method']} on {report['task_id']} at ratio {report['ratio']}: "
        f"val accuracy {100 * report['val_accuracy']:.2f}% after {report['iters']} iterations",
        f"params {report['params_before']:,} -> {report['params_after']:,}, "
        f"MACs {report['macs_before']:,} -> {report['macs_after']:,} at {report['image_size']} px",
    ]
    selected = [similar for similar in report["similar_tasks"] if similar["selected"]]
    if selected:
        lines.append(
            "similar pool tasks: "
            + ", ".join(
                f"{similar['task_id']}"
                + (f" (LEEP {similar['leep']:.3f})" if similar["leep"] is not None else "")
                for similar in selected
            )
        )
    seconds = report["seconds"]
    lines.append(
        f"seconds: similarity {seconds['similarity']:.1f}, pruning {seconds['pruning']:.1f}, "
        f"fine-tuning {seconds['finetuning']:.1f}, total {seconds['total']:.1f}"
    )
    if report.get("out"):
        lines.append(f"saved to {report['out']}")
    return "\n".join(lines)
