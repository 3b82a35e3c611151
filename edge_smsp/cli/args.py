"""Argument groups shared by several commands, each beside the converter that turns it into library objects.

Parsing stays torch-free (quick --help); converters import heavy modules when run; bad values fail in argparse.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edge_smsp.cli.converters import (
    MAX_BATCH_SIZE,
    MAX_ITERS,
    MAX_PER_CLASS,
    MAX_TASKS,
    SEED_RANGE,
    classes_arg,
    image_size_arg,
    input_file_arg,
    int_at_least,
    int_in_range,
    number_in_range,
    path_arg,
    pool_arg,
    ratio_arg,
)
from edge_smsp.core.errors import DataError
from edge_smsp.criteria import method_names, needs_pool, pool_source_names
from edge_smsp.criteria.pool_masks import MASK_SOURCES, WEIGHTING_ALIASES, WEIGHTINGS
from edge_smsp.data import DATASETS
from edge_smsp.data.catalog import check_task_request
from edge_smsp.device_runtime.probe import MAX_PROBE_MODELS
from edge_smsp.pool import Pool, default_pool_path
from edge_smsp.training.recipe import INITS, RECIPES
from edge_smsp.transfer.estimators import DEFAULT_ESTIMATOR, DEFAULT_SHORTLIST, SIMILARITY_ESTIMATORS

DEFAULT_DATASET = "fashion-mnist"

if TYPE_CHECKING:  # torch loads only when a command runs
    from torch import nn

    from edge_smsp.adaptation import AdaptConfig
    from edge_smsp.data.tasks import Task


DEFAULT_ITERS = 100  # adapt's fine-tuning iterations (the held-out study's default)

# --- the backbone -------------------------------------------------------------------------------------------


def add_backbone_arguments(
    parser: argparse.ArgumentParser, flag: str = "--backbone", *, required: bool = False
) -> None:
    """--backbone (or `flag`)/--checkpoint/--pretrained: which pre-trained model to start from."""
    parser.add_argument(
        flag,
        dest="backbone",
        required=required,
        default=None if required else "efficientnet_lite0",
        metavar="NAME",
        help="timm model name ("
        + (
            "see `edge-smsp models`)"
            if required
            else "default: efficientnet_lite0 with bundled ImageNet weights)"
        ),
    )
    parser.add_argument(
        "--checkpoint",
        type=input_file_arg,
        default=None,
        metavar="PATH",
        help="local weights (timm or state dict)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="load pre-trained weights (default: yes for bundled backbones, else random init)",
    )


def pretrained_from_args(args: argparse.Namespace) -> bool:
    """--pretrained, or the backbone's default (bundled offline weights)."""
    from edge_smsp.models.zoo import default_pretrained

    return default_pretrained(args.backbone) if args.pretrained is None else args.pretrained


def backbone_from_args(args: argparse.Namespace) -> nn.Module:
    """The backbone named on the command line, at the requested input size."""
    from edge_smsp.models.zoo import load_backbone

    return load_backbone(
        args.backbone,
        checkpoint=args.checkpoint,
        pretrained=pretrained_from_args(args),
        image_size=args.image_size,
    )


# --- the task -----------------------------------------------------------------------------------------------


def add_task_arguments(
    parser: argparse.ArgumentParser,
    *,
    classes: bool,
    default_classes: str | None = None,
    default_image_size: int | None = 64,
    image_size_help: str = "input resolution (default 64)",
    default_batch_size: int = 32,
) -> None:
    """Dataset, image size, batch size, seed and data dir, shared by pool build, adapt and deploy."""
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=" | ".join(DATASETS))
    parser.add_argument(
        "--data-dir", type=path_arg, default=None, metavar="DIR", help="where the dataset's files are"
    )
    if classes:
        default_note = f" (default {default_classes})" if default_classes else ""
        parser.add_argument(
            "--classes",
            type=classes_arg,
            default=default_classes,
            metavar="IDS",
            help=f"comma-separated class ids of the new task, e.g. 0,3,5{default_note}",
        )
    add_image_size_argument(parser, default_image_size, image_size_help)
    parser.add_argument(
        "--batch-size",
        type=int_in_range(1, MAX_BATCH_SIZE),
        default=default_batch_size,
        metavar="B",
        help=f"training images per iteration (default {default_batch_size}; from 32 to 128, SGD's default "
        "learning rate scales with it)",
    )
    add_seed_argument(parser)
    parser.add_argument(
        "--train-per-class",
        type=int_in_range(1, MAX_PER_CLASS),
        default=None,
        metavar="N",
        help="training images per class (default: the dataset's split, capped)",
    )
    parser.add_argument("--val-per-class", type=int_in_range(1, MAX_PER_CLASS), default=None, metavar="N")


def add_image_size_argument(parser: argparse.ArgumentParser, default: int | None, help_text: str) -> None:
    """--image-size PX."""
    parser.add_argument("--image-size", type=image_size_arg, default=default, metavar="PX", help=help_text)


def add_seed_argument(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--seed S."""
    parser.add_argument("--seed", type=int_in_range(*SEED_RANGE), default=0, help=help_text)


def check_task_args(args: argparse.Namespace, classes: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The task's class ids, checked against --dataset and its files before anything is loaded."""
    classes = classes if classes is not None else args.classes
    if classes is None:
        raise DataError("name the new task's classes with --classes, e.g. --classes 0,3,5")
    return check_task_request(
        args.dataset,
        classes,
        data_dir=args.data_dir,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
    )


def task_from_args(
    args: argparse.Namespace, backbone: nn.Module, classes: tuple[int, ...] | None = None
) -> Task:
    """The new task named by --dataset/--classes, normalised as the backbone expects."""
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    classes = check_task_args(args, classes)
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


# --- the adaptation -----------------------------------------------------------------------------------------


def add_adapt_arguments(parser: argparse.ArgumentParser, *, ratio_help: str | None = None) -> None:
    """The adaptation knobs shared by adapt and deploy; `ratio_help`: --ratio is optional (deploy plans it)."""
    parser.add_argument(
        "--ratio",
        type=ratio_arg,
        required=ratio_help is None,
        default=None,
        help=ratio_help or "fraction of units removed per group",
    )
    parser.add_argument(
        "--iters",
        type=int_in_range(0, MAX_ITERS),
        default=None,
        help=f"fine-tuning iterations (default {DEFAULT_ITERS}; --time-budget chooses them instead)",
    )
    parser.add_argument("--method", choices=method_names(), default="smsp")
    parser.add_argument(
        "--top-k",
        type=int_in_range(1, MAX_TASKS),
        default=None,
        help=f"pool tasks whose masks are summed, 1 to {MAX_TASKS:,} (default 1 with --init pool, else 5)",
    )
    parser.add_argument(
        "--weighting",
        choices=(*WEIGHTINGS, *WEIGHTING_ALIASES),
        default="uniform",
        help="sum masks uniformly or weighted by normalised similarity ('leep': the old name of 'similarity')",
    )
    parser.add_argument(
        "--mask-source",
        choices=MASK_SOURCES,
        default="masks",
        help="sum the entries' binary masks (the paper) or their real-valued unit scores",
    )
    add_round_to_argument(parser, help_text="kept channels rounded to a multiple, 1 to 1,024 (1: off)")
    parser.add_argument(
        "--time-budget",
        type=number_in_range(0.0, 86400.0, above=True),
        default=None,
        metavar="SECONDS",
        help="fit the adaptation into SECONDS on this host: fine-tuning's batch and iterations are chosen from a "
        "short measured warm-up (instead of --iters), and the report says what it chose",
    )
    parser.add_argument(
        "--micro-batch",
        type=int_in_range(1, MAX_BATCH_SIZE),
        default=None,
        metavar="M",
        help="fine-tune each batch in equal chunks of at most M images, gradients accumulated: the same update "
        "in less memory. Default: no chunks while a batch holds at most 128 x 64 x 64 pixels (128 images of "
        "64 px); above that, chunks of that many pixels, but never fewer than 32 images (32 at 224 px, where "
        "EfficientNet-Lite0 needs ~75 MiB per training image)",
    )
    parser.add_argument(
        "--lr",
        type=number_in_range(0.0, 100.0, above=True),
        default=None,
        help="learning rate (default: SGD 0.01 up to batch 32, 0.01 x batch/32 up to 128, then 0.04; AdamW 1e-3)",
    )
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    add_similarity_arguments(parser)
    add_recovery_arguments(parser)


def add_similarity_arguments(parser: argparse.ArgumentParser) -> None:
    """--similarity, and the search stage's --shortlist M / --exhaustive."""
    parser.add_argument(
        "--similarity",
        choices=tuple(SIMILARITY_ESTIMATORS),
        default=DEFAULT_ESTIMATOR,
        help=f"how pool entries are ranked (default {DEFAULT_ESTIMATOR}: class prototypes of the backbone)",
    )
    search = parser.add_mutually_exclusive_group()
    search.add_argument(
        "--shortlist",
        type=int_at_least(1),
        default=DEFAULT_SHORTLIST,
        metavar="M",
        help=f"rank only the M pool tasks a sketch search finds closest (default {DEFAULT_SHORTLIST})",
    )
    search.add_argument("--exhaustive", action="store_true", help="rank every pool entry (no search stage)")


def add_recovery_arguments(parser: argparse.ArgumentParser) -> None:
    """--init (where the sub-network's weights come from) and --recipe (the steps before fine-tuning)."""
    parser.add_argument(
        "--init",
        choices=INITS,
        default=None,
        help="start from the backbone's weights or the top pool entry's (default: pool for pool methods)",
    )
    parser.add_argument(
        "--probe",
        type=int_in_range(1, MAX_PROBE_MODELS),
        default=None,
        metavar="N",
        help="with --init pool: of the N most similar pool tasks, take the entry whose own features separate "
        "the new classes best (default 3; 1: the most similar)",
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="recover",
        help="recovery steps after pruning (default recover; plain: none)",
    )


def add_round_to_argument(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--round-to N (prune's channel rounding)."""
    parser.add_argument("--round-to", type=int_in_range(1, 1024), default=8, help=help_text)


def config_from_args(args: argparse.Namespace) -> AdaptConfig:
    """The AdaptConfig of adapt/deploy's flags (ratio None: deploy plans it)."""
    from edge_smsp.adaptation import AdaptConfig

    pool_only = (("--top-k", args.top_k is not None), ("--weighting", args.weighting != "uniform"))
    given = [
        flag for flag, set_here in (*pool_only, ("--mask-source", args.mask_source != "masks")) if set_here
    ]
    if given and not needs_pool(args.method):
        sources = ", ".join(pool_source_names())
        raise DataError(
            f"{given[0]} acts on the pool's methods ({sources}), not --method {args.method}: drop it"
        )
    if args.iters is not None and args.time_budget is not None:
        raise DataError("--iters and --time-budget both set how long fine-tuning runs: give one of them")
    init = args.init or ("pool" if needs_pool(args.method) else "backbone")
    if args.probe is not None and init != "pool":
        raise DataError(
            "--probe chooses the pool entry whose weights start the model (--init pool); here the backbone's "
            "weights start it: drop --probe"
        )
    return AdaptConfig(
        ratio=args.ratio,
        iters=DEFAULT_ITERS if args.iters is None else args.iters,
        method=args.method,
        top_k=args.top_k,
        weighting=args.weighting,
        mask_source=args.mask_source,
        round_to=args.round_to,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        similarity=args.similarity,
        shortlist=None if args.exhaustive else args.shortlist,
        init=args.init,
        **({"probe": args.probe} if args.probe is not None else {}),
        recipe=args.recipe,
        time_budget=args.time_budget,
    )


# --- the pool -----------------------------------------------------------------------------------------------


def add_pool_argument(parser: argparse.ArgumentParser) -> None:
    """--pool PATH, shared by every command that reads or writes the pool."""
    parser.add_argument(
        "--pool",
        type=pool_arg,
        default=None,
        metavar="PATH",
        help=f"pool database file (default: $EDGE_SMSP_POOL or {default_pool_path()})",
    )


def pool_path(args: argparse.Namespace) -> Path:
    """The pool file named by --pool, else the default."""
    return args.pool if args.pool is not None else default_pool_path()


def open_pool_for(args: argparse.Namespace, method: str) -> Pool | None:
    """The pool, opened when the method draws on it (it must exist then) or the result is stored in it (a new
    pool file is made only when the result is stored)."""
    draws_on_pool = needs_pool(method)
    if draws_on_pool or getattr(args, "add_to_pool", False):
        return Pool(pool_path(args), create=not draws_on_pool, lazy=True)
    return None
