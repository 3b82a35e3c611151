"""Leave-one-out adaptation of pool tasks: SMSP (masks / pool weights) and Torch-Pruning criteria, with recipes.

Each pool task is adapted from the research pool without its own entry. A variant is one line of `Variant`;
experiments are named lists of variants (`loo_experiments.EXPERIMENTS`). Results: results/loo.jsonl, resumable.
Usage: .venv/bin/python -m benchmarks.research.loo --exp recipe --ratio 0.5 --ratio 0.7 --iters 100
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.research import common, rank
from benchmarks.research.recipes import StudyRecipe, study_recover

RECIPES = {
    "plain": StudyRecipe("plain", adaptive_bn=False, imprint=False),
    "bn": StudyRecipe("bn", imprint=False),
    "imprint": StudyRecipe("imprint", adaptive_bn=False),
    "bn+imprint": StudyRecipe("bn+imprint"),
    "bn+probe": StudyRecipe("bn+probe", imprint=False, linear_probe_steps=50),
    "bn+imprint+probe": StudyRecipe("bn+imprint+probe", linear_probe_steps=50),
    "imprint+probe": StudyRecipe("imprint+probe", adaptive_bn=False, linear_probe_steps=50),
    "bn+imprint/10": StudyRecipe("bn+imprint/10", imprint_shrink=0.1),
}


@dataclass(frozen=True)
class Variant:
    method: str = "smsp"  # smsp | smsp-random | taylor | magnitude | random
    estimator: str = "leep"  # leep | proto | logme (smsp only)
    top_k: int = 5
    init: str = "backbone"  # backbone | top1 | avg | wavg  (weights; smsp only)
    recipe: str = "plain"
    pool_ratio: float = 0.5
    pool_iters: int = 400
    taylor: str = "warmup"  # warmup (20 % of the budget on the unpruned model) | imprint (recipe first)
    lr: float | None = None
    bn_train: bool = True
    mask_source: str = "masks"  # masks (binary, summed) | scores (the entries' unit ranks, summed; smsp only)
    head: str = (
        "fresh"  # fresh | entry (shared classes' rows from the top entry) | entries (greedy cover, top 3)
    )
    head_lr: float = 1.0  # the classifier's learning rate, times the body's
    pick: int = 0  # start the selection at this rank of the similarity order (0: the top entry)
    optimizer: str = "sgd"
    probe: int = 1  # entries (most similar first) whose features are probed to choose the top one
    smoothing: float = 0.0  # label smoothing of the fine-tuning loss
    samples: int = 512  # the recipe's class-balanced training images (BN statistics, prototypes)
    freeze: float = 0.0  # this fraction of the backbone's blocks (from the input) is not trained
    distill: float = 0.0  # weight of the distillation loss (0: none)
    # The teacher: backbone (unpruned) | entries (the 3 probed entries' models, logits averaged); each gets
    # adaptive BN, an imprinted head and a linear probe on 1500 training images.
    teacher: str = "backbone"
    batch: int = common.BATCH_SIZE  # fine-tuning batch size (the iteration count stays the row's)

    @property
    def name(self) -> str:
        if self.method in ("taylor", "magnitude", "random"):
            extra = f",{self.taylor}" if self.method == "taylor" else ""
            return f"{self.method}[{self.recipe}{extra}{self._common()}]"
        return (
            f"{self.method}[{self.estimator},k{self.top_k},{self.init},{self.recipe},"
            f"pool{self.pool_ratio:g}@{self.pool_iters}{self._common()}]"
        )

    def _common(self) -> str:
        return (
            (f",lr{self.lr:g}" if self.lr is not None else "")
            + ("" if self.head == "fresh" else f",head-{self.head}")
            + ("" if self.head_lr == 1.0 else f",headlr{self.head_lr:g}")
            + ("" if self.bn_train else ",bnfrozen")
            + ("" if self.mask_source == "masks" else f",{self.mask_source}")
            + ("" if self.pick == 0 else f",pick{self.pick}")
            + ("" if self.optimizer == "sgd" else f",{self.optimizer}")
            + ("" if self.probe == 1 else f",probe{self.probe}")
            + ("" if self.smoothing == 0.0 else f",ls{self.smoothing:g}")
            + ("" if self.samples == 512 else f",samples{self.samples}")
            + ("" if self.freeze == 0.0 else f",freeze{self.freeze:g}")
            + ("" if self.distill == 0.0 else f",kd{self.distill:g}")
            + ("" if self.teacher == "backbone" else f",teacher-{self.teacher}")
            + ("" if self.batch == common.BATCH_SIZE else f",batch{self.batch}")
        )


def run(variant: Variant, classes: tuple[int, ...], size: int, ratio: float, iters: int) -> dict[str, Any]:
    from edge_smsp import adaptation
    from edge_smsp.criteria import score_units
    from edge_smsp.models.prune import prune
    from edge_smsp.models.unit_scores import unit_l1_norms
    from edge_smsp.training.finetune import DEFAULT_LR, evaluate, finetune
    from edge_smsp.transfer.inherit import inherit

    seed = common.task_seed(classes)
    backbone = common.backbone(size)
    task = common.task(classes, size)
    recipe = dataclasses.replace(RECIPES[variant.recipe], samples=variant.samples)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model = adaptation.with_task_head(backbone, task, seed)
    spent, selected, teacher = 0, [], None
    info: dict[str, Any] = {}

    def train(steps: int, offset: int) -> None:
        t = time.perf_counter()
        finetune(
            model,
            task,
            steps,
            batch_size=variant.batch,
            # without a rate of its own a variant trains at the optimizer's unscaled default, as every run did
            lr=variant.lr if variant.lr is not None else DEFAULT_LR[variant.optimizer],
            optimizer=variant.optimizer,
            seed=seed * 1000 + offset,
            train_mode_bn=variant.bn_train,
            loss_fn=study_loss(variant.smoothing, teacher, variant.distill),
            parameter_groups=head_scaled_groups(variant.head_lr),
        )
        seconds["finetune"] = seconds.get("finetune", 0.0) + time.perf_counter() - t

    if variant.method in ("smsp", "smsp-random"):
        t = time.perf_counter()
        pool = (variant.pool_ratio, variant.pool_iters)
        entries = rank.entry_models(size, *pool)
        if variant.method == "smsp":
            similarity = rank.cached_scores(variant.estimator, classes, size, pool)
            ordered = sorted(similarity, key=similarity.get, reverse=True)
        else:
            others = sorted(t for t in entries if t != task.task_id)
            picks = np.random.default_rng(seed).choice(len(others), size=len(others), replace=False)
            ordered, similarity = [others[int(i)] for i in picks], {}
        if variant.probe > 1:
            ordered = _probed_order(ordered, variant.probe, entries, task, size, pool, seed, info)
        selected = ordered[variant.pick : variant.pick + variant.top_k]
        seconds["similarity"] = time.perf_counter() - t
        scores: dict[str, np.ndarray] = {}
        if variant.mask_source == "scores":
            from edge_smsp.pool import Pool

            with Pool(common.pool_path(size, *pool), create=False) as opened:
                chosen = [(entries[task_id][0], 0.0) for task_id in selected]
                scores = adaptation.score_mask(opened, chosen, source="scores")
        else:
            for task_id in selected:
                for key, mask in _masks(entries[task_id][1]).items():
                    scores[key] = scores.get(key, 0.0) + mask
        info["selected"] = selected
        info["selected_shared"] = [rank.shared(classes, t) for t in selected]
    else:
        if variant.method == "taylor" and variant.taylor == "warmup":
            spent = round(iters * 0.2)
            train(spent, 0)
        elif variant.method == "taylor":
            study_recover(model, task, recipe if recipe.needs_features else RECIPES["bn+imprint"], seed)
        scored = model if variant.method == "taylor" else backbone
        t = time.perf_counter()
        scores = score_units(scored, variant.method, batches=_batches(task, seed, 4), seed=seed)
        seconds["scores"] = time.perf_counter() - t
    t = time.perf_counter()
    model, summary = prune(model, scores, ratio, round_to=8, tie_break=_l1(backbone, unit_l1_norms))
    seconds["prune"] = time.perf_counter() - t
    if variant.init != "backbone":
        t = time.perf_counter()
        sources = _sources(variant, selected, similarity, entries)
        report = inherit(model, backbone, sources)
        info["inherit_covered"] = round(report.covered_fraction, 4)
        seconds["inherit"] = time.perf_counter() - t
    keep_rows: list[int] = []
    if variant.head != "fresh":
        t = time.perf_counter()
        keep_rows = _inherit_head(
            model, backbone, task, selected if variant.head == "entry" else ordered, entries
        )
        info["head_rows"] = len(keep_rows)
        seconds["head"] = time.perf_counter() - t
    t = time.perf_counter()
    recovery = study_recover(model, task, recipe, seed, keep_rows=keep_rows)
    info["head_scale"] = recovery.head_scale
    seconds["recipe"] = time.perf_counter() - t
    info["acc_before_finetune"] = round(evaluate(model, task.val), 4)
    if variant.freeze:
        _freeze_leading_blocks(model, variant.freeze)
    if variant.distill:
        t = time.perf_counter()
        teacher = _teacher(variant, backbone, task, seed, size, ordered if variant.init != "backbone" else [])
        info["teacher_accuracy"] = round(evaluate(teacher, task.val), 4)
        seconds["teacher"] = time.perf_counter() - t
    train(iters - spent, 1 if spent else 0)
    t = time.perf_counter()
    accuracy = evaluate(model, task.val)
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return {
        "task": task.task_id,
        "val_accuracy": accuracy,
        "params_after": summary.params_after,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        **info,
    }


class _Ensemble(torch.nn.Module):
    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(dim=0)


def _teacher(variant: Variant, backbone, task, seed: int, size: int, ordered: list[str]) -> torch.nn.Module:
    """The distillation teacher: a model (or an ensemble) with a head fitted to the task, no training step."""
    from edge_smsp import adaptation
    from edge_smsp.models.prune import replace_classifier
    from edge_smsp.pool import Pool
    from edge_smsp.transfer.entry_models import entry_model

    fitted = StudyRecipe("teacher", linear_probe_steps=50, samples=1500)
    if variant.teacher == "backbone":
        members = [adaptation.with_task_head(backbone, task, seed)]
    else:
        entries = rank.entry_models(size, variant.pool_ratio, variant.pool_iters)
        with Pool(common.pool_path(size, variant.pool_ratio, variant.pool_iters), create=False) as opened:
            members = [
                replace_classifier(entry_model(opened, entries[task_id][0]), len(task.classes))
                for task_id in ordered[:3]
            ]
    for member in members:
        study_recover(member, task, fitted, seed)
    return members[0] if len(members) == 1 else _Ensemble(members).eval()


def _freeze_leading_blocks(model, fraction: float) -> None:
    """No gradient for the stem and the first `fraction` of the blocks (timm EfficientNet layout)."""
    blocks = [block for stage in model.blocks for block in stage]
    frozen = [model.conv_stem, model.bn1] + blocks[: round(fraction * len(blocks))]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def _probed_order(ordered, count, entries, task, size, pool, seed, info) -> list[str]:
    """`ordered` with the best-probed of its first `count` entries moved to the front (edge_smsp.transfer.entry_probe)."""
    from edge_smsp.pool import Pool
    from edge_smsp.transfer.entry_probe import best_probed, probe_entries

    with Pool(common.pool_path(size, *pool), create=False) as opened:
        probed = probe_entries(opened, [(entries[t][0], 0.0) for t in ordered[:count]], task, seed=seed)
    best = best_probed(probed).entry.task.task_key
    info["probe"] = [round(candidate.accuracy, 4) for candidate in probed]
    return [best] + [t for t in ordered if t != best]


def _inherit_head(model, backbone, task, ranked: list[str], entries: dict) -> list[int]:
    """Classifier rows of the new task's classes from the first of the (top 3) entries that has each class."""
    from edge_smsp.transfer.inherit import inherit_head

    rows: set[int] = set()
    wanted = [(task.dataset, c) for c in task.classes]
    for task_id in ranked[:3]:
        entry, entry_model = entries[task_id]
        have = [(entry.task.dataset, c) for c in entry.task.classes]
        missing = [label if index not in rows else None for index, label in enumerate(wanted)]
        rows.update(inherit_head(model, backbone, entry_model, have, missing))
        if len(rows) == len(wanted):
            break
    return sorted(rows)


def _sources(variant: Variant, selected: list[str], similarity: dict[str, float], entries: dict) -> list:
    if variant.init == "top1":
        return [(entries[selected[0]][1], 1.0)]
    if variant.init == "avg":
        return [(entries[t][1], 1.0) for t in selected]
    if variant.init == "wavg":  # softmax over the similarity scores of the selected entries
        values = np.array([similarity[t] for t in selected], dtype=np.float64)
        spread = values.std() or 1.0
        weights = np.exp((values - values.max()) / spread)
        return [(entries[t][1], float(w)) for t, w in zip(selected, weights, strict=True)]
    raise SystemExit(f"unknown init {variant.init}")


def _masks(model) -> dict[str, np.ndarray]:
    from edge_smsp.models.prune import kept_mask

    return {key: mask.astype(np.float64) for key, mask in kept_mask(model).items()}


_L1: dict[int, Any] = {}


def _l1(backbone, function):
    if id(backbone) not in _L1:
        _L1[id(backbone)] = function(backbone)
    return _L1[id(backbone)]


def _batches(task, seed: int, count: int):
    generator = torch.Generator().manual_seed(seed * 1000)
    order = torch.randperm(len(task.train), generator=generator)
    for index in range(count):
        yield task.train.batch(order[index * common.BATCH_SIZE : (index + 1) * common.BATCH_SIZE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exp", action="append", default=[])
    parser.add_argument("--variant", action="append", default=[], help="Variant fields as k=v,k=v")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--iters", type=int, action="append")
    parser.add_argument("--tasks", type=int, default=common.POOL_TASKS, help="first N pool tasks")
    args = parser.parse_args()
    common.single_thread()
    from benchmarks.research.loo_experiments import EXPERIMENTS

    variants = [v for name in args.exp for v in EXPERIMENTS[name]]
    for text in args.variant:
        fields = dict(item.split("=") for item in text.split(","))
        types = {f.name: f.type for f in dataclasses.fields(Variant)}
        variants.append(Variant(**{k: _parse(types[k], v) for k, v in fields.items()}))
    results = common.Results("loo")
    done = results.load()
    tasks = common.pool_tasks()[: args.tasks]
    for iters in args.iters or [100]:
        for ratio in args.ratio or [0.5]:
            for variant in variants:
                for classes in tasks:
                    key = f"px{args.size}|{variant.name}|r{ratio:g}|it{iters}|{'-'.join(map(str, classes))}"
                    if key in done:
                        continue
                    torch.manual_seed(common.task_seed(classes))
                    record = run(variant, classes, args.size, ratio, iters)
                    record.update(
                        {
                            "key": key,
                            "variant": variant.name,
                            "fields": dataclasses.asdict(variant),
                            "size": args.size,
                            "ratio": ratio,
                            "iters": iters,
                        }
                    )
                    results.put(record)
                    common.log(f"{key}: {record['val_accuracy']:.4f} ({record['seconds']['total']:.0f} s)")


def _parse(kind: str, value: str) -> Any:
    if value == "None":
        return None
    if "int" in kind:
        return int(value)
    if "float" in kind:
        return float(value)
    if "bool" in kind:
        return value == "True"
    return value


def study_loss(smoothing: float, teacher: torch.nn.Module | None, distill: float):
    """The fine-tuning loss of a variant: cross-entropy with label smoothing, and with a teacher, (1 - distill)
    times it plus distill times Hinton et al.'s soft-target loss at temperature 2 (times T^2, so that its
    gradient scale matches the cross-entropy's)."""
    import torch.nn.functional as F

    from edge_smsp.training.finetune import eval_mode

    def loss(logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        if teacher is None:
            return hard
        temperature = 2.0
        with torch.no_grad(), eval_mode(teacher):
            targets = torch.softmax(teacher(images) / temperature, dim=1)
        soft = -(targets * torch.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean() * temperature**2
        return (1 - distill) * hard + distill * soft

    return loss


def head_scaled_groups(head_lr: float):
    """Optimizer groups with the classifier's learning rate times `head_lr` (decay as the library's)."""
    from edge_smsp.models.units import classifier_of
    from edge_smsp.training.finetune import weight_decay_groups

    def groups(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict[str, object]]:
        found = classifier_of(model) if head_lr != 1.0 else None
        if found is None:
            return weight_decay_groups(model, weight_decay, lr)
        head = {id(parameter) for parameter in found[1].parameters()}
        split: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for parameter in model.parameters():
            if parameter.requires_grad:
                split.setdefault((parameter.ndim > 1, id(parameter) in head), []).append(parameter)
        return [
            {
                "params": params,
                "weight_decay": weight_decay if decays else 0.0,
                "lr": lr * (head_lr if in_head else 1.0),
            }
            for (decays, in_head), params in split.items()
        ]

    return groups


if __name__ == "__main__":
    main()
