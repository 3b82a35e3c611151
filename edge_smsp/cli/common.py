"""Helpers shared by the command modules: JSON output and argument groups used by several commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def print_json(payload: Any) -> None:
    """One JSON object on stdout."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, never under --json."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def ratio_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    return value


def add_backbone_arguments(parser: argparse.ArgumentParser, flag: str = "--backbone") -> None:
    """--backbone/--checkpoint/--pretrained: which pre-trained model to start from."""
    parser.add_argument(
        flag,
        dest="backbone",
        default="efficientnet_lite0",
        metavar="NAME",
        help="timm model name (default: efficientnet_lite0 with bundled ImageNet weights)",
    )
    parser.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="local weights (timm or state dict)"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="load pre-trained weights (default: yes for bundled backbones, else random init)",
    )


def add_task_arguments(
    parser: argparse.ArgumentParser,
    *,
    classes: bool,
    default_classes: str | None = None,
    default_image_size: int | None = 64,
    image_size_help: str = "input resolution (default 64)",
) -> None:
    """Dataset, image size, batch size, seed and data dir, shared by pool build, adapt and deploy."""
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | imagefolder | cifar100")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset's files are")
    if classes:
        default_note = f" (default {default_classes})" if default_classes else ""
        parser.add_argument(
            "--classes",
            default=default_classes,
            metavar="IDS",
            help=f"comma-separated class ids of the new task, e.g. 0,3,5{default_note}",
        )
    parser.add_argument(
        "--image-size", type=int, default=default_image_size, metavar="PX", help=image_size_help
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        metavar="N",
        help="training images per class (default: the dataset's split, capped)",
    )
    parser.add_argument("--val-per-class", type=int, default=None, metavar="N")


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5' -> (0, 3, 5)."""
    from edge_smsp.errors import DataError

    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DataError(f"--classes must be comma-separated integers such as 0,3,5, got {text!r}") from None
