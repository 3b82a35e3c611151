"""The pruned-model pool: one SQLite file holding backbones, tasks, pruned entries and device measurements.

schema.py        tables and migrations (a pool of an older version is migrated when opened)
store.py         the file: opening, schema, transactions, errors, integrity
records.py       what identifies an entry: backbone, task, build key
entry_data.py    an entry's masks, scores and model files, checked and encoded (NewEntry)
entries.py       pruned entries
claims.py        build claims: concurrent builds do each task once
descriptors.py   task descriptors (class prototypes of the backbone) and their sketches
measurements.py  device measurements, and which of them a latency model may be fitted to
"""

from __future__ import annotations

from edge_smsp.pool.claims import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    ClaimResult,
    ClaimStore,
    Writer,
    claiming_writer,
)
from edge_smsp.pool.descriptor_store import DescriptorStore, SketchRows
from edge_smsp.pool.entries import PoolEntry
from edge_smsp.pool.entry_data import NewEntry, new_entry
from edge_smsp.pool.measurements import (
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    DeviceMeasurement,
    MeasurementStore,
)
from edge_smsp.pool.records import BackboneRecord, BuildKey, TaskRecord
from edge_smsp.pool.schema import SCHEMA_VERSION
from edge_smsp.pool.store import BUSY_TIMEOUT_MS, POOL_ENV_VAR, check_pool_file, default_pool_path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_PRECISION",
    "DEFAULT_RUNTIME",
    "POOL_ENV_VAR",
    "SCHEMA_VERSION",
    "BackboneRecord",
    "BuildKey",
    "Claim",
    "ClaimResult",
    "DeviceMeasurement",
    "NewEntry",
    "Pool",
    "PoolEntry",
    "SketchRows",
    "TaskRecord",
    "Writer",
    "check_pool_file",
    "claiming_writer",
    "default_pool_path",
    "new_entry",
]


class Pool(ClaimStore, DescriptorStore, MeasurementStore):
    """An open pool database (entries, build claims, task descriptors and device measurements); use as a context
    manager or call close()."""

    def __enter__(self) -> Pool:
        return self
