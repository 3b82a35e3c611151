"""Commands `models` (list backbones) and `prune` (one-shot pruning of a backbone, saved for reloading)."""

from __future__ import annotations

import argparse
from typing import Any

from edge_smsp.cli.common import print_json, ratio_arg
from edge_smsp.errors import PruneError

PRUNE_METHODS = ("random", "magnitude")


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
    prune.add_argument(
        "--model", required=True, help="backbone name (see `edge-smsp models`, or any timm name)"
    )
    prune.add_argument("--checkpoint", help="local checkpoint file (timm or plain state dict)")
    prune.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from pre-trained weights (default: yes where bundled offline weights exist)",
    )
    prune.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's own)")
    prune.add_argument(
        "--ratio", type=ratio_arg, required=True, help="fraction of units removed per group, [0, 1)"
    )
    prune.add_argument("--method", choices=PRUNE_METHODS, required=True, help="where unit scores come from")
    prune.add_argument(
        "--round-to", type=int, default=8, help="round kept channel counts to a multiple (1: off)"
    )
    prune.add_argument("--seed", type=int, default=0, help="seed of the random method")
    prune.add_argument("--out", required=True, help="directory for model.safetensors and pruned.json")
    prune.add_argument("--json", action="store_true", help="print one JSON object")
    prune.set_defaults(handler=prune_command)


def models_command(args: argparse.Namespace) -> int:
    """List the backbones the zoo knows."""
    from edge_smsp import zoo

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
    from edge_smsp import zoo
    from edge_smsp.importance import score_units
    from edge_smsp.prune import prune, save_pruned

    if not 0.0 <= args.ratio < 1.0:  # checked before the (slow) model load
        raise PruneError(f"ratio must be in [0, 1), got {args.ratio}")
    if args.round_to < 1:
        raise PruneError(f"--round-to must be >= 1, got {args.round_to}")
    if args.image_size is not None and args.image_size < 1:
        raise PruneError(f"--image-size must be a positive number of pixels, got {args.image_size}")
    pretrained = zoo.default_pretrained(args.model) if args.pretrained is None else args.pretrained
    model = zoo.load_backbone(
        args.model, checkpoint=args.checkpoint, pretrained=pretrained, image_size=args.image_size
    )
    scores = score_units(model, args.method, seed=args.seed)
    pruned, summary = prune(model, scores, args.ratio, round_to=args.round_to)
    meta = {
        "backbone": args.model,
        "checkpoint": args.checkpoint,
        "pretrained": pretrained,
        "method": args.method,
        "ratio": args.ratio,
        "round_to": args.round_to,
        "seed": args.seed,
    }
    out = save_pruned(pruned, args.out, meta)
    report = {
        "model": args.model,
        "ratio": args.ratio,
        "method": args.method,
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
    print(f"  saved to {report['out']}")


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f}M"


def _change(before: int, after: int) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"
