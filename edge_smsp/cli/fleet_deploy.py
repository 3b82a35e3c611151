"""`edge-smsp deploy --profile a.yaml --profile b.yaml …` or `--fleet FILE`: one task to several devices
(edge_smsp.deploy.fleet); the terminal shows the HTML report's table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from edge_smsp.cli.args import (
    backbone_from_args,
    check_task_args,
    config_from_args,
    pool_path,
    task_from_args,
)
from edge_smsp.cli.converters import int_in_range
from edge_smsp.cli.device_args import bench_settings_from_args
from edge_smsp.cli.output import one_line, print_json, show_progress
from edge_smsp.cli.precision_output import max_int8_drop
from edge_smsp.core.errors import ProfileError
from edge_smsp.devices.profiles import DeviceProfile

FLEET_FAILED_EXIT = 1  # some devices failed (bad input, before any device was reached, stays 2)


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """--fleet FILE and --max-connections."""
    parser.add_argument(
        "--fleet",
        default=None,
        metavar="FILE",
        help="deploy to every device of a YAML list of {profile: P, connection: {...}} pairs (paths relative to "
        "the file); with --profile, those devices too",
    )
    parser.add_argument(
        "--max-connections",
        type=int_in_range(1, 256),
        default=4,
        metavar="N",
        help="a fleet: devices connected to at once (default 4)",
    )


def fleet_requested(args: argparse.Namespace) -> bool:
    """Several --profile, or a --fleet file; checks that one of them was given."""
    profiles = args.profile or []
    if not profiles and args.fleet is None:
        raise ProfileError("deploy needs --profile P (repeat it for several devices) or --fleet FILE")
    return len(profiles) > 1 or args.fleet is not None


def fleet_profiles(args: argparse.Namespace) -> list[DeviceProfile]:
    """Every device's profile, all read before anything slow happens (a bad one: one line, exit 2)."""
    from edge_smsp.devices.fleet_file import load_fleet
    from edge_smsp.devices.profiles import load_profile

    if args.connection is not None:
        raise ProfileError(
            "--connection names one device's connection: for a fleet, give each device its connection in a "
            "--fleet file"
        )
    if args.device_data is not None or args.calibrate:
        flag = "--device-data" if args.device_data is not None else "--calibrate"
        raise ProfileError(f"{flag} deploys to one device: give one --profile")
    profiles = [load_profile(name) for name in args.profile or []]
    if args.fleet is not None:
        profiles += load_fleet(args.fleet)
    return profiles


def run_fleet_deploy(args: argparse.Namespace) -> int:
    """The fleet branch of `edge-smsp deploy`."""
    from edge_smsp.pool import Pool

    profiles = fleet_profiles(args)
    if args.image_size is None:  # one size for the fleet: one adaptation serves several devices
        args.image_size = profiles[0].input_size
    check_task_args(args)  # bad profiles and tasks fail before torch loads
    from edge_smsp.deploy.fleet import FleetRequest, deploy_fleet
    from edge_smsp.deploy.steps import DeployRequest

    config = config_from_args(args)
    out = args.out or Path("runs") / f"deploy-fleet-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = show_progress(args)

    def announce(stage: str) -> None:
        if progress:
            print(f"edge-smsp deploy (fleet of {len(profiles)}): {stage}...", file=sys.stderr, flush=True)

    with Pool(pool_path(args), lazy=True) as pool:
        pool.check_writable()  # the devices' measurements are stored: refused before the work
        backbone = backbone_from_args(args)
        request = DeployRequest(
            profile=profiles[0],
            backbone=backbone,
            task=task_from_args(args, backbone),
            pool=pool,
            config=config,
            out_dir=out,
            trust_new_host=args.trust_new_host,
            bench=bench_settings_from_args(args, profiles[0]),
            progress=progress,
            opset=args.opset,
            max_int8_drop_pt=max_int8_drop(args),
        )
        fleet = FleetRequest(
            request=request,
            profiles=tuple(profiles),
            out_dir=out,
            max_connections=args.max_connections,
            benches=tuple(bench_settings_from_args(args, profile) for profile in profiles),
        )
        report = deploy_fleet(fleet, on_stage=announce)
    payload = report.to_dict()
    if args.json:
        print_json(payload)
    else:
        print(describe_fleet(payload))
    failed = report.failed
    if failed:
        names = "; ".join(f"{device['profile']} ({device['stage']}: {device['error']})" for device in failed)
        print(
            f"edge-smsp: error: {len(failed)} of {len(payload['devices'])} devices failed: {one_line(names)}",
            file=sys.stderr,
        )
        return FLEET_FAILED_EXIT
    return 0


def describe_fleet(payload: dict[str, Any]) -> str:
    """The HTML report's table (edge_smsp.deploy.html_report.summary_rows), what ran once, and the files."""
    from edge_smsp.deploy.html_report import summary_rows

    devices, shared = payload["devices"], payload["shared"]
    first = next((device for device in devices if "task_id" in device), None)
    what = (
        f"{first['backbone']} for {first['task_id']} [{', '.join(first['class_names'])}] at {first['image_size']} px"
        if first
        else f"{shared['task_id']} at {shared['image_size']} px"
    )
    head = f"fleet deploy of {what}: {shared['deployed']} of {shared['devices']} devices deployed"
    rows = summary_rows(devices)
    for row, device in zip(rows, devices, strict=True):
        if device.get("error"):
            row["status"] = f"{row['status']} at {device.get('stage')}: {device['error']}"
    lines = [head, *("  " + line for line in format_table(rows))]
    counts = (
        f"{shared['similarity_passes']} similarity pass(es), {shared['scoring_passes']} scoring pass(es), "
        f"{shared['adaptations']} adaptation(s), {shared['exports']} export(s) for {shared['devices']} devices"
    )
    seconds = ", ".join(f"{name} {value:.1f}" for name, value in payload["seconds"].items())
    for label, text in (
        ("shared", counts),
        ("seconds", seconds),
        ("report", payload["report_path"]),
        ("html", payload["html_path"]),
    ):
        lines.append(f"  {label:<12} {text}")
    return "\n".join(lines)


def format_table(rows: list[dict[str, str]]) -> list[str]:
    """Rows of one table, columns aligned (the union of the rows' columns, in order of first appearance)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(column for column in row if column not in columns)
    widths = {
        column: max([len(column), *(len(row.get(column, "")) for row in rows if column != "status")])
        for column in columns
    }
    lines = ["  ".join(column.ljust(widths[column]) for column in columns).rstrip()]
    for row in rows:
        lines.append("  ".join(row.get(column, "").ljust(widths[column]) for column in columns).rstrip())
    return lines
