"""`edge-smsp deploy` to a fleet: one similarity step and one adaptation per distinct ratio, failed devices
reported alone (an impossible plan, a link cut mid-upload), the fleet's HTML report in headless Chromium, and
Ctrl-C stopping every device's benchmark. The emulated ARM64 board in a fleet is in tests/test_arm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_smsp import adaptation
from edge_smsp.cli import main
from edge_smsp.cli.fleet_deploy import describe_fleet
from edge_smsp.data.tasks import load_task
from edge_smsp.models import zoo
from edge_smsp.pool import Pool
from edge_smsp.transport.ssh import SshTransport
from tests.browser import rendered_dom
from tests.link_proxy import LinkProxy
from tests.sshd_fixture import SshdServer
from tests.test_cancel import _as_from_a_terminal, _kill_all, _processes_mentioning
from tests.test_deploy import (
    BACKBONE,
    QUICK_BENCH,
    TINY,
    TINY_TASK,
    local_connection,
    smsp_pool,  # noqa: F401 (the fixture)
    ssh_connection,
    write_profile,
)

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path, name: str, connection: dict, **fields: object) -> str:
    return str(write_profile(tmp_path / f"{name}.yaml", connection, name=name, **fields))


def test_fleet_with_an_impossible_device_and_a_cut_link_deploys_the_others_with_one_similarity_pass(
    sshd: SshdServer,
    device_python: str,
    smsp_pool: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three local boards, one of them impossible (a memory budget nothing fits), and one over SSH whose link is
    cut mid-upload (one fleet: a second one would double the test's time): the two others deploy, on the same
    ratio, from one similarity pass, one adaptation and one export; the failures are named, the exit is 1."""
    connection = local_connection(device_python, tmp_path)
    with LinkProxy(sshd.port) as proxy:
        remote = ssh_connection(
            sshd, device_python, tmp_path / "remote", known_hosts=tmp_path / "known_hosts"
        )
        remote["port"] = proxy.port
        profiles = [
            _profile(tmp_path, "board-a", connection),
            _profile(tmp_path, "board-b", connection, memory_budget="2GiB"),  # the same ratio as board-a
            _profile(tmp_path, "too-small", connection, memory_budget="8MiB"),  # nothing fits
            _profile(tmp_path, "on-the-line", remote),
        ]
        honest_put = SshTransport._put

        def cut_mid_upload(self: SshTransport, local_path: Path, remote_path: str) -> None:
            if local_path.suffix == ".onnx" and self.connection.port == proxy.port:
                proxy.close()  # the link drops, and the device stays unreachable
            return honest_put(self, local_path, remote_path)

        monkeypatch.setattr(SshTransport, "_put", cut_mid_upload)
        out = tmp_path / "out"
        argv = ["deploy", *(word for path in profiles for word in ("--profile", path)), *TINY, *QUICK_BENCH]
        argv += ["--trust-new-host", "--pool", str(smsp_pool), "--out", str(out), "--json"]
        assert main(argv) == 1
    captured = capsys.readouterr()
    (error,) = captured.err.strip().splitlines()
    assert error.startswith("edge-smsp: error: 2 of 4 devices failed: too-small (plan:")
    assert "raise memory_budget above" in error and "; on-the-line (upload: lost the connection" in error
    fleet = json.loads(captured.out)
    assert fleet == json.loads((out / "fleet_report.json").read_text())
    a, b, small, cut = fleet["devices"]
    assert [a["status"], b["status"], small["status"], cut["status"]] == [
        "deployed",
        "deployed",
        "failed",
        "failed",
    ]
    assert a["error"] is None and small["stage"] == "plan" and "raise memory_budget above" in small["error"]
    assert cut["stage"] == "upload" and "lost the connection" in cut["error"]
    assert a["method"] == b["method"] == "smsp" and a["ratio"] == b["ratio"]
    assert (
        a["onnx_sha256"] == b["onnx_sha256"]
        and a["extra"]["fleet"]["export"] == b["extra"]["fleet"]["export"]
    )
    shared = fleet["shared"]
    assert (shared["similarity_passes"], shared["scoring_passes"]) == (1, 1)
    assert (shared["adaptations"], shared["exports"], shared["deployed"], shared["failed"]) == (1, 1, 2, 2)
    for stage in ("device_check", "plan", "adapt", "export", "ship", "total"):
        assert fleet["seconds"][stage] >= 0
    # board-a and board-b run on this machine: their benches took turns, so neither measured the other's load
    assert "board-b" in a["extra"]["fleet"]["shares_machine_with"]
    assert "board-a" in b["extra"]["fleet"]["shares_machine_with"]
    (a_start, a_end), (b_start, b_end) = (
        a["extra"]["fleet"]["bench_window_s"],
        b["extra"]["fleet"]["bench_window_s"],
    )
    assert a_start < a_end and b_start < b_end and (a_end <= b_start or b_end <= a_start)
    for device in (a, b):
        assert json.loads((out / device["profile"] / "deploy_report.json").read_text()) == device
        assert device["measured"]["model_sha256"] == device["onnx_sha256"] and device["measurement_id"]
    assert json.loads((out / "too-small" / "deploy_report.json").read_text())["status"] == "failed"
    with Pool(smsp_pool) as pool:
        stored = {row.device for row in pool.measurements()}
    assert {"board-a", "board-b"} <= stored and not {"too-small", "on-the-line"} & stored

    # The terminal shows the HTML report's table; the page holds every device's row and each deployed one's plots.
    text = describe_fleet(fleet)
    assert ": 2 of 4 devices deployed" in text.splitlines()[0]
    for name in ("board-a", "board-b", "too-small", "on-the-line"):
        assert any(line.strip().startswith(name) for line in text.splitlines()[2:6]), name
    assert "1 similarity pass(es), 1 scoring pass(es), 1 adaptation(s), 1 export(s) for 4 devices" in text
    dom = rendered_dom(out / "deploy_report.html", tmp_path / "chromium")
    table = dom[dom.index('<table id="devices">') : dom.index("</table>")]
    assert table.count("<tr>") == 5  # the header and one row per device
    for name in (
        "board-a",
        "board-b",
        "too-small",
        "on-the-line",
        "deployed",
        "failed",
        "raise memory_budget",
    ):
        assert name in table, name
    for plot in ("plan-latency", "plan-memory", "latency-distribution"):
        assert dom.count(f"plot {plot}") == 2, plot


def test_ratios_that_draw_on_the_same_pool_entries_share_the_selection_and_the_scores(
    smsp_pool: Path,  # noqa: F811
) -> None:
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
    cache = adaptation.ScoringCache()
    with Pool(smsp_pool) as pool:
        results = [
            adaptation.adapt(backbone, pool, task, adaptation.AdaptConfig(ratio=ratio, iters=0), cache=cache)
            for ratio in (0.3, 0.5)
        ]
        alone = adaptation.adapt(backbone, pool, task, adaptation.AdaptConfig(ratio=0.5, iters=0))
    assert (cache.similarity_passes, cache.scoring_passes, cache.hits) == (1, 1, 1)
    shared, fresh = results[1], alone
    assert shared.similar_tasks == fresh.similar_tasks and shared.probed == fresh.probed
    assert shared.notes == fresh.notes and "no pool entries built at ratio 0.5" in " ".join(shared.notes)
    for key, values in fresh.unit_scores.items():
        assert (shared.unit_scores[key] == values).all()
    assert shared.summary.params_after == fresh.summary.params_after < results[0].summary.params_before


def test_interrupting_a_fleet_stops_every_devices_benchmark(request: pytest.FixtureRequest, tmp_path: Path,
                                                            device_python: str) -> None:  # fmt: skip
    workdirs = [tmp_path / f"work-{index}" for index in range(2)]
    request.addfinalizer(lambda: [_kill_all(_processes_mentioning(f"{w}/runtime")) for w in workdirs])
    profiles = [
        _profile(
            tmp_path, f"bench-{index}", {"transport": "local", "python": device_python, "workdir": str(w)}
        )
        for index, w in enumerate(workdirs)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'runtime'}"}
    argv = [
        sys.executable,
        "-m",
        "edge_smsp",
        "deploy",
        *(w for p in profiles for w in ("--profile", p)),
        *TINY_TASK,
    ]
    argv += ["--method", "magnitude", "--ratio", "0.5", "--iters", "0", "--recipe", "plain"]
    argv += ["--bench-runs", "100000", "--bench-seconds", "3600", "--out", str(tmp_path / "out")]
    argv += ["--pool", str(tmp_path / "pool.sqlite")]
    cli = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)

    def benches() -> list[list[int]]:
        return [_processes_mentioning(f"{w}/runtime", whole_argument=True) for w in workdirs]

    try:
        deadline = time.monotonic() + 240
        while not all(benches()) and time.monotonic() < deadline:
            assert cli.poll() is None, cli.stderr.read() if cli.stderr else ""
            time.sleep(0.2)
        assert all(benches()), "the devices' benchmarks never started"
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 128 + signal.SIGINT
    assert cli.stderr is not None
    # The devices' exported models were kept (whole) before the benches: the line says where.
    assert cli.stderr.read().strip() in (
        "edge-smsp: interrupted",
        f"edge-smsp: interrupted; what it wrote before that is in {tmp_path / 'out'}",
    )
    deadline = time.monotonic() + 5
    while any(_processes_mentioning(f"{w}/runtime") for w in workdirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_processes_mentioning(f"{w}/runtime") for w in workdirs)


def test_a_fleet_file_lists_profiles_and_connections_relative_to_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_smsp.devices.fleet_file import load_fleet

    (tmp_path / "profiles").mkdir()
    _profile(tmp_path / "profiles", "nano", {"transport": "ssh", "host": "10.0.0.7", "user": "pi"})
    (tmp_path / "lab.yaml").write_text("{host: 10.0.0.9, port: 2222}\n")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "- {profile: profiles/nano.yaml}\n"
        "- {profile: profiles/nano.yaml, connection: {host: 10.0.0.8}}\n"
        "- {profile: profiles/nano.yaml, connection: lab.yaml}\n"
        "- localhost\n"
    )
    nano, line, lab, host = load_fleet(fleet)
    assert (nano.connection.host, line.connection.host, lab.connection.host) == (
        "10.0.0.7",
        "10.0.0.8",
        "10.0.0.9",
    )
    assert lab.connection.port == 2222 and line.connection.user == "pi" and host.name == "localhost"
    os.mkfifo(tmp_path / "lab.fifo")
    for document, message in (
        ("{profile: a.yaml}", "must be a non-empty list of devices"),
        ("- {profile: profiles/nano.yaml, password: x}", "[0]: unknown key 'password'"),
        ("- {profile: nowhere.yaml}", "[0]: profile 'nowhere.yaml': no such file"),
        ("- {profile: profiles}", "[0]: profile " + str(tmp_path / "profiles") + " is a directory"),
        ("- {profile: profiles/nano.yaml, connection: lab.fifo}", "lab.fifo is a FIFO, not a regular file"),
        (
            "- {profile: profiles/nano.yaml, connection: {port: 99999}}",
            "[0]: connection override: connection.port",
        ),
    ):
        fleet.write_text(document)
        assert main(["deploy", "--fleet", str(fleet), "--out", str(tmp_path / "out")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert main(["deploy", "--out", str(tmp_path / "out")]) == 2
    assert "--profile P (repeat it for several devices) or --fleet FILE" in capsys.readouterr().err
    # A FIFO would block the reader forever; one device listed twice would bench against itself.
    os.mkfifo(tmp_path / "fleet.fifo")
    assert main(["deploy", "--fleet", str(tmp_path / "fleet.fifo"), "--out", str(tmp_path / "out")]) == 2
    assert "fleet.fifo: not a regular file" in capsys.readouterr().err
    twice = ["deploy", "--profile", "localhost", "--profile", "localhost", "--image-size", "32"]
    assert (
        main([*twice, "--train-per-class", "4", "--val-per-class", "2", "--out", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lists device localhost twice" in err, err
    assert not (tmp_path / "out").exists()
