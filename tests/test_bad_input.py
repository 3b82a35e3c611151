"""Hostile but fair input to every command and to the device runtime.

Every case must exit 2 with exactly one line on stderr (naming what is wrong), nothing on stdout, no
traceback, no hang, and no new or changed file anywhere: not in the case's HOME or working directory (the
default pool and out dirs land there), nor among the shared inputs, nor in the device work dirs.
Most cases fail in argument parsing or in torch-free checks before any model loads; that is also what keeps
this table fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.bad_input_case import Case
from tests.bad_input_hostile import HOSTILE_CASES, hostile_inputs
from tests.boards import small_board_profile
from tests.sshd_fixture import SshdServer, free_port
from tests.tiny_onnx import tiny_convnet

ROOT = Path(__file__).resolve().parents[1]
# Every case runs under an address-space limit: a blow-up from a tiny input (an alias bomb, a 1e12-element
# header) fails the case instead of taking the machine down. The runtime's process gets 2 GiB; the host CLI
# runs in a fork of this process, which has torch mapped already, so it gets 2 GiB above what is mapped.
MEMORY_LIMIT = 2 << 30
CASE_TIMEOUT = 120  # seconds: a case that takes longer hangs (a FIFO read, a device that never answers)
MAX_LINE = 1000  # characters: an error quotes what it must, never a whole 20,000-id argument

# Small enough that a check that is missing shows up as a quick success, not a long training run.
FAST_TASK = ("--train-per-class", "8", "--val-per-class", "4", "--iters", "2")
ADAPT = ("adapt", "--ratio", "0.5", "--method", "magnitude", "--out", "{s}/out", *FAST_TASK)
PRUNE = ("prune", "--model", "resnet18", "--ratio", "0.5", "--method", "random", "--image-size", "32")
BUILD = ("pool", "build", "--tasks", "2", "--ratio", "0.5", "--rounds", "1", "--pool", "{s}/pool.sqlite")
BUILD_FAST = (*BUILD, *FAST_TASK, "--image-size", "32")
DEPLOY = ("deploy", "--method", "magnitude", "--bench-runs", "3", "--bench-seconds", "0", *FAST_TASK)
DEPLOY_LOCAL = (*DEPLOY, "--profile", "{w}/local.yaml", "--out", "{s}/out")
BENCH_LOCAL = ("bench", "--profile", "{w}/local.yaml", "--bench-runs", "3", "--bench-seconds", "0")
RT_BENCH = ("bench", "--model", "{w}/tiny.onnx", "--runs", "3", "--min-seconds", "0")
MANY_CLASSES = ",".join(str(index) for index in range(20_000))


CASES = [
    # --- usage: argparse -----------------------------------------------------------------------------------
    Case("usage-no-command", (), "required: COMMAND"),
    Case("usage-unknown-command", ("frobnicate",), "invalid choice"),
    Case("usage-models-unknown-flag", ("models", "--bogus"), "unrecognized arguments: --bogus"),
    Case("usage-prune-missing-required", ("prune", "--model", "resnet18"), "required"),
    Case("usage-pool-no-verb", ("pool",), "required: VERB"),
    Case("usage-pool-list-flag-without-value", ("pool", "list", "--backbone"), "expected one argument"),
    Case("usage-adapt-unknown-method", (*ADAPT, "--method", "bogus"), "--method"),
    Case("usage-adapt-unknown-weighting", (*ADAPT, "--weighting", "bogus"), "--weighting"),
    Case("usage-adapt-unknown-optimizer", (*ADAPT, "--optimizer", "bogus"), "--optimizer"),
    Case("usage-prune-taylor-needs-batches", (*PRUNE[:-4], "--method", "taylor", "--out", "o"), "--method"),
    Case("usage-build-unknown-importance", (*BUILD_FAST, "--importance", "bogus"), "--importance"),
    Case("usage-bench-missing-model", ("bench", "--profile", "{w}/local.yaml"), "--model"),
    # --- numbers out of range ------------------------------------------------------------------------------
    Case("range-prune-ratio-text", (*PRUNE[:4], "abc", *PRUNE[5:], "--out", "{s}/o"), "--ratio"),
    Case("range-prune-ratio-one", (*PRUNE[:4], "1", *PRUNE[5:], "--out", "{s}/o"), "--ratio"),
    Case("range-prune-ratio-negative", (*PRUNE[:4], "-0.1", *PRUNE[5:], "--out", "{s}/o"), "--ratio"),
    Case("range-prune-ratio-nan", (*PRUNE[:4], "nan", *PRUNE[5:], "--out", "{s}/o"), "--ratio"),
    Case("range-prune-ratio-inf", (*PRUNE[:4], "inf", *PRUNE[5:], "--out", "{s}/o"), "--ratio"),
    Case("range-prune-round-to-zero", (*PRUNE, "--round-to", "0", "--out", "{s}/o"), "--round-to"),
    Case("range-prune-seed-text", (*PRUNE, "--seed", "abc", "--out", "{s}/o"), "--seed"),
    Case("range-prune-seed-negative", (*PRUNE, "--seed", "-1", "--out", "{s}/o"), "--seed"),
    Case("range-prune-seed-huge", (*PRUNE, "--seed", "9" * 30, "--out", "{s}/o"), "--seed"),
    Case("range-prune-image-size-huge", (*PRUNE[:-1], "100000", "--out", "{s}/o"), "--image-size"),
    Case("range-prune-image-size-zero", (*PRUNE[:-1], "0", "--out", "{s}/o"), "--image-size"),
    Case("range-prune-image-size-tiny", (*PRUNE[:-1], "4", "--out", "{s}/o"), "--image-size"),
    Case("range-adapt-image-size-huge", (*ADAPT, "--classes", "0,1", "--image-size", "100000"), "--image-size"),
    Case("range-adapt-classes-negative", (*ADAPT, "--classes", "-1,2"), "--classes"),
    Case("range-adapt-classes-repeat", (*ADAPT, "--classes", "0,0"), "repeat"),
    Case("range-adapt-classes-one", (*ADAPT, "--classes", "3"), "at least 2"),
    Case("range-adapt-classes-out-of-range", (*ADAPT, "--classes", "0,99"), "out of range"),
    Case("range-adapt-classes-text", (*ADAPT, "--classes", "a,b"), "--classes"),
    Case("range-adapt-classes-empty", (*ADAPT, "--classes", ""), "--classes"),
    Case("range-adapt-classes-20000", (*ADAPT, "--classes", MANY_CLASSES), "out of range"),
    Case("range-adapt-iters-negative", (*ADAPT, "--classes", "0,1", "--iters", "-5"), "--iters"),
    Case("range-adapt-batch-size-zero", (*ADAPT, "--classes", "0,1", "--batch-size", "0"), "--batch-size"),
    Case("range-adapt-batch-size-negative", (*ADAPT, "--classes", "0,1", "--batch-size", "-2"), "--batch-size"),
    Case("range-adapt-top-k-zero", (*ADAPT, "--classes", "0,1", "--top-k", "0"), "--top-k: must be an integer from 1 to 100,000"),
    Case("range-adapt-lr-nan", (*ADAPT, "--classes", "0,1", "--lr", "nan"), "--lr"),
    Case("range-adapt-lr-negative", (*ADAPT, "--classes", "0,1", "--lr", "-1"), "--lr"),
    Case("range-adapt-lr-inf", (*ADAPT, "--classes", "0,1", "--lr", "inf"), "--lr"),
    Case("range-adapt-train-per-class-zero", (*ADAPT, "--classes", "0,1", "--train-per-class", "0"), "per-class"),
    Case("range-adapt-val-per-class-negative", (*ADAPT, "--classes", "0,1", "--val-per-class", "-3"), "per-class"),
    Case("range-adapt-round-to-negative", (*ADAPT, "--classes", "0,1", "--round-to", "-1"), "--round-to"),
    Case("range-adapt-ratio-above-one", (*ADAPT[:2], "1.5", *ADAPT[3:], "--classes", "0,1"), "--ratio"),
    Case("range-build-tasks-zero", (*BUILD_FAST, "--tasks", "0"), "--tasks"),
    Case("range-build-tasks-negative", (*BUILD_FAST, "--tasks", "-1"), "--tasks"),
    Case("range-build-tasks-more-than-exist", (*BUILD_FAST, "--tasks", "1000000"), "tasks"),
    Case("range-build-batch-size-zero", (*BUILD_FAST, "--batch-size", "0"), "--batch-size"),
    Case("range-build-classes-per-task-one", (*BUILD_FAST, "--classes-per-task", "1"), "--classes-per-task"),
    Case("range-build-classes-per-task-eleven", (*BUILD_FAST, "--classes-per-task", "11"), "classes"),
    Case("range-build-iters-negative", (*BUILD_FAST, "--iters", "-1"), "--iters"),
    Case("range-build-rounds-zero", (*BUILD_FAST, "--rounds", "0"), "--rounds"),
    Case("range-build-ratio-one", (*BUILD_FAST, "--ratio", "1"), "--ratio"),
    Case("range-build-image-size-tiny", (*BUILD_FAST, "--image-size", "4"), "--image-size"),
    Case("range-deploy-bench-runs-zero", (*DEPLOY_LOCAL, "--bench-runs", "0"), "--bench-runs"),
    Case("range-deploy-bench-runs-huge", (*DEPLOY_LOCAL, "--bench-runs", "1000000000000"), "--bench-runs"),
    Case("range-deploy-bench-seconds-negative", (*DEPLOY_LOCAL, "--bench-seconds", "-1"), "--bench-seconds"),
    Case("range-deploy-bench-seconds-nan", (*DEPLOY_LOCAL, "--bench-seconds", "nan"), "--bench-seconds"),
    Case("range-deploy-bench-seconds-huge", (*DEPLOY_LOCAL, "--bench-seconds", "1e12"), "--bench-seconds"),
    Case("range-deploy-image-size-huge", (*DEPLOY_LOCAL, "--image-size", "100000"), "--image-size"),
    Case("range-deploy-classes-repeat", (*DEPLOY_LOCAL, "--classes", "0,0"), "repeat"),
    Case("range-bench-runs-negative", (*BENCH_LOCAL, "--model", "{w}/tiny.onnx", "--bench-runs", "-1"), "--bench-runs"),
    Case("range-bench-runs-huge", (*BENCH_LOCAL, "--model", "{w}/tiny.onnx", "--bench-runs", "1e9"), "--bench-runs"),
    Case("range-export-opset-zero", ("export", "--model-dir", "{w}/model", "--out", "{s}/m.onnx", "--opset", "0"), "opset"),
    Case("range-export-opset-999", ("export", "--model-dir", "{w}/model", "--out", "{s}/m.onnx", "--opset", "999"), "opset"),
    Case("range-export-opset-text", ("export", "--model-dir", "{w}/model", "--out", "{s}/m.onnx", "--opset", "x"), "--opset"),
    # --- paths: outputs that cannot be written, inputs that are not what they claim ---------------------------
    Case("path-prune-out-under-proc", (*PRUNE, "--out", "/proc/edge-smsp-out"), "/proc/edge-smsp-out"),
    Case("path-prune-out-under-a-file", (*PRUNE, "--out", "{w}/afile/sub"), "afile"),
    Case("path-prune-out-is-a-file", (*PRUNE, "--out", "{w}/afile"), "afile"),
    Case("path-prune-out-empty", (*PRUNE, "--out", ""), "--out"),
    Case("path-prune-checkpoint-missing", (*PRUNE, "--checkpoint", "{w}/nothing.pth", "--out", "{s}/o"), "checkpoint"),
    Case("path-prune-checkpoint-dev-zero", (*PRUNE, "--checkpoint", "/dev/zero", "--out", "{s}/o"), "checkpoint"),
    Case("path-prune-checkpoint-garbage", (*PRUNE, "--checkpoint", "{w}/random.bin", "--out", "{s}/o"), "checkpoint"),
    Case("path-prune-unknown-model", ("prune", "--model", "resnet_nope", *PRUNE[3:], "--out", "{s}/o"), "resnet_nope"),
    Case("path-adapt-out-is-a-file", (*ADAPT[:-7], "{w}/afile", *FAST_TASK, "--classes", "0,1"), "afile"),
    Case("path-adapt-out-under-a-file", (*ADAPT[:-7], "{w}/afile/x", *FAST_TASK, "--classes", "0,1"), "afile"),
    Case("path-adapt-unknown-dataset", (*ADAPT, "--classes", "0,1", "--dataset", "nope"), "nope"),
    Case("path-adapt-imagefolder-without-dir", (*ADAPT, "--classes", "0,1", "--dataset", "imagefolder"), "--data-dir"),
    Case("path-adapt-imagefolder-missing-dir", (*ADAPT, "--classes", "0,1", "--dataset", "imagefolder", "--data-dir", "{w}/nothing"), "nothing"),
    Case("path-adapt-fashion-missing-dir", (*ADAPT, "--classes", "0,1", "--data-dir", "{w}/nothing"), "nothing"),
    Case("path-export-model-dir-missing", ("export", "--model-dir", "{w}/nothing", "--out", "{s}/m.onnx"), "nothing"),
    Case("path-export-model-dir-is-a-file", ("export", "--model-dir", "{w}/afile", "--out", "{s}/m.onnx"), "afile"),
    Case("path-export-model-dir-empty", ("export", "--model-dir", "{w}/adir", "--out", "{s}/m.onnx"), "adir"),
    Case("path-export-model-dir-corrupt", ("export", "--model-dir", "{w}/corrupt-model", "--out", "{s}/m.onnx"), "corrupt"),
    Case("path-export-out-under-proc", ("export", "--model-dir", "{w}/model", "--out", "/proc/m.onnx"), "/proc/m.onnx"),
    Case("path-export-out-is-a-dir", ("export", "--model-dir", "{w}/model", "--out", "{w}/adir"), "adir"),
    Case("path-export-out-under-a-file", ("export", "--model-dir", "{w}/model", "--out", "{w}/afile/m.onnx"), "afile"),
    Case("path-deploy-out-is-a-file", (*DEPLOY_LOCAL[:-1], "{w}/afile"), "afile"),
    Case("path-bench-model-missing", (*BENCH_LOCAL, "--model", "{w}/nothing.onnx"), "nothing.onnx"),
    Case("path-bench-model-garbage", (*BENCH_LOCAL, "--model", "{w}/random.bin"), "random.bin"),
    Case("path-bench-model-empty", (*BENCH_LOCAL, "--model", "{w}/empty.bin"), "empty.bin"),
    Case("path-bench-model-is-a-dir", (*BENCH_LOCAL, "--model", "{w}/adir"), "adir"),
    # --- the pool ------------------------------------------------------------------------------------------
    Case("pool-list-missing", ("pool", "list", "--pool", "{s}/nothing.sqlite"), "no pool"),
    Case("pool-list-dir", ("pool", "list", "--pool", "{w}/adir"), "directory"),
    Case("pool-list-fifo", ("pool", "list", "--pool", "{w}/fifo"), "fifo"),
    Case("pool-list-dev-zero", ("pool", "list", "--pool", "/dev/zero"), "/dev/zero"),
    Case("pool-list-random-bytes", ("pool", "list", "--pool", "{w}/random.bin"), "not an SQLite"),
    Case("pool-list-empty-file", ("pool", "list", "--pool", "{w}/empty.bin"), "empty"),
    Case("pool-list-truncated", ("pool", "list", "--pool", "{w}/truncated.sqlite"), "corrupt|unreadable|malformed|damaged"),
    Case("pool-list-malformed-extra", ("pool", "list", "--pool", "{w}/bad-extra.sqlite"), "damaged"),
    Case("pool-list-malformed-classes", ("pool", "list", "--pool", "{w}/bad-classes.sqlite"), "damaged"),
    Case("pool-list-entries-of-no-task", ("pool", "list", "--pool", "{w}/orphan-entries.sqlite"), r"1 entries \(ids 1\) point at no task or backbone row; the database is damaged"),
    Case("pool-list-unknown-dataset", ("pool", "list", "--pool", "{w}/dataset-unknown.sqlite"), r"names dataset 'mnist-ish', neither a dataset edge-smsp knows nor an image folder's"),
    Case("pool-list-classes-beyond-the-dataset", ("pool", "list", "--pool", "{w}/classes-beyond.sqlite"), r"lists classes \[0, 1, 99\], not distinct fashion-mnist class ids from 0 to 9.*rebuild"),
    Case("pool-list-without-entries-table", ("pool", "list", "--pool", "{w}/no-entries-table.sqlite"), r"not a whole edge-smsp pool \(no such table: entries"),
    Case("pool-list-malformed-extra-json", ("pool", "list", "--json", "--pool", "{w}/bad-extra.sqlite"), "damaged"),
    Case("pool-list-foreign-database", ("pool", "list", "--pool", "{w}/foreign.sqlite"), "not an edge-smsp pool"),
    Case("pool-list-newer-schema", ("pool", "list", "--pool", "{w}/newer.sqlite"), "newer"),
    Case("pool-list-env-dev-zero", ("pool", "list"), "/dev/zero", env={"EDGE_SMSP_POOL": "/dev/zero"}),
    Case("pool-adapt-smsp-missing-pool", (*ADAPT[:4], "smsp", *ADAPT[5:], "--classes", "0,1", "--pool", "{s}/p.sqlite"), "no pool"),
    Case("pool-adapt-fifo", (*ADAPT[:4], "smsp", *ADAPT[5:], "--classes", "0,1", "--pool", "{w}/fifo"), "fifo"),
    Case("pool-adapt-dev-zero", (*ADAPT[:4], "smsp", *ADAPT[5:], "--classes", "0,1", "--pool", "/dev/zero"), "/dev/zero"),
    Case("pool-adapt-add-to-pool-unwritable", (*ADAPT, "--classes", "0,1", "--add-to-pool", "--pool", "/proc/p.sqlite"), "/proc"),
    Case("pool-build-dir", (*BUILD_FAST, "--pool", "{w}/adir"), "directory"),
    Case("pool-build-under-proc", (*BUILD_FAST, "--pool", "/proc/edge-smsp/pool.sqlite"), "/proc"),
    Case("pool-build-under-a-file", (*BUILD_FAST, "--pool", "{w}/afile/pool.sqlite"), "afile"),
    Case("pool-build-fifo", (*BUILD_FAST, "--pool", "{w}/fifo"), "fifo"),
    Case("pool-deploy-fifo", (*DEPLOY_LOCAL, "--pool", "{w}/fifo"), "fifo"),
    # --- device profiles -----------------------------------------------------------------------------------
    Case("profile-missing-file", (*DEPLOY, "--profile", "{w}/nothing.yaml"), "nothing.yaml"),
    Case("profile-unknown-bundled-name", (*DEPLOY, "--profile", "no_such_board"), "no_such_board"),
    Case("profile-malformed-yaml", (*DEPLOY, "--profile", "{w}/malformed.yaml"), "malformed YAML"),
    Case("profile-with-password", (*DEPLOY, "--profile", "{w}/password.yaml"), "password"),
    Case("profile-bench-is-a-dir", ("bench", "--profile", "{w}/adir", "--model", "{w}/tiny.onnx"), "adir is a directory"),
    # --- the device: unreachable, refused, misconfigured ------------------------------------------------------
    Case("device-deploy-unreachable", (*DEPLOY, "--profile", "{w}/unreachable.yaml", "--out", "{s}/out"), "cannot connect.*connection refused.*sshd runs"),
    Case("device-bench-unreachable", ("bench", "--profile", "{w}/unreachable.yaml", "--model", "{w}/tiny.onnx"), "cannot connect.*host and port"),
    Case("device-bench-bad-known-hosts", ("bench", "--profile", "{w}/bad-known-hosts.yaml", "--model", "{w}/tiny.onnx"), "known_hosts"),
    Case("device-bench-missing-key", ("bench", "--profile", "{w}/missing-key.yaml", "--model", "{w}/tiny.onnx"), "key file"),
    Case("device-bench-local-wrong-python", ("bench", "--profile", "{w}/wrong-python.yaml", "--model", "{w}/tiny.onnx"), "python"),
    Case("device-bench-ssh-wrong-python", ("bench", "--profile", "{w}/ssh-wrong-python.yaml", "--model", "{w}/tiny.onnx"), "python"),
    Case("device-deploy-nan-report", (*DEPLOY, "--profile", "{w}/nan-python.yaml", "--out", "{s}/out"), r"no valid JSON report \(NaN, Infinity"),
    Case("device-deploy-local-wrong-python", (*DEPLOY, "--profile", "{w}/wrong-python.yaml", "--out", "{s}/out"), "python"),
    # --- the device runtime (python -m edge_smsp_runtime, no torch) -------------------------------------------
    Case("runtime-no-command", (), "required", runtime=True),
    Case("runtime-unknown-flag", (*RT_BENCH, "--bogus"), "--bogus", runtime=True),
    Case("runtime-bench-model-missing", ("bench", "--model", "{w}/nothing.onnx"), "nothing.onnx", runtime=True),
    Case("runtime-bench-model-garbage", ("bench", "--model", "{w}/random.bin"), "random.bin", runtime=True),
    Case("runtime-bench-model-empty", ("bench", "--model", "{w}/empty.bin"), "empty.bin", runtime=True),
    Case("runtime-bench-runs-negative", (*RT_BENCH, "--runs", "-1"), "--runs", runtime=True),
    Case("runtime-bench-runs-text", (*RT_BENCH, "--runs", "many"), "--runs", runtime=True),
    Case("runtime-bench-min-seconds-nan", (*RT_BENCH, "--min-seconds", "nan"), "--min-seconds", runtime=True),
    Case("runtime-bench-min-seconds-negative", (*RT_BENCH, "--min-seconds", "-1"), "--min-seconds", runtime=True),
    Case("runtime-bench-min-seconds-inf", (*RT_BENCH, "--min-seconds", "inf"), "--min-seconds", runtime=True),
    Case("runtime-bench-warmup-too-few", (*RT_BENCH, "--warmup", "5"), "--warmup", runtime=True),
    Case("runtime-bench-threads-negative", (*RT_BENCH, "--threads", "-1"), "--threads", runtime=True),
    Case("runtime-bench-batch-size-zero", (*RT_BENCH, "--batch-size", "0"), "--batch-size", runtime=True),
    Case("runtime-bench-unknown-runtime", (*RT_BENCH, "--runtime", "tensorrt-ish"), "--runtime", runtime=True),
    Case("runtime-bench-unknown-precision", (*RT_BENCH, "--precision", "fp99"), "fp99", runtime=True),
    Case("runtime-bench-no-provider", (*RT_BENCH, "--providers", "NoSuchExecutionProvider"), "provider", runtime=True),
    Case("runtime-infer-empty-npy", ("infer", "--model", "{w}/tiny.onnx", "{w}/empty.npy"), "empty.npy", runtime=True),
    Case("runtime-infer-image-missing", ("infer", "--model", "{w}/tiny.onnx", "{w}/nothing.png"), "nothing.png", runtime=True),
    Case("runtime-infer-garbage-pgm", ("infer", "--model", "{w}/tiny.onnx", "{w}/garbage.pgm"), "garbage.pgm", runtime=True),
    Case("runtime-infer-text-file", ("infer", "--model", "{w}/tiny.onnx", "{w}/text.txt"), "text.txt", runtime=True),
    Case("runtime-infer-top-k-negative", ("infer", "--model", "{w}/tiny.onnx", "--top-k", "-1", "{w}/image.npy"), "--top-k", runtime=True),
    Case("runtime-infer-top-k-zero", ("infer", "--model", "{w}/tiny.onnx", "--top-k", "0", "{w}/image.npy"), "--top-k: expected an integer from 1 to 1,000,000", runtime=True),
    Case("runtime-adapt-iters-negative", ("adapt", "--model", "{w}/model", "--data", "{w}/adir", "--iters", "-1", "--out", "{w}/adapted.onnx"), "--iters", runtime=True),
    Case("runtime-adapt-torch-without-torch", ("adapt", "--tier", "torch", "--model", "{w}/model", "--data", "{w}/adir", "--iters", "1", "--out", "{w}/adapted.onnx"), "torch", runtime=True),
]  # fmt: skip
CASES += HOSTILE_CASES  # issue 25's hostile sweep, by cause (tests/bad_input_hostile.py)


# --- the shared inputs -----------------------------------------------------------------------------------------


def _pools(world: Path) -> None:
    from edge_smsp.pool import Pool
    from tests.pruning_helpers import add_tiny_entry, sql

    good = world / "good.sqlite"
    with Pool(good) as pool:
        add_tiny_entry(pool, extra={"note": "fine"})
    for name, statement in (
        ("bad-extra", "UPDATE entries SET extra = '{not json'"),
        ("bad-classes", "UPDATE tasks SET classes = '[1,'"),
        ("classes-beyond", "UPDATE tasks SET classes = '[0, 1, 99]'"),
        ("orphan-entries", "UPDATE entries SET task_id = 999"),
        ("dataset-unknown", "UPDATE tasks SET dataset = 'mnist-ish'"),
        ("no-entries-table", "DROP TABLE entries"),
        ("newer", "UPDATE schema_version SET version = 999"),
    ):
        shutil.copy(good, world / f"{name}.sqlite")
        sql(world / f"{name}.sqlite", statement)
    data = good.read_bytes()
    (world / "truncated.sqlite").write_bytes(data[: len(data) // 3])
    sql(world / "foreign.sqlite", "CREATE TABLE recipes (name TEXT)")


def _models(world: Path) -> None:
    from edge_smsp.models.prune import prune
    from edge_smsp.models.pruned_model import save_pruned
    from edge_smsp.models.zoo import load_backbone

    backbone = load_backbone("resnet18", pretrained=False, image_size=32)
    pruned, _ = prune(backbone, ratio=0.9, image_size=32)
    save_pruned(pruned, world / "model", {"backbone": "resnet18", "ratio": 0.9})
    corrupt = world / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "pruned.json").write_text("{corrupt")
    (corrupt / "model.safetensors").write_bytes(b"corrupt")
    tiny_convnet(world / "tiny.onnx")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sshd: SshdServer) -> Path:
    """Inputs every case may name: valid and broken files, pools, models, profiles and device work dirs."""
    world = tmp_path_factory.mktemp("bad-input-world")
    (world / "afile").write_text("a regular file\n")
    (world / "adir").mkdir()
    os.mkfifo(world / "fifo")
    (world / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (world / "empty.bin").write_bytes(b"")
    (world / "text.txt").write_text("not an image\n")
    (world / "garbage.pgm").write_bytes(b"P5\n12 x\n255\n\x00\x01")
    np.save(world / "empty.npy", np.zeros((0,), dtype=np.float32))
    np.save(world / "image.npy", np.zeros((8, 8, 3), dtype=np.uint8))
    (world / "malformed.yaml").write_text("name: [unclosed\n")
    (world / "password.yaml").write_text("name: x\nconnection: {transport: ssh, password: hunter2}\n")
    _pools(world)
    _models(world)
    local = {"transport": "local", "python": sys.executable, "workdir": str(world / "device-local")}
    small_board_profile(world / "local.yaml", "bad-input-local", local)
    wrong_python = {
        **local,
        "python": str(world / "nothing" / "python3"),
        "workdir": str(world / "device-wrong"),
    }
    small_board_profile(world / "wrong-python.yaml", "bad-input-wrong-python", wrong_python)
    nan_python = world / "nan-python"  # a device whose runtime reports a NaN (a broken or foreign runtime)
    nan_python.write_text(
        f'#!/bin/sh\nout=$("{sys.executable}" "$@"); rc=$?\n'
        'printf "%s\\n" "$out" | sed -E \'s/"imported_rss_mib": [0-9.e+-]+/"imported_rss_mib": NaN/\'\nexit $rc\n'
    )
    nan_python.chmod(0o755)
    small_board_profile(
        world / "nan-python.yaml", "bad-input-nan-python", {**local, "python": str(nan_python)}
    )
    ssh = {
        "transport": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "python": str(world / "nothing" / "python3"),
        "workdir": str(world / "device-ssh"),
    }
    small_board_profile(world / "ssh-wrong-python.yaml", "bad-input-ssh", ssh)
    small_board_profile(world / "unreachable.yaml", "bad-input-unreachable", {**ssh, "port": free_port()})
    (world / "known_hosts_bad").write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 AAAA!!!notbase64!!!\n")
    bad_hosts = {**ssh, "known_hosts": str(world / "known_hosts_bad")}
    small_board_profile(world / "bad-known-hosts.yaml", "bad-input-known-hosts", bad_hosts)
    small_board_profile(
        world / "missing-key.yaml", "bad-input-key", {**ssh, "key_file": str(world / "nothing" / "key")}
    )
    for workdir in ("device-local", "device-wrong", "device-ssh"):
        (world / workdir).mkdir()
    hostile_inputs(world, ssh, local)
    # The device already has the runtime, as after any earlier deploy: a case must not add to it.
    warm = subprocess.run(
        [sys.executable, "-m", "edge_smsp", "bench", "--profile", str(world / "local.yaml")]
        + ["--model", str(world / "tiny.onnx"), "--bench-runs", "1", "--bench-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(world / "warm-home"),
    )
    assert warm.returncode == 0, warm.stderr
    shutil.rmtree(world / "warm-home")
    return world


def _environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'runtime'}",  # this checkout, whatever is installed
    }
    return {**env, **(extra or {})}


# onnxruntime makes an empty per-user folder for its device id in HOME when it loads: not edge-smsp's output.
ONNXRUNTIME_HOME_DIR = Path(".cache", "Microsoft")


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under the roots, with its kind and (for small files) a content hash; FIFOs are never opened."""
    seen = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory) / name
                if str(ONNXRUNTIME_HOME_DIR) in str(path):
                    continue
                info = path.lstat()
                if stat.S_ISREG(info.st_mode):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest() if info.st_size < 1 << 20 else ""
                    seen[str(path)] = f"file {info.st_size} {digest}"
                else:
                    seen[str(path)] = "dir" if stat.S_ISDIR(info.st_mode) else f"special {info.st_mode:o}"
    return seen


@dataclass
class Ending:
    """How a case ended: exit code and output (a traceback in `stderr` when the CLI let an exception out)."""

    returncode: int | None  # None: still running after CASE_TIMEOUT
    stdout: str
    stderr: str


class _Hang(Exception):
    pass


def _raise_hang(signum: int, frame: object) -> None:
    raise _Hang


def run_case(
    case: Case, world: Path, sandbox: Path, device_python: str, capsys: pytest.CaptureFixture[str]
) -> Ending:
    """The host CLI runs in this process (main(argv), as the console script does, in the case's HOME and
    working directory); the runtime runs as a process on a device-like python."""
    values = {"w": str(world), "s": str(sandbox)}
    argv = [part.format(**values) for part in case.argv]
    if case.runtime:
        stdout_file = open(case.stdout.format(**values), "w") if case.stdout else None  # noqa: SIM115
        try:
            done = subprocess.run(
                [device_python, "-m", "edge_smsp_runtime", *argv],
                cwd=sandbox / "cwd",
                env=_environment(sandbox / "home", case.env),
                stdout=stdout_file or subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                timeout=CASE_TIMEOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_limit_memory,
            )
        except subprocess.TimeoutExpired:
            return Ending(None, "", "")
        finally:
            if stdout_file is not None:
                stdout_file.close()
        return Ending(done.returncode, done.stdout or "", done.stderr)
    if case.fresh_process:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "edge_smsp", *argv],
                cwd=sandbox / "cwd",
                # Python's bytecode cache is not the case's output (a fork inherits this setting from the suite)
                env={**_environment(sandbox / "home", case.env), "PYTHONDONTWRITEBYTECODE": "1"},
                capture_output=True,
                text=True,
                timeout=CASE_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Ending(None, "", "")
        return Ending(done.returncode, done.stdout, done.stderr)
    from edge_smsp.cli import main

    stdout_path = case.stdout.format(**values) if case.stdout else None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: main(argv) as the console script runs it, under the memory limit
        os.close(read_end)
        code, out, err = 1, io.StringIO(), io.StringIO()
        try:
            mapped = _mapped_bytes()
            resource.setrlimit(resource.RLIMIT_AS, (mapped + MEMORY_LIMIT, mapped + MEMORY_LIMIT))
            os.chdir(sandbox / "cwd")
            os.environ["HOME"] = str(sandbox / "home")
            os.environ.pop("EDGE_SMSP_POOL", None)
            os.environ.update(case.env)
            sys.stdout = open(stdout_path, "w") if stdout_path else out  # noqa: SIM115
            sys.stderr = err
            signal.signal(signal.SIGALRM, _raise_hang)
            signal.alarm(CASE_TIMEOUT)
            code = main(argv)
            signal.alarm(0)
        except _Hang:
            code = None
        except BaseException:  # what a console script would print as a traceback
            err.write(traceback.format_exc())
        finally:
            payload = json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], CASE_TIMEOUT + 30)  # stuck in C, past the child's alarm
        payload = pipe.read() if ready else b""
    if not ready:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return Ending(None, "", "")
    os.waitpid(child, 0)
    if not payload:
        return Ending(1, "", "the case's process died without a word (killed for memory?)")
    ended = json.loads(payload)
    capsys.readouterr()
    return Ending(ended["code"], ended["out"], ended["err"])


def _mapped_bytes() -> int:
    """The address space this process maps now (VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def problems(case: Case, result: Ending, new_paths: list[str]) -> list[str]:
    """What is wrong with how a case ended (an empty list: clean)."""
    if result.returncode is None:
        return [f"hang: still running after {CASE_TIMEOUT} s"]
    found = []
    lines = result.stderr.splitlines()
    if result.returncode != 2:
        found.append(f"exit code {result.returncode}, not 2")
    if "Traceback" in result.stderr:
        found.append("traceback")
    if len(lines) != 1:
        found.append(f"{len(lines)} stderr lines, not 1")
    elif len(lines[0]) > MAX_LINE:
        found.append(f"a {len(lines[0])}-character error line")
    elif not re.search(case.expect, lines[0], re.IGNORECASE):
        found.append(f"the error does not mention {case.expect!r}")
    if result.stdout:
        found.append("output on stdout")
    if "\x1b" in result.stderr:
        found.append("a raw terminal escape code on stderr")
    if new_paths:
        found.append(f"left {len(new_paths)} new or changed paths: {sorted(new_paths)[:3]}")
    return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home" / ".cache").mkdir(parents=True)  # as in any home (onnxruntime adds to it)
    yield tmp_path


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case: Case, world: Path, sandbox: Path, device_python: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(world, sandbox)
    result = run_case(case, world, sandbox, device_python, capsys)
    after = snapshot(world, sandbox)
    changed = [path for path in set(before) | set(after) if before.get(path) != after.get(path)]
    found = problems(case, result, changed)
    assert not found, f"{case.id}: {'; '.join(found)}\nstderr: {result.stderr[-1500:]}"


def test_the_table_is_large_and_its_cases_distinct() -> None:
    assert len(CASES) >= 60 + 100
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({(case.runtime, case.argv, tuple(case.env.items()), case.stdout) for case in CASES}) == len(
        CASES
    )


# --- the sweep's last findings that a row cannot show: help texts, warnings, import cost, what is removed ----------


def test_top_k_help_states_the_range_its_error_states(
    device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_smsp.cli import main

    assert main(["adapt", "--help"]) == 0
    host_help = " ".join(capsys.readouterr().out.split())
    assert "--top-k TOP_K pool tasks whose masks are summed, 1 to 100,000" in host_help
    assert main(["adapt", "--classes", "0,1", "--ratio", "0.5", "--out", str(tmp_path), "--top-k", "0"]) == 2
    assert "from 1 to 100,000" in capsys.readouterr().err
    runtime = [device_python, "-m", "edge_smsp_runtime", "infer", "--model", "m.onnx"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    device_help = subprocess.run(
        [*runtime[:4], "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "--top-k TOP_K labels per image, 1 to 1,000,000" in " ".join(device_help.stdout.split())
    refused = subprocess.run([*runtime, "--top-k", "0", "x.npy"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "from 1 to 1,000,000, got 0" in refused.stderr


def test_fp16_export_warns_nothing_and_counts_what_it_truncated(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    from safetensors.numpy import load_file, save_file

    from edge_smsp.cli import main
    from edge_smsp.export.quantize import convert_fp16
    from tests.tiny_onnx import tiny_convnet

    # The converter clips 3 planted values of one tensor (and warns about each bound, per tensor).
    model = onnx.load(str(tiny_convnet(tmp_path / "tiny.onnx")))
    weights = model.graph.initializer[0]
    planted = numpy_helper.to_array(weights).copy()
    planted.flat[:3] = (5e4, -3e-9, 1e-12)
    weights.CopyFrom(numpy_helper.from_array(planted, weights.name))
    onnx.save(model, str(tmp_path / "planted.onnx"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        details = convert_fp16(tmp_path / "planted.onnx", tmp_path / "planted.fp16.onnx")
    assert [str(warning.message) for warning in caught] == []
    assert (details["truncated_values"], details["truncated_tensors"]) == (3, 1)
    # Through the CLI: one JSON object, nothing on stderr, no warning; the count is in the result.
    saved = tmp_path / "model"
    shutil.copytree(world / "model", saved)
    tensors = load_file(saved / "model.safetensors")
    name = next(key for key, value in tensors.items() if value.ndim == 4)  # a convolution's weights
    tensors[name].flat[0] = 1e-9
    save_file(tensors, saved / "model.safetensors")
    argv = ["export", "--model-dir", str(saved), "--out", str(tmp_path / "m.onnx"), "--precision", "fp16"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert [str(w.message) for w in caught if "truncated" in str(w.message)] == [] and captured.err == ""
    assert json.loads(captured.out)["truncated_values"] >= 1
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("truncated to it") == 1 and "float16's range" in text


@pytest.mark.parametrize(
    "argv",
    [
        ("deploy", "--profile", "{w}/malformed.yaml", "--out", "{s}/out"),
        ("deploy", "--profile", "{w}/local.yaml", "--data-dir", "{w}/nothing", "--out", "{s}/out"),
        ("adapt", "--classes", "0,1", "--ratio", "0.5", "--data-dir", "{w}/nothing", "--out", "{s}/out"),
        ("adapt", "--classes", "0,1", "--ratio", "0.5", "--pool", "{s}/no-pool.sqlite", "--out", "{s}/out"),
    ],
    ids=["bad-profile", "deploy-missing-data", "adapt-missing-data", "adapt-missing-pool"],
)
def test_fast_refusals_do_not_load_torch(argv: tuple[str, ...], world: Path, tmp_path: Path) -> None:
    """Refused from the arguments and small files alone: in well under a second, never after torch's seconds."""
    values = {"w": str(world), "s": str(tmp_path)}
    code = (
        "import sys\nfrom edge_smsp.cli import main\n"
        f"code = main({[part.format(**values) for part in argv]!r})\n"
        "sys.stderr.write('torch loaded: %s\\n' % ('torch' in sys.modules))\nsys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_environment(tmp_path / "home")
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 2 and lines[0].startswith("edge-smsp: error: "), done.stderr
    assert lines[1] == "torch loaded: False"
    assert not (tmp_path / "out").exists()


def test_a_failed_block_removes_only_what_it_made(tmp_path: Path) -> None:
    from edge_smsp.core.fileio import removed_on_failure

    existing = tmp_path / "existing"
    (existing / "kept").mkdir(parents=True)
    (existing / "old.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), removed_on_failure(existing) as undo:
        (undo.path / "skeleton").mkdir()
        (undo.path / "skeleton" / "params.npz").write_bytes(b"x")
        # An entry that was there is the user's: it stays (rewritten), the new ones go.
        (undo.path / "old.json").write_text('{"rewritten": true}')
        (undo.path / "report.json").write_text("{}")
        raise KeyboardInterrupt
    assert sorted(os.listdir(existing)) == ["kept", "old.json"]
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "new" / "deeper" / "out") as undo:
        undo.path.mkdir(parents=True)
        raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["existing"]
    with removed_on_failure(tmp_path / "kept-on-success") as undo:
        undo.path.mkdir()
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "kept-once-whole") as undo:
        (undo.path / "model.onnx").parent.mkdir()
        (undo.path / "model.onnx").write_bytes(b"a whole model")
        undo.keep()  # a later failure (the upload) leaves it
        raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["existing", "kept-on-success", "kept-once-whole"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "edge_smsp_runtime", "info"],
        ["-m", "edge_smsp", "models"],
        ["-m", "edge_smsp", "--version"],
        ["-m", "edge_smsp_runtime", "--version"],
    ],
    ids=["runtime-info", "host-models", "host-version", "runtime-version"],
)
def test_closed_stdout_is_one_line_exit_2(argv: list[str], tmp_path: Path) -> None:
    """Started with stdout closed (`>&-`), Python sets sys.stdout to None: said in one line, not a traceback."""
    done = subprocess.run(
        [sys.executable, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(tmp_path / "home"),
        preexec_fn=lambda: os.close(1),
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "stdout is closed" in lines[0], done.stderr


def test_add_to_pool_that_fails_leaves_no_model_folder(world: Path, tmp_path: Path) -> None:
    """adapt --add-to-pool is all or nothing: when the pool refuses the entry (here a trigger raises what a full
    disk raises), the --out folder this run made is removed, and the pool gains no entry."""
    import sqlite3

    from tests.pruning_helpers import sql

    pool = tmp_path / "full.sqlite"
    shutil.copy(world / "good.sqlite", pool)
    sql(
        pool,
        "CREATE TRIGGER full BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    )
    out = tmp_path / "out"
    argv = [*ADAPT, "--classes", "0,1", "--image-size", "32", "--add-to-pool", "--pool", str(pool)]
    argv = [arg.replace("{s}/out", str(out)) for arg in argv]
    result = subprocess.run(
        [sys.executable, "-m", "edge_smsp", *argv], capture_output=True, text=True, timeout=600,
        env=_environment(tmp_path / "home"),
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "refused the write: database or disk is full" in result.stderr
    assert not out.exists()
    with sqlite3.connect(pool) as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 1  # add_tiny_entry's only


def test_a_device_string_with_a_newline_cannot_forge_a_report_line(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device's strings (here its CPU name) and paths are shown escaped in text reports: a newline in them
    cannot start a line of its own that a reader or a script would take for the report's."""
    from edge_smsp.cli import main

    python = tmp_path / "python"
    rewrite = 's/"cpu_model": "[^"]*"/"cpu_model": "evil\\\\nFAKE LINE"/'
    python.write_text(
        f'#!/bin/sh\nout=$("{sys.executable}" "$@"); rc=$?\nprintf \'%s\\n\' "$out" | sed -E \'{rewrite}\'\nexit $rc\n'
    )
    python.chmod(0o755)
    connection = {"transport": "local", "python": str(python), "workdir": str(tmp_path / "device")}
    small_board_profile(tmp_path / "device.yaml", "newline-device", connection)
    argv = ["bench", "--profile", str(tmp_path / "device.yaml"), "--model", str(world / "tiny.onnx")]
    assert main([*argv, "--bench-runs", "3", "--bench-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "evil\\nFAKE LINE" in out and not any(line.startswith("FAKE") for line in out.splitlines())
