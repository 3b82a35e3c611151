"""The study's modes (smoke, quick, full): every setting the benchmarks run with, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge_smsp.criteria import SCORE_SOURCES

BACKBONE = "efficientnet_lite0"
DATASET = "fashion-mnist"
MODES = ("smoke", "quick", "full")


@dataclass(frozen=True)
class StudySettings:
    """One mode of the shared study: the pool, the held-out tasks and every run the benchmarks read."""

    mode: str
    image_size: int  # Fashion-MNIST is 28 px: 32 px loses nothing and keeps fine-tuning cheap on a CPU
    batch_size: int
    train_per_class: int
    val_per_class: int
    classes_per_task: int
    pool_tasks: int
    new_tasks: int
    task_seed: int
    pool_ratio: float
    pool_iters: int
    scratch_rounds: int
    ratios: tuple[float, ...]  # the accuracy table's ratios
    oneshot_methods: tuple[str, ...]
    oneshot_iters: int
    scratch_iters: int  # 10x oneshot_iters: the paper's headline comparison
    scratch_ratios: tuple[float, ...]
    export_ratio: float  # the ratio at which smsp and scratch models are also exported (time-to-adapt)
    budget_ratios: tuple[float, ...]
    budget_methods: tuple[str, ...]
    tuning_tasks: int  # leave-one-out over this many pool tasks
    tuning_ratio: float
    tuning_variants: tuple[tuple[str, int, str, str], ...]  # (method, top_k, weighting, mask_source)
    similarity_samples: int
    simcost_sizes: tuple[int, ...]
    simcost_sample: int  # pools larger than this are timed on a sample of this many entries and extrapolated
    speed_models: tuple[str, ...]
    speed_sizes: tuple[int, ...]
    speed_ratios: tuple[float, ...]
    speed_rounds: int
    speed_runs_per_round: int
    runtime_models: tuple[tuple[str, int], ...]  # (model, size) also measured through the device runtime
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


# Every score source runs one-shot next to SMSP (scratch runs at 10x the iterations).
ONESHOT_METHODS = tuple(SCORE_SOURCES)
# The paper's defaults: top-5 similar tasks, binary masks summed uniformly.
PAPER_VARIANT = ("smsp", 5, "uniform", "masks")

_FULL_TUNING = (
    ("smsp", 1, "uniform", "masks"),
    ("smsp", 3, "uniform", "masks"),
    PAPER_VARIANT,
    ("smsp", 5, "leep", "masks"),
    ("smsp", 5, "uniform", "scores"),
    ("smsp", 999, "uniform", "masks"),  # every pool entry: a plain consensus mask
    ("smsp-random", 5, "uniform", "masks"),
    ("taylor", 0, "", ""),  # the strongest one-shot baseline in the quick study: the bar to clear
)

SETTINGS: dict[str, StudySettings] = {
    "smoke": StudySettings(
        mode="smoke",
        image_size=32,
        batch_size=8,
        train_per_class=16,
        val_per_class=8,
        classes_per_task=3,
        pool_tasks=2,
        new_tasks=1,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=4,
        scratch_rounds=2,
        ratios=(0.5,),
        oneshot_methods=ONESHOT_METHODS,
        oneshot_iters=2,
        scratch_iters=4,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.5),
        budget_methods=("smsp",),
        tuning_tasks=1,
        tuning_ratio=0.5,
        tuning_variants=(PAPER_VARIANT, ("taylor", 0, "", "")),
        similarity_samples=16,
        simcost_sizes=(2, 4),
        simcost_sample=2,
        speed_models=("efficientnet_lite0",),
        speed_sizes=(32,),
        speed_ratios=(0.0, 0.5),
        speed_rounds=2,
        speed_runs_per_round=5,
        runtime_models=(("efficientnet_lite0", 32),),
    ),
    "quick": StudySettings(
        mode="quick",
        image_size=32,
        batch_size=32,
        train_per_class=300,
        val_per_class=100,
        classes_per_task=3,
        pool_tasks=4,
        new_tasks=2,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=120,
        scratch_rounds=3,
        ratios=(0.5,),
        oneshot_methods=ONESHOT_METHODS,
        oneshot_iters=40,
        scratch_iters=400,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.5, 0.7),
        budget_methods=("smsp", "taylor"),
        tuning_tasks=2,
        tuning_ratio=0.5,
        tuning_variants=(("smsp", 1, "uniform", "masks"), PAPER_VARIANT, ("taylor", 0, "", "")),
        similarity_samples=300,
        simcost_sizes=(10, 100, 1000),
        simcost_sample=10,
        speed_models=("resnet18", "deit_small_patch16_224", "efficientnet_lite0"),
        speed_sizes=(224, 32),
        speed_ratios=(0.0, 0.5),
        speed_rounds=3,
        speed_runs_per_round=10,
        runtime_models=(("efficientnet_lite0", 32),),
    ),
    "full": StudySettings(
        mode="full",
        image_size=32,
        batch_size=32,
        train_per_class=500,
        val_per_class=200,
        classes_per_task=3,
        pool_tasks=12,
        new_tasks=6,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=400,
        scratch_rounds=4,
        ratios=(0.3, 0.5, 0.7),
        oneshot_methods=ONESHOT_METHODS,
        oneshot_iters=100,
        scratch_iters=1000,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.4, 0.5, 0.6, 0.7),
        budget_methods=("smsp", "taylor"),
        tuning_tasks=4,
        tuning_ratio=0.5,
        tuning_variants=_FULL_TUNING,
        similarity_samples=500,
        simcost_sizes=(10, 100, 1000),
        simcost_sample=100,
        speed_models=("resnet18", "deit_small_patch16_224", "efficientnet_lite0"),
        speed_sizes=(224, 32),
        speed_ratios=(0.0, 0.3, 0.5, 0.7),
        speed_rounds=5,
        speed_runs_per_round=20,
        runtime_models=(("efficientnet_lite0", 224), ("efficientnet_lite0", 32), ("resnet18", 224)),
    ),
}
