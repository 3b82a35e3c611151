"""`edge-smsp deploy --device-data DIR`: the task's images stay on the device, which adapts the model itself
(edge_smsp.deploy.device_adapt)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from edge_smsp.cli.args import DEFAULT_DATASET, backbone_from_args, config_from_args, pool_path
from edge_smsp.cli.converters import int_in_range, nonempty_arg
from edge_smsp.cli.device_args import bench_settings_from_args
from edge_smsp.cli.output import print_json, show_progress
from edge_smsp.core.errors import DataError
from edge_smsp.core.paths import safe_text
from edge_smsp.devices.profiles import DeviceProfile


def add_device_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--device-data DIR and the light tier's knobs."""
    parser.add_argument(
        "--device-data",
        type=nonempty_arg("a folder on the device"),
        default=None,
        metavar="DIR",
        help="an ImageFolder ON THE DEVICE (train/ and val/, or class folders): the device describes the task, "
        "probes the pool's candidates and adapts the model there; no image reaches this machine",
    )
    parser.add_argument(
        "--trainable-blocks",
        type=int_in_range(0, 1000),
        default=None,
        metavar="K",
        help="with --device-data: train the layers after the model's K-th block boundary, last first (0: the "
        "classifier alone; default 6)",
    )
    parser.add_argument(
        "--device-train",
        choices=("auto", "light", "torch"),
        default="auto",
        help="with --device-data: the tier that adapts on the device: light (numpy + onnxruntime, the layers after "
        "--trainable-blocks), torch (every parameter, the host's recipe; needs torch there, not edge-smsp), or "
        "auto: torch when the device's `info` reports torch and its memory plan fits (default)",
    )


def check_device_data_args(args: argparse.Namespace) -> None:
    """--trainable-blocks and --device-train act with --device-data only; with it, the device's folders name the
    classes, so --classes would be ignored: each refused in one line rather than silently dropped."""
    if args.device_data is None:
        given = [
            flag
            for flag, value in (
                ("--trainable-blocks", args.trainable_blocks),
                ("--device-train", args.device_train),
            )
            if value not in (None, "auto")
        ]
        if given:
            raise DataError(
                f"{given[0]} acts on --device-data only: add --device-data DIR or drop {given[0]}"
            )
    elif args.classes is not None:
        raise DataError(
            "--classes: with --device-data the device's class folders are the task; drop --classes"
        )
    elif args.data_dir is not None or args.dataset != DEFAULT_DATASET:
        flag = "--data-dir" if args.data_dir is not None else "--dataset"
        raise DataError(
            f"{flag}: with --device-data the images are the device's folders, and no host data is read; drop {flag}"
        )


def run_device_deploy(args: argparse.Namespace, profile: DeviceProfile) -> int:
    """Handler of `edge-smsp deploy --device-data`."""
    from edge_smsp.deploy.bench import BenchSettings
    from edge_smsp.deploy.device_adapt import DeviceDeployRequest, deploy_on_device
    from edge_smsp.deploy.device_steps import DeviceData
    from edge_smsp.pool import Pool

    bench: BenchSettings = bench_settings_from_args(args, profile)
    config = config_from_args(args)
    out = args.out or Path("runs") / f"deploy-{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = show_progress(args)

    def announce(stage: str) -> None:
        if progress:
            print(f"edge-smsp deploy: {stage}...", file=sys.stderr, flush=True)

    with Pool(pool_path(args), lazy=True) as pool:
        pool.check_writable()  # the devices' measurements are stored: refused before the work
        request = DeviceDeployRequest(
            profile=profile,
            backbone=backbone_from_args(args),
            pool=pool,
            config=config,
            out_dir=out,
            data=DeviceData(
                path=args.device_data, trainable_blocks=args.trainable_blocks, tier=args.device_train
            ),
            image_size=args.image_size,
            trust_new_host=args.trust_new_host,
            bench=bench,
            progress=progress,
            opset=args.opset,
        )
        report = deploy_on_device(request, on_stage=announce).to_dict()
    if args.json:
        print_json(report)
    else:
        print(describe_device_deploy(report))
    return 0


def describe_device_deploy(report: dict[str, Any]) -> str:
    """A readable summary of a deploy adapted on the device, one aspect per line."""
    memory = report["adapt_memory"]
    cap = memory["max_per_class"]
    rows = [
        ("method", report["method"] + (f" ({report['method_note']})" if report["method_note"] else "")),
        ("ratio", f"{report['ratio']:.2f} ({'planned' if report['ratio_source'] == 'plan' else 'given'})"),
        (
            "accuracy",
            f"{100 * report['accuracy_onnxruntime']:.2f}% on the device's validation split ({'torch' if report.get('device_train') == 'torch' else 'numpy'} "
            f"{100 * report['accuracy_numpy']:.2f}%, agreement {100 * report['agreement']:.1f}%), "
            f"{report['trainable_blocks']} trainable blocks",
        ),
        (
            "tier",
            report.get("device_train", "light")
            + (f" ({report['device_train_note']})" if report.get("device_train_note") else ""),
        ),
        (
            f"latency {report['latency_percentile']}",
            f"measured {report['measured_latency_ms']:.2f} ms (target {report['latency_target_ms']:g} ms)",
        ),
        (
            "memory",
            f"adaptation peak {report['adapt_peak_rss_mib']} MiB (predicted {memory['peak_mib']} MiB, "
            f"{'every image' if cap is None else f'at most {cap} images per class'}), bench peak "
            f"{report['bench_peak_rss_mib']} MiB (budget {report['memory_budget_bytes'] / 1024**2:.1f} MiB)",
        ),
        (
            "bytes",
            f"{report['bytes_to_device']:,} to the device, {report['bytes_from_device']:,} from it",
        ),
        ("device s", ", ".join(f"{name} {value:.1f}" for name, value in report["device_seconds"].items())),
        ("seconds", ", ".join(f"{name} {value:.1f}" for name, value in report["seconds"].items())),
        ("onnx", f"device {report['remote_model_path']}"),
        ("report", report["report_path"]),
    ]
    head = (
        f"adapted {report['backbone']} on {report['profile']} ({report['device_transport']}) for "
        f"{safe_text(report['task_id'])} [{safe_text(', '.join(report['class_names']))}] at {report['image_size']} px"
    )
    return "\n".join([head] + [f"  {label:<12} {text}" for label, text in rows])
