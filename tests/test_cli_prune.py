"""`edge-smsp models` and `edge-smsp prune`: JSON report, saved model that reloads, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from edge_smsp.cli import main
from edge_smsp.pruned_model import load_pruned
from tests.pruning_helpers import FIRST_CLASS, images, outputs  # noqa: F401 (fixture)


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_lists_first_class_and_bundled(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    names = [entry["name"] for entry in json.loads(out)["models"]]
    assert set(FIRST_CLASS) <= set(names)
    code, text, _ = run_cli(capsys, "models")
    assert code == 0 and all(name in text for name in FIRST_CLASS)


@pytest.mark.parametrize("name", FIRST_CLASS)
@pytest.mark.parametrize("ratio", ["0.3", "0.7"])
def test_prune_reports_json_and_saves_a_loadable_model(capsys, tmp_path, name, ratio):
    out = tmp_path / "pruned"
    args = ["prune", "--model", name, "--image-size", "32", "--ratio", ratio, "--method", "magnitude"]
    code, stdout, stderr = run_cli(capsys, *args, "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["model"] == name and report["ratio"] == float(ratio)
    assert report["params_after"] < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    assert report["groups"] and all(0 < g["kept"] <= g["size"] for g in report["groups"].values())
    model, meta = load_pruned(out)
    assert meta["method"] == "magnitude" and meta["ratio"] == float(ratio)
    assert meta["pretrained"] is (name == "efficientnet_lite0")  # bundled weights by default
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    assert torch.isfinite(outputs(model, images())).all()


def test_prune_as_a_subprocess_prints_a_readable_summary(tmp_path):
    out = tmp_path / "r18"
    command = [sys.executable, "-m", "edge_smsp", "prune", "--model", "resnet18", "--image-size", "32"]
    command += ["--ratio", "0.5", "--method", "random", "--seed", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "pruned resnet18 at ratio 0.5" in result.stdout and "params" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "pruned.json").is_file()
    assert json.loads((out / "pruned.json").read_text())["seed"] == 3


def test_help_and_argument_errors_do_not_load_torch() -> None:
    """Parsing is torch-free, so --help and usage errors answer at once (torch costs seconds to import)."""
    probe = (
        "import sys\n"
        "from edge_smsp.cli import build_parser\n"
        "help_text = build_parser().format_help()\n"
        "for command in ('adapt', 'deploy', 'pool', 'prune', 'export', 'bench'):\n"
        "    assert command in help_text, command\n"
        "try:\n"
        "    build_parser().parse_args(['deploy', '--profile', 'localhost', '--ratio', 'half'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 2\n"
        "else:\n"
        "    raise AssertionError('a ratio of half was accepted')\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet_nope", "--ratio", "0.5"], "unknown model"),
        (["--model", "resnet18", "--ratio", "1.0"], "ratio"),
        (["--model", "resnet18", "--ratio", "-0.2"], "ratio"),
        (["--model", "resnet18", "--ratio", "0.5", "--checkpoint", "/nonexistent/ckpt.pth"], "checkpoint"),
        (["--model", "resnet18", "--ratio", "0.5", "--round-to", "0"], "round-to"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, extra, message):
    out = tmp_path / "never"
    code, stdout, stderr = run_cli(
        capsys, "prune", *extra, "--method", "random", "--image-size", "32", "--out", str(out), "--json"
    )
    assert code == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["deploy", "--profile", "localhost", "--bench-runs", "0"], "--bench-runs"),
        (["deploy", "--profile", "localhost", "--bench-seconds", "-1"], "--bench-seconds"),
        (["adapt", "--classes", "0,x", "--ratio", "0.5", "--out", "never"], "--classes"),
        (["adapt", "--classes", "0,1", "--ratio", "half", "--out", "never"], "--ratio"),
        (["pool", "build", "--tasks", "2", "--ratio", "0.5", "--round-to", "0"], "--round-to"),
    ],
)
def test_bad_values_fail_in_argument_parsing_with_one_line(capsys, argv, flag):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and flag in lines[0], captured.err
