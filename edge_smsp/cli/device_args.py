"""The device's arguments (--profile's connection, host keys, runtime, precision, bench length) and their
converters into a DeviceProfile and BenchSettings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edge_smsp.cli.converters import int_in_range, seconds_arg
from edge_smsp.core.errors import EdgeSmspError, ProfileError
from edge_smsp.core.precisions import AUTO, PRECISIONS
from edge_smsp.deploy.bench import MAX_BENCH_RUNS
from edge_smsp.device_runtime.backends import backend_names

if TYPE_CHECKING:
    from edge_smsp.deploy.bench import BenchSettings
    from edge_smsp.devices.profiles import DeviceProfile


def connection_arg(text: str) -> tuple[dict, Path]:
    """A connection override (a YAML file or an inline mapping), checked by its owner, edge_smsp.devices.profiles."""
    from edge_smsp.devices.profiles import load_connection_override

    try:
        return load_connection_override(text)
    except EdgeSmspError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--connection, --trust-new-host and the benchmark's length, shared by deploy and bench."""
    parser.add_argument(
        "--connection",
        type=connection_arg,
        default=None,
        metavar="YAML",
        help="reach the profile's device another way: a YAML file of connection keys (host, port, user, "
        "key_file, known_hosts, python, workdir, transport) or an inline mapping such as "
        "'{host: 192.168.1.20, port: 2222}'; host keys are still verified",
    )
    parser.add_argument(
        "--trust-new-host", action="store_true", help="accept an unknown SSH host key and record it"
    )
    parser.add_argument(
        "--runtime",
        choices=backend_names(),
        default=None,
        help="the device runtime's inference engine (default: the profile's runtime, else onnxruntime)",
    )
    parser.add_argument(
        "--precision",
        choices=(*PRECISIONS, AUTO),
        default=None,
        help="numeric precision of the model on the device (default: the profile's precision; bench: read "
        "from the model's graph)",
    )
    parser.add_argument(
        "--bench-runs",
        type=int_in_range(1, MAX_BENCH_RUNS),
        default=100,
        metavar="N",
        help="timed runs, at least",
    )
    parser.add_argument(
        "--bench-seconds",
        type=seconds_arg,
        default=2.0,
        metavar="S",
        help="timed seconds, at least (default 2)",
    )


def profile_from_args(args: argparse.Namespace) -> DeviceProfile:
    """The --profile, reached through --connection when given."""
    from edge_smsp.devices.profiles import load_profile, with_connection

    profile = load_profile(args.profile)
    if args.connection is not None:
        overrides, base_dir = args.connection
        profile = with_connection(profile, overrides, base_dir)
    if getattr(args, "trust_new_host", False) and profile.connection.transport == "local":
        raise ProfileError(
            f"--trust-new-host records SSH host keys; {profile.name} runs on this machine (transport local): "
            "drop it"
        )
    return profile


def bench_settings_from_args(
    args: argparse.Namespace, profile: DeviceProfile, *, precision_from_profile: bool = True
) -> BenchSettings:
    """How long the device benchmark runs, and on which runtime and precision (the flags, else the profile's)."""
    from edge_smsp.deploy.bench import BenchSettings

    precision = args.precision or (profile.precision if precision_from_profile else None)
    return BenchSettings(
        runs=args.bench_runs,
        min_seconds=args.bench_seconds,
        runtime=args.runtime or profile.runtime,
        precision=precision,
    )
