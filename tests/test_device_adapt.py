"""`edge-smsp deploy --device-data DIR`: the task's images stay on the device, which describes the task, probes the
pool's candidates and adapts the model with the light tier (numpy + onnxruntime). Real parts: the sshd fixture,
a device Python without torch (the Python 3.6.15 + onnxruntime 1.10 stack), onnxruntime, SQLite. Every byte the
transport moves is recorded and searched for the task's images."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import yaml

from edge_smsp import adaptation
from edge_smsp.cli import main
from edge_smsp.core.errors import DataError, EdgeSmspError, PlanError, TransportError
from edge_smsp.data.tasks import load_task
from edge_smsp.deploy.bench import BenchSettings
from edge_smsp.deploy.device_adapt import DeviceDeployRequest, deploy_on_device
from edge_smsp.deploy.device_steps import DeviceData
from edge_smsp.devices.profiles import load_profile, with_connection
from edge_smsp.models import zoo
from edge_smsp.pool import Pool
from edge_smsp.pool import build as pool_build
from edge_smsp.transport.base import FROM_DEVICE, TO_DEVICE
from tests.light_adapt_helpers import image_folder
from tests.sshd_fixture import SshdServer
from tests.test_oldest_runtime import OldStack

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
sys.path.insert(0, str(RUNTIME_DIR))

from edge_smsp_runtime.bundle import load_bundle  # noqa: E402
from edge_smsp_runtime.graph import Graph  # noqa: E402
from edge_smsp_runtime.imagefolder import load_images, read_task  # noqa: E402

SIZE = 32
CLASSES = [0, 2, 4]  # the demo's task: T-shirt/top, pullover, coat
QUICK_BENCH = BenchSettings(runs=5, min_seconds=0.0, warmup=10)
CACHE = {"runtime", "features", "bundles", "models"}  # what a device keeps between deploys


@pytest.fixture(scope="module")
def backbone() -> Any:
    return zoo.load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE)


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory, backbone: Any) -> Path:
    """Two entries pruned from the bundled efficientnet_lite0 at 32 px (tiny settings), with descriptors."""
    path = tmp_path_factory.mktemp("pool") / "pool.sqlite"
    spec = zoo.backbone_spec(backbone)
    tasks = [
        load_task("fashion-mnist", classes, image_size=SIZE, mean=spec.mean, std=spec.std, train_per_class=16,
                  val_per_class=8)
        for classes in ((1, 3, 5), (0, 6, 8))
    ]  # fmt: skip
    config = adaptation.AdaptConfig(
        ratio=0.3, iters=2, method="scratch", scratch_rounds=1, scratch_criterion="magnitude"
    )
    with Pool(path) as pool:
        assert len(pool_build.build_pool(backbone, pool, tasks, config)) == 2
    return path


@pytest.fixture(scope="module")
def device_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task's ImageFolder (train/ and val/; PGM files, which the device decodes without Pillow)."""
    return image_folder(tmp_path_factory.mktemp("device-images"), CLASSES, 15, fmt="pgm", split=True)


class PayloadRecord:
    """Every payload the transport moved, by direction (the transport's byte counter hook)."""

    def __init__(self) -> None:
        self.payloads: dict[str, list[tuple[str, bytes]]] = {TO_DEVICE: [], FROM_DEVICE: []}

    def __call__(self, direction: str, what: str, payload: bytes) -> None:
        self.payloads[direction].append((what, bytes(payload)))

    def total(self, direction: str) -> int:
        return sum(len(payload) for _, payload in self.payloads[direction])


def _request(
    profile: Any, pool: Pool, backbone: Any, data: Path, out: Path, record: Callable[..., None] | None = None
) -> DeviceDeployRequest:
    return DeviceDeployRequest(
        profile=profile,
        backbone=backbone,
        pool=pool,
        config=adaptation.AdaptConfig(ratio=0.3, iters=3, batch_size=16),
        out_dir=out,
        data=DeviceData(path=str(data), trainable_blocks=2, sample=24),
        image_size=SIZE,
        bench=QUICK_BENCH,
        on_payload=record,
    )


def _image_arrays(data: Path) -> list[bytes]:
    """What an image of the task could look like on the wire: each file's bytes, its pixels, its preprocessed
    float32 array (as the runtime feeds the model), and the same in float16 and float64."""
    _, train, val = read_task(str(data), 0.2, 0)
    preprocessing = {"input_size": [SIZE, SIZE], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    found = []
    for path, label in train + val:
        raw = Path(path).read_bytes()
        found += [raw, raw[-28 * 28 :]]  # the PGM file, and its pixel block
        batch, _ = load_images([(path, label)], preprocessing)
        found += [batch.tobytes(), batch.astype(np.float16).tobytes(), batch.astype(np.float64).tobytes()]
    return found


def _numeric_lengths(value: Any) -> list[int]:
    """Lengths of every numeric list and base64 blob (as float16/float32) in a JSON document."""
    lengths: list[int] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "base64" and isinstance(item, str):
                size = len(base64.b64decode(item))
                lengths += [size // 2, size // 4]
            else:
                lengths += _numeric_lengths(item)
    elif isinstance(value, list):
        if value and all(isinstance(item, (int, float)) for item in value):
            lengths.append(len(value))
        for item in value:
            lengths += _numeric_lengths(item)
    return lengths


def _assert_no_image_crossed(record: PayloadRecord, data: Path) -> None:
    everything = [payload for direction in record.payloads.values() for _, payload in direction]
    for pattern in _image_arrays(data):
        assert not any(pattern in payload for payload in everything)
    image_sizes = {28 * 28, 3 * 28 * 28, SIZE * SIZE, 3 * SIZE * SIZE}
    for what, payload in record.payloads[FROM_DEVICE]:
        if what != "stdout" or not payload.strip().startswith(b"{"):
            continue
        for length in _numeric_lengths(json.loads(payload)):
            assert not any(length and length % size == 0 for size in image_sizes), (what, length)


def _leftovers(workdir: Path) -> list[str]:
    """Anything in the device's work dir beside its cache (temporaries, partial files)."""
    if not workdir.exists():
        return []
    return sorted(name for name in os.listdir(workdir) if name not in CACHE)


def test_device_adapts_over_ssh_on_python_36_and_no_image_leaves_it(
    sshd: SshdServer, tiny_pool: Path, device_data: Path, backbone: Any, tmp_path: Path
) -> None:
    stack = OldStack("jetpack-4.6", tmp_path / "py36")
    workdir = tmp_path / "jetson"
    profile = with_connection(
        load_profile("jetson_nano"),
        {"host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.client_key),
         "known_hosts": str(sshd.known_hosts), "python": stack.python, "workdir": str(workdir)},
    )  # fmt: skip
    record = PayloadRecord()
    with Pool(tiny_pool) as pool:
        report = deploy_on_device(_request(profile, pool, backbone, device_data, tmp_path / "out", record))
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload == json.loads((tmp_path / "out" / "deploy_report.json").read_text())
    page = (tmp_path / "out" / "deploy_report.html").read_text()  # as every deploy writes it (README)
    assert "<svg" in page and "jetson_nano" in page
    assert payload["adapted_on"] == "device" and payload["device_stack"]["python_version"].startswith("3.6.")
    assert payload["opset"] == 15 and payload["method"] == "smsp" and payload["extra"]["init"] == "pool"
    assert payload["class_names"] == ["coat", "pullover", "tshirt"] and payload["trainable_blocks"] == 2
    assert 0 <= payload["accuracy_onnxruntime"] == payload["val_accuracy"] <= 1
    assert payload["agreement"] == 1.0 and payload["accuracy_numpy"] == payload["accuracy_onnxruntime"]
    assert set(payload["device_seconds"]) == {"scan", "describe", "probe", "adapt", "bench"}
    assert len(payload["extra"]["probed"]) == 2 and payload["adapt_peak_rss_mib"] > 0
    assert payload["bench_peak_rss_mib"] > 0 and payload["measured_latency_ms"] > 0
    assert (
        payload["adapt_memory"]["peak_bytes"] >= payload["adapt_peak_rss_mib"] * 2**20
    )  # predicted >= measured
    # The transport's counters hold every byte its hook heard, and kilobytes came back.
    assert payload["bytes_to_device"] == record.total(TO_DEVICE) > 0
    assert payload["bytes_from_device"] == record.total(FROM_DEVICE) < 64 * 1024
    assert 3 * 1280 * 2 < payload["device_bytes_from"]["describe"] < 16 * 1024  # 3 float16 prototypes
    _assert_no_image_crossed(record, device_data)
    leaky = PayloadRecord()  # the search finds an image where there is one
    leaky(TO_DEVICE, "file", b"header" + next((device_data / "val" / "coat").iterdir()).read_bytes()[-784:])
    with pytest.raises(AssertionError):
        _assert_no_image_crossed(leaky, device_data)

    # The adapted file alone: a fresh onnxruntime session agrees with the runtime's numpy engine on it.
    adapted = Path(payload["remote_model_path"])
    assert adapted.is_file() and adapted.is_relative_to(workdir)
    spec = json.loads((Path(payload["model_dir"]) / "graph.json").read_text())
    session = onnxruntime.InferenceSession(str(adapted), providers=["CPUExecutionProvider"])
    import onnx
    from onnx import numpy_helper

    params = {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(str(adapted)).graph.initializer}
    graph = Graph(spec["nodes"], params, spec["input"]["name"], spec["output"]["name"])
    _, _, val = read_task(str(device_data), 0.2, 0)
    images, labels = load_images(val, spec["preprocessing"])
    theirs = session.run(None, {spec["input"]["name"]: images})[0]
    ours, _ = graph.forward({graph.input_name: images}, range(len(graph.nodes)), graph.output_name)
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    assert float((theirs.argmax(1) == labels).mean()) == pytest.approx(payload["accuracy_onnxruntime"])
    assert load_bundle(str(Path(payload["model_dir"]) / "model.onnx")).labels == payload["class_names"]
    assert _leftovers(workdir) == []
    with Pool(tiny_pool) as pool:  # the jetson's TensorRT/CUDA are missing here: nothing calibrates
        assert payload["measurement_id"] is None and not pool.measurements(device="jetson_nano")


def test_the_cli_flow_reports_and_stores_the_adaptation_peak(
    device_python: str, tiny_pool: Path, device_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "device.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "test-device", "memory_budget": "1GiB", "latency_target_ms": 1000, "latency_percentile": "p90",
        "input_size": SIZE, "threads": 1, "providers": ["CPUExecutionProvider"], "throughput_gmacs": 20,
        "connection": {"transport": "local", "python": device_python, "workdir": str(tmp_path / "work")},
    }))  # fmt: skip
    argv = ["deploy", "--profile", str(profile), "--pool", str(tiny_pool), "--device-data", str(device_data),
            "--ratio", "0.3", "--iters", "2", "--batch-size", "16", "--trainable-blocks", "1", "--bench-runs", "5",
            "--bench-seconds", "0", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapted_on"] == "device" and report["trainable_blocks"] == 1
    with Pool(tiny_pool) as pool:
        (stored,) = pool.measurements(device="test-device")
    assert stored.id == report["measurement_id"] and stored.adapt_peak_rss_mib == report["adapt_peak_rss_mib"]
    assert stored.peak_rss_mib == report["bench_peak_rss_mib"] and stored.report["adapted_on"] == "device"
    # A budget the adaptation cannot fit is refused in one line before anything but the runtime is uploaded.
    tight = yaml.safe_load(profile.read_text())
    tight.update(memory_budget="40MiB", connection={**tight["connection"], "workdir": str(tmp_path / "w2")})
    profile.write_text(yaml.safe_dump(tight))
    assert main([*argv[:-1], str(tmp_path / "out2")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "on-device adaptation needs" in line and "budget of 40.0 MiB" in line
    assert "adapt_memory_budget" in line
    assert sorted(os.listdir(tmp_path / "w2")) == ["runtime"]
    # What the adaptation may use is its own key when the profile has one: here it, not the 1 GiB, refuses.
    tight.update(memory_budget="1GiB", adapt_memory_budget="48MiB")
    tight["connection"]["workdir"] = str(tmp_path / "w3")
    profile.write_text(yaml.safe_dump(tight))
    assert main([*argv[:-1], str(tmp_path / "out3")]) == 2
    line = capsys.readouterr().err.strip()
    assert "on-device adaptation needs" in line and "budget of 48.0 MiB" in line
    assert not (tmp_path / "out3").exists()


def _bad_folder(kind: str, root: Path, images: Path) -> Path:
    def copy(target: Path, names: list[str], count: int = 3, split: str = "train") -> None:
        for name in names:
            (target / name).mkdir(parents=True)
            for source in sorted((images / split / name).iterdir())[:count]:
                (target / name / source.name).write_bytes(source.read_bytes())

    data = root / "data"
    if kind == "missing":
        return root / "nowhere"
    if kind == "one class":
        copy(data, ["coat"])
    elif kind == "one image":
        copy(data, ["coat", "pullover"])
        copy(data, ["tshirt"], count=1)
    elif kind == "not an image":
        copy(data, ["coat", "pullover", "tshirt"])
        (data / "coat" / "notes.txt").write_text("not a picture")
    elif kind == "corrupt image":
        copy(data, ["coat", "pullover", "tshirt"])
        (data / "pullover" / "broken.pgm").write_bytes(b"P5\n28 28\n255\n" + b"\x00" * 10)
    elif kind == "split classes differ":
        copy(data / "train", ["coat", "pullover", "tshirt"])
        copy(data / "val", ["coat", "pullover", "tshirt"], count=1, split="val")
        (data / "val" / "tshirt").rename(data / "val" / "dress")
    return data


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("missing", "not found"),
        ("one class", "at least two class folders"),
        ("one image", "'tshirt'"),
        ("not an image", "notes.txt"),
        ("corrupt image", "broken.pgm"),
        ("split classes differ", "different classes"),
    ],
)
def test_bad_device_data_is_one_typed_line_and_leaves_only_the_cache(
    kind: str, fragment: str, device_python: str, tiny_pool: Path, device_data: Path, backbone: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = _bad_folder(kind, tmp_path, device_data)
    workdir = tmp_path / "work"
    profile = with_connection(load_profile("localhost"), {"python": device_python, "workdir": str(workdir)})
    with Pool(tiny_pool) as pool, pytest.raises(DataError) as raised:
        deploy_on_device(_request(profile, pool, backbone, data, tmp_path / "out"))
    message = str(raised.value)
    assert "\n" not in message and fragment in message, message
    assert sorted(os.listdir(workdir)) == ["runtime"] and _leftovers(workdir) == []


def test_bad_input_exits_2_in_one_line(
    device_python: str, tiny_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["deploy", "--profile", "localhost", "--pool", str(tiny_pool), "--image-size", str(SIZE),
              "--ratio", "0.3", "--out", str(tmp_path / "out")]  # fmt: skip
    missing = f"{{transport: local, python: {device_python}, workdir: {tmp_path / 'work'}}}"
    assert main([*common, "--connection", missing, "--device-data", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "not found" in captured.err
    assert sorted(os.listdir(tmp_path / "work")) == ["runtime"]
    # A device whose work dir cannot be written (even root cannot create files under /proc).
    readonly = f"{{transport: local, python: {device_python}, workdir: /proc/edge-smsp-work}}"
    assert main([*common, "--connection", readonly, "--device-data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "work dir" in captured.err


@pytest.mark.parametrize(
    ("stage", "pattern", "fragment"),
    [
        ("probe", 's/"nearest_mean_accuracy": [0-9.e+-]+/"nearest_mean_accuracy": 7.5/',
         "probe reply is not plausible: scores[0].nearest_mean_accuracy 7.5"),
        ("adapt", 's/"accuracy": [0-9.e+-]+/"accuracy": 42/', "adapt reply is not plausible: accuracy 42"),
        ("adapt", 's/"train_images": [0-9]+/"train_images": 0/', "says it trained on 0 images, but its scan found"),
        ("scan", 's/"pullover"/"..\\/etc"/', "adapt reply names classes ['coat', 'pullover', 'tshirt'], but its scan"),
    ],
)  # fmt: skip
def test_a_device_reply_that_no_run_gives_is_refused(
    stage: str, pattern: str, fragment: str, device_python: str, tiny_pool: Path, device_data: Path,
    backbone: Any, tmp_path: Path,
) -> None:  # fmt: skip
    lying = tmp_path / "python"  # the real runtime, its reply to `stage` rewritten
    lying.write_text(
        f'#!/bin/sh\nout=$("{device_python}" "$@"); rc=$?\n'
        f'case " $* " in *" {stage} "*) printf \'%s\\n\' "$out" | sed -E \'{pattern}\' ;; *) printf \'%s\\n\' "$out" ;; esac\n'
        "exit $rc\n"
    )
    lying.chmod(0o755)
    profile = with_connection(
        load_profile("localhost"), {"python": str(lying), "workdir": str(tmp_path / "w")}
    )
    with Pool(tiny_pool) as pool, pytest.raises(TransportError) as raised:
        deploy_on_device(_request(profile, pool, backbone, device_data, tmp_path / "out"))
    assert fragment in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert not (tmp_path / "out").exists()


def test_probe_scores_match_the_hosts_nearest_mean_classifier() -> None:
    import torch
    from edge_smsp_runtime.probe import nearest_mean_accuracy as on_device

    from edge_smsp.transfer.entry_probe import nearest_mean_accuracy

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 7)
    values = rng.standard_normal((len(labels), 16)) + labels[:, None] * 0.4
    host = nearest_mean_accuracy(torch.from_numpy(values).float(), torch.from_numpy(labels), 4)
    assert on_device(values, labels, 4) == pytest.approx(host)


def test_the_memory_plan_refuses_or_caps(tmp_path: Path) -> None:
    from edge_smsp.devices.adapt_memory import BundleSizes, fit_adapt_memory

    sizes = BundleSizes(param_bytes=4_000_000, input_elements=3072, cut_elements=(1280, 320, 3072),
                        front_live_elements=(9000, 8000, 0), tail_elements=(3, 6000, 50000),
                        trainable_params=(3843, 100_000, 1_000_000), full_live_elements=9000)  # fmt: skip
    common = dict(trainable_blocks=1, train_counts=[5000, 5000], val_counts=[100, 100], batch_size=128,
                  imported_rss_mib=60.0)  # fmt: skip
    roomy = fit_adapt_memory(sizes, 2**31, **common)
    assert roomy.max_per_class is None and roomy.train_images == 10000
    capped = fit_adapt_memory(sizes, 250 * 2**20, **common)
    assert capped.peak_bytes <= 250 * 2**20 and 2 <= capped.max_per_class < 5000
    with pytest.raises(PlanError, match="on-device adaptation needs .* budget of 50.0 MiB"):
        fit_adapt_memory(sizes, 50 * 2**20, **common)
    assert issubclass(PlanError, EdgeSmspError)


def test_the_transport_counts_every_byte_each_way(tmp_path: Path) -> None:
    from edge_smsp.devices.profiles import ConnectionSpec
    from edge_smsp.transport import open_transport

    record = PayloadRecord()
    local = tmp_path / "blob.bin"
    local.write_bytes(b"\x01\x02" * 5000)
    with open_transport(ConnectionSpec(transport="local", workdir=str(tmp_path / "work"))) as device:
        device.bytes.hook = record
        remote = device.upload(local, "blobs/blob.bin")
        result = device.run(
            [device.python, "-c", "import sys; print('x' * 1000); sys.stderr.write('e' * 7)"], 60
        )
        assert result.stdout.strip() == "x" * 1000
        assert device.upload_cached([(local, "blobs/blob.bin")]) == [remote]  # a cache hit: not sent again
        files = [payload for what, payload in record.payloads[TO_DEVICE] if what.startswith("file ")]
        assert files == [local.read_bytes()]
        stdout = [payload for what, payload in record.payloads[FROM_DEVICE] if what == "stdout"]
        assert b"x" * 1000 + b"\n" in stdout and (FROM_DEVICE, b"e" * 7) in [
            (FROM_DEVICE, payload) for what, payload in record.payloads[FROM_DEVICE] if what == "stderr"
        ]
        assert device.bytes.to_device == record.total(TO_DEVICE) > 10000
        assert device.bytes.from_device == record.total(FROM_DEVICE) >= 1007
