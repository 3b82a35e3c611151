"""`edge-smsp adapt`: prune the backbone for a new task (SMSP or a baseline), fine-tune, save."""

from __future__ import annotations

import argparse
import shutil
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
from edge_smsp.cli.converters import out_dir_arg
from edge_smsp.cli.output import print_json, show_progress
from edge_smsp.core.address_space import check_address_space
from edge_smsp.core.paths import safe_text
from edge_smsp.training.recipe import ADAPT_BATCH_SIZE


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
    check_task_args(args)  # bad input (the classes, the data's files, the pool) fails before torch loads
    check_address_space("adapt")
    pool = open_pool_for(args, args.method)
    try:
        if args.add_to_pool and pool is not None:
            pool.check_writable()  # a read-only pool refuses now, before the work and before --out is written
        from edge_smsp import adaptation
        from edge_smsp.models.pruned_model import check_model_dir_replaceable
        from edge_smsp.pool import build as pool_build

        check_model_dir_replaceable(args.out)  # before the work, not after it

        config = config_from_args(args)
        backbone = backbone_from_args(args)
        _check_host_memory(args, config, backbone)  # before the task's images are loaded at that size
        task = task_from_args(args, backbone)
        replacing = (
            pool_build.entry_before(pool, backbone, task, config) if args.add_to_pool and pool else None
        )
        result = adaptation.adapt(backbone, pool, task, config, progress=show_progress(args))
        created = not args.out.exists()
        pool_build.save_adapted(result, args.out)
        report = result.to_dict()
        report["backbone"] = args.backbone
        report["out"] = str(args.out)
        if args.add_to_pool and pool is not None:
            try:
                report["pool_entry"] = pool_build.add_to_pool(pool, backbone, result, replacing=replacing)
            except BaseException:  # --add-to-pool is all or nothing: no model folder the pool lacks
                if created:
                    shutil.rmtree(args.out, ignore_errors=True)
                raise
    finally:
        if pool is not None:
            pool.close()
    if args.json:
        print_json(report)
    else:
        print(describe_adaptation(report))
    return 0


def _check_host_memory(args: argparse.Namespace, config: Any, backbone: Any) -> None:
    """Refuse in one line an adaptation this machine's memory cannot hold (a 4096 px task), before any work."""
    from edge_smsp.data.tasks import DEFAULT_TRAIN_PER_CLASS, DEFAULT_VAL_PER_CLASS
    from edge_smsp.models.units import model_input_size
    from edge_smsp.training import host_memory

    size = model_input_size(backbone, args.image_size)
    per_class = (args.train_per_class or DEFAULT_TRAIN_PER_CLASS) + (
        args.val_per_class or DEFAULT_VAL_PER_CLASS
    )
    images = per_class * len(check_task_args(args))
    needed = host_memory.adapt_bytes(backbone, size, images, config.batch_size, config.micro_batch)
    host_memory.check_fits(needed, "adapt", size)


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
        lines.append(f"saved to {safe_text(report['out'])}")
    return "\n".join(lines)
