"""`deploy --device-data` on the emulated ARM64 board (scripts/arm_device.sh, marker `arm`): the light tier's
scan, describe, probe and adapt run under qemu on aarch64 numpy and onnxruntime wheels. Function, not speed:
32 px, a few images, one iteration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_smsp import adaptation
from edge_smsp.deploy.bench import BenchSettings
from edge_smsp.deploy.device_adapt import DeviceDeployRequest, deploy_on_device
from edge_smsp.deploy.device_steps import DeviceData
from edge_smsp.devices.profiles import DeviceProfile
from edge_smsp.pool import Pool
from edge_smsp.transport import open_transport
from tests.light_adapt_helpers import image_folder
from tests.test_arm import arm_device  # noqa: F401  (the emulated board's fixture)
from tests.test_device_adapt import (  # noqa: F401  (fixtures)
    CLASSES,
    SIZE,
    PayloadRecord,
    _assert_no_image_crossed,
    _leftovers,
    backbone,
    tiny_pool,
)

pytestmark = pytest.mark.arm


def test_device_adapts_on_the_emulated_arm64_board(
    arm_device: DeviceProfile,  # noqa: F811
    tiny_pool: Path,  # noqa: F811
    backbone: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = image_folder(tmp_path / "images", CLASSES, 5, fmt="pgm", split=True)
    with open_transport(arm_device.connection) as device:  # the task's images, put on the board beforehand
        files = sorted(path for path in data.rglob("*.pgm"))
        device.upload_many([(path, f"task/{path.relative_to(data).as_posix()}") for path in files])
        remote_data = device.remote_path("task")
    record = PayloadRecord()
    with Pool(tiny_pool) as pool:
        report = deploy_on_device(
            DeviceDeployRequest(
                profile=arm_device,
                backbone=backbone,
                pool=pool,
                config=adaptation.AdaptConfig(ratio=0.3, iters=1, batch_size=8),
                out_dir=tmp_path / "out",
                data=DeviceData(path=remote_data, trainable_blocks=1, sample=12),
                image_size=SIZE,
                bench=BenchSettings(runs=1, min_seconds=0.0, warmup=10),
                on_payload=record,
            )
        )
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["device_stack"]["machine"] == "aarch64" and payload["adapted_on"] == "device"
    assert payload["agreement"] == 1.0 and 0 <= payload["accuracy_onnxruntime"] <= 1
    assert set(payload["device_seconds"]) == {"scan", "describe", "probe", "adapt", "bench"}
    assert payload["adapt_memory"]["peak_bytes"] >= payload["adapt_peak_rss_mib"] * 2**20
    assert payload["bytes_from_device"] == record.total("from_device") < 64 * 1024
    _assert_no_image_crossed(record, data)
    print(
        f"\nARM64 device seconds {payload['device_seconds']}, adapt peak {payload['adapt_peak_rss_mib']} MiB"
    )
