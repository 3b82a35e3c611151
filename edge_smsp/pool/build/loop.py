"""The loop of a pool build, shared by the in-process and the Ray build: claim, train, commit, report.

The process running this loop is the pool's single writer for its build. For each task it claims the task's
key in the pool (edge_smsp.pool.claims), hands it to a runner (this process, or Ray workers) and commits the
finished entry together with releasing the claim, in one transaction, as each one arrives. Tasks another build
holds are tried again until that build commits them (skipped) or is gone (taken over), so every build ends with
all its tasks in the pool and each task trained once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import nn

from edge_smsp.adaptation.config import AdaptConfig
from edge_smsp.core.errors import PoolError
from edge_smsp.data.tasks import Task
from edge_smsp.pool import DEFAULT_LEASE_SECONDS, BuildKey, NewEntry, Pool, claiming_writer


@dataclass(frozen=True)
class BuiltTask:
    """What the per-task step of a pool build produced: the entry to commit and the adaptation's report."""

    entry: NewEntry
    report: dict[str, Any]  # AdaptResult.to_dict(): accuracy, sizes, seconds

    def to_wire(self) -> dict[str, Any]:
        """Plain values only, for a worker's answer (see NewEntry.to_wire)."""
        return {"entry": self.entry.to_wire(), "report": self.report}

    @classmethod
    def from_wire(cls, wire: Any) -> BuiltTask:
        """A worker's answer, checked."""
        if not isinstance(wire, dict) or not isinstance(wire.get("report"), dict):
            raise PoolError("a build worker sent an answer without its report")
        return cls(NewEntry.from_wire(wire.get("entry")), wire["report"])


BuildStep = Callable[[nn.Module, Task, AdaptConfig, bool], BuiltTask]


POLL_SECONDS = 2.0
ADDED, IN_POOL, DROPPED = "added", "in pool", "dropped"


@dataclass(frozen=True)
class TaskOutcome:
    """What a build did with one task: "added" its entry, found it "in pool" (skipped), or trained it but
    "dropped" its entry because another build committed the same key first."""

    task: Task
    status: Literal["added", "in pool", "dropped"]
    entry_id: int | None = None
    report: dict[str, Any] | None = None  # the adaptation's report, when this build trained the task


class TaskRunner(Protocol):
    """Where a build's tasks run: tasks go in with submit, finished entries come out of finished."""

    def capacity(self) -> int:
        """How many tasks may be claimed and running at once."""
        ...

    def busy(self) -> int:
        """Tasks submitted and not yet returned by finished."""
        ...

    def submit(self, task: Task) -> None:
        """Start a claimed task."""
        ...

    def finished(self, timeout: float) -> list[tuple[Task, BuiltTask]]:
        """Tasks that finished, waiting up to `timeout` seconds for one."""
        ...


class InProcessRunner:
    """Runs each task in this process, one at a time, when its result is asked for."""

    def __init__(self, backbone: nn.Module, config: AdaptConfig, step: BuildStep, progress: bool) -> None:
        self.backbone, self.config, self.step, self.progress = backbone, config, step, progress
        self._queue: deque[Task] = deque()

    def capacity(self) -> int:
        return 1

    def busy(self) -> int:
        return len(self._queue)

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def finished(self, timeout: float) -> list[tuple[Task, BuiltTask]]:
        task = self._queue.popleft()
        return [(task, self.step(self.backbone, task, self.config, self.progress))]


def run_build(
    pool: Pool,
    tasks: Sequence[Task],
    keys: Sequence[BuildKey],
    runner: TaskRunner,
    *,
    on_task: Callable[[TaskOutcome], None] | None = None,
    on_wait: Callable[[Task, str], None] | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    poll_seconds: float = POLL_SECONDS,
) -> list[int]:
    """Claim, run and commit every task whose key is not in the pool; returns the ids of the entries added."""
    key_of = {id(task): key for task, key in zip(tasks, keys, strict=True)}
    todo: deque[Task] = deque(tasks)
    waiting: list[Task] = []
    told_waiting: set[int] = set()
    added: list[int] = []

    def report(outcome: TaskOutcome) -> None:
        if outcome.entry_id is not None:
            added.append(outcome.entry_id)
        if on_task is not None:
            on_task(outcome)

    with claiming_writer(pool, lease_seconds) as writer:
        while todo or waiting or runner.busy():
            while todo and runner.busy() < runner.capacity():
                task = todo.popleft()
                claim = pool.claim(key_of[id(task)], writer, lease_seconds)
                if claim.status == "committed":
                    report(TaskOutcome(task, IN_POOL))
                elif claim.status == "held":
                    waiting.append(task)
                    if on_wait is not None and id(task) not in told_waiting:
                        on_wait(task, claim.holder or "another build")
                    told_waiting.add(id(task))
                else:
                    runner.submit(task)
            if runner.busy():
                for task, built in runner.finished(poll_seconds):
                    key = key_of[id(task)]
                    if built.entry.key != key:
                        raise PoolError(
                            f"the build of {key.describe()} returned an entry for {built.entry.key.describe()}"
                            " (a worker with another backbone or edge-smsp version?)"
                        )
                    entry_id = pool.commit_claimed(built.entry, writer)
                    report(TaskOutcome(task, DROPPED if entry_id is None else ADDED, entry_id, built.report))
            elif waiting:
                time.sleep(poll_seconds)
            if not todo:
                todo.extend(waiting)
                waiting.clear()
    return added
