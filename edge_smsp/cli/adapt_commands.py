"""`edge-smsp adapt`: prune the backbone for a new task (SMSP or a baseline), fine-tune, save."""

from __future__ import annotations

import argparse
from typing import Any

from edge_smsp.cli.args import (
    add_adapt_arguments,
    add_backbone_arguments,
    add_pool_argument,
    add_task_arguments,
    backbone_from_args,
    check_task_args,
    config_from_args,
    open_pool_for,
    task_from_args,
)
from edge_smsp.cli.common import print_json, show_progress
from edge_smsp.cli.converters import out_dir_arg
from edge_smsp.recipe import ADAPT_BATCH_SIZE


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `adapt`."""
    parser = subcommands.add_parser(
        "adapt",
        help="prune the backbone for a new task with SMSP (or a baseline) and fine-tune it",
        description="One-shot pruning for a new task: pool similarity (class prototypes; a sketch search "
        "shortlists large pools) -> probe (of the most similar entries, the one whose features fit the task) "
        "-> score mask -> physical pruning -> weights (that pool entry's, or the backbone's) -> recovery "
        "recipe -> a few fine-tuning iterations -> val accuracy.",
    )
    add_backbone_arguments(parser)
    add_task_arguments(parser, classes=True, default_batch_size=ADAPT_BATCH_SIZE)
    add_adapt_arguments(parser)
    add_pool_argument(parser)
    parser.add_argument(
        "--out", required=True, type=out_dir_arg, metavar="DIR", help="where the adapted model is saved"
    )
    parser.add_argument("--add-to-pool", action="store_true", help="store the adapted model in the pool too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    from edge_smsp import smsp

    config = config_from_args(args)
    check_task_args(args)  # bad input fails here, before torch loads
    pool = open_pool_for(args, config.method)
    try:
        backbone = backbone_from_args(args)
        task = task_from_args(args, backbone)
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
            f"similar pool tasks ({report['similarity']} of {report['candidates']} entries): "
            + ", ".join(
                f"{similar['task_id']}"
                + (f" ({similar['similarity']:.3f})" if similar["similarity"] is not None else "")
                for similar in selected
            )
        )
    if report.get("probed"):
        lines.append(
            "probed for the weights (nearest-mean accuracy of each entry's features): "
            + ", ".join(
                f"{probed['task_id']} {100 * probed['nearest_mean_accuracy']:.1f}%"
                + (" (chosen)" if probed["chosen"] else "")
                for probed in report["probed"]
            )
        )
    steps = ", ".join(report["recovery_steps"]) or "none"
    lines.append(f"weights from the {report['init']}; recipe {report['recipe']} ({steps})")
    lines += [f"note: {note}" for note in report["notes"]]
    seconds = report["seconds"]
    lines.append(
        f"seconds: similarity {seconds['similarity']:.1f}, pruning {seconds['pruning']:.1f}, "
        f"init {seconds['init']:.1f}, fine-tuning {seconds['finetuning']:.1f}, total {seconds['total']:.1f}"
    )
    if report.get("out"):
        lines.append(f"saved to {report['out']}")
    return "\n".join(lines)
