"""`edge-smsp pool <verb>`: inspect (and build) the pruned-model pool."""

from __future__ import annotations

import argparse
from typing import Any

from edge_smsp.cli.args import (
    add_backbone_arguments,
    add_image_size_argument,
    add_pool_argument,
    add_round_to_argument,
    add_task_arguments,
    backbone_from_args,
    check_task_args,
    pool_path,
    task_from_args,
)
from edge_smsp.cli.converters import MAX_ITERS, MAX_TASKS, int_in_range, nonempty_arg, path_arg, ratio_arg
from edge_smsp.cli.output import print_json, show_progress
from edge_smsp.core.address_space import check_address_space
from edge_smsp.core.errors import NoPoolEntriesError, PruneError
from edge_smsp.core.paths import safe_text
from edge_smsp.criteria import SCRATCH, criterion_names
from edge_smsp.pool import Pool, check_pool_file

DEFAULT_ROUNDS = 4  # pool build's pruning rounds unless --rounds says
LOCAL_RAY = "local"  # --ray without an address: start a local Ray cluster for this build


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `pool` and its verbs to the parser."""
    parser = subcommands.add_parser(
        "pool",
        help="the pool of pruned models of earlier tasks",
        description="Inspect or build the pool of pruned models that SMSP draws on.",
    )
    verbs = parser.add_subparsers(dest="pool_command", metavar="VERB", required=True)
    register_list(verbs)
    register_build(verbs)
    register_index(verbs)


def register_build(verbs: argparse._SubParsersAction) -> None:
    """`pool build`: prune N generated tasks from scratch (iterative pruning) and store them; resumable."""
    parser = verbs.add_parser(
        "build",
        help="prune generated tasks from scratch and store them in the pool",
        description="Build the pool: N tasks of K classes, each pruned with iterative Taylor (or magnitude) "
        "pruning and fine-tuning between rounds. Finished tasks are skipped, so an interrupted build resumes.",
    )
    add_backbone_arguments(parser)
    add_task_arguments(parser, classes=False)
    add_pool_argument(parser)
    parser.add_argument(
        "--tasks", type=int_in_range(1, MAX_TASKS), required=True, metavar="N", help="number of tasks"
    )
    parser.add_argument("--classes-per-task", type=int_in_range(2, MAX_TASKS), default=3, metavar="K")
    parser.add_argument("--ratio", type=ratio_arg, required=True)
    parser.add_argument(
        "--iters",
        type=int_in_range(1, MAX_ITERS),  # an entry never fine-tuned would hold a random head
        default=1000,
        help="iterations per task over all rounds",
    )
    parser.add_argument(
        "--rounds",
        type=int_in_range(1, 1000),
        default=None,
        help="pruning rounds (fine-tuning between them), at most --iters (default 4)",
    )
    parser.add_argument(
        "--criterion",
        "--importance",
        dest="criterion",
        choices=criterion_names(iterative=True),
        default="taylor",
        help="how units are scored between pruning rounds (--importance: its old name, kept for one release)",
    )
    add_round_to_argument(parser)
    parser.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="run each task as a Ray task: on a new local Ray cluster, or on the cluster at ADDRESS "
        "(host:port of `ray start --head`); this process stays the pool's only writer (pip install edge-smsp[ray])",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    import sys

    from edge_smsp.data.catalog import generate_tasks

    # Bad input fails here, before torch loads and before the pool file is made.
    class_sets = generate_tasks(
        args.dataset, args.tasks, args.classes_per_task, args.seed, data_dir=args.data_dir
    )
    for classes in class_sets:
        check_task_args(args, classes)
    if args.rounds is not None and args.rounds > args.iters:
        raise PruneError(
            f"--rounds {args.rounds} is more than --iters {args.iters}: every round needs fine-tuning "
            f"iterations after it; use --rounds {max(args.iters, 1)} or more --iters"
        )
    args.rounds = args.rounds or DEFAULT_ROUNDS
    check_address_space("pool build" if args.ray is None else "pool build --ray")
    if args.ray is not None:  # before anything is loaded or written: a missing Ray or cluster is one line
        from edge_smsp.pool.build.ray_build import check_reachable, import_ray

        import_ray()
        if args.ray != LOCAL_RAY:
            check_reachable(args.ray)
    path = pool_path(args)
    check_pool_file(path, create=True)

    from edge_smsp import adaptation
    from edge_smsp.pool import build as pool_build

    config = adaptation.AdaptConfig(
        ratio=args.ratio,
        iters=args.iters,
        method=SCRATCH,
        scratch_rounds=args.rounds,
        scratch_criterion=args.criterion,
        round_to=args.round_to,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    backbone = backbone_from_args(args)
    tasks = [task_from_args(args, backbone, classes) for classes in class_sets]
    done: list[dict[str, Any]] = []
    cluster: dict[str, Any] = {}

    def note(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    def report(outcome: pool_build.TaskOutcome) -> None:
        row = {"task_id": outcome.task.task_id, "status": outcome.status, "entry_id": outcome.entry_id}
        row["skipped"] = outcome.report is None
        if outcome.report is not None:
            row.update(
                val_accuracy=outcome.report["val_accuracy"], seconds=outcome.report["seconds"]["total"]
            )
        done.append(row)
        note(f"[{len(done)}/{len(tasks)}] {outcome.task.task_id}: {_outcome_text(outcome)}")

    def started(facts: dict[str, Any]) -> None:
        cluster.update(facts)
        kind = "local Ray cluster" if facts["local"] else "Ray cluster"
        note(f"{kind} at {facts['address']}: {facts['cpus']} CPUs on {facts['nodes']} node(s)")

    callbacks = {
        "on_task": report,
        "on_wait": lambda task, holder: note(f"{task.task_id}: being built by {holder}; waiting for it"),
    }
    with Pool(path) as pool:
        if args.ray is None:
            added = pool_build.build_pool(
                backbone, pool, tasks, config, progress=show_progress(args), **callbacks
            )
        else:
            from edge_smsp.pool.build.ray_build import ray_build_pool

            address = None if args.ray == LOCAL_RAY else args.ray
            added = ray_build_pool(
                backbone, pool, tasks, config, address=address, on_cluster=started, **callbacks
            )
        total = len(pool.entries(backbone_name=args.backbone))
    summary = {
        "pool": str(path),
        "backbone": args.backbone,
        "ratio": args.ratio,
        "iters": args.iters,
        "added": added,
        "tasks": done,
        "entries": total,
    }
    if cluster:
        summary["ray"] = cluster
    if args.json:
        print_json(summary)
    else:
        print(f"pool {path}: {len(added)} entries added, {total} for {args.backbone}")
    return 0


def _outcome_text(outcome: Any) -> str:
    if outcome.status == "in pool":
        return "already in pool"
    accuracy = f"val accuracy {100 * outcome.report['val_accuracy']:.2f}%"
    if outcome.status == "dropped":
        return f"{accuracy}, but another build committed this task first; kept theirs"
    return f"{accuracy} (entry {outcome.entry_id})"


def register_index(verbs: argparse._SubParsersAction) -> None:
    """`pool index`: store the task descriptors an existing pool lacks (resumable)."""
    parser = verbs.add_parser(
        "index",
        help="compute the task descriptors similarity search needs, for a pool built without them",
        description="Describe every pool task of this backbone that has no descriptor yet: the class prototypes "
        "of the unpruned backbone on the task's images (reloaded from its dataset). Each is stored as it is "
        "done, so an interrupted run resumes.",
    )
    add_backbone_arguments(parser)
    add_pool_argument(parser)
    parser.add_argument(
        "--data-dir", type=path_arg, default=None, metavar="DIR", help="where the tasks' dataset files are"
    )
    add_image_size_argument(parser, None, "only entries at this input size (default: every size in the pool)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    import sys

    from edge_smsp.pool import build as pool_build

    path = pool_path(args)
    described: list[str] = []
    already = 0
    with Pool(path, create=False) as pool:
        sizes = sorted({entry.backbone.image_size for entry in pool.entries(backbone_name=args.backbone)})
        if not sizes:  # a misspelt backbone is an error, not "0 tasks described"
            held = sorted({entry.backbone.name for entry in pool.entries()})
            raise NoPoolEntriesError(
                f"pool {path} holds no entries of backbone {args.backbone!r} "
                f"(it holds: {', '.join(held) or 'none'}); pass --backbone NAME"
            )
        if args.image_size is not None:
            if args.image_size not in sizes:  # nothing to describe at that size: say so, as for a backbone
                raise NoPoolEntriesError(
                    f"pool {path} holds no entries of {args.backbone} at {args.image_size} px (its sizes: "
                    f"{', '.join(str(size) for size in sizes)}); pass one of them to --image-size, or leave it out"
                )
            sizes = [args.image_size]
        for size in sizes:
            args.image_size = size
            backbone = backbone_from_args(args)

            def report(task: Any, size: int = size) -> None:
                described.append(task.task_key)
                if not args.json and not show_progress(args):
                    print(f"described {task.task_key} ({size} px)", file=sys.stderr, flush=True)

            _, skipped = pool_build.index_pool(
                pool, backbone, size, data_dir=args.data_dir, progress=show_progress(args), on_task=report
            )
            already += skipped
    summary = {"pool": str(path), "backbone": args.backbone, "described": described, "already": already}
    if args.json:
        print_json(summary)
    else:
        print(f"pool {path}: {len(described)} tasks described, {already} already were")
    return 0


def register_list(verbs: argparse._SubParsersAction) -> None:
    """`pool list`: the stored entries as a table or a JSON list."""
    parser = verbs.add_parser(
        "list", help="list the pool's entries", description="List the pool's pruned models."
    )
    add_pool_argument(parser)
    parser.add_argument(
        "--backbone",
        metavar="NAME",
        type=nonempty_arg("a backbone, such as resnet18"),
        default=None,
        help="only entries of this backbone",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of entries")
    parser.set_defaults(handler=run_list)


def run_list(args: argparse.Namespace) -> int:
    path = pool_path(args)
    with Pool(path, create=False) as pool:
        rows = pool.entry_dicts(backbone_name=args.backbone)
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"pool {path} has no entries" + (f" for backbone {args.backbone}" if args.backbone else ""))
    else:
        print(_table(rows))
        print(f"{len(rows)} entries in {path}")
    return 0


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "ID"),
    ("task_id", "TASK"),
    ("dataset", "DATASET"),
    ("classes", "CLASSES"),
    ("backbone", "BACKBONE"),
    ("image_size", "PX"),
    ("ratio", "RATIO"),
    ("method", "METHOD"),
    ("iters", "ITERS"),
    ("val_accuracy", "VAL ACC"),
    ("created", "CREATED"),
)


def _cell(key: str, value: Any) -> str:
    """One table cell as printable text: a newline stored in a pool row must not split it into forged rows."""
    return safe_text(_cell_text(key, value))


def _cell_text(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "classes":
        return ",".join(str(c) for c in value)
    if key == "ratio":
        return f"{value:.2f}"
    if key == "val_accuracy":
        return f"{100 * value:.2f}%"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [[header for _, header in _COLUMNS]] + [
        [_cell(key, row[key]) for key, _ in _COLUMNS] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
