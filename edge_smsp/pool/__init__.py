"""The pruned-model pool: one SQLite file holding backbones, tasks, pruned entries and device measurements.

schema.py        tables and migrations (a pool of an older version is migrated when opened)
store.py         the file: opening, schema, transactions, errors, integrity
entry_data.py    an entry's masks, scores and model files, checked and encoded
entries.py       pruned entries
descriptors.py   task descriptors (class prototypes of the backbone) and their sketches
measurements.py  device measurements, and which of them a latency model may be fitted to
"""

from __future__ import annotations

from edge_smsp.pool.descriptors import DescriptorStore, SketchRows
from edge_smsp.pool.entries import BackboneRecord, PoolEntry, TaskRecord
from edge_smsp.pool.measurements import (
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    DeviceMeasurement,
    MeasurementStore,
)
from edge_smsp.pool.schema import SCHEMA_VERSION
from edge_smsp.pool.store import BUSY_TIMEOUT_MS, POOL_ENV_VAR, default_pool_path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DEFAULT_PRECISION",
    "DEFAULT_RUNTIME",
    "POOL_ENV_VAR",
    "SCHEMA_VERSION",
    "BackboneRecord",
    "DeviceMeasurement",
    "Pool",
    "PoolEntry",
    "SketchRows",
    "TaskRecord",
    "default_pool_path",
]


class Pool(DescriptorStore, MeasurementStore):
    """An open pool database (entries, task descriptors and device measurements); use as a context manager or call close()."""

    def __enter__(self) -> Pool:
        return self
