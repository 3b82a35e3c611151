"""Building a pool: prune each generated task from scratch and commit it, in process or on a Ray cluster.

tasks.py      saving results, pool entries, the per-task build step, `build_pool`
loop.py       a build's claim -> run -> commit loop, shared by the in-process and the Ray build
ray_build.py  `ray_build_pool`: the build's tasks on a Ray cluster (optional extra `ray`)
"""

from edge_smsp.pool.build.loop import BuiltTask, TaskOutcome
from edge_smsp.pool.build.tasks import (
    add_to_pool,
    backbone_record,
    build_entry,
    build_keys,
    build_pool,
    describe_task,
    entry_before,
    finished_entry,
    index_pool,
    save_adapted,
    task_image_size,
    task_record,
)

__all__ = [
    "BuiltTask",
    "TaskOutcome",
    "add_to_pool",
    "backbone_record",
    "build_entry",
    "build_keys",
    "build_pool",
    "describe_task",
    "entry_before",
    "finished_entry",
    "index_pool",
    "save_adapted",
    "task_image_size",
    "task_record",
]
