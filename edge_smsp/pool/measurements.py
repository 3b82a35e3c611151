"""Device measurements: benchmarks of pruned models on a device, which calibrate the planner's latency model.

A latency model may only be fitted to comparable measurements: same device, backbone and input size, same
runtime and numeric precision, benchmarked with the same batch size and threads.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import PoolError
from edge_smsp.core.plausible import implausible_value
from edge_smsp.core.precisions import DEFAULT_PRECISION
from edge_smsp.core.ratio import canonical_ratio
from edge_smsp.device_runtime.backends import DEFAULT_BACKEND as DEFAULT_RUNTIME
from edge_smsp.pool.store import PoolStore, dumps, now

_COLUMNS = (
    "device",
    "backbone",
    "image_size",
    "ratio",
    "params",
    "macs",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "peak_rss_mib",
    "runtime",
    "precision",
    "adapt_peak_rss_mib",
)


@dataclass(frozen=True)
class DeviceMeasurement:
    """One benchmark of a pruned model on a device, used to calibrate the planner's latency model."""

    device: str
    backbone: str
    image_size: int
    ratio: float
    params: int
    macs: int  # of one timed run: MACs per image x the batch size
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    peak_rss_mib: float | None = None
    runtime: str = DEFAULT_RUNTIME  # the device runtime that ran the model
    precision: str = DEFAULT_PRECISION  # the numeric precision it ran in
    adapt_peak_rss_mib: float | None = None  # the on-device adaptation's peak (deploy --device-data)
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    id: int | None = None
    created: str | None = None

    @property
    def latency_ms(self) -> dict[str, float]:
        """Latency per percentile, as the planner reads measurements."""
        return {"p50": self.latency_p50_ms, "p90": self.latency_p90_ms, "p99": self.latency_p99_ms}


class MeasurementStore(PoolStore):
    """The pool's device measurements."""

    def add_measurement(self, measurement: DeviceMeasurement) -> int:
        """Store one device benchmark; returns its id."""
        m = measurement
        ratio = canonical_ratio(m.ratio, error=PoolError, what="pruning ratio")
        if not m.device or not m.backbone or not m.runtime or not m.precision:
            raise PoolError("device measurement needs a device, a backbone, a runtime and a precision")
        if m.image_size <= 0:
            raise PoolError(f"device measurement image_size must be > 0, got {m.image_size}")
        problem = implausible_value(_measured(m)) or _cost_problem(m)
        if problem:
            raise PoolError(f"device measurement not stored: {problem}")
        values = (
            m.device,
            m.backbone,
            int(m.image_size),
            ratio,
            int(m.params),
            int(m.macs),
            float(m.latency_p50_ms),
            float(m.latency_p90_ms),
            float(m.latency_p99_ms),
            None if m.peak_rss_mib is None else float(m.peak_rss_mib),
            m.runtime,
            m.precision,
            None if m.adapt_peak_rss_mib is None else float(m.adapt_peak_rss_mib),
        )
        with self._write():
            cursor = self._db.execute(
                f"INSERT INTO device_measurements ({', '.join(_COLUMNS)}, report, created)"
                f" VALUES ({', '.join('?' for _ in _COLUMNS)}, ?, ?)",
                (*values, dumps(dict(m.report), "report"), m.created or now()),
            )
        return int(cursor.lastrowid)

    def measurements(
        self,
        device: str | None = None,
        backbone: str | None = None,
        image_size: int | None = None,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> list[DeviceMeasurement]:
        """Stored device benchmarks in insertion order, optionally filtered."""
        filters = {
            "device": device,
            "backbone": backbone,
            "image_size": image_size,
            "runtime": runtime,
            "precision": precision,
        }
        clauses = [(column, value) for column, value in filters.items() if value is not None]
        where = (" WHERE " + " AND ".join(f"{column} = ?" for column, _ in clauses)) if clauses else ""
        with self._errors():
            rows = self._db.execute(
                f"SELECT id, {', '.join(_COLUMNS)}, report, created FROM device_measurements{where} ORDER BY id",
                [value for _, value in clauses],
            ).fetchall()
        found = [
            DeviceMeasurement(
                id=row[0],
                **dict(zip(_COLUMNS, row[1:-2], strict=True)),
                report=self._loads(row[-2], f"measurement {row[0]}'s report", dict),
                created=row[-1],
            )
            for row in rows
        ]
        for measurement in found:  # one altered row would bend every plan fitted to it
            problem = implausible_value(_measured(measurement)) or _cost_problem(measurement)
            if problem:
                raise PoolError(
                    f"device measurement {measurement.id} of this pool is not plausible: {problem}; delete it "
                    f"(sqlite3 {shlex.quote(str(self.path))} 'DELETE FROM device_measurements WHERE id = {measurement.id}') "
                    "and deploy again"
                )
        return found

    def comparable_measurements(
        self,
        *,
        device: str,
        backbone: str,
        image_size: int,
        batch_size: int,
        threads: int,
        runtime: str = DEFAULT_RUNTIME,
        precision: str = DEFAULT_PRECISION,
    ) -> list[DeviceMeasurement]:
        """The measurements a latency model of this device, model, runtime and precision may be fitted to."""
        return [
            row
            for row in self.measurements(
                device=device, backbone=backbone, image_size=image_size, runtime=runtime, precision=precision
            )
            # Batching and threads change the fixed cost per run: one line cannot fit both regimes.
            if row.report.get("batch_size", 1) == batch_size and row.report.get("threads", threads) == threads
        ]


def _measured(measurement: DeviceMeasurement) -> dict[str, Any]:
    return {
        "latency_p50_ms": measurement.latency_p50_ms,
        "latency_p90_ms": measurement.latency_p90_ms,
        "latency_p99_ms": measurement.latency_p99_ms,
        "peak_rss_mib": measurement.peak_rss_mib,
        "adapt_peak_rss_mib": measurement.adapt_peak_rss_mib,
    }


def _cost_problem(measurement: DeviceMeasurement) -> str | None:
    """A benchmarked model has parameters and computes: a count of 0 would make its latency per MAC infinite."""
    for name in ("params", "macs"):
        value = getattr(measurement, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return f"{name} {shown(value)} (a benchmarked model has more than 0)"
    return None
