"""Deploy-path commands: export, deploy (plan -> adapt -> export -> ship -> bench) and bench."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edge_smsp.cli.args import (
    add_adapt_arguments,
    add_backbone_arguments,
    add_pool_argument,
    add_task_arguments,
    backbone_from_args,
    check_task_args,
    config_from_args,
    pool_path,
    task_from_args,
)
from edge_smsp.cli.converters import (
    PROFILE_NAME,
    GivenOnce,
    classes_arg,
    model_dir_arg,
    nonempty_arg,
    onnx_file_arg,
    opset_arg,
    out_dir_arg,
    out_file_arg,
)
from edge_smsp.cli.device_args import add_device_arguments, bench_settings_from_args, profile_from_args
from edge_smsp.cli.device_deploy import add_device_data_arguments, check_device_data_args, run_device_deploy
from edge_smsp.cli.fleet_deploy import add_fleet_arguments, fleet_requested, run_fleet_deploy
from edge_smsp.cli.output import print_json, show_progress
from edge_smsp.cli.precision_output import (
    add_max_int8_drop_argument,
    describe_precision,
    describe_precision_export,
    export_payload,
    export_task_images,
    max_int8_drop,
)
from edge_smsp.core.address_space import check_address_space
from edge_smsp.core.errors import ExportError
from edge_smsp.core.paths import safe_text
from edge_smsp.core.precisions import FP32, INT8, PRECISIONS
from edge_smsp.training.recipe import ADAPT_BATCH_SIZE


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    register_export(subcommands)
    register_deploy(subcommands)
    register_bench(subcommands)


def register_export(subcommands: argparse._SubParsersAction) -> None:
    """`edge-smsp export`: a saved pruned model -> checked ONNX + model card."""
    parser = subcommands.add_parser(
        "export",
        help="export a saved pruned model to ONNX (simplified, checked, parity-verified, with metadata)",
        description="Export a pruned model directory (model.safetensors + pruned.json) to ONNX, with a model "
        "card (.json) beside it.",
    )
    parser.add_argument(
        "--model-dir", required=True, type=model_dir_arg, help="directory written by prune/adapt"
    )
    parser.add_argument(
        "--out", required=True, type=out_file_arg, help="ONNX file to write (e.g. model.onnx)"
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: 1)")
    parser.add_argument("--opset", type=opset_arg, default=None, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=FP32,
        help="int8: static QDQ calibrated on the task's training images, gated on its val split (the fp32 "
        "reference is written beside OUT as NAME.fp32.onnx); fp16: float16 with fp32 inputs and outputs",
    )
    add_max_int8_drop_argument(parser)
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the model's dataset is (default: its usual place); int8 calibrates on its training images",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler of `edge-smsp export`."""
    model_dir: Path = args.model_dir
    if not model_dir.is_dir():
        raise ExportError(f"--model-dir {model_dir}: not a directory")
    check_address_space("export")
    from edge_smsp.export.metadata import build_metadata, metadata_from_pruned
    from edge_smsp.export.onnx_export import check_replaceable, export_onnx
    from edge_smsp.models.pruned_model import load_pruned

    max_drop_pt = max_int8_drop(args)
    if args.precision == FP32 and args.data_dir is not None:
        raise ExportError(
            "--data-dir gives the task's images to int8 calibration and to fp16's check; an fp32 export reads "
            "none: drop it"
        )
    model, meta = load_pruned(model_dir)
    image_size = int(meta["image_size"])
    metadata = metadata_from_pruned(model, meta)
    try:  # checked now, and named as the user's file, not as the ONNX metadata it becomes
        build_metadata(metadata, image_size=image_size, num_classes=int(meta["num_classes"]))
    except ExportError as error:
        raise ExportError(f"{model_dir / 'pruned.json'} cannot be exported: {error}") from None
    images = None
    if args.precision != FP32:  # the task's images, before the export's minutes: none is one line, exit 2
        images = export_task_images(model_dir, meta, args.data_dir, required=args.precision == INT8)
    target = args.out
    if args.precision != FP32:
        from edge_smsp.export.precision import reference_path

        target = reference_path(args.out)
        check_replaceable(Path(args.out))
        check_replaceable(target, sidecar=True)
    result = export_onnx(
        model,
        target,
        image_size=image_size,
        metadata=metadata,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
    )
    checked = fp32_result = None
    if args.precision != FP32:
        from edge_smsp.export.precision import export_precision, shipped_export

        checked = export_precision(
            result.onnx_path, args.out, args.precision, **(images or {}), max_drop_pt=max_drop_pt
        )
        fp32_result, result = result, shipped_export(result, checked)
    if args.json:
        print_json(export_payload(result, checked, fp32_result))
    elif checked is None:
        print(
            f"exported {result.onnx_path} ({result.size_bytes / 1024**2:.2f} MiB, opset {result.opset}, "
            f"parity max |diff| {result.max_abs_diff:.1e} on {result.parity_samples} inputs) "
            f"and card {result.card_path} in {result.seconds:.1f} s"
        )
    else:
        print(describe_precision_export(result, checked, fp32_result))
    return 0


DEFAULT_CLASSES = "0,2,4"  # Fashion-MNIST T-shirt/top, Pullover, Coat: the embedded default task


def register_deploy(subcommands: argparse._SubParsersAction) -> None:
    """`edge-smsp deploy`: plan, adapt, export, ship and benchmark on a device described by a profile."""
    parser = subcommands.add_parser(
        "deploy",
        help="adapt a sub-network that fits a device, ship it there and measure it",
        description="Load the device profile, plan the pruning ratio (memory and latency), adapt the backbone "
        "to the task (SMSP when the pool has entries for it, else a named baseline), export ONNX, upload it "
        "(SHA-256 verified), benchmark it on the device, and save/print/store the report.",
    )
    parser.add_argument(
        "--profile",
        type=nonempty_arg(PROFILE_NAME),
        action="append",
        default=None,
        metavar="P",
        help="profile YAML or bundled name (localhost); repeat it to deploy to a fleet (one adaptation per "
        "distinct ratio, devices reached concurrently; exit 1 when any device failed)",
    )
    add_backbone_arguments(parser)
    add_task_arguments(
        parser,
        classes=True,
        default_classes=DEFAULT_CLASSES,
        default_image_size=None,
        image_size_help="input resolution (default: the profile's input_size; a fleet: one size for every "
        "device, the first profile's)",
        default_batch_size=ADAPT_BATCH_SIZE,
    )
    add_adapt_arguments(parser, ratio_help="adapt at this ratio and skip planning (default: plan it)")
    add_pool_argument(parser)
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="first benchmark the backbone pruned at a few ratios on the device and store the results",
    )
    add_device_arguments(parser)
    add_max_int8_drop_argument(parser)
    parser.add_argument(
        "--opset",
        type=opset_arg,
        default=None,
        help="ONNX opset of the shipped model (default: the export default, or the profile's max_opset if lower)",
    )
    parser.add_argument(
        "--out",
        type=out_dir_arg,
        default=None,
        metavar="DIR",
        help="default: runs/deploy-<profile>-<timestamp>",
    )
    add_device_data_arguments(parser)
    add_fleet_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    # classes None: not given (DEFAULT_CLASSES, unless --device-data, whose folders name the classes).
    parser.set_defaults(handler=run_deploy, classes=None)


def register_bench(subcommands: argparse._SubParsersAction) -> None:
    """`edge-smsp bench`: benchmark any ONNX model on a profile's device."""
    parser = subcommands.add_parser(
        "bench",
        help="benchmark an ONNX model on a device (upload, run the device runtime, report)",
        description="Upload an ONNX model to the profile's device (SHA-256 verified) and run the device "
        "runtime's benchmark with the profile's threads and execution providers.",
    )
    parser.add_argument(
        "--profile",
        type=nonempty_arg(PROFILE_NAME),
        required=True,
        action=GivenOnce,
        metavar="P",
        help="profile YAML or bundled name (localhost); one device per bench",
    )
    parser.add_argument("--model", required=True, type=onnx_file_arg, help="ONNX file")
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the runtime's JSON report")
    parser.set_defaults(handler=run_bench)


def run_deploy(args: argparse.Namespace) -> int:
    """Handler of `edge-smsp deploy`."""
    import sys

    from edge_smsp.devices.profiles import check_input_fits
    from edge_smsp.devices.stack import device_opset
    from edge_smsp.pool import Pool

    check_device_data_args(args)
    check_address_space("deploy")
    if args.device_data is None and args.classes is None:
        args.classes = classes_arg(DEFAULT_CLASSES)
    if fleet_requested(args):
        return run_fleet_deploy(args)
    args.profile = args.profile[0]
    profile = profile_from_args(args)  # a bad profile, opset or task fails before torch loads
    device_opset(args.opset, profile)
    if args.image_size is None:
        args.image_size = profile.input_size
    check_input_fits(profile, args.image_size)  # before data, torch or a forward pass at that size
    if args.device_data is not None:  # the task's images stay on the device: it adapts the model itself
        if args.precision not in (None, FP32):
            raise ExportError(
                f"--precision {args.precision}: --device-data adapts and ships fp32 models only"
            )
        return run_device_deploy(args, profile)
    check_task_args(args)
    bench = bench_settings_from_args(args, profile)
    from edge_smsp.deploy.session import DeployRequest, deploy

    config = config_from_args(args)
    out = args.out or Path("runs") / f"deploy-{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = show_progress(args)

    def announce(stage: str) -> None:
        if progress:
            print(f"edge-smsp deploy: {stage}...", file=sys.stderr, flush=True)

    # Made on first use: a deploy that fails before it plans (an unreachable device) leaves no pool file.
    with Pool(pool_path(args), lazy=True) as pool:
        pool.check_writable()  # the device's measurement is stored: a read-only pool refuses before the work
        backbone = backbone_from_args(args)
        request = DeployRequest(
            profile=profile,
            backbone=backbone,
            task=task_from_args(args, backbone),
            pool=pool,
            config=config,
            out_dir=out,
            trust_new_host=args.trust_new_host,
            calibrate=args.calibrate,
            bench=bench,
            progress=progress,
            opset=args.opset,
            max_int8_drop_pt=max_int8_drop(args),
        )
        report = deploy(request, on_stage=announce)
    if args.json:
        print_json(report.to_dict())
    else:
        print(describe_deploy(report.to_dict()))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Handler of `edge-smsp bench`."""
    from edge_smsp.deploy.bench import bench_model

    profile = profile_from_args(args)
    if args.precision == "auto":
        raise ExportError(
            "bench --precision auto: bench measures the given model; name its precision or omit it"
        )
    report = bench_model(
        profile,
        args.model,
        trust_new_host=args.trust_new_host,
        bench=bench_settings_from_args(args, profile, precision_from_profile=False),
    )
    if args.json:
        print_json(report)
    else:
        print(describe_bench(report))
    return 0


def describe_deploy(report: dict[str, Any]) -> str:
    """A readable summary of one deploy, one aspect per line."""
    measured = report["measured"]
    percentile = report["latency_percentile"]
    latency_verdict = "met" if report["meets_latency_target"] else "MISSED"
    memory = report["memory_model"]
    basis = (
        "hint"
        if memory["source"] == "hint"
        else f"{memory['source']} to {memory['n_measurements']} measurements + margin {_mib(memory['margin_bytes'])}"
    )
    memory_line = (
        f"predicted {_mib(report['predicted_memory_bytes'])} ({basis}; "
        f"runtime {_mib(report['runtime_overhead_bytes'])} from {report['runtime_overhead_source']})"
    )
    if report["measured_peak_rss_bytes"] is not None:
        verdict = "met" if report["meets_memory_budget"] else "EXCEEDED"
        memory_line += f", measured peak RSS {_mib(report['measured_peak_rss_bytes'])}"
        memory_line += f" (budget {_mib(report['memory_budget_bytes'])}: {verdict})"
    model = report["latency_model"]
    method = report["method"] + (f" ({report['method_note']})" if report["method_note"] else "")
    seconds = report["seconds"]
    device = measured.get("device") or {}
    rows = [
        ("method", method),
        (
            "ratio",
            f"{report['ratio']:.2f} ({'planned' if report['ratio_source'] == 'plan' else 'given'}; latency model "
            f"from {model['source']}"
            + (f", {model['n_measurements']} measurements)" if model["n_measurements"] else ")"),
        ),
        (
            f"latency {percentile}",
            f"predicted {report['predicted_latency_ms']:.2f} ms, measured {report['measured_latency_ms']:.2f} ms "
            f"({100 * report['latency_error']:+.0f}%; target {report['latency_target_ms']:g} ms: {latency_verdict})",
        ),
        ("memory", memory_line),
        ("precision", describe_precision(report)),
        ("accuracy", f"{100 * report['val_accuracy']:.2f}% on the validation split"),
        (
            "size",
            f"params {report['params_before']:,} -> {report['params_after']:,}, "
            f"MACs {report['macs_before']:,} -> {report['macs_after']:,}, ONNX {_mib(report['onnx_size_bytes'])}",
        ),
        (
            "device",
            f"{device.get('device_tree_model') or device.get('cpu_model') or '?'}; onnxruntime "
            f"{measured.get('onnxruntime_version', '?')} {', '.join(measured.get('providers', []))}, "
            f"{measured.get('runs', '?')} runs",
        ),
        ("stack", describe_stack(report["device_stack"], report["opset"])),
        ("seconds", ", ".join(f"{name} {value:.1f}" for name, value in seconds.items())),
        ("onnx", f"{report['onnx_path']} -> device {report['remote_model_path']}"),
        (
            "report",
            report["report_path"]
            + (
                f" (pool measurement #{report['measurement_id']})"
                if report["measurement_id"] is not None
                else f" ({report['measurement_note']})"
                if report["measurement_note"]
                else ""
            ),
        ),
        ("html", str(Path(report["report_path"]).with_name("deploy_report.html"))),
    ]
    head = (
        f"deployed {report['backbone']} to {report['profile']} ({report['device_transport']}) for "
        f"{safe_text(report['task_id'])} [{safe_text(', '.join(report['class_names']))}] at {report['image_size']} px"
    )
    return "\n".join([head] + [f"  {label:<12} {text}" for label, text in rows])


def describe_stack(stack: dict[str, Any], opset: int) -> str:
    """The device's software as its check found it, and the shipped model's opset."""
    newest = "?" if stack["max_opset"] is None else stack["max_opset"]
    return (
        f"{stack['machine']}, Python {stack['python_version']}, {stack['runtime']} {stack['engine_version']} "
        f"(opset <= {newest}); model opset {opset}"
    )


def describe_bench(report: dict[str, Any]) -> str:
    """A readable summary of one device benchmark, its strings escaped (a newline cannot forge a line)."""
    latency = report["latency_ms"]
    percentile = report.get("latency_percentile", "p90")
    target = report.get("latency_target_ms")
    verdict = ""
    if target is not None:
        verdict = f" (profile target {target:g} ms {percentile}: {'met' if latency[percentile] <= target else 'MISSED'})"
    device = report.get("device") or {}
    rows = [
        (
            "latency",
            f"p50 {latency['p50']:.2f} / p90 {latency['p90']:.2f} / p99 {latency['p99']:.2f} ms{verdict}",
        ),
        ("throughput", f"{report.get('throughput_ips')} images/s over {report.get('runs')} runs"),
        ("memory", f"peak RSS {report.get('peak_rss_mib')} MiB"),
        (
            "session",
            f"created in {report.get('session_creation_ms')} ms, first inference "
            f"{report.get('first_inference_ms')} ms",
        ),
        (
            "runtime",
            f"onnxruntime {report.get('onnxruntime_version')} {', '.join(report.get('providers', []))}",
        ),
        ("device", f"{device.get('device_tree_model') or device.get('cpu_model') or '?'}"),
        (
            "model",
            f"{report.get('remote_model_path')} ({_mib(report.get('model_size_bytes', 0))}, "
            f"SHA-256 {str(report.get('model_sha256'))[:16]}…)",
        ),
    ]
    head = f"benchmarked on {report.get('profile')}"
    return "\n".join([safe_text(head)] + [f"  {label:<12} {safe_text(text)}" for label, text in rows])


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB"
