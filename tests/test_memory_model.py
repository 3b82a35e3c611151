"""The memory model: the hint until a device is measured, then a line fitted to its measurements that predicts
every measured run at or above what it used, and extends beyond them only with slopes that over-predict."""

from __future__ import annotations

import dataclasses

import pytest

from edge_smsp.devices.memory_model import (
    MEMORY_MARGIN_FLOOR_BYTES,
    MIN_WEIGHT_COPIES,
    SESSION_OVERHEAD_BYTES,
    WEIGHT_COPIES,
    fit_memory_model,
    hint_memory_model,
    memory_point,
)
from edge_smsp.devices.planner import cost_at_ratio, memory_model_for, plan, predict_memory_bytes
from edge_smsp.devices.profiles import MIB, load_profile
from edge_smsp.models import zoo
from edge_smsp.pool import DeviceMeasurement

# Bench reports of efficientnet_lite0 (3-class head, 32 px) on the emulated Raspberry Pi 5 (scripts/arm_device.sh:
# onnxruntime 1.32 aarch64, 4 threads): weights MiB, activations MiB, imported runtime MiB, peak RSS MiB.
ARM_RUNS = (
    (12.87, 0.20, 121.00, 201.78),
    (12.87, 0.20, 118.73, 201.54),
    (5.02, 0.12, 118.71, 179.63),
    (1.32, 0.07, 118.72, 172.77),
)


def _run(weights_mib: float, activations_mib: float, imported_mib: float, peak_mib: float) -> dict:
    """A calibration row as deploy writes it."""
    return {
        "ratio": 0.0,
        "weight_bytes": int(weights_mib * MIB),
        "peak_activation_bytes": int(activations_mib * MIB),
        "imported_rss_mib": imported_mib,
        "peak_rss_mib": peak_mib,
        "batch_size": 1,
    }


def _predicted_mib(model, row: dict) -> float:
    return (
        model.runtime_bytes / MIB
        + (model.above_runtime(row["weight_bytes"], row["peak_activation_bytes"]) + model.margin_bytes) / MIB
    )


def test_fit_predicts_every_measured_run_at_or_above_its_peak_above_the_runtime() -> None:
    rows = [_run(*run) for run in ARM_RUNS]
    profile = load_profile("raspberry_pi_5")
    model = fit_memory_model(profile, rows, imported_rss_mib=119.0)
    assert model.source == "fit" and model.n_measurements == 4 and model.runtime_source == "device"
    assert model.runtime_bytes == int(119.0 * MIB)
    # On this device a session costs far more, and each weight byte less, than the x86-64 hint says.
    assert (
        model.session_bytes > 2 * SESSION_OVERHEAD_BYTES
        and MIN_WEIGHT_COPIES < model.weight_copies < WEIGHT_COPIES
    )
    for row in rows:
        above = row["peak_rss_mib"] - row["imported_rss_mib"]
        assert _predicted_mib(model, row) - model.runtime_bytes / MIB >= above
    assert model.margin_bytes >= MEMORY_MARGIN_FLOOR_BYTES
    # The hint on top of the same runtime under-predicts the unpruned model.
    assert _predicted_mib(hint_memory_model(profile, 119.0), rows[0]) < rows[0]["peak_rss_mib"] - 1


def test_margin_grows_with_the_residuals() -> None:
    quiet = [_run(weights, 0.1, 50.0, 70.0 + 3.0 * weights) for weights in (2.0, 6.0, 10.0, 14.0)]
    noisy = [
        _run(weights, 0.1, 50.0, 70.0 + 3.0 * weights + noise)
        for weights, noise in ((2.0, 6.0), (6.0, -6.0), (10.0, -6.0), (14.0, 6.0))
    ]
    profile = load_profile("localhost")
    assert fit_memory_model(profile, quiet).margin_bytes == MEMORY_MARGIN_FLOOR_BYTES
    fitted = fit_memory_model(profile, noisy)
    assert fitted.margin_bytes >= 2 * 6.0 * MIB * 0.99  # twice the RMS of +-6 MiB residuals
    for row in noisy:
        assert _predicted_mib(fitted, row) >= row["peak_rss_mib"]


def test_one_measured_size_extends_with_the_hint_above_and_one_weight_copy_below() -> None:
    row = _run(10.0, 0.5, 60.0, 120.0)
    model = fit_memory_model(load_profile("localhost"), [row, dict(row, peak_rss_mib=119.0)])
    assert model.source == "offset" and model.weight_range == (row["weight_bytes"],) * 2
    at = model.above_runtime(row["weight_bytes"], row["peak_activation_bytes"])
    assert at == pytest.approx(59.5 * MIB)  # the mean of the two runs
    step = 4 * MIB
    bigger = model.above_runtime(row["weight_bytes"] + step, row["peak_activation_bytes"])
    smaller = model.above_runtime(row["weight_bytes"] - step, row["peak_activation_bytes"])
    assert bigger - at == pytest.approx(WEIGHT_COPIES * step)
    assert at - smaller == pytest.approx(MIN_WEIGHT_COPIES * step)
    # Without info the runtime is the measured one.
    assert model.runtime_source == "measurements" and model.runtime_bytes == int(60.0 * MIB)


def test_runs_without_memory_facts_leave_the_hint() -> None:
    profile = load_profile("localhost")
    old = DeviceMeasurement("localhost", "resnet18", 32, 0.3, 10, 10, 1.0, 1.0, 1.0, peak_rss_mib=90.0)
    assert memory_point(old) is None  # a runtime that did not report its imported footprint
    assert fit_memory_model(profile, [old], 55.0) == hint_memory_model(profile, 55.0)
    hint = hint_memory_model(profile, 55.0)
    assert hint.runtime_bytes == int(55.0 * MIB) and hint.session_bytes == SESSION_OVERHEAD_BYTES
    gpu = load_profile("jetson_nano")  # the profile's runtime_overhead covers runtime and session
    assert hint_memory_model(gpu, 55.0).fixed_bytes == gpu.runtime_overhead_bytes


def test_plan_prunes_further_when_the_device_measured_more_than_the_hint() -> None:
    size = 32
    backbone = zoo.load_backbone("resnet18", num_classes=10, image_size=size)
    profile = dataclasses.replace(load_profile("localhost"), input_size=size, latency_target_ms=1e6)
    full = cost_at_ratio(backbone, size, 0.0)
    hint = hint_memory_model(profile, 50.0)
    profile = dataclasses.replace(
        profile, memory_budget_bytes=predict_memory_bytes(full, profile, hint) + MIB
    )
    # A stored run of the unpruned model, 10 MiB above the hint; weights and activations costed at its ratio.
    stored = [
        DeviceMeasurement(
            profile.name,
            "resnet18",
            size,
            0.0,
            full.params,
            full.macs,
            1.0,
            1.0,
            1.0,
            peak_rss_mib=predict_memory_bytes(full, profile, hint) / MIB + 10.0,
            report={"imported_rss_mib": 50.0, "batch_size": 1},
        )
    ]
    fitted = memory_model_for(profile, backbone, size, stored, imported_rss_mib=50.0)
    assert fitted.source == "offset" and fitted.n_measurements == 1
    assert plan(profile, backbone, input_size=size, memory_model=hint).ratio == 0.0
    chosen = plan(profile, backbone, stored, input_size=size)  # the fit from the stored runs, by default
    assert chosen.ratio > 0.0 and chosen.memory_model.source == "offset"
    assert chosen.memory_bytes == predict_memory_bytes(
        cost_at_ratio(backbone, size, chosen.ratio), profile, fitted
    )
    assert chosen.memory_bytes <= profile.memory_budget_bytes


def test_the_margin_covers_the_largest_residual_of_one_outlier_among_eight_runs() -> None:
    """With 8 runs on a line and one run 20 MiB above it, twice the residuals' RMS is less than that run's own
    residual: the margin is the largest residual, so the fitted model still predicts that run at or above its
    peak (twice the RMS alone would under-predict it by 4.2 MiB)."""
    weights = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0)
    rows = [_run(w, 0.1, 50.0, 70.0 + 3.0 * w + (20.0 if w == 8.0 else 0.0)) for w in weights]
    model = fit_memory_model(load_profile("localhost"), rows)
    assert model.source == "fit" and model.n_measurements == 8
    # Least squares by hand: the outlier raises the intercept by 20/8 and tilts the line by 20 x (8 - 9) / 168.
    slope = 3.0 + 20.0 * (8.0 - 9.0) / 168.0
    intercept_mib = 70.0 - 50.0 - 0.1 + 20.0 / 8.0 - (slope - 3.0) * 9.0
    assert model.weight_copies == pytest.approx(slope, rel=1e-6)
    assert model.session_bytes / MIB == pytest.approx(intercept_mib, abs=1e-4)
    residual = 20.0 - (20.0 / 8.0 + (slope - 3.0) * (8.0 - 9.0))  # 17.38 MiB
    assert model.margin_bytes / MIB == pytest.approx(residual, abs=1e-4)
    outlier = rows[3]
    assert _predicted_mib(model, outlier) >= outlier["peak_rss_mib"]
    assert _predicted_mib(model, outlier) == pytest.approx(outlier["peak_rss_mib"], abs=1e-4)
    for row in rows:
        assert _predicted_mib(model, row) >= row["peak_rss_mib"] - 1e-6
    # Without it the margin would be twice the RMS: 4.2 MiB short of the outlier's peak.
    others = [-(20.0 / 8.0 + (slope - 3.0) * (w - 9.0)) for w in weights if w != 8.0]
    rms = (sum(r * r for r in [*others, residual]) / 8) ** 0.5
    assert residual - max(MEMORY_MARGIN_FLOOR_BYTES / MIB, 2 * rms) == pytest.approx(4.2, abs=0.01)


def test_a_fitted_line_extends_with_the_hints_copies_above_and_one_copy_below_and_counts_the_batch() -> None:
    rows = [_run(*run) for run in ARM_RUNS]
    model = fit_memory_model(load_profile("raspberry_pi_5"), rows, imported_rss_mib=119.0)
    assert MIN_WEIGHT_COPIES < model.weight_copies < WEIGHT_COPIES  # a line between the two extensions
    low, high = model.weight_range
    step = 4 * MIB
    at_high, at_low = model.above_runtime(high, 0), model.above_runtime(low, 0)
    assert model.above_runtime(high + step, 0) - at_high == pytest.approx(WEIGHT_COPIES * step)
    assert at_low - model.above_runtime(low - step, 0) == pytest.approx(MIN_WEIGHT_COPIES * step)
    assert at_high - at_low == pytest.approx(model.weight_copies * (high - low))
    # A run of a batch of 4 counts its activations 4 times; a row without a batch size is one image.
    batched = dict(rows[0], batch_size=4)
    assert memory_point(batched).activation_bytes == 4 * rows[0]["peak_activation_bytes"]
    single = {key: value for key, value in rows[0].items() if key != "batch_size"}
    assert memory_point(single).activation_bytes == rows[0]["peak_activation_bytes"]
