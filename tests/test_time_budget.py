"""`adapt --time-budget`: fine-tuning's batch and iterations measured to fit the seconds given, on a real task
and model; a budget too small for one iteration is one line and exit 2, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_smsp.cli import main

TASK = ("--classes", "0,2,4", "--image-size", "32", "--train-per-class", "40", "--val-per-class", "20")


def _adapt(tmp_path: Path, budget: str, out: str) -> list[str]:
    return [
        "adapt",
        *TASK,
        "--ratio",
        "0.5",
        "--method",
        "magnitude",
        "--time-budget",
        budget,
        "--out",
        str(tmp_path / out),
    ]


def test_a_time_budget_is_spent_within_a_fifth_and_the_report_says_what_it_chose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = 12.0
    assert main([*_adapt(tmp_path, str(budget), "adapted"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    chosen = report["training"]["time_budget"]
    assert chosen["budget_seconds"] == budget and chosen["iters"] >= 1 and chosen["iters_done"] >= 1
    assert chosen["batch_size"] == report["training"]["batch_size"] <= 120  # 3 classes x 40 images
    assert report["iters"] == chosen["iters_done"]  # what ran, not --iters' default
    # The whole adaptation, stages before fine-tuning and the evaluation after it included.
    assert abs(report["seconds"]["total"] - budget) <= 0.2 * budget, report["seconds"]


def test_a_budget_too_small_for_one_iteration_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_adapt(tmp_path, "0.05", "tiny")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time budget 0.05 s leaves no time for one fine-tuning iteration" in err[0]
    assert "raise --time-budget to at least" in err[0]
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "1e9", "soon"])
def test_bad_time_budgets_are_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(_adapt(tmp_path, value, "never")) == 2
    assert "--time-budget" in capsys.readouterr().err and not (tmp_path / "never").exists()
