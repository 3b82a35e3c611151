"""Planner: costs of really pruned models, latency model fitting, smallest fitting ratio, impossible budgets."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from edge_smsp.core.errors import PlanError
from edge_smsp.devices.planner import (
    RUNTIME_OVERHEAD_BYTES,
    WEIGHT_COPIES,
    Measurement,
    cost_at_ratio,
    fit_latency_model,
    measure_cost,
    plan,
    predict_memory_bytes,
    structure_hash,
)
from edge_smsp.devices.profiles import load_profile
from edge_smsp.models import zoo

SIZE = 32
RATIOS = (0.0, 0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    return zoo.load_backbone("resnet18", num_classes=10, image_size=SIZE)


@pytest.fixture(scope="module")
def costs(backbone: nn.Module) -> dict[float, object]:
    return {ratio: cost_at_ratio(backbone, SIZE, ratio) for ratio in RATIOS}


def _profile(**changes):
    profile = load_profile("localhost")
    return dataclasses.replace(profile, input_size=SIZE, **changes)


def test_more_pruning_means_fewer_macs_params_and_memory(backbone: nn.Module, costs: dict) -> None:
    ordered = [costs[ratio] for ratio in RATIOS]
    for smaller, larger in zip(ordered[1:], ordered[:-1], strict=True):
        assert smaller.macs < larger.macs
        assert smaller.params < larger.params
        assert smaller.weight_bytes == 4 * smaller.params
        assert smaller.peak_activation_bytes <= larger.peak_activation_bytes
    full = costs[0.0]
    assert full.params == sum(parameter.numel() for parameter in backbone.parameters())
    # resnet18 is 1.82 GMAC at 224 px; convolution cost scales with the pixel count.
    assert full.macs == pytest.approx(1.8136e9 * (SIZE / 224) ** 2, rel=0.02)
    # The input image and the first convolution's output are alive together.
    assert full.peak_activation_bytes >= 4 * (3 * SIZE * SIZE + 64 * (SIZE // 2) ** 2)


def test_cost_comes_from_the_pruned_model_and_is_cached(backbone: nn.Module, costs: dict) -> None:
    from edge_smsp.models.prune import prune

    pruned, summary = prune(backbone, ratio=0.5, image_size=SIZE)
    direct = measure_cost(pruned, SIZE, ratio=0.5)
    assert direct == costs[0.5]
    assert summary.params_after == costs[0.5].params
    assert cost_at_ratio(backbone, SIZE, 0.5) is costs[0.5]
    assert structure_hash(backbone) != structure_hash(pruned)


def test_plan_costs_follow_the_prune_rounding(backbone: nn.Module, costs: dict) -> None:
    """With --round-to 1 the planner must cost the model prune will really build, not the rounded one."""
    from edge_smsp.models.prune import prune

    unrounded = cost_at_ratio(backbone, SIZE, 0.3, round_to=1)
    pruned, _ = prune(backbone, ratio=0.3, image_size=SIZE, round_to=1)
    assert unrounded == measure_cost(pruned, SIZE, ratio=0.3)
    assert unrounded.params != cost_at_ratio(backbone, SIZE, 0.3).params
    profile = _profile(memory_budget_bytes=predict_memory_bytes(unrounded, _profile()), latency_target_ms=1e6)
    result = plan(profile, backbone, ratios=(0.3,), round_to=1)
    assert result.ratio == 0.3 and result.memory_bytes == predict_memory_bytes(unrounded, profile)
    with pytest.raises(
        PlanError
    ):  # rounded to a multiple of 8 (here 45 -> 48), the same ratio no longer fits
        plan(profile, backbone, ratios=(0.3,))


def test_batched_plans_fit_and_predict_per_timed_run(backbone: nn.Module, costs: dict) -> None:
    """Measurements without MACs are costed per timed run (per image x batch), like the predictions."""
    profile = _profile(batch_size=4, latency_target_ms=1e6)
    measurements = [{"ratio": 0.0, "latency_ms": 10.0}, {"ratio": 0.5, "latency_ms": 6.0}]
    result = plan(profile, backbone, measurements, ratios=RATIOS)
    assert result.latency_model.source == "fit"
    for ratio, latency in ((0.0, 10.0), (0.5, 6.0)):
        assert result.latency_model.predict(4 * costs[ratio].macs) == pytest.approx(latency, rel=1e-6)
    chosen = {candidate.ratio: candidate for candidate in result.candidates}[result.ratio]
    assert chosen.predicted_latency_ms == pytest.approx(
        result.latency_model.predict(4 * costs[result.ratio].macs)
    )
    single = _profile(batch_size=1, latency_target_ms=1e6)
    assert plan(single, backbone, measurements, ratios=RATIOS).latency_model.ms_per_gmac == pytest.approx(
        4 * result.latency_model.ms_per_gmac, rel=1e-6
    )


def test_vit_macs_include_attention() -> None:
    model = zoo.load_backbone("deit_small_patch16_224", num_classes=10, image_size=SIZE)
    cost = measure_cost(model, SIZE)
    tokens, width, depth = (SIZE // 16) ** 2 + 1, 384, 12
    linear = depth * tokens * (4 * width * width + 8 * width * width)
    attention = depth * 2 * tokens * tokens * width
    assert cost.macs >= linear + attention
    assert cost.macs == pytest.approx(
        linear + attention + 3 * 16 * 16 * width * (SIZE // 16) ** 2 + width * 10, rel=0.01
    )


def test_memory_model_adds_overhead_weights_and_activations(costs: dict) -> None:
    profile = _profile()
    cost = costs[0.25]
    expected = RUNTIME_OVERHEAD_BYTES + WEIGHT_COPIES * cost.weight_bytes + cost.peak_activation_bytes
    assert predict_memory_bytes(cost, profile) == int(expected)
    gpu = _profile(runtime_overhead_bytes=600 * 1024**2, batch_size=4)
    assert predict_memory_bytes(cost, gpu) == int(
        600 * 1024**2 + WEIGHT_COPIES * cost.weight_bytes + 4 * cost.peak_activation_bytes
    )


def test_smallest_fitting_ratio_is_chosen(backbone: nn.Module, costs: dict) -> None:
    memory = {ratio: predict_memory_bytes(costs[ratio], _profile()) for ratio in RATIOS}
    profile = _profile(memory_budget_bytes=memory[0.5] + 1, latency_target_ms=1e6)
    for search in ("grid", "bisect"):
        result = plan(profile, backbone, ratios=RATIOS, search=search)
        assert result.ratio == 0.5
        assert result.memory_bytes == memory[0.5] <= profile.memory_budget_bytes
        tried = {candidate.ratio: candidate for candidate in result.candidates}
        assert not tried[0.25].fits_memory
        assert tried[0.5].fits
    grid = plan(profile, backbone, ratios=RATIOS, search="grid")
    assert [candidate.ratio for candidate in grid.candidates] == [0.0, 0.25, 0.5]
    payload = grid.to_dict()
    assert payload["ratio"] == 0.5 and payload["latency_model"]["source"] == "hint"
    assert len(payload["candidates"]) == 3


def test_latency_target_binds_too(backbone: nn.Module, costs: dict) -> None:
    latency = {ratio: 0.5 + costs[ratio].macs / 1e9 * 50 for ratio in RATIOS}
    measurements = [Measurement(ratio=r, latency_ms={"p90": latency[r]}) for r in (0.0, 0.75)]
    profile = _profile(memory_budget_bytes=10 * 1024**3, latency_target_ms=latency[0.25] - 1e-3)
    result = plan(profile, backbone, measurements, ratios=RATIOS)
    assert result.ratio == 0.5
    assert result.latency_model.source == "fit"
    assert result.predicted_latency_ms == pytest.approx(latency[0.5], rel=1e-6)


def test_impossible_budget_reports_best_achievable(backbone: nn.Module, costs: dict) -> None:
    profile = _profile(memory_budget_bytes=16 * 1024**2, latency_target_ms=1e-4)
    with pytest.raises(PlanError) as caught:
        plan(profile, backbone, ratios=RATIOS)
    text = str(caught.value)
    best_memory = predict_memory_bytes(costs[0.75], profile) / 1024**2
    assert f"{best_memory:.1f} MiB (budget 16.0 MiB)" in text
    assert "best achievable (ratio 0.75)" in text
    assert "raise memory_budget" in text and "raise latency_target_ms" in text
    assert "\n" not in text


def test_fitted_latency_model_reproduces_measurements(backbone: nn.Module, costs: dict) -> None:
    profile = _profile()
    intercept, per_gmac = 1.7, 42.0
    records = [
        {"ratio": ratio, "latency_ms": {"p50": 0.0, "p90": intercept + per_gmac * costs[ratio].macs / 1e9}}
        for ratio in (0.0, 0.25, 0.5)
    ]
    model = fit_latency_model(profile, records, macs_at_ratio=lambda r: cost_at_ratio(backbone, SIZE, r).macs)
    assert model.source == "fit" and model.n_measurements == 3
    assert model.intercept_ms == pytest.approx(intercept, abs=1e-6)
    assert model.ms_per_gmac == pytest.approx(per_gmac, rel=1e-6)
    for record in records:
        macs = cost_at_ratio(backbone, SIZE, record["ratio"]).macs
        assert model.predict(macs) == pytest.approx(record["latency_ms"]["p90"], rel=1e-6)


def test_one_measurement_scales_and_none_uses_hint(costs: dict) -> None:
    profile = _profile()
    macs = costs[0.25].macs
    scaled = fit_latency_model(profile, [{"ratio": 0.25, "macs": macs, "latency_ms": {"p90": 8.0}}])
    assert scaled.source == "scaled"
    assert scaled.predict(macs) == pytest.approx(8.0)
    assert scaled.predict(2 * macs) == pytest.approx(16.0)
    hint = fit_latency_model(profile, [])
    assert hint.source == "hint"
    assert hint.predict(2e9) == pytest.approx(
        profile.latency_overhead_ms + 2e9 / 1e9 / profile.throughput_gmacs * 1000
    )
    # Measurements without the profile's percentile are not used.
    assert (
        fit_latency_model(profile, [{"ratio": 0.25, "macs": macs, "latency_ms": {"p50": 3.0}}]).source
        == "hint"
    )


def test_bad_inputs_are_plan_errors(backbone: nn.Module) -> None:
    with pytest.raises(PlanError, match="ratios must be in"):
        plan(_profile(), backbone, ratios=(0.0, 1.0))
    with pytest.raises(PlanError, match="search must be one of"):
        plan(_profile(), backbone, search="random")
    with pytest.raises(PlanError, match="needs ratio and latency_ms"):
        fit_latency_model(_profile(), [{"latency_ms": 3.0}])


def test_a_noisy_fit_falls_back_to_a_line_through_the_origin(backbone: nn.Module, costs: dict) -> None:
    """A more-pruned model measured slower (noise) tilts the least-squares line: slope <= 0 or intercept < 0. The
    fit then falls back to latency = slope x GMACs through the origin, least squares: sum(g l) / sum(g g)."""
    profile = _profile()
    # 2 GMACs at 10 ms, 1 GMAC (more pruned) at 12 ms: the line's slope would be -2 ms per GMAC.
    slower_when_pruned = [
        {"ratio": 0.0, "macs": 2_000_000_000, "latency_ms": {"p90": 10.0}},
        {"ratio": 0.5, "macs": 1_000_000_000, "latency_ms": {"p90": 12.0}},
    ]
    model = fit_latency_model(profile, slower_when_pruned)
    assert (model.source, model.n_measurements, model.intercept_ms) == ("fit", 2, 0.0)
    assert model.ms_per_gmac == pytest.approx((2 * 10.0 + 1 * 12.0) / (2 * 2 + 1 * 1))  # 6.4
    assert model.predict(3e9) == pytest.approx(19.2)
    # 1 GMAC at 1 ms, 2 GMACs at 5 ms: a positive slope (4) but a negative intercept (-3 ms).
    below_zero = [
        {"ratio": 0.5, "macs": 1_000_000_000, "latency_ms": {"p90": 1.0}},
        {"ratio": 0.0, "macs": 2_000_000_000, "latency_ms": {"p90": 5.0}},
    ]
    model = fit_latency_model(profile, below_zero)
    assert model.intercept_ms == 0.0
    assert model.ms_per_gmac == pytest.approx((1 * 1.0 + 2 * 5.0) / 5)  # 2.2
    # A small positive intercept and a shallow slope are no noise: the line is kept (0.5 ms + 0.5 ms per GMAC).
    shallow = [dict(below_zero[0], latency_ms={"p90": 1.0}), dict(below_zero[1], latency_ms={"p90": 1.5})]
    model = fit_latency_model(profile, shallow)
    assert model.intercept_ms == pytest.approx(0.5) and model.ms_per_gmac == pytest.approx(0.5)
    # The planner plans with that line: predictions grow with the MACs again and are never negative.
    measured = [
        {"ratio": 0.0, "latency_ms": {"p90": 10.0}},
        {"ratio": 0.5, "latency_ms": {"p90": 12.0}},
    ]
    gmacs = {ratio: costs[ratio].macs / 1e9 for ratio in RATIOS}
    slope = (gmacs[0.0] * 10.0 + gmacs[0.5] * 12.0) / (gmacs[0.0] ** 2 + gmacs[0.5] ** 2)
    relaxed = _profile(memory_budget_bytes=10 * 1024**3, latency_target_ms=slope * gmacs[0.25] + 1e-3)
    result = plan(relaxed, backbone, measured, ratios=RATIOS)
    assert result.latency_model.intercept_ms == 0.0
    assert result.latency_model.ms_per_gmac == pytest.approx(slope, rel=1e-9)
    assert result.ratio == 0.25  # 0.0 is predicted too slow, 0.25 just fits
    tried = {candidate.ratio: candidate for candidate in result.candidates}
    assert tried[0.25].predicted_latency_ms == pytest.approx(slope * gmacs[0.25], rel=1e-9)


def test_nearly_equal_macs_are_one_operating_point_and_the_plan_keeps_the_full_model(
    backbone: nn.Module, costs: dict
) -> None:
    """Two runs whose MACs differ by less than 0.1 % are one operating point: latency is scaled through it, not
    fitted with a line (which noise would make arbitrarily steep). The plan reports the unpruned candidate."""
    profile = _profile()
    close = [
        {"ratio": 0.0, "macs": 2_000_000_000, "latency_ms": {"p90": 10.0}},
        {"ratio": 0.0, "macs": 2_001_000_000, "latency_ms": {"p90": 12.0}},
    ]
    model = fit_latency_model(profile, close)
    assert (model.source, model.intercept_ms) == ("scaled", 0.0)
    assert model.ms_per_gmac == pytest.approx(11.0 / 2.0005)
    apart = [dict(close[0]), dict(close[1], macs=2_004_000_000)]  # 0.2 % apart: a line
    assert fit_latency_model(profile, apart).source == "fit"
    result = plan(_profile(memory_budget_bytes=10 * 1024**3, latency_target_ms=1e6), backbone, ratios=RATIOS)
    assert result.ratio == 0.0 and result.full_model is not None
    assert result.full_model == result.chosen and result.full_model.macs == costs[0.0].macs
