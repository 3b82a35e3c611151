"""What identifies a pool entry: the backbone it was pruned from, its task, and the key a build claims."""

from __future__ import annotations

from dataclasses import dataclass

from edge_smsp.core.errors import PoolError
from edge_smsp.core.ratio import canonical_ratio


@dataclass(frozen=True)
class BackboneRecord:
    """The pre-trained model an entry was pruned from; entries are comparable only within one weights hash."""

    name: str
    weights_hash: str
    image_size: int
    checkpoint: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    """A pool task: a dataset, a subset of its classes and the seeded splits; task_key identifies it."""

    task_key: str
    dataset: str
    classes: tuple[int, ...]
    seed: int
    n_train: int
    n_val: int
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildKey:
    """One entry a build makes: a task pruned from one backbone at one input size, ratio, method and length.
    The pool holds at most one entry per key, and at most one build claim."""

    task_key: str
    weights_hash: str
    image_size: int
    ratio: float
    method: str
    iters: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", entry_ratio(self.ratio))

    def describe(self) -> str:
        """How messages name it."""
        return (
            f"{self.task_key} ({self.image_size} px, ratio {self.ratio}, {self.method}, {self.iters} iters)"
        )


def entry_ratio(ratio: float) -> float:
    """An entry's ratio as the pool stores and compares it."""
    return canonical_ratio(ratio, error=PoolError, what="pruning ratio")


def check_backbone(backbone: BackboneRecord) -> None:
    """A backbone record the pool can store."""
    if not backbone.name or not backbone.weights_hash:
        raise PoolError("pool backbone needs a name and a weights hash")
    if backbone.image_size <= 0:
        raise PoolError(f"pool backbone image_size must be > 0, got {backbone.image_size}")


def check_task(task: TaskRecord) -> None:
    """A task record the pool can store."""
    if not task.task_key or not task.dataset:
        raise PoolError("pool task needs a task key and a dataset name")
    if not task.classes:
        raise PoolError(f"pool task {task.task_key} has no classes")
    if task.class_names and len(task.class_names) != len(task.classes):
        raise PoolError(
            f"pool task {task.task_key} has {len(task.classes)} classes but {len(task.class_names)} class names"
        )
