"""`edge-smsp models` and `edge-smsp prune`: JSON report, saved model that reloads, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from edge_smsp.cli import main
from edge_smsp.models.pruned_model import load_pruned
from tests.pruning_helpers import FIRST_CLASS, images, outputs  # noqa: F401 (fixture)

PRUNE_RESNET18 = ("prune", "--model", "resnet18", "--criterion", "magnitude", "--ratio", "0.5")


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
    args = ["prune", "--model", name, "--image-size", "32", "--ratio", ratio, "--criterion", "magnitude"]
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


def test_a_fixed_size_model_prunes_at_its_own_size_without_image_size(capsys, tmp_path):
    # Its memory estimate cannot probe it at a small size (timm asserts 224 px): pruning goes on without it.
    args = [
        "prune",
        "--model",
        "vit_tiny_patch16_224",
        "--no-pretrained",
        "--ratio",
        "0.3",
        "--criterion",
        "random",
    ]
    code, stdout, stderr = run_cli(capsys, *args, "--out", str(tmp_path / "vit"), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["image_size"] == 224 and load_pruned(tmp_path / "vit")[1]["image_size"] == 224


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


def test_prune_into_a_folder_holding_another_models_export_leaves_no_stale_onnx(capsys, tmp_path):
    """An ONNX export with its card (which names it and its SHA-256) was made from the model the folder held: it
    goes when a new model is saved there. Files that are not such an export stay."""
    import hashlib

    out = tmp_path / "model"
    out.mkdir()
    onnx_bytes = b"an ONNX export of the model saved here before"
    (out / "model.onnx").write_bytes(onnx_bytes)
    card = {
        "format": "edge-smsp-model-card",
        "onnx": "model.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }
    (out / "model.json").write_text(json.dumps(card))
    (out / "edited.onnx").write_bytes(b"changed after its export")  # its card's hash no longer matches: kept
    (out / "edited.json").write_text(json.dumps(dict(card, onnx="edited.onnx")))
    (out / "notes.txt").write_text("mine")
    args = [
        "prune",
        "--model",
        "resnet18",
        "--image-size",
        "32",
        "--ratio",
        "0.5",
        "--criterion",
        "magnitude",
    ]
    code, _, stderr = run_cli(capsys, *args, "--out", str(out), "--json")
    assert code == 0, stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "edited.json",
        "edited.onnx",
        "model.safetensors",
        "notes.txt",
        "pruned.json",
    ]
    load_pruned(out)


def test_a_job_too_big_for_this_machines_memory_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    """`prune --image-size 4096` was OOM-killed at ~20 GB: the estimate (activations scaled from a small probe)
    now refuses it in one line when it cannot fit in MemAvailable, before the work and before --out."""
    from edge_smsp.models import zoo
    from edge_smsp.training import host_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    2097152 kB\n")
    assert host_memory.available_bytes(str(meminfo)) == 2 * host_memory.GIB
    assert host_memory.available_bytes(str(tmp_path / "missing")) is None
    model = zoo.load_backbone("efficientnet_lite0", pretrained=False, image_size=64)
    at_probe = host_memory.activation_bytes(model, 64)
    assert host_memory.activation_bytes(model, 4096) == at_probe * 64**2
    # efficientnet_lite0: 12.1 MiB of peak activations at 256 px, so ~3 GiB at 4096 px.
    assert 2.5 * host_memory.GIB < host_memory.activation_bytes(model, 4096) < 3.5 * host_memory.GIB
    assert host_memory.prune_bytes(model, 4096) == host_memory.BASE_BYTES + 5 * at_probe * 64**2

    monkeypatch.setattr(host_memory, "available_bytes", lambda: 2 * host_memory.GIB)
    out = tmp_path / "pruned"
    args = ["prune", "--model", "efficientnet_lite0", "--ratio", "0.5", "--criterion", "magnitude"]
    code, stdout, stderr = run_cli(capsys, *args, "--image-size", "4096", "--out", str(out))
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "prune at 4096 px needs about 16.5 GiB" in stderr and "2.0 GiB" in stderr
    adapt = ["adapt", "--classes", "0,1", "--ratio", "0.5", "--method", "magnitude", "--image-size", "4096"]
    code, stdout, stderr = run_cli(capsys, *adapt, "--micro-batch", "2", "--out", str(out))
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "adapt at 4096 px needs about" in stderr and "--micro-batch" in stderr
    assert not out.exists()
    # What fits is not refused: the same prune at 32 px.
    code, _, stderr = run_cli(capsys, *args, "--image-size", "32", "--out", str(out))
    assert code == 0, stderr


def test_an_address_space_limit_below_what_a_job_maps_is_refused_before_any_work(tmp_path):
    """Under `ulimit -v` a torch job died wherever its first mapping failed (an import's traceback, or OpenBLAS
    exiting the process with --out left behind): it is now refused in one line before any work."""
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))

    out = tmp_path / "out"
    commands = {
        "export": ["export", "--model-dir", str(tmp_path), "--out", str(out / "m.onnx")],
        "prune": [*PRUNE_RESNET18, "--out", str(out)],
        "adapt": ["adapt", "--classes", "0,1", "--method", "magnitude", "--ratio", "0.5", "--out", str(out)],
        "deploy": ["deploy", "--ratio", "0.5", "--out", str(out)],
        "pool build --ray": [
            "pool",
            "build",
            "--pool",
            str(out / "p.sqlite"),
            "--tasks",
            "1",
            "--ratio",
            "0.5",
            "--ray",
        ],
    }
    for job, argv in commands.items():
        run = subprocess.run(
            [sys.executable, "-m", "edge_smsp", *argv], capture_output=True, text=True, preexec_fn=limited
        )
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert f"limit (ulimit -v) is 3.00 GiB, and `edge-smsp {job}` maps about" in run.stderr
        assert not out.exists()


def test_the_address_space_estimate_grows_with_the_job(monkeypatch):
    """What fits the limit is not refused (prune at 32 px maps ~3.4 GiB); 512 px adds its activations."""
    from edge_smsp.models import zoo
    from edge_smsp.training import host_memory

    monkeypatch.setattr(host_memory, "address_space_limit", lambda: int(3.8 * host_memory.GIB))
    model = zoo.load_backbone("efficientnet_lite0", pretrained=False, image_size=64)
    host_memory.check_fits(host_memory.prune_bytes(model, 32), "prune", 32)
    with pytest.raises(host_memory.PlanError, match=r"prune at 512 px maps about 4\.\d GiB .* \(ulimit -v\)"):
        host_memory.check_fits(host_memory.prune_bytes(model, 512), "prune", 512)


def test_an_allocation_that_fails_is_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    """torch's allocator (RuntimeError), numpy's (MemoryError): `out of memory (...)` and exit 2."""
    import numpy as np

    from edge_smsp.cli import model_commands
    from edge_smsp.core.address_space import is_memory_failure

    def allocate_too_much(args):
        torch.empty(2**50, dtype=torch.uint8)

    with pytest.raises(MemoryError) as numpy_failure:
        np.empty(2**50, dtype=np.uint8)
    assert is_memory_failure(numpy_failure.value)
    assert not is_memory_failure(RuntimeError("shape mismatch"))
    monkeypatch.setattr(model_commands, "prune_command", allocate_too_much)
    code, stdout, stderr = run_cli(capsys, *PRUNE_RESNET18, "--out", str(tmp_path / "out"))
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith("edge-smsp: error: out of memory (") and "can't allocate memory" in stderr


def test_a_summary_that_cannot_be_printed_says_where_the_saved_model_is(tmp_path):
    """`prune --json > /dev/full`: the model is whole and kept, and the one error line says where it is."""
    out = tmp_path / "pruned"
    argv = [*PRUNE_RESNET18, "--image-size", "32"]
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "edge_smsp", *argv, "--out", str(out), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.strip() == (
        f"edge-smsp: error: No space left on device (writing the output); the command's results were written "
        f"to {out} before that"
    )
    model, meta = load_pruned(out)
    assert meta["ratio"] == 0.5 and model(torch.zeros(1, 3, 32, 32)).shape[0] == 1
