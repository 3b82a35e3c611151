"""Fleet deploy (issue 23): one task to several devices against one deploy per device, and the SSH curve.

    python -m benchmarks.fleet --quick|--full

Every deploy is the product's CLI (`edge-smsp deploy ... --json`, OMP_NUM_THREADS=1) on a fresh copy of one small
pool built once from the bundled EfficientNet-Lite0, for the Fashion-MNIST task 0-2-4; stage times are the reports'.
1. Three local devices from the bundled `localhost` profile with different memory budgets (two plan the same
   ratio): one fleet deploy against three single deploys, in alternating order. Similarity and scoring passes
   are counted (the fleet report's `shared`; a single deploy runs one of each), not timed.
2. Fleets of 1 to 8 devices, each an OpenSSH server on 127.0.0.1 (tests/sshd_fixture.SshdServer) with its own
   profile, benched with 1 run: host work (plan, adapt, export) against per-device work (connect, check,
   reconnect, upload, bench) and the CPU the devices' sessions used (sshd's reaped children) on the shared cores.
Writes results/fleet.<mode>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    result_path,
    tmp_dir,
    write_json,
)
from benchmarks.formatting import mode_note, num, pyplot, save_figure, table
from benchmarks.settings import BACKBONE, DATASET

NAME = "fleet"
CLASSES = "0,2,4"
PROFILE = "localhost"  # the bundled local device profile every device here is made from
DEVICE_PARTS = ("connect", "device_check", "reconnect", "upload", "bench")  # a fleet device's own seconds
HOST_PARTS = ("plan", "adapt", "export")  # the fleet's phases that run once per distinct plan
TARGET_RATIO = 0.6  # the issue's target: fleet wall time <= 0.6x the three single deploys'


@dataclass(frozen=True)
class FleetSettings:
    image_size: int
    iters: int
    train_per_class: int
    val_per_class: int
    pool_tasks: int
    pool_iters: int
    pool_train_per_class: int
    budgets: tuple[tuple[str, str], ...]  # (device name, memory budget): the local fleet
    repeats: int  # rounds of (three single deploys, one fleet deploy), alternating which runs first
    bench_runs: int  # the local comparison's bench
    bench_seconds: float
    ssh_devices: tuple[int, ...]
    max_connections: int  # every device of the SSH curve connected at once


_LOCAL = (("tight", "112MiB"), ("roomy-a", "1GiB"), ("roomy-b", "2GiB"))  # the bundled budget, and two roomy
SETTINGS = {
    "smoke": FleetSettings(32, 2, 16, 8, 2, 2, 16, _LOCAL, 1, 5, 0.0, (1, 2), 8),
    "quick": FleetSettings(32, 2, 16, 8, 2, 2, 16, _LOCAL, 1, 20, 0.2, (1, 2), 8),
    "full": FleetSettings(64, 20, 64, 32, 4, 20, 64, _LOCAL, 2, 20, 0.2, (1, 2, 4, 8), 8),
}


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Both studies; `workers` is unused (each deploy is one single-thread CLI process)."""
    settings = SETTINGS[mode]
    work = tmp_dir(results_dir, mode) / NAME
    shutil.rmtree(work / "runs", ignore_errors=True)
    load_before = [round(value, 2) for value in os.getloadavg()]
    pool = base_pool(settings, work)
    comparison = compare_local(settings, pool, work / "runs")
    curve = ssh_curve(settings, pool, work / "runs")
    ratios = [r["fleet"]["wall_s"] / sum(d["wall_s"] for d in r["separate"]) for r in comparison]
    in_library = [r["fleet"]["total_s"] / sum(d["total_s"] for d in r["separate"]) for r in comparison]
    payload = {
        "benchmark": NAME,
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "load_average_before": load_before,
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "settings": asdict(settings),
        "note": "CLI subprocesses with OMP_NUM_THREADS=1 on 2 shared cores (one taken by a niced background job)",
        "comparison": comparison,
        "ratio_wall": ratios,
        "ratio_in_library": in_library,
        "target_ratio": TARGET_RATIO,
        "curve": curve,
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"fleet: wrote {path}")
    return payload


# --- the product's CLI, profiles and the pool -------------------------------------------------------------


def cli(args: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`python -m edge_smsp ARGS --json`: its JSON, and its wall and CPU seconds (exit 1: some device failed)."""
    env, command = (
        {**os.environ, "OMP_NUM_THREADS": "1"},
        [sys.executable, "-m", "edge_smsp", *args, "--json"],
    )
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"edge-smsp {' '.join(args[:2])} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    errors = [line for line in done.stderr.splitlines() if line.startswith("edge-smsp: error")]
    return json.loads(done.stdout), {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "errors": errors}


def base_pool(settings: FleetSettings, work: Path) -> Path:
    """A small pool built once by `edge-smsp pool build` (kept; every deploy runs on a fresh copy of it)."""
    path = work / f"pool-{settings.image_size}px-{settings.pool_tasks}x{settings.pool_iters}.sqlite"
    if path.exists():
        return path
    partial = path.with_name(path.name + ".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    log(f"fleet: building the pool {path.name}")
    cli(
        f"pool build --backbone {BACKBONE} --dataset {DATASET} --tasks {settings.pool_tasks} --classes-per-task 3 "
        f"--ratio 0.5 --iters {settings.pool_iters} --rounds 1 --image-size {settings.image_size} --train-per-class "
        f"{settings.pool_train_per_class} --val-per-class {settings.pool_train_per_class // 2} --seed 1".split()
        + ["--pool", str(partial)]
    )
    partial.replace(path)
    return path


def fresh_pool(pool: Path, run_dir: Path) -> Path:
    """A copy of the base pool: every arm plans from the same state (a deploy stores its measurement)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(pool, run_dir / "pool.sqlite"))


def write_profile(folder: Path, name: str, budget: str, size: int, connection: dict[str, Any]) -> Path:
    """The bundled `localhost` profile under another name, budget and connection (JSON is YAML)."""
    from edge_smsp.core.documents import load_yaml
    from edge_smsp.devices.profiles import resolve_profile_path

    document = load_yaml(resolve_profile_path(PROFILE).read_text())
    document.update(name=name, memory_budget=budget, input_size=size, connection=connection)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(document, indent=1))
    return path


def deploy_args(settings: FleetSettings, pool: Path, out: Path, profiles: Sequence[Path]) -> list[str]:
    args = ["deploy", *(word for profile in profiles for word in ("--profile", str(profile)))]
    args += ["--pool", str(pool), "--out", str(out)]
    return (
        args
        + f"--classes {CLASSES} --iters {settings.iters} --train-per-class {settings.train_per_class} "
        f"--val-per-class {settings.val_per_class}".split()
    )


def _device_row(report: dict[str, Any]) -> dict[str, Any]:
    """What the comparison keeps of one device's deploy report."""
    keep = ("profile", "status", "method", "ratio", "val_accuracy", "measured_latency_ms", "error", "stage")
    return {**{key: report.get(key) for key in keep}, "seconds": report.get("seconds", {})}


# --- 1. three local devices: one fleet against three single deploys --------------------------------------


def compare_local(settings: FleetSettings, pool: Path, runs: Path) -> list[dict[str, Any]]:
    rounds = []
    bench = ["--bench-runs", str(settings.bench_runs), "--bench-seconds", str(settings.bench_seconds)]
    for repeat in range(settings.repeats):
        root = runs / f"local-{repeat}"
        profiles = [
            write_profile(root / "profiles", name, budget, settings.image_size,
                          {"transport": "local", "workdir": str(root / "devices" / name)})
            for name, budget in settings.budgets
        ]  # fmt: skip
        record: dict[str, Any] = {"order": "separate first" if repeat % 2 == 0 else "fleet first"}
        for arm in ("separate", "fleet") if repeat % 2 == 0 else ("fleet", "separate"):
            copy = fresh_pool(pool, root / arm)
            if arm == "fleet":
                log(f"fleet: local round {repeat + 1}, the fleet of {len(profiles)}")
                report, cost = cli([*deploy_args(settings, copy, root / arm / "out", profiles), *bench])
                devices = [_device_row(device) for device in report["devices"]]
                record["fleet"] = {**cost, "total_s": report["seconds"]["total"], "devices": devices}
                record["fleet"].update(seconds=report["seconds"], shared=report["shared"])
                continue
            singles = []
            for profile in profiles:
                log(f"fleet: local round {repeat + 1}, single deploy to {profile.stem}")
                report, cost = cli(
                    [*deploy_args(settings, copy, root / arm / profile.stem, [profile]), *bench]
                )
                passes = {"similarity_passes": int(bool(report.get("similar_tasks"))), "scoring_passes": 1}
                singles.append(
                    {**cost, **_device_row(report), "total_s": report["seconds"]["total"], **passes}
                )
            record["separate"] = singles
        rounds.append(record)
    return rounds


# --- 2. a fleet of SSH devices on loopback ---------------------------------------------------------------


def _children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's reaped children (sshd: every connection's session and the commands it ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _wait_reaped(pid: int, seconds: float = 10.0) -> None:
    """Until sshd has reaped every connection (their CPU is counted then)."""
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}/task/{pid}/children").read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)


def ssh_curve(settings: FleetSettings, pool: Path, runs: Path) -> list[dict[str, Any]]:
    from tests.sshd_fixture import SSHD, SshdServer

    if not SSHD.exists():
        log(f"fleet: {SSHD} is absent, no SSH curve (apt-get install openssh-server)")
        return []
    servers = [
        SshdServer(runs / "sshd" / f"device-{index + 1}") for index in range(max(settings.ssh_devices))
    ]
    rows = []
    try:
        for server in servers:
            server.start()
        for count in settings.ssh_devices:
            root = runs / f"ssh-{count}"
            profiles = []
            for index, server in enumerate(servers[:count]):
                name = f"ssh-{index + 1}"  # the bundled budget: one plan; a fresh workdir: a first deploy on each
                connection = {key: str(value) for key, value in asdict(server.connection()).items() if value}
                connection.update(port=server.port, workdir=str(root / "devices" / name))
                profiles.append(
                    write_profile(root / "profiles", name, "112MiB", settings.image_size, connection)
                )
            fleet = root / "fleet.yaml"  # a fleet file: a fleet of one too (one --profile is a single deploy)
            fleet.write_text(json.dumps([{"profile": str(profile)} for profile in profiles]))
            args = [*deploy_args(settings, fresh_pool(pool, root), root / "out", []), "--fleet", str(fleet)]
            args += f"--bench-runs 1 --bench-seconds 0 --max-connections {settings.max_connections}".split()
            log(f"fleet: SSH fleet of {count}")
            cpu_before = [_children_cpu_s(server.process.pid) for server in servers[:count]]
            report, cost = cli(args)
            for server in servers[:count]:
                _wait_reaped(server.process.pid)
            device_cpu = sum(
                _children_cpu_s(server.process.pid) - before
                for server, before in zip(servers[:count], cpu_before, strict=True)
            )
            rows.append(_curve_row(count, report, cost, device_cpu))
    finally:
        for server in servers:
            server.stop()
    return rows


def _curve_row(count: int, report: dict[str, Any], cost: dict[str, Any], device_cpu: float) -> dict[str, Any]:
    seconds, devices = report["seconds"], report["devices"]
    per_device = [sum(device["seconds"].get(part, 0.0) for part in DEVICE_PARTS) for device in devices]
    return {
        "devices": count,
        **cost,
        "deployed": report["shared"]["deployed"],
        "shared": report["shared"],
        "seconds": seconds,
        "startup_s": round(cost["wall_s"] - seconds["total"], 3),  # imports, backbone and task, before deploy
        "host_s": round(sum(seconds[part] for part in HOST_PARTS), 3),
        "device_phases_s": round(seconds["device_check"] + seconds["ship"] + seconds["record"], 3),
        "per_device_mean_s": round(statistics.mean(per_device), 3),
        "per_device_max_s": round(max(per_device), 3),
        "per_device_parts_mean_s": {
            part: round(statistics.mean(device["seconds"].get(part, 0.0) for device in devices), 3)
            for part in DEVICE_PARTS
        },
        "device_cpu_s": round(device_cpu, 3),
        "devices_detail": [_device_row(device) for device in devices],
    }


# --- the report ------------------------------------------------------------------------------------------


def plot(payload: dict[str, Any], out: Path) -> Path:
    """The SSH curve: host work, the device phases and the devices' CPU against the fleet's size."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.0))
    rows = payload["curve"]
    counts = [row["devices"] for row in rows]
    cores = payload["machine"]["cores_usable"]
    lines = (
        ("host work (plan, adapt, export)", [row["host_s"] for row in rows], "-o"),
        ("device phases (check, ship, record)", [row["device_phases_s"] for row in rows], "-s"),
        ("per device (connect … bench), mean", [row["per_device_mean_s"] for row in rows], "-^"),
        (f"devices' CPU / {cores} cores", [row["device_cpu_s"] / cores for row in rows], ":x"),
    )
    for name, values, style in lines:
        axis.plot(counts, values, style, label=name)
    first = rows[0]["device_phases_s"]
    axis.plot(counts, [first * count for count in counts], "--", color="grey", label="linear in devices")
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(count) for count in counts])
    axis.set_xlabel("SSH devices (sshd on 127.0.0.1)")
    axis.set_ylabel("wall time (s)")
    axis.set_title("Fleet deploy over SSH: what grows with the fleet")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return save_figure(figure, out)


COMPARISON_HEADER = ("round", "arm", "wall s", "in-library s", "CPU s", "similarity passes", "scoring passes")
COMPARISON_HEADER += ("adaptations", "planned ratios")
CURVE_HEADER = ("devices", "deployed", "start-up s", "host work s (plan+adapt+export)", "of it fine-tuning s")
CURVE_HEADER += ("fleet process CPU s", "adaptations/exports", "check phase s", "ship phase s")
CURVE_HEADER += ("per device s (mean / max)", "device CPU s", "device phases − device CPU/cores s")
CURVE_HEADER += ("device phases vs 1 device", "wall s")


def _latencies(payload: dict[str, Any], fleet: bool) -> list[float]:
    runs = [run for r in payload["comparison"] for run in (r["fleet"]["devices"] if fleet else r["separate"])]
    return [run["measured_latency_ms"] for run in runs]


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """Fleet deploy."""
    payload = found.get(NAME)
    if not payload:
        return None
    note = f"{mode_note(payload)} Load average before {payload['load_average_before']}, after "
    parts = [
        "## Fleet deploy: one task to many devices (issue 23)",
        note + f"{payload['load_average_after']}.",
    ]
    settings = payload["settings"]
    rows = []
    for index, record in enumerate(payload["comparison"]):
        fleet, separate = record["fleet"], record["separate"]
        for label, runs in ((f"3 single deploys ({record['order']})", separate), ("1 fleet deploy", [fleet])):
            devices = runs if runs is separate else fleet["devices"]
            shared = fleet["shared"] if runs is not separate else None
            rows.append(
                [
                    index + 1,
                    label,
                    num(sum(run["wall_s"] for run in runs), 1),
                    num(sum(run["total_s"] for run in runs), 1),
                    num(sum(run["cpu_s"] for run in runs), 1),
                    shared["similarity_passes"] if shared else sum(run["similarity_passes"] for run in runs),
                    shared["scoring_passes"] if shared else sum(run["scoring_passes"] for run in runs),
                    shared["adaptations"] if shared else len(runs),
                    ", ".join(f"{device['profile']} {num(device['ratio'])}" for device in devices),
                ]
            )
    walls, inside = payload["ratio_wall"], payload["ratio_in_library"]
    met = sum(value <= TARGET_RATIO for value in walls)
    budgets = ", ".join(f"{name} {budget}" for name, budget in settings["budgets"])
    parts += [
        f"**Three local devices** (the bundled `{PROFILE}` profile with memory budgets {budgets}), task "
        f"{DATASET} {CLASSES} at {settings['image_size']} px, {settings['iters']} iterations, "
        f"{settings['train_per_class']} training images per class, bench {settings['bench_runs']} runs; each arm on "
        "a fresh copy of the same pool. Wall: the CLI process, start to exit; in-library: the report's "
        "`seconds.total` (after the imports, backbone and task are loaded); passes are counted, not timed.",
        table(COMPARISON_HEADER, rows),
        f"Fleet / sum of single deploys, wall: {', '.join(num(value) for value in walls)} (target ≤ "
        f"{TARGET_RATIO:g}: **met in {met} of {len(walls)} rounds**); in-library: "
        f"{', '.join(num(value) for value in inside)}. The fleet benches its devices concurrently: these three share "
        f"this machine, so their p90 latency was {num(statistics.median(_latencies(payload, True)), 1)} ms (median) "
        f"against {num(statistics.median(_latencies(payload, False)), 1)} ms benched alone.",
    ]
    curve = payload["curve"]
    if curve:
        image = plot(payload, plots / "fleet_ssh.png")
        first = curve[0]
        cores = payload["machine"]["cores_usable"]
        tuning = [row["devices_detail"][0]["seconds"].get("finetuning", 0.0) for row in curve]
        curve_rows = [
            [
                row["devices"],
                f"{row['deployed']}/{row['devices']}",
                num(row["startup_s"], 1),
                num(row["host_s"], 1),
                num(seconds, 1),
                num(row["cpu_s"], 1),
                f"{row['shared']['adaptations']}/{row['shared']['exports']}",
                num(row["seconds"]["device_check"], 2),
                num(row["seconds"]["ship"], 2),
                f"{num(row['per_device_mean_s'], 2)} / {num(row['per_device_max_s'], 2)}",
                num(row["device_cpu_s"], 1),
                num(row["device_phases_s"] - row["device_cpu_s"] / cores, 2),
                num(row["device_phases_s"] / first["device_phases_s"], 2),
                num(row["wall_s"], 1),
            ]
            for row, seconds in zip(curve, tuning, strict=True)
        ]
        host, cpu = [row["host_s"] for row in curve], [row["cpu_s"] for row in curve]
        parts += [
            f"**SSH fleet curve**: 1 to {curve[-1]['devices']} devices, each an OpenSSH server on 127.0.0.1 with its "
            f"own profile (`{PROFILE}`, the same budget: one plan), `--max-connections "
            f"{settings['max_connections']}`, bench of 1 run; the devices' commands run on this machine's "
            f"{payload['machine']['cores_usable']} cores. Per device: connect, check, reconnect, upload, bench "
            "(the device's own seconds); device CPU: what the devices' sessions used (sshd's reaped children).",
            table(CURVE_HEADER, curve_rows),
            f"Host work: {num(min(host), 1)} to {num(max(host), 1)} s wall ({num(max(host) / min(host), 2)}x) for "
            f"the same one adaptation and export each time; its fine-tuning alone took {num(min(tuning), 1)} to "
            f"{num(max(tuning), 1)} s, while the fleet process's CPU stayed at {num(min(cpu), 1)} to "
            f"{num(max(cpu), 1)} s. Device phases at {curve[-1]['devices']} devices: "
            f"{num(curve[-1]['device_phases_s'] / (first['device_phases_s'] * curve[-1]['devices']), 2)}x of linear.",
            f"![fleet over SSH](plots/{image.name})",
        ]
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    print(f"fleet / 3 single deploys, wall: {payload['ratio_wall']} (target <= {TARGET_RATIO})")
    for row in payload["curve"]:
        print(
            f"{row['devices']} SSH devices: host {row['host_s']:.1f} s, device phases {row['device_phases_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
