"""`edge-smsp deploy` and `bench` end to end: a real sshd on 127.0.0.1, a numpy+onnxruntime-only device venv,
the local transport, calibrated latency prediction, and one-line errors for bad profiles and refused hosts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import venv
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from PIL import Image

from edge_smsp import adaptation
from edge_smsp.cli import main
from edge_smsp.data.tasks import load_task
from edge_smsp.deploy import steps as stages
from edge_smsp.deploy.calibration import calibrate
from edge_smsp.deploy.session import BenchSettings, DeployRequest, deploy
from edge_smsp.devices.planner import (
    RUNTIME_OVERHEAD_BYTES,
    SESSION_OVERHEAD_BYTES,
    cost_at_ratio,
    fit_latency_model,
    memory_model_for,
    predict_memory_bytes,
)
from edge_smsp.devices.profiles import MIB, load_profile
from edge_smsp.devices.stack import DEFAULT_OPSET
from edge_smsp.models import zoo
from edge_smsp.models.prune import replace_classifier
from edge_smsp.pool import Pool
from edge_smsp.pool import build as pool_build
from edge_smsp.transport.base import TEMP_PREFIX
from edge_smsp.transport.ssh import SshTransport
from tests.browser import rendered_dom, screenshot
from tests.sshd_fixture import SshdServer, write_ed25519_key
from tests.tiny_onnx import tiny_convnet

# Tiny planning, adaptation and bench settings: the whole file runs in a few minutes on two shared cores.
TINY_TASK = ["--image-size", "32", "--train-per-class", "16", "--val-per-class", "8"]
TINY = [*TINY_TASK, "--iters", "2"]
QUICK_BENCH = ["--bench-runs", "20", "--bench-seconds", "0.2"]
BACKBONE = "efficientnet_lite0"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_profile(path: Path, connection: dict[str, Any], **fields: Any) -> Path:
    """A device profile YAML: a small CPU device reached through `connection`."""
    document = {
        "name": "test-device",
        "memory_budget": "1GiB",
        "latency_target_ms": 1000,
        "latency_percentile": "p90",
        "input_size": 32,
        "threads": 1,
        "providers": ["CPUExecutionProvider"],
        "throughput_gmacs": 20,
        "connection": connection,
        **fields,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def ssh_connection(sshd: SshdServer, device_python: str, root: Path, **changes: Any) -> dict[str, Any]:
    connection = {
        "transport": "ssh",
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "python": device_python,
        "workdir": str(root / "device-work"),
    }
    return {**connection, **{key: str(value) for key, value in changes.items()}}


def local_connection(device_python: str, root: Path) -> dict[str, Any]:
    return {"transport": "local", "python": device_python, "workdir": str(root / "device-work")}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture(scope="module")
def smsp_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pool with two entries pruned from the bundled efficientnet_lite0 at 32 px (tiny settings)."""
    path = tmp_path_factory.mktemp("pool") / "pool.sqlite"
    backbone = zoo.load_backbone(BACKBONE, pretrained=True, image_size=32)
    spec = zoo.backbone_spec(backbone)
    tasks = [
        load_task(
            "fashion-mnist",
            classes,
            image_size=32,
            mean=spec.mean,
            std=spec.std,
            train_per_class=16,
            val_per_class=8,
        )
        for classes in ((1, 3, 5), (6, 7, 8))
    ]
    config = adaptation.AdaptConfig(
        ratio=0.3, iters=2, method="scratch", scratch_rounds=1, scratch_criterion="magnitude"
    )
    with Pool(path) as pool:
        assert len(pool_build.build_pool(backbone, pool, tasks, config)) == 2
    return path


def test_deploy_over_ssh_to_a_device_without_torch(
    sshd: SshdServer, device_python: str, smsp_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"  # the device was never seen before
    profile = write_profile(
        tmp_path / "device.yaml", ssh_connection(sshd, device_python, tmp_path, known_hosts=known_hosts)
    )
    out = tmp_path / "out"
    argv = [
        "deploy",
        "--profile",
        str(profile),
        *TINY,
        *QUICK_BENCH,
        "--pool",
        str(smsp_pool),
        "--out",
        str(out),
    ]

    assert main(argv) == 2
    assert "--trust-new-host" in one_line_error(capsys)
    assert not known_hosts.exists() and not (out / "deploy_report.json").exists()

    assert main([*argv, "--trust-new-host", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert known_hosts.read_text() == sshd.known_hosts_line()
    for key in ("ratio", "predicted_latency_ms", "measured", "val_accuracy", "onnx_path", "seconds"):
        assert key in report
    assert report == json.loads((out / "deploy_report.json").read_text())
    assert report["method"] == "smsp" and report["method_note"] is None
    assert sorted(similar["task_id"] for similar in report["similar_tasks"]) == [
        "fashion-mnist:1-3-5",
        "fashion-mnist:6-7-8",
    ]
    # deploy adapts with adapt's defaults: the probe chose which entry's weights, and that one was selected
    probed = report["extra"]["probed"]
    assert sorted(candidate["task_id"] for candidate in probed) == [
        "fashion-mnist:1-3-5",
        "fashion-mnist:6-7-8",
    ]
    (chosen,) = [candidate["entry_id"] for candidate in probed if candidate["chosen"]]
    assert [similar["entry_id"] for similar in report["similar_tasks"] if similar["selected"]] == [chosen]
    # and adapt's batch: 128, capped at the 48 training images, SGD's rate scaled to it
    assert report["extra"]["training"] == {
        "batch_size": 48,
        "micro_batch": None,
        "lr": pytest.approx(0.015),
        "optimizer": "sgd",
    }
    for stage in (
        "connect",
        "device_check",
        "plan",
        "similarity",
        "pruning",
        "finetuning",
        "export",
        "upload",
        "bench",
        "total",
    ):
        assert report["seconds"][stage] >= 0
    assert report["class_names"] == ["T-shirt/top", "Pullover", "Coat"] and 0 <= report["val_accuracy"] <= 1

    # The device: its own venv with numpy and onnxruntime only, running the pushed runtime on the shipped ONNX.
    no_torch = subprocess.run([device_python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    measured = report["measured"]
    assert report["device_info"]["python_version"] == measured["python_version"]
    assert "CPUExecutionProvider" in report["device_info"]["available_providers"]
    assert measured["runtime_path"].startswith(str(tmp_path / "device-work"))
    assert (
        measured["latency_ms"]["p90"] > 0 and report["measured_latency_ms"] == measured["latency_ms"]["p90"]
    )
    assert report["measured_peak_rss_bytes"] == int(measured["peak_rss_mib"] * MIB)
    remote = Path(report["remote_model_path"])
    assert remote.is_file() and sha256(remote) == sha256(Path(report["onnx_path"])) == report["onnx_sha256"]
    assert measured["model_sha256"] == report["onnx_sha256"]
    assert json.loads(measured["metadata"]["labels"]) == report["class_names"]
    # Checked before adapting: the device's stack, and the opset the model was then exported at.
    stack = report["device_stack"]
    assert (
        stack["python_version"] == measured["python_version"]
        and stack["machine"] == measured["device"]["machine"]
    )
    assert (
        stack["engine_version"] == measured["onnxruntime_version"] and stack["max_opset"] >= report["opset"]
    )
    assert report["opset"] == measured["opset"] == DEFAULT_OPSET
    assert report["memory_model"]["source"] == "hint"  # nothing measured on this device before
    assert not list(remote.parent.parent.glob(f"{TEMP_PREFIX}*"))

    with Pool(smsp_pool) as pool:
        stored = pool.measurements(device="test-device", backbone=BACKBONE, image_size=32)
    assert [row.id for row in stored] == [report["measurement_id"]]
    assert stored[0].ratio == report["ratio"] and stored[0].latency_p90_ms == measured["latency_ms"]["p90"]
    assert (
        stored[0].macs == report["macs_after"] and stored[0].report["model_sha256"] == report["onnx_sha256"]
    )
    assert (stored[0].runtime, stored[0].precision) == (measured["runtime"], measured["precision"])
    assert stored[0].report["imported_rss_mib"] == measured["imported_rss_mib"] > 0


def test_wrong_client_key_and_wrong_host_key_are_refused(
    sshd: SshdServer, device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = tmp_path / "stranger_key"
    write_ed25519_key(stranger)
    impostor = write_ed25519_key(tmp_path / "impostor_host_key").split()
    wrong_known_hosts = tmp_path / "known_hosts"
    wrong_known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    cases = {
        "authentication failed": {"key_file": stranger},
        "does not match": {"known_hosts": wrong_known_hosts},
    }
    for message, changes in cases.items():
        profile = write_profile(
            tmp_path / "device.yaml", ssh_connection(sshd, device_python, tmp_path, **changes)
        )
        flags = ["--trust-new-host"] if "known_hosts" in changes else []  # trusting new hosts never overrides
        assert (
            main(
                [
                    "deploy",
                    "--profile",
                    str(profile),
                    *TINY,
                    "--ratio",
                    "0.5",
                    "--pool",
                    str(tmp_path / "pool.sqlite"),
                    "--out",
                    str(tmp_path / "out"),
                    *flags,
                ]
            )
            == 2
        )
        assert message in one_line_error(capsys)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_corrupted_upload_is_caught_by_the_checksum(
    sshd: SshdServer,
    device_python: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = write_profile(tmp_path / "device.yaml", ssh_connection(sshd, device_python, tmp_path))
    honest_put = SshTransport._put

    def put_corrupted(self: SshTransport, local_path: Path, remote_path: str) -> None:
        if local_path.suffix != ".onnx":  # the runtime's own files arrive intact
            return honest_put(self, local_path, remote_path)
        corrupted = tmp_path / "corrupted"
        data = bytearray(local_path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit pattern flipped on the way; the expected hash stays the same
        corrupted.write_bytes(bytes(data))
        return honest_put(self, corrupted, remote_path)

    monkeypatch.setattr(SshTransport, "_put", put_corrupted)
    pool = tmp_path / "pool.sqlite"
    assert (
        main(
            [
                "deploy",
                "--profile",
                str(profile),
                *TINY_TASK,
                "--iters",
                "0",
                "--ratio",
                "0.5",
                "--pool",
                str(pool),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    error = one_line_error(capsys)
    assert "corrupted: SHA-256 on the device" in error
    # The one line says what was kept and how to measure it again.
    kept = tmp_path / "out" / "model.onnx"
    assert error.endswith(f"; the exported model stays in {kept}: edge-smsp bench --model with the same --profile "
                          "measures it again")  # fmt: skip
    work = tmp_path / "device-work"
    assert not list(work.rglob("*.onnx")) and not list(work.glob(f"{TEMP_PREFIX}*"))
    assert (tmp_path / "out" / "model.onnx").is_file() and not (
        tmp_path / "out" / "deploy_report.json"
    ).exists()
    with Pool(pool) as opened:
        assert opened.measurements() == []


def test_a_device_without_numpy_or_onnxruntime_fails_before_adapting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False, symlinks=True)
    path = write_profile(tmp_path / "device.yaml", local_connection(str(bare / "bin" / "python"), tmp_path))
    out = tmp_path / "out"
    assert (
        main(
            [
                "deploy",
                "--profile",
                str(path),
                *TINY,
                "--pool",
                str(tmp_path / "pool.sqlite"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "is not installed: pip install numpy" in one_line_error(capsys)
    assert not (out / "model").exists() and not (out / "model.onnx").exists()


def test_localhost_profile_deploys_through_the_local_transport_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundled profile as is, PATH untouched: the local transport runs this interpreter; work dir under ~.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "deploy",
                "--profile",
                "localhost",
                "--iters",
                "2",
                "--train-per-class",
                "16",
                "--val-per-class",
                "8",
                *QUICK_BENCH,
                "--pool",
                str(tmp_path / "pool.sqlite"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    (run,) = (tmp_path / "runs").glob("deploy-localhost-*")
    report = json.loads((run / "deploy_report.json").read_text())
    assert report["image_size"] == load_profile("localhost").input_size == 64
    assert report["device_transport"] == "local" and report["ratio_source"] == "plan"
    assert (
        report["method"] == "magnitude"
        and "pool" in report["method_note"]
        and "empty" in report["method_note"]
    )
    assert Path(report["remote_model_path"]).is_relative_to(
        tmp_path / "home" / ".cache" / "edge-smsp-runtime"
    )
    lines = text.splitlines()
    assert lines[0].startswith("deployed efficientnet_lite0 to localhost (local) for fashion-mnist:0-2-4")
    for label in (
        "method",
        "ratio",
        "latency p90",
        "memory",
        "accuracy",
        "size",
        "device",
        "seconds",
        "report",
    ):
        assert any(line.strip().startswith(label) for line in lines[1:]), label
    assert "baseline magnitude instead of smsp" in text and f"{report['ratio']:.2f} (planned" in text
    # The report a person reads: beside the JSON, one self-contained page, rendered by a real browser.
    page = run / "deploy_report.html"
    assert f"html         {page.relative_to(tmp_path)}" in text
    source = page.read_text()
    offline = source.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace names, it never fetches
    assert "http://" not in offline and "https://" not in offline and "<script" not in offline
    dom = rendered_dom(page, tmp_path / "chromium")
    table = dom[dom.index('<table id="devices">') : dom.index("</table>")]
    for value in ("localhost", f"{report['ratio']:.2f}", f"{100 * report['val_accuracy']:.2f} %", "deployed"):
        assert value in table, value
    for plot in ("plan-latency", "plan-memory", "latency-distribution"):
        assert dom.count(f"plot {plot}") == 1, plot
    assert dom.count('class="candidate"') == 2 * len(report["plan"]["candidates"])
    assert dom.count('class="measured"') == 2 and dom.count('class="budget"') == 2
    png = screenshot(page, tmp_path / "report.png", tmp_path / "chromium")
    with Image.open(png) as shot:
        pixels = np.asarray(shot.convert("RGB"), dtype=np.int16)
    # The plots were drawn, not just laid out: the candidates' blue line and the measured points' orange.
    for colour, least in (((31, 95, 168), 200), ((230, 126, 34), 40)):
        assert (np.abs(pixels - colour).sum(axis=-1) < 30).sum() >= least, colour


def test_bench_any_onnx_on_the_profile_device(
    sshd: SshdServer, device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_convnet(tmp_path / "tiny.onnx")
    profile = write_profile(tmp_path / "device.yaml", ssh_connection(sshd, device_python, tmp_path))
    argv = ["bench", "--profile", str(profile), "--model", str(model), *QUICK_BENCH]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_sha256"] == sha256(model) and report["runs"] >= 20
    assert report["threads"] == 1 and report["providers"] == ["CPUExecutionProvider"]
    assert sha256(Path(report["remote_model_path"])) == sha256(model)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("benchmarked on test-device") and "p50" in text and "peak RSS" in text
    assert main(["bench", "--profile", str(profile), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "no such ONNX file" in one_line_error(capsys)


@pytest.mark.slow
def test_calibrated_plan_for_a_tight_budget_meets_target_and_fits_latency_and_memory(
    device_python: str, tmp_path: Path
) -> None:
    """Two calibration runs fit the latency and memory models; a budget between their predictions for the
    unpruned and the half-pruned model makes the plan prune, and the device uses no more than predicted."""
    size = 64  # at 32 px the latencies are ~0.1 ms and the timer's noise dominates
    backbone = zoo.load_backbone(BACKBONE, pretrained=True, image_size=size)
    spec = zoo.backbone_spec(backbone)
    task = load_task(
        "fashion-mnist",
        (0, 2, 4),
        image_size=size,
        mean=spec.mean,
        std=spec.std,
        train_per_class=16,
        val_per_class=8,
    )
    path = write_profile(
        tmp_path / "device.yaml",
        local_connection(device_python, tmp_path),
        input_size=size,
        latency_target_ms=50,
        latency_percentile="p50",
    )
    profile = load_profile(path)
    shipped = replace_classifier(zoo.load_backbone(BACKBONE, pretrained=True, image_size=size), 3)
    bench = BenchSettings(runs=200, min_seconds=1.0)
    with Pool(tmp_path / "pool.sqlite") as pool:
        request = DeployRequest(
            profile,
            backbone,
            task,
            pool,
            adaptation.AdaptConfig(iters=2),
            tmp_path / "out",
            calibration_ratios=(0.2, 0.6),
            bench=bench,
        )
        with stages.connect(profile) as transport:
            device = stages.check(transport, profile, bench.timeout)
            calibration = calibrate(request, device, transport)
        comparable = pool.comparable_measurements(
            device="test-device", backbone=BACKBONE, image_size=size, batch_size=1, threads=1
        )
        fitted = memory_model_for(profile, shipped, size, comparable, device.imported_rss_mib)
        full_memory = predict_memory_bytes(cost_at_ratio(shipped, size, 0.0), profile, fitted)
        half_memory = predict_memory_bytes(cost_at_ratio(shipped, size, 0.5), profile, fitted)
        profile = dataclasses.replace(profile, memory_budget_bytes=(full_memory + 2 * half_memory) // 3)
        report = deploy(dataclasses.replace(request, profile=profile))
        stored = pool.measurements(device="test-device")
        assert len(stored) == 3  # two calibration runs and the deploy

    # Calibration recorded what the memory model needs, and what the hint would have predicted.
    assert [row["ratio"] for row in calibration] == [0.2, 0.6]
    assert all(row["imported_rss_mib"] > 0 and row["weight_bytes"] > 0 for row in calibration)
    assert report.memory_model["source"] == "fit" and report.memory_model["n_measurements"] == 2
    assert report.runtime_overhead_source == "device"
    assert report.plan is not None and not report.plan["full_model"]["fits_memory"]
    assert 0.2 < report.ratio < 0.6 and report.predicted_memory_bytes <= profile.memory_budget_bytes
    assert report.measured_peak_rss_bytes <= report.predicted_memory_bytes
    assert report.latency_model["source"] == "fit" and report.latency_model["n_measurements"] == 2
    assert report.measured_latency_ms <= profile.latency_target_ms
    # The prediction comes from a line fitted to the two calibration runs, evaluated at the shipped MACs.
    # How close it lands to the measurement is timing, so it is measured in benchmarks/latency_model.py.
    refit = fit_latency_model(
        profile,
        [
            {"ratio": row.ratio, "macs": row.macs, "latency_ms": {"p50": row.latency_p50_ms}}
            for row in stored[:2]
        ],
    )
    assert dataclasses.asdict(refit) == pytest.approx(report.latency_model)
    assert report.predicted_latency_ms == pytest.approx(refit.predict(report.macs_after))
    assert [row.ratio for row in stored] == [0.2, 0.6, report.ratio]
    assert {(row.runtime, row.precision) for row in stored} == {("onnxruntime", "fp32")}
    assert stored[2].latency_p50_ms == pytest.approx(report.measured_latency_ms)
    print(
        f"\nratio {report.ratio}: predicted {report.predicted_latency_ms:.3f} ms p50, "
        f"measured {report.measured_latency_ms:.3f} ms; memory predicted "
        f"{report.predicted_memory_bytes / MIB:.1f} MiB (fitted), measured "
        f"{report.measured_peak_rss_bytes / MIB:.1f} MiB, budget {profile.memory_budget_bytes / MIB:.1f} MiB"
    )


def test_profile_batch_size_is_exported_benchmarked_and_stored(device_python: str, tmp_path: Path) -> None:
    """A batch-4 profile ships a dynamic-batch model, benches whole batches and calibrates per timed run."""
    backbone = zoo.load_backbone(BACKBONE, pretrained=True, image_size=32)
    spec = zoo.backbone_spec(backbone)
    task = load_task(
        "fashion-mnist",
        (0, 2, 4),
        image_size=32,
        mean=spec.mean,
        std=spec.std,
        train_per_class=8,
        val_per_class=4,
    )
    profile = load_profile(write_profile(tmp_path / "device.yaml", local_connection(device_python, tmp_path)))
    profile = dataclasses.replace(profile, batch_size=4)
    bench = BenchSettings(runs=20, min_seconds=0.2)
    with Pool(tmp_path / "pool.sqlite") as pool:
        report = deploy(
            DeployRequest(
                profile, backbone, task, pool, adaptation.AdaptConfig(iters=2), tmp_path / "out", bench=bench
            )
        )
        stored = pool.measurements(device="test-device")

    assert report.measured["batch_size"] == 4 and report.measured["input_shape"] == [4, 3, 32, 32]
    graph_input = onnx.load(report.onnx_path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension
    assert [row.macs for row in stored] == [4 * report.macs_after]
    hint = fit_latency_model(profile)  # nothing measured before this deploy: the profile's throughput hint
    assert report.predicted_latency_ms == pytest.approx(hint.predict(4 * report.macs_after))
    # The profile sets no runtime overhead: the device's imported runtime plus a session is used instead.
    imported = int(float(report.device_info["imported_rss_mib"]) * MIB)
    assert report.runtime_overhead_source == "device"
    assert report.runtime_overhead_bytes == imported + SESSION_OVERHEAD_BYTES
    shipped = replace_classifier(zoo.load_backbone(BACKBONE, pretrained=True, image_size=32), 3)
    model_memory = (
        predict_memory_bytes(cost_at_ratio(shipped, 32, report.ratio), profile) - RUNTIME_OVERHEAD_BYTES
    )
    assert report.predicted_memory_bytes == report.runtime_overhead_bytes + model_memory


def _bad_documents() -> dict[str, tuple[dict[str, Any], str]]:
    return {
        "missing field": ({"latency_target_ms": None}, "latency_target_ms: required field is missing"),
        "wrong type": ({"threads": "four"}, "threads: must be an integer"),
        "unknown provider": (
            {"providers": ["WarpDriveExecutionProvider"]},
            "providers[0]: unknown execution",
        ),
        "unparsable size": ({"memory_budget": "lots"}, "memory_budget: cannot parse 'lots'"),
        "bad port": ({"port": 70000}, "connection.port: must be 1-65535"),
        "impossible budget": ({"memory_budget": "8MiB"}, "raise memory_budget above"),
    }


@pytest.mark.parametrize("case", list(_bad_documents()))
def test_bad_profiles_exit_2_with_the_field_path(
    case: str, device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, message = _bad_documents()[case]
    connection = local_connection(device_python, tmp_path)
    fields = {key: value for key, value in changes.items() if key != "port"}
    if "port" in changes:
        connection["port"] = changes["port"]
    path = write_profile(tmp_path / "device.yaml", connection, **fields)
    if changes.get("latency_target_ms", 0) is None:
        document = yaml.safe_load(path.read_text())
        del document["latency_target_ms"]
        path.write_text(yaml.safe_dump(document))
    assert (
        main(
            [
                "deploy",
                "--profile",
                str(path),
                *TINY,
                "--pool",
                str(tmp_path / "pool.sqlite"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    line = one_line_error(capsys)
    assert message in line
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_run_on_fallback_providers_is_reported_but_not_stored_as_calibration(
    device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CPU build of onnxruntime knows CUDA but lacks it: the device falls back to the CPU.
    profile = write_profile(
        tmp_path / "gpu.yaml",
        local_connection(device_python, tmp_path),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    pool = tmp_path / "pool.sqlite"
    argv = [
        "deploy",
        "--profile",
        str(profile),
        "--method",
        "magnitude",
        "--ratio",
        "0.5",
        "--recipe",  # this test is about providers; adaptive BN on this 2-image task gave parity 1.07e-4 once
        "plain",
        "--pool",
        str(pool),
    ]
    assert main([*argv, *TINY, *QUICK_BENCH, "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured"]["providers"] == ["CPUExecutionProvider"]
    assert report["measurement_id"] is None and "CUDAExecutionProvider" in report["measurement_note"]
    with Pool(pool, create=False) as opened:
        assert opened.measurements() == []
