"""Commands `models` (list backbones) and `prune` (one-shot pruning of a backbone, saved for reloading)."""

from __future__ import annotations

import argparse
from typing import Any

from edge_smsp.cli.args import (
    add_backbone_arguments,
    add_image_size_argument,
    add_round_to_argument,
    add_seed_argument,
    backbone_from_args,
    pretrained_from_args,
)
from edge_smsp.cli.converters import out_dir_arg, ratio_arg
from edge_smsp.cli.output import print_json
from edge_smsp.core.address_space import check_address_space
from edge_smsp.core.paths import safe_text
from edge_smsp.criteria import criterion_names


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    models = subcommands.add_parser("models", help="list the first-class and bundled backbones")
    models.add_argument("--json", action="store_true", help="print one JSON object")
    models.set_defaults(handler=models_command)

    prune = subcommands.add_parser(
        "prune",
        help="prune a backbone at a ratio and save the smaller model",
        description="Remove the lowest-scoring units (coupled channels, heads, FFN nodes) of every group.",
    )
    add_backbone_arguments(prune, flag="--model", required=True)
    add_image_size_argument(prune, None, "input size in pixels (default: the backbone's own)")
    prune.add_argument(
        "--ratio", type=ratio_arg, required=True, help="fraction of units removed per group, [0, 1)"
    )
    prune.add_argument(
        "--criterion",
        "--method",
        dest="criterion",
        choices=criterion_names(batches=False),
        required=True,
        help="how units are scored (--method: its old name, kept for one release)",
    )
    add_round_to_argument(prune, help_text="round kept channel counts to a multiple, 1 to 1,024 (1: off)")
    add_seed_argument(prune, help_text="seed of the random method")
    prune.add_argument(
        "--out", required=True, type=out_dir_arg, help="directory for model.safetensors and pruned.json"
    )
    prune.add_argument("--json", action="store_true", help="print one JSON object")
    prune.set_defaults(handler=prune_command)


def models_command(args: argparse.Namespace) -> int:
    """List the backbones the zoo knows."""
    from edge_smsp.models import zoo

    models = zoo.list_models()
    if args.json:
        print_json({"models": models})
        return 0
    print(f"{'name':<26} {'input':>5}  {'first-class':<11}  pre-trained weights offline")
    for entry in models:
        offline = "yes (bundled)" if entry.get("offline_weights") else "no (download, or --checkpoint)"
        first_class = "yes" if entry.get("first_class") else "no"
        print(f"{entry.get('name', '?'):<26} {entry.get('input_size', '?'):>5}  {first_class:<11}  {offline}")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    """Load the backbone, score its units, prune, save, print the summary."""
    check_address_space("prune")  # before torch loads: under a low limit its import alone fails
    from edge_smsp.criteria import score_units
    from edge_smsp.models.prune import prune
    from edge_smsp.models.pruned_model import check_model_dir_replaceable, save_pruned
    from edge_smsp.models.units import model_input_size
    from edge_smsp.training import host_memory

    check_model_dir_replaceable(args.out)  # before the work, not after it
    model = backbone_from_args(args)
    size = model_input_size(model, args.image_size)
    host_memory.check_fits(host_memory.prune_bytes(model, size), "prune", size)  # not OOM-killed at 4096 px
    scores = score_units(model, args.criterion, seed=args.seed)
    pruned, summary = prune(model, scores, args.ratio, round_to=args.round_to)
    meta = {
        "backbone": args.backbone,
        "checkpoint": args.checkpoint,
        "pretrained": pretrained_from_args(args),
        "method": args.criterion,
        "ratio": args.ratio,
        "round_to": args.round_to,
        "seed": args.seed,
    }
    out = save_pruned(pruned, args.out, meta)
    report = {
        "model": args.backbone,
        "ratio": args.ratio,
        "method": args.criterion,
        "image_size": summary.image_size,
        "params_before": summary.params_before,
        "params_after": summary.params_after,
        "macs_before": summary.macs_before,
        "macs_after": summary.macs_after,
        "groups": summary.groups,
        "out": str(out),
    }
    if args.json:
        print_json(report)
    else:
        _print_summary(report)
    return 0


def _print_summary(report: dict[str, Any]) -> None:
    params_before, params_after = report["params_before"], report["params_after"]
    macs_before, macs_after = report["macs_before"], report["macs_after"]
    print(f"pruned {report['model']} at ratio {report['ratio']:g} ({report['method']} scores)")
    print(
        f"  params  {_millions(params_before)} -> {_millions(params_after)}  ({_change(params_before, params_after)})"
    )
    print(
        f"  MACs    {_millions(macs_before)} -> {_millions(macs_after)}  ({_change(macs_before, macs_after)})"
        f" at {report['image_size']} px"
    )
    by_kind: dict[str, list[int]] = {}
    for group in report["groups"].values():
        totals = by_kind.setdefault(group["kind"], [0, 0, 0])
        totals[0] += 1
        totals[1] += group["kept"]
        totals[2] += group["size"]
    for kind, (count, kept, size) in by_kind.items():
        print(f"  {kind:<8} {count} groups, kept {kept} of {size} units")
    print(f"  saved to {safe_text(report['out'])}")


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f}M"


def _change(before: int, after: int) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"
