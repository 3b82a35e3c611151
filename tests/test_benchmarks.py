"""Every benchmark's smallest setting (--smoke: 2 pool tasks, 1 new task, a few iterations, 32 px) end to end."""

import json

import pytest

from benchmarks import (
    accuracy,
    adapt_time,
    budgets,
    fleet,
    heldout,
    heldout_choices,
    mechanism,
    planner_check,
    report,
    similarity_cost,
    speed,
    tuning,
)
from benchmarks.common import (
    result_path,
)
from benchmarks.settings import (
    SETTINGS,
)
from benchmarks.stats import (
    pack_mask,
    spearman,
    unpack_mask,
)
from benchmarks.study import (
    Study,
)
from benchmarks.workers import (
    group_sizes,
)
from tests.sshd_fixture import SSHD

SMOKE = SETTINGS["smoke"]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """One results directory: the benchmarks share its pool and runs, as they do in the real study."""
    return tmp_path_factory.mktemp("bench-results")


def run_cli(module, results_dir, *extra):
    assert module.main(["--smoke", "--results-dir", str(results_dir), "--workers", "1", *extra]) == 0
    with open(result_path(results_dir, module.__name__.split(".")[-1], "smoke"), encoding="utf-8") as handle:
        return json.load(handle)


def test_accuracy_builds_the_pool_and_runs_every_method(results_dir):
    payload = run_cli(accuracy, results_dir)
    methods = {row["method"] for row in payload["summary"]}
    assert methods == {"smsp", "smsp-random", "random", "magnitude", "taylor", "scratch"}
    assert len(payload["pool"]["entries"]) == SMOKE.pool_tasks
    assert len(payload["new_tasks"]) == SMOKE.new_tasks
    assert not {tuple(c) for c in payload["new_tasks"]} & {tuple(c) for c in payload["pool_tasks"]}
    for row in payload["summary"]:
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0
        assert row["params_after"] < row["params_before"]
    scratch = next(row for row in payload["summary"] if row["method"] == "scratch")
    assert scratch["iters"] == SMOKE.scratch_iters
    assert {c["other"] for c in payload["paired_vs_smsp"]} >= {"scratch", "taylor", "magnitude"}
    smsp_run = next(run for run in payload["runs"] if run["method"] == "smsp")
    assert sum(task["selected"] for task in smsp_run["similar_tasks"]) == SMOKE.pool_tasks
    assert smsp_run["seconds"]["export"] > 0 and smsp_run["export"]["max_abs_diff"] <= 1e-4
    assert payload["machine"]["cores_usable"] >= 1 and payload["machine"]["versions"]["torch"]


def test_a_rerun_reuses_every_cached_run(results_dir):
    study = Study("smoke", results_dir, workers=1)
    before = dict(study.cache.runs)
    records = study.ensure(study.core_specs(), "again")
    assert [r["finished"] for r in records] == [before[spec.key]["finished"] for spec in study.core_specs()]


def test_tuning_runs_only_on_pool_tasks(results_dir):
    payload = run_cli(tuning, results_dir)
    pool_ids = {f"fashion-mnist:{'-'.join(map(str, c))}" for c in Study("smoke", results_dir).pool_classes}
    assert set(payload["tasks"]) <= pool_ids
    assert payload["selected_variant"][0] == "smsp"
    # Leave-one-out: the task's own entry is not among the candidates.
    for run in payload["runs"]:
        assert run["task_id"] not in {similar["task_id"] for similar in run["similar_tasks"]}


def test_budgets_cut_one_score_mask_at_every_ratio(results_dir):
    payload = run_cli(budgets, results_dir)
    smsp_ratios = {row["ratio"] for row in payload["summary"] if row["method"] == "smsp"}
    assert smsp_ratios >= set(SMOKE.budget_ratios)
    checks = payload["one_mask_checks"]
    assert checks and all(check["same_scores"] and check["nested_masks"] for check in checks)


def test_mechanism_compares_mask_overlap_with_leep(results_dir):
    payload = run_cli(mechanism, results_dir)
    n = SMOKE.pool_tasks
    assert payload["pairs"] == n * (n - 1) // 2
    matrix = payload["leep_matrix"]
    assert len(matrix) == n and all(len(row) == n and all(value <= 0 for value in row) for row in matrix)
    assert 0.0 < payload["iou"]["mean"] <= 1.0
    assert 0.0 < payload["iou_chance"] < 1.0
    assert set(payload["iou_per_group_mean"]) == set(group_sizes("smoke"))


def test_adapt_time_reports_both_methods_end_to_end(results_dir):
    payload = run_cli(adapt_time, results_dir)
    rows = {row["method"]: row for row in payload["rows"]}
    assert set(rows) == {"smsp", "scratch"}
    for row in rows.values():
        parts = sum(
            row["seconds"][part]["mean"] for part in ("similarity", "pruning", "finetuning", "export")
        )
        assert row["seconds_end_to_end"]["mean"] >= parts * 0.99
    assert rows["smsp"]["seconds"]["similarity"]["mean"] > 0
    assert payload["speedup_end_to_end"] > 0


def test_similarity_cost_measures_small_pools_and_extrapolates_large_ones(results_dir):
    payload = run_cli(similarity_cost, results_dir)
    rows = {row["entries"]: row for row in payload["rows"]}
    assert set(rows) == set(SMOKE.simcost_sizes)
    assert rows[2]["measured"] and not rows[4]["measured"]
    # The large pool is ranked on a sample of entries and scaled; timings themselves are not asserted (noisy).
    assert rows[4]["entries_ranked"] == 2 and rows[4]["seconds_rank"] > 0
    assert payload["seconds_per_entry"] > 0
    assert set(payload["per_entry_breakdown"]) == {"materialise", "load_pruned", "forward", "leep"}


def test_similarity_scale_measures_recall_wall_time_and_the_shortlists_choice(results_dir):
    from benchmarks import similarity_scale

    settings = similarity_scale.SETTINGS["smoke"]
    payload = run_cli(similarity_scale, results_dir)
    assert payload["real_tasks"] == 45  # every 2-class Fashion-MNIST task
    recall = {(row["width"], row["shortlist"]): row for row in payload["recall"]}
    assert set(recall) == {(w, m) for w in settings.widths for m in settings.shortlists}
    for width in settings.widths:  # a longer shortlist holds at least what a shorter one does
        small, large = (recall[(width, m)] for m in sorted(settings.shortlists))
        assert 0 <= small["recall_top5"] <= large["recall_top5"] <= 1
        assert 0 <= small["recall_top1"] <= large["recall_top1"] <= 1
    paths = {(row["entries"], row["path"]) for row in payload["sizes"]}
    assert paths == {(n, p) for n in settings.pool_sizes for p in ("shortlist", "exhaustive")} | {
        (4, "leep exhaustive")
    }
    assert all(row["cold_s"] > 0 and row["pool_bytes_per_entry"] > 100_000 for row in payload["sizes"])
    # 12 tasks fit inside the default shortlist: both paths rank every entry, so they pick and train alike.
    for row in payload["accuracy"]:
        assert row["shortlist_top"] == row["exhaustive_top"] is not None
        assert row["shortlist_accuracy"] == row["exhaustive_accuracy"]
    assert [row["tasks"] for row in payload["search"]] == list(settings.search_sizes)


def test_speed_measures_latency_directly_and_through_the_runtime(results_dir):
    payload = run_cli(speed, results_dir)
    rows = payload["groups"]["efficientnet_lite0@32"]["rows"]
    assert [row["ratio"] for row in rows] == list(SMOKE.speed_ratios)
    assert rows[1]["macs"] < rows[0]["macs"] and rows[1]["params"] < rows[0]["params"]
    for row in rows:
        assert row["direct_ms"]["p50"] > 0 and row["direct_ms"]["p90"] >= row["direct_ms"]["p50"]
        assert row["runtime_ms"]["p50"] > 0
    assert rows[0]["speedup_p50"] == pytest.approx(1.0)


def test_planner_check_compares_every_prediction_with_the_device(results_dir):
    assert planner_check.main(["--smoke", "--results-dir", str(results_dir)]) == 0
    payload = json.loads(result_path(results_dir, "planner_check", "smoke").read_text(encoding="utf-8"))
    group = payload["groups"]["efficientnet_lite0@32"]
    rows = group["rows"]
    assert [row["ratio"] for row in rows] == list(planner_check.SETTINGS["smoke"].ratios)
    assert (
        [row["ratio"] for row in rows if row["in_calibration"]]
        == group["calibration_ratios"]
        == [0.0, 0.4, 0.7]
    )
    fitted = group["latency_model_calibrated"]
    assert fitted["source"] == "fit" and fitted["n_measurements"] == 3
    for row in rows:
        assert row["measured_ms"]["p50"] > 0 and row["peak_rss_mib"] > 0
        expected = fitted["intercept_ms"] + fitted["ms_per_gmac"] * row["macs"] / 1e9
        assert row["predicted_calibrated_ms"] == pytest.approx(expected)
        measured = row["measured_ms"][group["percentile"]]
        assert row["error_calibrated"] == pytest.approx((expected - measured) / measured)
        if row["in_calibration"]:  # the fitted memory model's margin covers every point it was fitted to
            assert row["predicted_memory_fitted_mib"] >= row["peak_rss_mib"]
    assert rows[0]["macs"] > rows[-1]["macs"]
    assert group["held_out_abs_error_calibrated"]["median"] is not None


@pytest.mark.skipif(not SSHD.exists(), reason="the SSH curve needs /usr/sbin/sshd (openssh-server)")
def test_fleet_counts_shared_passes_and_splits_host_from_device_work(results_dir, tmp_path):
    payload = run_cli(fleet, results_dir)
    (record,) = payload["comparison"]
    shared = record["fleet"]["shared"]
    assert (shared["similarity_passes"], shared["scoring_passes"], shared["deployed"]) == (1, 1, 3)
    assert [run["similarity_passes"] for run in record["separate"]] == [1, 1, 1]
    ratios = [device["ratio"] for device in record["fleet"]["devices"]]
    assert ratios == [run["ratio"] for run in record["separate"]] and ratios[1] == ratios[2] != ratios[0]
    assert shared["adaptations"] == shared["exports"] == 2 and payload["ratio_wall"][0] > 0
    curve = payload["curve"]
    assert [row["devices"] for row in curve] == list(fleet.SETTINGS["smoke"].ssh_devices)
    for row in curve:
        assert row["deployed"] == row["devices"] and row["shared"]["adaptations"] == 1
        assert row["device_cpu_s"] > 0 and row["per_device_parts_mean_s"]["bench"] > 0
    text = fleet.section({"fleet": payload}, tmp_path)
    assert "| 1 | 1 fleet deploy |" in text and (tmp_path / "fleet_ssh.png").stat().st_size > 1000


def test_report_writes_markdown_with_verdicts_and_plots(results_dir):
    out = results_dir / "RESULTS.md"
    assert report.main(["--results-dir", str(results_dir), "--mode", "smoke", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## Headline" in text and "## Verdicts" in text
    assert "## 7. Planner predictions against the device" in text
    for claim in ("similar tasks share", "SMSP@100", "one score mask"):
        assert claim in text
    for plot in (
        "accuracy_vs_ratio",
        "mechanism_iou_vs_leep",
        "speed_vs_macs",
        "adapt_time",
        "similarity_cost",
    ):
        assert (results_dir / "plots" / f"{plot}.png").stat().st_size > 1000
        assert f"plots/{plot}.png" in text


def test_mask_packing_and_spearman():
    sizes = group_sizes("smoke")
    first_key = next(iter(sizes))
    masks = unpack_mask(pack_mask({first_key: [0, 2]}, sizes), sizes)
    assert masks[first_key][:3].tolist() == [True, False, True]
    assert sum(int(mask.sum()) for mask in masks.values()) == 2
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_heldout_claims_pair_runs_by_task_and_seed():
    def run(variant, task, seed, value, iters=100):
        return {
            "variant": variant,
            "task": task,
            "seed": seed,
            "ratio": 0.5,
            "iters": iters,
            "val_accuracy": value,
        }

    tasks = [f"{index}-{index + 1}-{index + 2}" for index in range(4)]
    runs = []
    for position, task in enumerate(tasks):
        for seed in (0, 1):
            scratch = 0.90 + 0.01 * position
            runs.append(run(heldout.REFERENCE, task, seed, scratch, iters=1000))
            # Below scratch by 1 pt on every run; above every criterion by 5 pt.
            runs.append(run(heldout.DEFAULT, task, seed, scratch - 0.01))
            for criterion in heldout.CRITERIA:
                runs.append(run(criterion, task, seed, scratch - 0.06))
    against_scratch, against_criteria = heldout.claims({"runs": runs})
    assert against_scratch[1] == "does not hold here"
    assert "r=0.5 vs scratch@1000: -1.00 pt (better in 0/8 runs, p = 0.1250)" in against_scratch[2]
    # 4 tasks cannot reach p < 0.05 (the smallest sign-flip p is 1/8)
    assert against_criteria[1].startswith("holds on the mean; within noise (p ≥ 0.05) for r=0.5 vs taylor")
    assert against_criteria[2].count("+5.00 pt (better in 8/8 runs, p = 0.1250)") == len(heldout.CRITERIA)
    assert heldout.claims(None) == []
    # Long training at batch 128, on seed 0 only, 2 pt below the default: above one reference, below the other.
    for position, task in enumerate(tasks):
        runs.append(run(heldout.REFERENCE_AT_BATCH_128, task, 0, 0.87 + 0.01 * position, iters=1000))
    against_scratch = heldout.claims({"runs": runs})[0]
    assert (
        against_scratch[1]
        == "level: below on the mean only within noise (p ≥ 0.05), for r=0.5 vs scratch@1000"
    )
    assert "r=0.5 vs scratch@1000, batch 128: +2.00 pt (better in 4/4 runs, p = 0.1250)" in against_scratch[2]


def test_tried_after_probe_compares_each_change_with_the_default_task_by_task():
    pool_tasks = [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    label, variant = next(iter(heldout_choices.TRIED_AFTER_PROBE.items()))
    loo_runs = {}
    for position, classes in enumerate(pool_tasks):
        task = "-".join(map(str, classes))
        for name, value in ((heldout_choices.DEFAULT_LOO, 0.90), (variant, 0.90 + 0.01 * (position - 1))):
            loo_runs[f"px32|{name}|r0.5|it100|{task}"] = {
                "val_accuracy": value,
                "seconds": {"total": 10.0},
            }
    (row,) = heldout_choices.tried_after_probe(loo_runs, pool_tasks)
    assert row["change"] == label
    assert row["difference"] == pytest.approx(0.0) and (row["better"], row["worse"]) == (1, 1)
    assert row["accuracy"] == pytest.approx(90.0) and row["p"] == pytest.approx(1.0)
    del loo_runs[f"px32|{variant}|r0.5|it100|0-1-2"]  # a change not run on every pool task is left out
    assert heldout_choices.tried_after_probe(loo_runs, pool_tasks) == []


def test_stored_heldout_runs_take_todays_names_once(tmp_path):
    from benchmarks.research import common
    from benchmarks.research import heldout as driver

    results = common.Results("heldout")
    results.path = tmp_path / "heldout.jsonl"
    for variant, value in (
        ("smsp (default)", 0.93),
        ("smsp (default), batch 128", 0.95),
        ("scratch@1000", 0.94),
    ):
        results.put({"key": f"px32|{variant}|r0.5|it100|0-1-3|s0", "variant": variant, "val_accuracy": value})
    driver.rename_stored_runs(results)
    renamed = results.load()
    assert {key: run["variant"] for key, run in renamed.items()} == {
        "px32|smsp, batch 32|r0.5|it100|0-1-3|s0": "smsp, batch 32",
        "px32|smsp (default)|r0.5|it100|0-1-3|s0": "smsp (default)",
        "px32|scratch@1000|r0.5|it100|0-1-3|s0": "scratch@1000",
    }
    assert renamed["px32|smsp (default)|r0.5|it100|0-1-3|s0"]["val_accuracy"] == 0.95
    assert (tmp_path / "heldout.before-rename.jsonl").read_text().count("\n") == 3
    with pytest.raises(SystemExit, match="already migrated"):  # a second pass would rename the new default
        driver.rename_stored_runs(results)
    assert set(results.load()) == set(renamed)
    assert set(driver.RENAMED.values()) <= set(driver.VARIANTS)
    assert "smsp (default), batch 128" in driver.OLD_ONLY and "smsp (default)" not in driver.OLD_ONLY


def test_evidence_keeps_the_stored_rows_a_later_run_did_not_redo():
    from benchmarks import evidence

    def row(variant, pairs):
        return {"variant": variant, "size": 32, "ratio": 0.5, "pairs": pairs}

    stored = {"rows": [row("light tier", 8), row("light tier, K0", 8)]}
    study = evidence.merged_study(stored, {"rows": [row("light tier", 24), row("torch tier", 24)]})
    assert [(r["variant"], r["pairs"]) for r in study["rows"]] == [
        ("light tier", 24),
        ("light tier, K0", 8),
        ("torch tier", 24),
    ]
    comparisons = evidence.merged(
        {"comparisons": [row("control: random entry", 24)], "light_tier": [1]},
        {"comparisons": [row("light tier", 24)], "light_tier": []},
    )
    assert [r["variant"] for r in comparisons["comparisons"]] == ["control: random entry", "light tier"]
    assert comparisons["light_tier"] == [1]  # an empty fresh list keeps the stored one


def test_evidence_pairs_each_pool_budget_on_its_own_and_keeps_both():
    from benchmarks import evidence

    def run(variant, task, accuracy, iters=100):
        return {"variant": variant, "size": 64, "ratio": 0.5, "task": task, "seed": 0, "iters": iters,
                "val_accuracy": accuracy}  # fmt: skip

    runs = [
        run("smsp (default)", "a", 0.90),
        run("smsp (default)", "b", 0.80),
        run("control: random entry", "a", 0.85),
        run("control: random entry", "b", 0.85),
        run("scratch@1000, batch 128", "a", 0.95, iters=1000),  # a reference: its 1000 iterations count
        run("scratch@1000, batch 128", "b", 0.90, iters=1000),
        run("smsp (default)", "c", 0.99, iters=50),  # not at the defaults' 100 iterations: left out
    ]
    small = evidence.payload_from(runs, [], pool_iters=100)["comparisons"]
    by_variant = {row["variant"]: row for row in small}
    assert set(by_variant) == {"control: random entry", "scratch@1000, batch 128"}
    assert (
        by_variant["control: random entry"]["pairs"] == 2
        and by_variant["control: random entry"]["pool_iters"] == 100
    )
    assert abs(by_variant["scratch@1000, batch 128"]["difference"] - 0.075) < 1e-9
    large = [{**row, "pool_iters": 1000, "pairs": 24} for row in small]
    merged = evidence.merged({"comparisons": large}, {"comparisons": small})["comparisons"]
    assert [
        (row["pool_iters"], row["pairs"]) for row in merged if row["variant"] == "control: random entry"
    ] == [
        (1000, 24),
        (100, 2),
    ]
    assert "| control: random entry | 64 px | @100 | 0.5 | 2 (1 seed) |" in evidence.section(
        {"comparisons": merged}
    )
