"""Issue 25's hostile sweep as rows of the bad-input table (tests/test_bad_input.py), by cause: alias bombs and
deep nesting, duplicate keys, non-finite and huge numbers, wrong types, long names and unknown ~users, special
files and symlinks as outputs, terminal escape codes in names, corrupt and inflating data files, unbounded runtime
options, NaN and integer pixels, decompression bombs, bad ONNX metadata, a port that does not speak SSH."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import socket
import sqlite3
import struct
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper

from tests.bad_input_case import Case
from tests.boards import small_board_profile
from tests.tiny_onnx import endless_loop, tiny_convnet

LONG = "n" * 300  # one name over NAME_MAX (255 bytes)
ESC = "\x1b[2J\x1b[31m"  # clear screen, red: must never reach the terminal raw
NOUSER = "~edge_smsp_no_such_user"
FAST = ("--train-per-class", "8", "--val-per-class", "4", "--iters", "2")
ADAPT = ("adapt", "--ratio", "0.5", "--method", "magnitude", "--out", "{s}/out", "--classes", "0,1", *FAST)
PRUNE = ("prune", "--model", "resnet18", "--ratio", "0.5", "--method", "random", "--image-size", "32")
EXPORT = ("export", "--model-dir", "{w}/model", "--out", "{s}/m.onnx")
DEPLOY = ("deploy", "--method", "magnitude", "--bench-runs", "3", "--bench-seconds", "0", *FAST)
BENCH = ("bench", "--model", "{w}/tiny.onnx", "--bench-runs", "3", "--bench-seconds", "0")
LOCAL_BENCH = (*BENCH, "--profile", "{w}/local.yaml")
RT_BENCH = ("bench", "--model", "{w}/tiny.onnx", "--runs", "3", "--min-seconds", "0")
RT_INFER = ("infer", "--model", "{w}/tiny.onnx")
DEPLOY_POOL = ("--pool", "{w}/deploy-pool.sqlite", "--ratio", "0.5")  # a pool that exists: a plan reads it
RT_ADAPT = ("adapt", "--model", "{w}/bundle", "--data", "{w}/device-images", "--iters", "1")
RT_TORCH_ADAPT = ("adapt", "--tier", "torch", "--model", "{w}/model", "--data", "{w}/adir", "--out", "{w}/adapted.onnx", "--iters", "1")  # fmt: skip

PROFILE_VARIANTS = {  # file stem -> YAML lines replacing the base profile's
    "nan-latency": {"latency_target_ms": ".nan"},
    "inf-latency": {"latency_target_ms": ".inf"},
    "inf-throughput": {"throughput_gmacs": ".inf"},
    "huge-throughput": {"throughput_gmacs": "1.0e+308"},
    "negative-inf-overhead": {"latency_overhead_ms": "-.inf"},
    "inf-memory": {"memory_budget": ".inf"},
    "huge-memory": {"memory_budget": "1.0e+30"},
    "huge-memory-text": {"memory_budget": "99999999999999999999TiB"},
    "nested-providers": {"providers": "[[CPUExecutionProvider]]"},
    "mapping-providers": {"providers": "[{CPUExecutionProvider: 1}]"},
    "int-providers": {"providers": "[1, 2]"},
    "text-threads": {"threads": "abc"},
    "bool-threads": {"threads": "true"},
    "octal-threads": {"threads": "010"},
    "bool-input-size": {"input_size": "true"},
    "huge-input-size": {"input_size": "100000000000000000000"},
    "list-name": {"name": "[a, b]"},
    "deep-description": {"description": "[" * 2000 + "]" * 2000},
    "recursive-alias": {"description": "&loop [*loop]"},
    "tiny-memory": {"memory_budget": "1KiB"},
}
# The connection of a profile, each broken in one way (ssh ones reach the test's sshd).
CONNECTION_VARIANTS = {
    "port-99999": {"port": 99999},
    "port-text": {"port": "twenty-two"},
    "key-nouser": {"key_file": f"{NOUSER}/id_ed25519"},
    "known-hosts-nouser": {"known_hosts": f"{NOUSER}/known_hosts"},
    "key-long": {"key_file": f"/tmp/{LONG}"},
    "key-garbage": {"key_file": "{w}/random.bin"},
    "key-a-folder": {"key_file": "{w}/adir.onnx"},
    "key-fifo": {"key_file": "{w}/fifo"},
    "key-loop": {"key_file": "{w}/loop-a"},
    "known-hosts-fifo": {"known_hosts": "{w}/fifo"},
    "known-hosts-dev-zero": {"known_hosts": "/dev/zero"},
    "workdir-a-file": {"workdir": "{w}/afile", "python": sys.executable},
    "workdir-proc-self": {"workdir": "/proc/self", "python": sys.executable},
    "known-hosts-loop": {"known_hosts": "{w}/loop-a"},
    "not-ssh": {"port": "{not_ssh}"},
    "known-hosts-utf-16": {"known_hosts": "{w}/utf-16.yaml"},
    "known-hosts-under-a-file": {"known_hosts": "{w}/afile/known_hosts"},
    "known-hosts-bad-hash": {"known_hosts": "{w}/bad-hash-known-hosts"},
    "python-false": {"python": "/usr/bin/false"},
    "key-public": {"key_file": "{w}/id_ed25519.pub"},
    "key-armoured-garbage": {"key_file": "{w}/armoured-garbage.key"},
    "key-encrypted-pem": {"key_file": "{w}/encrypted.pem"},
    "known-hosts-a-folder": {"known_hosts": "{w}/adir.onnx"},
}
PRUNED_JSON_VARIANTS = {  # saved-model copies whose pruned.json is broken one way
    "classes-huge": lambda meta: {**meta, "num_classes": 10**12},
    "ratio-text": lambda meta: {**meta, "ratio": "half"},
    "classes-text": lambda meta: {**meta, "num_classes": "abc"},
    "classes-bool": lambda meta: {**meta, "num_classes": True},
    "size-float": lambda meta: {**meta, "image_size": 32.5},
    "size-huge": lambda meta: {**meta, "image_size": 10**9},
    "backbone-list": lambda meta: {**meta, "backbone": ["resnet18"]},
    "kept-list": lambda meta: {**meta, "kept_indices": [1, 2]},
    "kept-outside": lambda meta: {
        **meta,
        "kept_indices": _first_group(meta, lambda kept: [99999, *kept[1:]]),
    },
    "kept-twice": lambda meta: {
        **meta,
        "kept_indices": _first_group(meta, lambda kept: [kept[0], *kept[:-1]]),
    },
    "version-newer": lambda meta: {**meta, "version": 99},
    "class-names-short": lambda meta: {**meta, "class_names": ["only-one"]},
    "class-names-numbers": lambda meta: {**meta, "class_names": list(range(meta["num_classes"]))},
    "std-zero": lambda meta: {**meta, "backbone_spec": {**meta["backbone_spec"], "std": [0, 0, 0]}},
    "mean-text": lambda meta: {**meta, "backbone_spec": {**meta["backbone_spec"], "mean": "grey"}},
}


def _first_group(meta: dict, change: Callable[[list[int]], list[int]]) -> dict:
    """kept_indices with its first group's indices changed."""
    first, *_ = meta["kept_indices"]
    return {**meta["kept_indices"], first: change(meta["kept_indices"][first])}


ONNX_METADATA_VARIANTS = {  # tiny.onnx copies with one metadata value broken
    "mean-nan": {"mean": "[NaN, 0.5, 0.5]"},
    "std-inf": {"std": "[Infinity, 1, 1]"},
    "mean-text": {"mean": '["a", "b", "c"]'},
    "size-bool": {"input_size": "true"},
    "size-huge": {"input_size": "1000000"},
    "size-negative": {"input_size": "[-16, 16]"},
    "labels-deep": {"labels": "[" * 100000 + "]" * 100000},
    "std-negative": {"std": "[-0.25, 0.25, 0.25]"},
    "std-tiny": {"std": "[1e-30, 0.25, 0.25]"},
    "mean-huge": {"mean": "[1e30, 0.5, 0.5]"},
    "labels-twice": {"labels": '["a", "a", "b", "c"]'},
    "size-not-the-graphs": {"input_size": "99"},
}


def inline_bomb() -> str:
    """An inline --connection mapping that expands to 10^9 values."""
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
        f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]" for level in range(1, 10)
    ]
    return "{" + ", ".join(levels) + "}"


def _literal(text: str) -> str:
    """`text` as a row's argument, which str.format expands ({w}, {s}): its own braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


HOSTILE_CASES = [
    # --- 1. security: bombs, deep documents, special files, escape codes --------------------------------------
    Case("hostile-profile-alias-bomb-deploy", (*DEPLOY, "--profile", "{w}/bomb.yaml", "--out", "{s}/out"), "alias"),
    Case("hostile-profile-alias-bomb-bench", ("bench", "--profile", "{w}/bomb.yaml", "--model", "{w}/tiny.onnx"), "alias"),
    Case("hostile-connection-alias-bomb-file", (*LOCAL_BENCH, "--connection", "{w}/bomb-connection.yaml"), "alias"),
    Case("hostile-connection-alias-bomb-inline", (*LOCAL_BENCH, "--connection", _literal(inline_bomb())), "alias"),
    Case("hostile-profile-deep-flow", ("bench", "--profile", "{w}/deep-flow.yaml", "--model", "{w}/tiny.onnx"), "nested"),
    Case("hostile-profile-deep-block", ("bench", "--profile", "{w}/deep-block.yaml", "--model", "{w}/tiny.onnx"), "nested"),
    Case("hostile-connection-deep-file", (*LOCAL_BENCH, "--connection", "{w}/deep-flow.yaml"), "nested"),
    Case("hostile-connection-deep-inline", (*LOCAL_BENCH, "--connection", _literal("{" + "a: {" * 3000 + "}" * 3001)), "nested"),
    Case("hostile-profile-too-large", ("bench", "--profile", "{w}/large.yaml", "--model", "{w}/tiny.onnx"), "KiB"),
    Case("hostile-profile-not-utf8", ("bench", "--profile", "{w}/random.yaml", "--model", "{w}/tiny.onnx"), "cannot read|malformed"),
    Case("hostile-profile-python-tag", ("bench", "--profile", "{w}/python-tag.yaml", "--model", "{w}/tiny.onnx"), "constructor|tag"),
    Case("hostile-export-out-fifo", ("export", "--model-dir", "{w}/model", "--out", "{w}/fifo"), "FIFO"),
    Case("hostile-export-out-symlink-loop", ("export", "--model-dir", "{w}/model", "--out", "{w}/loop-a"), "symlink loop"),
    Case("hostile-export-out-symlink-to-fifo", ("export", "--model-dir", "{w}/model", "--out", "{w}/link-to-fifo"), "FIFO"),
    Case("hostile-prune-out-symlink-loop", (*PRUNE, "--out", "{w}/loop-a"), "symlink loop"),
    Case("hostile-deploy-out-fifo", (*DEPLOY, "--profile", "{w}/local.yaml", "--out", "{w}/fifo"), "not a directory"),
    Case("hostile-ssh-workdir-a-file", ("bench", "--profile", "{w}/ssh-workdir-a-file.yaml", "--model", "{w}/tiny.onnx"), r"cannot create work dir .*afile' on .*: .*afile is not a folder; set connection\.workdir to a folder$"),
    Case("hostile-ssh-workdir-proc-self", ("bench", "--profile", "{w}/ssh-workdir-proc-self.yaml", "--model", "{w}/tiny.onnx"), r"failed on .*: No such file in work dir /proc/\d+; set connection\.workdir to a folder that user can write$"),
    Case("hostile-known-hosts-dev-zero", ("bench", "--profile", "{w}/ssh-known-hosts-dev-zero.yaml", "--model", "{w}/tiny.onnx"), r"known_hosts /dev/zero is a character device, not a file: set connection.known_hosts to a file \(or /dev/null"),
    Case("hostile-trust-known-hosts-fifo", ("bench", "--profile", "{w}/ssh-known-hosts-fifo.yaml", "--model", "{w}/tiny.onnx", "--trust-new-host"), "FIFO"),
    Case("hostile-trust-known-hosts-loop", ("bench", "--profile", "{w}/ssh-known-hosts-loop.yaml", "--model", "{w}/tiny.onnx", "--trust-new-host"), "symlink loop"),
    Case("hostile-escape-profile-name", ("bench", "--profile", "{w}/" + ESC + ".yaml", "--model", "{w}/tiny.onnx"), "malformed"),
    Case("hostile-escape-missing-profile", ("bench", "--profile", "{w}/nothing" + ESC + ".yaml", "--model", "{w}/tiny.onnx"), "no such file"),
    Case("hostile-escape-bench-model", ("bench", "--profile", "{w}/local.yaml", "--model", "{w}/" + ESC + ".onnx"), "onnx"),
    Case("hostile-escape-pool", ("pool", "list", "--pool", "{s}/" + ESC + ".sqlite"), "no pool"),
    Case("hostile-escape-checkpoint", (*PRUNE, "--checkpoint", "{w}/" + ESC + ".pth", "--out", "{s}/o"), "checkpoint"),
    Case("hostile-escape-model-dir", ("export", "--model-dir", "{w}/" + ESC, "--out", "{s}/m.onnx"), "no such directory"),
    Case("hostile-escape-classes", (*ADAPT[:-len(FAST) - 2], "--classes", ESC, *FAST), "--classes"),
    Case("hostile-escape-profile-field", ("bench", "--profile", "{w}/escape-field.yaml", "--model", "{w}/tiny.onnx"), "unknown field"),
    # --- 2. tracebacks: long names and unknown users, everywhere a path is taken --------------------------------
    Case("hostile-env-pool-nouser-list", ("pool", "list"), "no user", env={"EDGE_SMSP_POOL": f"{NOUSER}/pool.sqlite"}),
    Case("hostile-env-pool-long-list", ("pool", "list"), "too long", env={"EDGE_SMSP_POOL": f"/tmp/{LONG}/pool.sqlite"}),
    Case("hostile-env-pool-nouser-adapt", (*ADAPT[:4], "smsp", *ADAPT[5:]), "no user", env={"EDGE_SMSP_POOL": f"{NOUSER}/p.sqlite"}),
    Case("hostile-pool-nouser", ("pool", "list", "--pool", f"{NOUSER}/pool.sqlite"), "no user"),
    Case("hostile-pool-long", ("pool", "list", "--pool", f"{{s}}/{LONG}"), "too long"),
    Case("hostile-pool-long-path", ("pool", "list", "--pool", "/tmp/" + "d/" * 2100 + "p"), "too long"),
    Case("hostile-build-pool-nouser", ("pool", "build", "--tasks", "2", "--pool", f"{NOUSER}/p.sqlite", *FAST), "no user"),
    Case("hostile-prune-out-long", (*PRUNE, "--out", f"{{s}}/{LONG}"), "too long"),
    Case("hostile-prune-out-nouser", (*PRUNE, "--out", f"{NOUSER}/out"), "no user"),
    Case("hostile-prune-checkpoint-long", (*PRUNE, "--checkpoint", f"{{w}}/{LONG}", "--out", "{s}/o"), "too long"),
    Case("hostile-prune-checkpoint-nouser", (*PRUNE, "--checkpoint", f"{NOUSER}/w.pth", "--out", "{s}/o"), "no user"),
    Case("hostile-adapt-out-long", (*ADAPT[:6], f"{{s}}/{LONG}", *ADAPT[7:]), "too long"),
    Case("hostile-adapt-out-nouser", (*ADAPT[:6], f"{NOUSER}/out", *ADAPT[7:]), "no user"),
    Case("hostile-adapt-data-dir-nouser", (*ADAPT, "--data-dir", f"{NOUSER}/data"), "no user"),
    Case("hostile-adapt-data-dir-long", (*ADAPT, "--data-dir", f"{{w}}/{LONG}"), "too long"),
    Case("hostile-export-model-dir-long", ("export", "--model-dir", f"{{w}}/{LONG}", "--out", "{s}/m.onnx"), "too long"),
    Case("hostile-export-model-dir-nouser", ("export", "--model-dir", f"{NOUSER}/m", "--out", "{s}/m.onnx"), "no user"),
    Case("hostile-export-out-long", ("export", "--model-dir", "{w}/model", "--out", f"{{s}}/{LONG}.onnx"), "too long"),
    Case("hostile-export-out-nouser", ("export", "--model-dir", "{w}/model", "--out", f"{NOUSER}/m.onnx"), "no user"),
    Case("hostile-deploy-out-long", (*DEPLOY, "--profile", "{w}/local.yaml", "--out", f"{{s}}/{LONG}"), "too long"),
    Case("hostile-deploy-profile-nouser", (*DEPLOY, "--profile", f"{NOUSER}/p.yaml", "--out", "{s}/out"), "no user"),
    Case("hostile-bench-model-long", ("bench", "--profile", "{w}/local.yaml", "--model", f"{{w}}/{LONG}.onnx"), "too long"),
    Case("hostile-bench-model-nouser", ("bench", "--profile", "{w}/local.yaml", "--model", f"{NOUSER}/m.onnx"), "no user"),
    Case("hostile-bench-profile-long", ("bench", "--profile", f"{{w}}/{LONG}.yaml", "--model", "{w}/tiny.onnx"), "too long"),
    Case("hostile-bench-connection-nouser-key", (*LOCAL_BENCH, "--connection", "{{transport: ssh, host: 127.0.0.1, user: pi, key_file: " + NOUSER + "/k}}"), "no user"),
    Case("hostile-index-pool-nouser", ("pool", "index", "--backbone", "resnet18", "--pool", f"{NOUSER}/p.sqlite"), "no user"),
    # --- 2. tracebacks: profiles with wrong types and non-finite numbers (the bounded loader, field checks) ----
    *[
        Case(f"hostile-profile-{stem}", ("bench", "--profile", f"{{w}}/profile-{stem}.yaml", "--model", "{w}/tiny.onnx"), expect)
        for stem, expect in (
            ("nan-latency", "latency_target_ms"), ("inf-latency", "latency_target_ms"),
            ("inf-throughput", "throughput_gmacs"), ("huge-throughput", "throughput_gmacs"),
            ("negative-inf-overhead", "latency_overhead_ms"), ("inf-memory", "memory_budget"),
            ("huge-memory", "memory_budget"), ("huge-memory-text", "memory_budget"),
            ("nested-providers", "providers"), ("mapping-providers", "providers"), ("int-providers", "providers"),
            ("text-threads", "threads"), ("bool-threads", "threads"), ("bool-input-size", "input_size"),
            ("huge-input-size", "input_size"), ("list-name", "name"), ("deep-description", "nested"),
            ("recursive-alias", "recursive"),
        )
    ],
    Case("hostile-profile-duplicate-key", ("bench", "--profile", "{w}/duplicate.yaml", "--model", "{w}/tiny.onnx"), "duplicate key"),
    Case("hostile-deploy-profile-duplicate-key", (*DEPLOY, "--profile", "{w}/duplicate.yaml", "--out", "{s}/out"), "duplicate key"),
    Case("hostile-connection-duplicate-key", (*LOCAL_BENCH, "--connection", "{{port: 22, port: 23}}"), "duplicate key"),
    Case("hostile-connection-port-99999", (*LOCAL_BENCH, "--connection", "{{transport: ssh, host: 127.0.0.1, port: 99999}}"), "port"),
    Case("hostile-connection-nan-port", (*LOCAL_BENCH, "--connection", "{{transport: ssh, host: 127.0.0.1, port: .nan}}"), "finite|port"),
    *[
        Case(f"hostile-ssh-{stem}", ("bench", "--profile", f"{{w}}/ssh-{stem}.yaml", "--model", "{w}/tiny.onnx"), expect)
        for stem, expect in (
            ("port-99999", "port"), ("port-text", "port"), ("key-nouser", "no user"),
            ("known-hosts-nouser", "no user"), ("key-long", "too long|key file"),
            ("key-garbage", r"SSH key file .*random\.bin is not a private key \(no '-----BEGIN' line\)"), ("not-ssh", "not as an SSH server"),
            ("known-hosts-bad-hash", r"cannot read known_hosts file .*line 1: hashed host name '\|1\|garbage\|hash' is not"),
        )
    ],
    Case("hostile-local-workdir-nouser", ("bench", "--profile", "{w}/workdir-nouser.yaml", "--model", "{w}/tiny.onnx"), "no user"),
    # --- 2. tracebacks: pruned.json and the pool's rows (wrong types, deep, non-finite, duplicates) -----------
    *[
        Case(f"hostile-pruned-json-{stem}", ("export", "--model-dir", f"{{w}}/model-{stem}", "--out", "{s}/m.onnx"), expect)
        for stem, expect in (
            ("classes-huge", "num_classes"), ("classes-text", "num_classes"), ("classes-bool", "num_classes"),
            ("ratio-text", r"model-ratio-text/pruned\.json cannot be exported: metadata\.ratio"),
            ("size-float", "image_size"), ("size-huge", "image_size"), ("backbone-list", "backbone"),
            ("kept-list", "kept_indices"), ("deep", "nested"),
            ("kept-outside", r"pruned\.json: keep_indices\[.*\] must be distinct indices in \[0, \d+\); the file is damaged: prune the model again"),
            ("kept-twice", r"pruned\.json: keep_indices\[.*\] must be distinct indices in \[0, \d+\); the file is damaged"),
            ("class-names-short", r"pruned\.json: class_names has 1 entries but num_classes is \d+; give one name per class"),
            ("class-names-numbers", r"pruned\.json: class_names must be a list of strings"),
            ("std-zero", r"pruned\.json: backbone_spec\.std must be 1 or 3 positive numbers \(one per channel\), got \[0, 0, 0\]"),
            ("mean-text", r"pruned\.json: backbone_spec\.mean must be 1 or 3 finite numbers"), ("nan", "finite|NaN"), ("duplicate", "duplicate"),
        )
    ],
    Case("hostile-export-card-over-pruned-json", ("export", "--model-dir", "{w}/model", "--out", "{w}/model/pruned.onnx"), "pruned.json"),
    Case("hostile-pool-deep-extra", ("pool", "list", "--pool", "{w}/deep-extra.sqlite"), "damaged"),
    Case("hostile-pool-nan-extra", ("pool", "list", "--pool", "{w}/nan-extra.sqlite"), "damaged"),
    Case("hostile-pool-duplicate-extra", ("pool", "list", "--pool", "{w}/duplicate-extra.sqlite"), "damaged"),
    Case("hostile-pool-deep-classes-json", ("pool", "list", "--json", "--pool", "{w}/deep-classes.sqlite"), "damaged"),
    # --- 2. tracebacks: stdout on a full device, data files that are corrupt or inflate -----------------------
    Case("hostile-stdout-dev-full-pool-list", ("pool", "list", "--json", "--pool", "{w}/good.sqlite"), "No space left", stdout="/dev/full"),
    Case("hostile-stdout-dev-full-models", ("models", "--json"), "No space left", stdout="/dev/full"),
    Case("hostile-stdout-dev-full-version", ("--version",), "No space left", stdout="/dev/full"),
    Case("hostile-stdout-dev-full-help", ("prune", "--help"), "No space left", stdout="/dev/full"),
    Case("hostile-stdout-dev-full-runtime-version", ("--version",), "cannot write to stdout: .*No space left", runtime=True, stdout="/dev/full"),
    Case("hostile-stdout-dev-full-runtime-help", ("bench", "--help"), "cannot write to stdout: .*No space left", runtime=True, stdout="/dev/full"),
    Case("hostile-fashion-gz-bomb", (*ADAPT, "--data-dir", "{w}/fashion-bomb"), "header claims"),
    Case("hostile-fashion-gz-corrupt", (*ADAPT, "--data-dir", "{w}/fashion-corrupt"), "cannot read IDX"),
    Case("hostile-fashion-short", (*ADAPT, "--data-dir", "{w}/fashion-short"), "header claims|holds"),
    # --- 4. silent wrong results: now refused --------------------------------------------------------------------
    Case("hostile-index-unknown-backbone", ("pool", "index", "--backbone", "nosuchnet", "--pool", "{w}/good.sqlite"), "nosuchnet"),
    # --- 3. and 4. the device runtime: every option bounded, pixels checked, metadata checked -----------------
    Case("hostile-runtime-warmup-huge", (*RT_BENCH, "--warmup", "1000000000000"), "--warmup", runtime=True),
    Case("hostile-runtime-runs-huge", (*RT_BENCH, "--runs", "1000000000000"), "--runs", runtime=True),
    Case("hostile-runtime-runs-above-host", (*RT_BENCH, "--runs", "100001"), "--runs", runtime=True),
    Case("hostile-runtime-runs-float", (*RT_BENCH, "--runs", "1e12"), "--runs", runtime=True),
    Case("hostile-runtime-threads-huge", (*RT_BENCH, "--threads", "100000"), "--threads", runtime=True),
    Case("hostile-runtime-threads-float", (*RT_BENCH, "--threads", "1e20"), "--threads", runtime=True),
    Case("hostile-runtime-min-seconds-huge", (*RT_BENCH, "--min-seconds", "1e12"), "--min-seconds", runtime=True),
    Case("hostile-runtime-seed-negative", (*RT_BENCH, "--seed", "-1"), "--seed", runtime=True),
    Case("hostile-runtime-seed-2-64", (*RT_BENCH, "--seed", str(2**64)), "--seed", runtime=True),
    Case("hostile-runtime-batch-huge", (*RT_BENCH, "--batch-size", "100000"), "--batch-size", runtime=True),
    Case("hostile-runtime-infer-threads-huge", (*RT_INFER, "--threads", "100000", "{w}/image.npy"), "--threads", runtime=True),
    Case("hostile-runtime-describe-threads", ("describe", "--model", "{w}/tiny.onnx", "--data", "{w}/adir", "--threads", "100000"), "--threads", runtime=True),
    Case("hostile-runtime-probe-seed", ("probe", "--models", "{w}/tiny.onnx", "--data", "{w}/adir", "--seed", "-1"), "--seed", runtime=True),
    Case("hostile-runtime-scan-seed", ("scan", "--data", "{w}/adir", "--seed", str(2**64)), "--seed", runtime=True),
    Case("hostile-runtime-adapt-batch-huge", ("adapt", "--model", "{w}/tiny.onnx", "--data", "{w}/adir", "--out", "{s}/a.onnx", "--iters", "1", "--batch-size", "100000"), "--batch-size", runtime=True),
    Case("hostile-runtime-torch-adapt-batch-zero", (*RT_TORCH_ADAPT, "--batch-size", "0"), "--batch-size", runtime=True),
    Case("hostile-runtime-torch-adapt-trainable-blocks", (*RT_TORCH_ADAPT, "--trainable-blocks", "2"), "--trainable-blocks", runtime=True),
    Case("hostile-runtime-torch-adapt-out-is-a-directory", (*RT_TORCH_ADAPT, "--out", "{w}/adir.onnx"), "--out .*adir.onnx is a directory", runtime=True),
    Case("hostile-runtime-torch-adapt-seed-negative", (*RT_TORCH_ADAPT, "--seed", "-1"), "--seed", runtime=True),
    Case("hostile-runtime-torch-adapt-iters-huge", (*RT_TORCH_ADAPT[:-1], "1000000000000"), "--iters", runtime=True),
    Case("hostile-runtime-infer-nan-pixels", (*RT_INFER, "{w}/nan.npy"), "NaN", runtime=True),
    Case("hostile-runtime-infer-inf-pixels", (*RT_INFER, "{w}/inf.npy"), "NaN or infinite", runtime=True),
    Case("hostile-runtime-infer-int64-above-16-bit", (*RT_INFER, "{w}/int64-big.npy"), "integer pixels", runtime=True),
    Case("hostile-runtime-infer-int-negative", (*RT_INFER, "{w}/int-negative.npy"), "integer pixels", runtime=True),
    Case("hostile-runtime-infer-npy-bomb", (*RT_INFER, "{w}/bomb.npy"), "pixels", runtime=True),
    Case("hostile-runtime-infer-npy-truncated", (*RT_INFER, "{w}/truncated.npy"), r"promises 3,000,000 bytes of pixels, the file holds 16 \(truncated or corrupt\)", runtime=True),
    Case("hostile-runtime-infer-npy-flat-huge", (*RT_INFER, "{w}/flat-huge.npy"), r"expected an HxW, HxWxC or CxHxW image array, got shape \(1000000000000,\)", runtime=True),
    Case("hostile-runtime-infer-pgm-bomb", (*RT_INFER, "{w}/bomb.pgm"), "pixels", runtime=True),
    Case("hostile-runtime-infer-npy-objects", (*RT_INFER, "{w}/objects.npy"), "objects|pickle", runtime=True),
    Case("hostile-runtime-infer-escape-name", (*RT_INFER, "{w}/" + ESC + ".npy"), "not found", runtime=True),
    Case("hostile-runtime-bench-escape-name", ("bench", "--model", "{w}/" + ESC + ".onnx"), "onnx", runtime=True),
    Case("hostile-runtime-infer-long-name", (*RT_INFER, f"{{w}}/{LONG}.npy"), "image path is too long for this file system", runtime=True),
    Case("hostile-runtime-infer-metadata-key-twice", ("infer", "--model", "{w}/meta-key-twice.onnx", "{w}/image.npy"), "gives metadata 'labels' twice, and only one would be used", runtime=True),
    Case("hostile-runtime-describe-a-classifier", ("describe", "--model", "{w}/tiny.onnx", "--data", "{w}/adir"), "it is a classifier: describe needs a feature graph", runtime=True),
    Case("hostile-runtime-infer-no-inputs", ("infer", "--model", "{w}/no-inputs.onnx", "{w}/image.npy"), "no inputs", runtime=True),
    *[
        Case(f"hostile-runtime-metadata-{stem}", ("infer", "--model", f"{{w}}/meta-{stem}.onnx", "{w}/image.npy"), expect, runtime=True)
        for stem, expect in (
            ("mean-nan", "mean"), ("std-inf", "std"), ("mean-text", "mean"), ("size-bool", "input_size"),
            ("size-huge", "input_size"), ("size-negative", "input_size"), ("labels-deep", "labels"),
            ("std-negative", r"model metadata 'std' must be positive numbers, got \[-0\.25"),
            ("std-tiny", r"scale pixels in \[0, 1\] to 5e\+29 \(a normalisation keeps them within 10000\)"),
            ("mean-huge", r"model metadata 'mean' \[1e\+30, 0\.5, 0\.5\] and model metadata 'std'"),
            ("labels-twice", "model metadata 'labels' names 'a' more than once: each class needs its own label"),
            ("size-not-the-graphs", r"model metadata 'input_size' \[99, 99\] differs from the graph's input 16x16"),
        )
    ],
    # --- 5. the sweep's last unclean ends: nothing half-written, checks before uploads, messages that say why ---
    Case("hostile-device-data-over-budget-leaves-no-out", (*DEPLOY, *DEPLOY_POOL, "--profile", "{w}/tight.yaml", "--device-data", "{w}/device-images", "--device-train", "light", "--out", "{s}/out"), "on-device adaptation needs"),
    Case("hostile-time-budget-too-small-leaves-no-out", (*DEPLOY[:-2], *DEPLOY_POOL, "--profile", "{w}/local.yaml", "--time-budget", "0.001", "--out", "{s}/out"), "time budget 0.001 s leaves no time", fresh_process=True),
    Case("hostile-bench-python-cannot-run", ("bench", "--profile", "{w}/python-false.yaml", "--model", "{w}/tiny.onnx"), "Python '/bin/false' could not run"),
    Case("hostile-bench-profile-twice", (*LOCAL_BENCH, "--profile", "{w}/wrong-python.yaml"), "--profile: given more than once"),
    Case("hostile-bench-opset-newer-than-the-device-runs", ("bench", "--profile", "{w}/local.yaml", "--model", "{w}/opset-40.onnx"), "the model would be opset 40"),
    Case("hostile-adapt-one-class-named", (*ADAPT[:7], "--classes", "7", *FAST), "but only class 7 was named"),
    Case("hostile-adapt-classes-twice", (*ADAPT, "--classes", "7"), r"argument --classes: given more than once; give it once"),
    Case("hostile-bench-connection-twice", (*LOCAL_BENCH, "--connection", "{{port: 22}}", "--connection", "{{port: 23}}"), r"argument --connection: given more than once; give it once \(see"),
    Case("hostile-prune-out-twice", (*PRUNE, "--out", "{s}/a", "--out", "{s}/b"), r"argument --out: given more than once"),
    Case("hostile-deploy-profile-is-a-directory", (*DEPLOY, "--profile", "{w}/adir", "--out", "{s}/out"), "adir is a directory"),
    Case("hostile-connection-is-a-directory", (*LOCAL_BENCH, "--connection", "{w}/adir"), "adir is a directory"),
    Case("hostile-runtime-adapt-params-truncated", ("adapt", "--model", "{w}/bundle-cut", "--data", "{w}/device-images", "--iters", "1", "--out", "{s}/a.onnx"), "params.npz is truncated or corrupt", runtime=True),
    Case("hostile-runtime-adapt-out-under-a-file", ("adapt", "--model", "{w}/bundle-cut", "--data", "{w}/device-images", "--iters", "1", "--out", "{w}/afile/a.onnx"), "afile is a file, not a folder", runtime=True),
    Case("hostile-runtime-infer-a-directory", (*RT_INFER, "{w}/adir"), "adir is a directory, not an image", runtime=True),
    # --- 6. the runtime's last sweep: special files as outputs and inputs, garbage models, what infer can score ---
    Case("hostile-runtime-adapt-out-fifo", (*RT_ADAPT, "--out", "{w}/fifo.onnx"), "fifo.onnx is a FIFO, not a regular file: refusing to replace it", runtime=True),
    Case("hostile-runtime-adapt-out-symlink-loop", (*RT_ADAPT, "--out", "{w}/loop-a.onnx"), "loop-a.onnx is a symlink loop", runtime=True),
    Case("hostile-runtime-adapt-out-empty", (*RT_ADAPT, "--out", ""), "--out: expected a file name", runtime=True),
    Case("hostile-runtime-bench-zero-filled", (*RT_BENCH[:2], "{w}/zeros.onnx", *RT_BENCH[3:]), r"zeros.onnx: not an ONNX model \(a field number of 0\)", runtime=True),
    Case("hostile-runtime-bench-over-2-gib", (*RT_BENCH[:2], "{w}/sparse-3g.onnx", *RT_BENCH[3:]), "not an ONNX model .*over protobuf's 2 GiB limit", runtime=True),
    Case("hostile-runtime-bench-model-a-directory", (*RT_BENCH[:2], "{w}/adir", *RT_BENCH[3:]), "adir is a directory, not a regular file", runtime=True),
    Case("hostile-runtime-bench-model-fifo", (*RT_BENCH[:2], "{w}/fifo", *RT_BENCH[3:]), "fifo is a FIFO, not a regular file", runtime=True),
    Case("hostile-runtime-bench-model-symlink-loop", (*RT_BENCH[:2], "{w}/loop-a", *RT_BENCH[3:]), "loop-a is a symlink loop", runtime=True),
    Case("hostile-runtime-bench-empty-graph", (*RT_BENCH[:2], "{w}/empty-graph.onnx", *RT_BENCH[3:]), "cannot load model", runtime=True),
    Case("hostile-runtime-infer-image-fifo", (*RT_INFER, "{w}/fifo"), "fifo is a FIFO, not a regular file", runtime=True),
    Case("hostile-runtime-bench-model-without-inputs", (*RT_BENCH[:2], "{w}/noin.onnx", *RT_BENCH[3:]), "noin.onnx has no inputs", runtime=True),
    Case("hostile-runtime-probe-model-without-inputs", ("probe", "--models", "{w}/noin.onnx", "--data", "{w}/device-images"), "noin.onnx has no inputs", runtime=True),
    Case("hostile-runtime-adapt-bundle-without-cuts", (*RT_ADAPT[:2], "{w}/bundle-no-cuts", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph.json: no cuts", runtime=True),
    Case("hostile-runtime-adapt-bundle-zero-input-size", (*RT_ADAPT[:2], "{w}/bundle-zero-size", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"input_size must be two positive integers", runtime=True),
    Case("hostile-runtime-infer-empty-providers", ("infer", "--model", "{w}/tiny.onnx", "--providers", "", "{w}/image.npy"), "give at least one execution provider", runtime=True),
    Case("hostile-runtime-bench-endless-loop", (*RT_BENCH[:2], "{w}/endless-loop.onnx", *RT_BENCH[3:], "--run-timeout", "0.2"), r"endless-loop\.onnx: the first inference ran over 0\.4 s and was stopped \(--run-timeout 0\.2", runtime=True),
    Case("hostile-runtime-infer-endless-loop", ("infer", "--model", "{w}/endless-loop.onnx", "--run-timeout", "0.2", "{w}/image.npy"), r"the first inference ran over 0\.4 s and was stopped", runtime=True),
    Case("hostile-runtime-bench-run-timeout-zero", (*RT_BENCH, "--run-timeout", "0"), r"--run-timeout: expected a number from 0\.1 to 86400, got '0'", runtime=True),
    Case("hostile-runtime-bench-input-too-large-to-make", (*RT_BENCH[:2], "{w}/huge-input.onnx", *RT_BENCH[3:]), r"input 'x' of 1 x 3 x 1000000 x 1000000 values needs [\d,]+ MiB to make, more than the [\d,]+ MiB this device has available", runtime=True),
    Case("hostile-runtime-infer-feature-graph", ("infer", "--model", "{w}/features.onnx", "{w}/image.npy"), r"the model's output is 'features' \(a feature graph, without labels\), not class scores", runtime=True),
    Case("hostile-runtime-infer-class-index-output", ("infer", "--model", "{w}/int-output.onnx", "{w}/image.npy"), r"output 'idx' is tensor\(int64\), not class scores", runtime=True),
    Case("hostile-runtime-infer-not-a-classifier", ("infer", "--model", "{w}/identity.onnx", "{w}/image.npy"), r"shape \[1, 3, 8, 8\]; infer needs \(batch, classes\)", runtime=True),
    Case("hostile-runtime-scan-data-a-file", ("scan", "--data", "{w}/afile"), "afile is a file where a folder is expected", runtime=True),
    Case("hostile-runtime-scan-relative-folder-missing", ("scan", "--data", "no-such-relative-folder"), r"image folder not found: no-such-relative-folder \(looked up in /\S*, the runtime's working folder\)$", runtime=True),
    Case("hostile-runtime-scan-train-without-val", ("scan", "--data", "{w}/train-only"), "train-only has train/ but no val/", runtime=True),
    # --- 6b. a hand-corrupted bundle, an output that is no .onnx file, a class folder that links back above ---
    Case("hostile-runtime-adapt-bundle-param-shape", (*RT_ADAPT[:2], "{w}/bundle-param-shape", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"bundle-param-shape/params\.npz: parameter 'classifier\.weight' is \[3, \d+\] float32 in params\.npz, but graph\.json says \[3, 7\] float32; export the bundle again", runtime=True),
    Case("hostile-runtime-adapt-bundle-param-huge", (*RT_ADAPT[:2], "{w}/bundle-param-huge", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json declares 6,400,\d+,\d+ bytes of parameters, more than model\.onnx holds", runtime=True),
    Case("hostile-runtime-adapt-bundle-params-bomb", (*RT_ADAPT[:2], "{w}/bundle-params-bomb", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"parameter 'classifier\.weight' is \[40000, 40000\] float32 in params\.npz, but graph\.json says \[3, \d+\]", runtime=True),
    Case("hostile-runtime-adapt-bundle-classifier-weight", (*RT_ADAPT[:2], "{w}/bundle-classifier-weight", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json: classifier\.weight is 'nope' but its Gemm \(node \d+\) has 'classifier\.weight'; export the bundle again", runtime=True),
    Case("hostile-runtime-adapt-bundle-classifier-features-missing", (*RT_ADAPT[:2], "{w}/bundle-classifier-no-features", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json: classifier\.features is missing \(the Gemm's is '[^']+'\)", runtime=True),
    Case("hostile-runtime-adapt-bundle-node-without-inputs", (*RT_ADAPT[:2], "{w}/bundle-node-no-inputs", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json: node 1 '[^']+' \(BatchNormalization\): field 'inputs' must be a list of tensor names, got None", runtime=True),
    Case("hostile-runtime-adapt-bundle-node-bad-strides", (*RT_ADAPT[:2], "{w}/bundle-node-strides", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json: node 0 '[^']+' \(Conv\): attribute 'strides' must be 2 integers of at least 1, got 'x'", runtime=True),
    Case("hostile-runtime-adapt-bundle-node-negative-epsilon", (*RT_ADAPT[:2], "{w}/bundle-node-epsilon", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"graph\.json: node \d+ '[^']+' \(BatchNormalization\): attribute 'epsilon' must be a small positive number, got -1\.0", runtime=True),
    Case("hostile-runtime-adapt-bundle-params-nan", (*RT_ADAPT[:2], "{w}/bundle-params-nan", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"bundle-params-nan/params\.npz: parameter '[^']+' holds 1 NaN or infinite value\(s\) of \d+; export the bundle again", runtime=True),
    Case("hostile-runtime-adapt-bundle-params-inf", (*RT_ADAPT[:2], "{w}/bundle-params-inf", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"bundle-params-inf/params\.npz: parameter 'stem\.0\.1\.weight' holds 1 NaN or infinite value", runtime=True),
    Case("hostile-runtime-adapt-bundle-spec-bigint", (*RT_ADAPT[:2], "{w}/bundle-bigint", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"bundle-bigint/graph\.json: an integer of 5001 digits, larger than any shape or count", runtime=True),
    Case("hostile-runtime-adapt-bundle-spec-deep", (*RT_ADAPT[:2], "{w}/bundle-deep", *RT_ADAPT[3:], "--out", "{s}/a.onnx"), r"bundle-deep/graph\.json: nested too deeply to be a bundle's spec", runtime=True),
    Case("hostile-runtime-adapt-out-not-onnx", (*RT_ADAPT, "--out", "{s}/a.txt"), r"argument --out: must name an \.onnx file, got '.*a\.txt'", runtime=True),
    Case("hostile-runtime-torch-adapt-out-not-onnx", (*RT_TORCH_ADAPT, "--out", "{w}/model"), r"argument --out: must name an \.onnx file, got '.*model'", runtime=True),
    Case("hostile-runtime-scan-class-folder-links-back", ("scan", "--data", "{w}/cycle-images"), r"cycle-images/coat/again links back to .*cycle-images/coat, a folder above it \(a symlink cycle\)", runtime=True),
    # --- 7. the host's last sweep: sizes no budget holds, providers the device lacks, empty strings, conflicts ---
    Case("hostile-deploy-image-size-over-the-memory-budget", (*DEPLOY, *DEPLOY_POOL, "--profile", "{w}/tight.yaml", "--image-size", "4096", "--out", "{s}/out"), r"input tensor alone \(1 x 3 x 4096 x 4096 x 4 bytes = 192\.0 MiB\) exceeds .*use a smaller --image-size"),
    Case("hostile-deploy-device-has-none-of-the-providers", (*DEPLOY, *DEPLOY_POOL, "--profile", "{w}/cuda-only.yaml", "--out", "{s}/out"), r"none of its profile's providers \(CUDAExecutionProvider\); it has .*CPUExecutionProvider"),
    Case("hostile-deploy-profile-empty", (*DEPLOY, "--profile", "", "--out", "{s}/out"), "--profile: must not be empty"),
    Case("hostile-bench-profile-empty", ("bench", "--profile", "", "--model", "{w}/tiny.onnx"), "--profile: must not be empty"),
    Case("hostile-connection-empty", (*LOCAL_BENCH, "--connection", ""), "connection override is empty"),
    Case("hostile-deploy-device-data-empty", (*DEPLOY, "--profile", "{w}/local.yaml", "--device-data", "", "--out", "{s}/out"), r"--device-data: must not be empty: name a folder on the device \(see"),
    Case("hostile-profile-symlink-loop", ("bench", "--profile", "{w}/loop-a", "--model", "{w}/tiny.onnx"), "loop-a is a symlink loop"),
    Case("hostile-profile-fifo", ("bench", "--profile", "{w}/fifo", "--model", "{w}/tiny.onnx"), "fifo is a FIFO, not a regular file"),
    Case("hostile-profile-dev-null", ("bench", "--profile", "/dev/null", "--model", "{w}/tiny.onnx"), "/dev/null is a character device, not a regular file"),
    Case("hostile-profile-dev-zero", (*DEPLOY, "--profile", "/dev/zero", "--out", "{s}/out"), "/dev/zero is a character device, not a regular file"),
    Case("hostile-profile-latin-1", ("bench", "--profile", "{w}/latin-1.yaml", "--model", "{w}/tiny.onnx"), "not UTF-8 text.*save it as UTF-8"),
    Case("hostile-profile-utf-16", ("bench", "--profile", "{w}/utf-16.yaml", "--model", "{w}/tiny.onnx"), "not UTF-8 text.*save it as UTF-8"),
    Case("hostile-connection-utf-16", (*LOCAL_BENCH, "--connection", "{w}/utf-16.yaml"), "not UTF-8 text.*save it as UTF-8"),
    Case("hostile-connection-fifo", (*LOCAL_BENCH, "--connection", "{w}/fifo"), "fifo is a FIFO, not a regular file"),
    Case("hostile-ssh-known-hosts-utf-16", ("bench", "--profile", "{w}/ssh-known-hosts-utf-16.yaml", "--model", "{w}/tiny.onnx"), "is not UTF-8 text .*save it as UTF-8"),
    Case("hostile-deploy-trainable-blocks-without-device-data", (*DEPLOY, "--profile", "{w}/local.yaml", "--trainable-blocks", "3", "--out", "{s}/out"), "--trainable-blocks acts on --device-data only"),
    Case("hostile-deploy-device-train-without-device-data", (*DEPLOY, "--profile", "{w}/local.yaml", "--device-train", "torch", "--out", "{s}/out"), "--device-train acts on --device-data only"),
    Case("hostile-deploy-data-dir-with-device-data", (*DEPLOY, "--profile", "{w}/local.yaml", "--device-data", "{w}/device-images", "--data-dir", "{w}", "--out", "{s}/out"), "--data-dir: with --device-data the images are the device's folders, and no host data is read; drop --data-dir"),
    Case("hostile-deploy-dataset-with-device-data", (*DEPLOY, "--profile", "{w}/local.yaml", "--device-data", "{w}/device-images", "--dataset", "imagefolder", "--out", "{s}/out"), "--dataset: with --device-data"),
    Case("hostile-deploy-into-a-foreign-folder", (*DEPLOY, "--profile", "{w}/local.yaml", "--ratio", "0.5", "--out", "{w}/foreign-deploy"), r"foreign-deploy holds model\.onnx, deploy_report\.json, which no edge-smsp deploy wrote .*name another --out \(or move them\)$"),
    Case("hostile-deploy-classes-with-device-data", (*DEPLOY, "--profile", "{w}/local.yaml", "--device-data", "{w}/device-images", "--classes", "0,2,4", "--out", "{s}/out"), "--classes: with --device-data the device's class folders are the task"),
    Case("hostile-prune-round-to-huge", (*PRUNE, "--round-to", "100000", "--out", "{s}/o"), "--round-to: must be an integer from 1 to 1,024"),
    Case("hostile-build-rounds-over-iters", ("pool", "build", "--tasks", "2", "--ratio", "0.5", "--iters", "1", "--rounds", "50", "--pool", "{s}/p.sqlite", "--image-size", "32"), "--rounds 50 is more than --iters 1"),
    Case("hostile-export-saved-weights-nan", ("export", "--model-dir", "{w}/model-weights-nan", "--out", "{s}/m.onnx"), r"model-weights-nan/model\.safetensors holds NaN or infinite values in \S+: the saved model cannot run; prune it again"),
    Case("hostile-export-saved-weights-inf", ("export", "--model-dir", "{w}/model-weights-inf", "--out", "{s}/m.onnx"), r"model-weights-inf/model\.safetensors holds NaN or infinite values in \S+"),
    Case("hostile-export-pruned-json-newer-version", ("export", "--model-dir", "{w}/model-version-newer", "--out", "{s}/m.onnx"), "format version 99, newer than this edge-smsp reads"),
    Case("hostile-local-workdir-a-file", ("bench", "--profile", "{w}/workdir-a-file.yaml", "--model", "{w}/tiny.onnx"), "afile is a file, not a folder"),
    Case("hostile-trust-known-hosts-under-a-file", ("bench", "--profile", "{w}/ssh-known-hosts-under-a-file.yaml", "--model", "{w}/tiny.onnx", "--trust-new-host"), "afile is a file, not a folder"),
    Case("hostile-ssh-key-file-a-folder", ("bench", "--profile", "{w}/ssh-key-a-folder.yaml", "--model", "{w}/tiny.onnx"), r"SSH key file .*adir\.onnx is a directory, not a regular file: name the private key file itself"),
    Case("hostile-ssh-key-file-a-fifo", ("bench", "--profile", "{w}/ssh-key-fifo.yaml", "--model", "{w}/tiny.onnx"), r"SSH key file .*fifo is a FIFO, not a regular file"),
    Case("hostile-ssh-key-file-a-symlink-loop", ("bench", "--profile", "{w}/ssh-key-loop.yaml", "--model", "{w}/tiny.onnx"), r"SSH key file .*loop-a: a symlink loop; name the private key file itself"),
    Case("hostile-connection-workdir-root", (*LOCAL_BENCH, "--connection", "{{workdir: /}}"), r"connection\.workdir: '/' is the device's root folder"),
    Case("hostile-connection-workdir-root-dots", (*LOCAL_BENCH, "--connection", "{{workdir: //./}}"), r"connection\.workdir: '//\./' is the device's root folder"),
    Case("hostile-adapt-top-k-without-pool-method", (*ADAPT, "--top-k", "3"), r"--top-k acts on the pool's methods \(smsp, smsp-random\), not --method magnitude: drop it"),
    Case("hostile-adapt-weighting-without-pool-method", (*ADAPT, "--weighting", "similarity"), r"--weighting acts on the pool's methods"),
    Case("hostile-deploy-mask-source-without-pool-method", (*DEPLOY, "--profile", "{w}/local.yaml", "--mask-source", "scores", "--out", "{s}/out"), r"--mask-source acts on the pool's methods .*not --method magnitude"),
    Case("hostile-build-iters-zero", ("pool", "build", "--tasks", "1", "--ratio", "0.5", "--iters", "0", "--pool", "{s}/p.sqlite"), r"argument --iters: must be an integer from 1 to 1,000,000, got '0'"),
    Case("hostile-bench-model-with-external-data", ("bench", "--profile", "{w}/local.yaml", "--model", "{w}/external-data.onnx"), r"external-data\.onnx keeps its weights in 1 separate file\(s\) \(external-data\.bin\), and bench uploads the one \.onnx file"),
    Case("hostile-connection-field-glued-to-its-value", (*LOCAL_BENCH, "--connection", "{{workdir:/tmp/x}}"), r"connection\.workdir:/tmp/x: unknown field \(allowed: .*\); write 'workdir: \.\.\.' with a space after the colon"),
    Case("hostile-ssh-python-cannot-run", ("bench", "--profile", "{w}/ssh-python-false.yaml", "--model", "{w}/tiny.onnx"), "the device's Python '/usr/bin/false' could not run .*set connection.python"),
    # --- 8. the fifth sweep: a device whose numbers no benchmark gives never reaches a plan, report or pool ---
    Case("hostile-bench-device-reports-negative-latency", ("bench", "--profile", "{w}/lying-device.yaml", "--model", "{w}/tiny.onnx"), r"bench report is not plausible: latency_p50_ms -3\.0 \(a measurement lies from 0 to 1e\+07\)"),
    Case("hostile-adapt-out-holds-the-users-pruned-json", (*ADAPT[:6], "{w}/users-folder", *ADAPT[7:]), r"users-folder holds a pruned\.json that is not an edge-smsp saved model's; saving would replace it"),
    Case("hostile-prune-out-holds-another-tools-model", (*PRUNE, "--out", "{w}/hf-model"), r"hf-model holds a model\.safetensors with no pruned\.json"),
    Case("hostile-export-card-over-the-users-json", ("export", "--model-dir", "{w}/model", "--out", "{w}/cfg/settings.onnx"), r"its model card would replace .*settings\.json, which is not an edge-smsp model card"),
    Case("hostile-export-fp16-reference-over-the-users-file", ("export", "--model-dir", "{w}/model", "--precision", "fp16", "--out", "{w}/cfg/app.onnx"), r"the fp32 reference .*app\.fp32\.onnx would replace a file no export wrote"),
    Case("hostile-runtime-bench-provider-twice", (*RT_BENCH, "--providers", "CPUExecutionProvider,CPUExecutionProvider"), "CPUExecutionProvider is given twice; name each provider once", runtime=True),
    Case("hostile-deploy-device-info-negative-footprint", (*DEPLOY, *DEPLOY_POOL, "--profile", "{w}/negative-footprint-device.yaml", "--out", "{s}/out"), r"the device runtime's info is not plausible: imported_rss_mib -500"),
    Case("hostile-bench-device-python-is-a-shell", ("bench", "--profile", "{w}/sh-python.yaml", "--model", "{w}/tiny.onnx"), r"the device's Python '/bin/sh' could not run .*set connection\.python"),
    Case("hostile-pool-list-backbone-empty", ("pool", "list", "--pool", "{w}/good.sqlite", "--backbone", ""), r"--backbone: must not be empty: name a backbone"),
    Case("hostile-pool-index-size-not-in-the-pool", ("pool", "index", "--pool", "{w}/good.sqlite", "--backbone", "resnet18", "--image-size", "48"), r"holds no entries of \S+ at 48 px \(its sizes: 32\)"),
    Case("hostile-adapt-imagefolder-a-file", (*ADAPT, "--dataset", "imagefolder", "--data-dir", "{w}/tiny.onnx"), r"image folder .*tiny\.onnx is a file, not a folder"),
    Case("hostile-runtime-model-path-too-long", ("bench", "--model", "{w}/" + "m" * 300 + ".onnx"), "model file path is too long for this file system", runtime=True),
    Case("hostile-profile-threads-in-octal", ("bench", "--profile", "{w}/profile-octal-threads.yaml", "--model", "{w}/tiny.onnx"), r"'010' at line \d+ is an octal, binary or base-60 number in YAML 1\.1"),
    Case("hostile-bench-device-reports-a-400-digit-latency", ("bench", "--profile", "{w}/bigint-device.yaml", "--model", "{w}/tiny.onnx"), r"not plausible: latency_p90_ms 1000000000000000000*\.\.\.0+ \(a measurement lies from 0 to 1e\+07\)"),
    Case("hostile-bench-device-reports-zero-latency", ("bench", "--profile", "{w}/zero-latency-device.yaml", "--model", "{w}/tiny.onnx"), r"not plausible: latency_p50_ms 0 \(a timed run takes more than 0 ms\)"),
    Case("hostile-bench-device-reports-huge-peak", ("bench", "--profile", "{w}/huge-peak-device.yaml", "--model", "{w}/tiny.onnx"), r"not plausible: peak_rss_mib 1e\+300 \(a measurement lies from 0 to 1\.67772e\+07\)"),
    # --- 9. the sixth sweep: a device's reply must answer what was asked, and its info be one a runtime gives;
    # saved models whose files are no files; options that would be ignored ---
    Case("hostile-export-model-json-a-dir", ("export", "--model-dir", "{w}/model-json-a-dir", "--out", "{s}/m.onnx"), r"model-json-a-dir/pruned\.json is a directory, not a file"),
    Case("hostile-export-model-json-dev-zero", ("export", "--model-dir", "{w}/model-json-dev-zero", "--out", "{s}/m.onnx"), r"model-json-dev-zero/pruned\.json is a character device, not a file"),
    Case("hostile-export-model-size-not-its-own", ("export", "--model-dir", "{w}/model-size-not-its-own", "--out", "{s}/m.onnx"), r"image_size 64 differs from backbone_spec\.input_size 32, the size the model was pruned at"),
    Case("hostile-adapt-probe-without-pool-init", (*ADAPT, "--probe", "3"), r"--probe chooses the pool entry whose weights start the model \(--init pool\); here the backbone's weights start it"),
    Case("hostile-adapt-classes-empty-field", (*ADAPT[:7], "--classes", "0,,2", *FAST), r"argument --classes: has an empty field in '0,,2'"),
    Case("hostile-export-int8-gate-on-fp32", (*EXPORT, "--max-int8-drop", "2"), r"--max-int8-drop gates INT8 models, not --precision fp32: drop it"),
    Case("hostile-connection-workdir-a-device", (*LOCAL_BENCH, "--connection", "{{workdir: /dev/null}}"), r"cannot create work dir /dev/null: /dev/null is a character device, not a folder; set connection\.workdir"),
    Case("hostile-bench-precision-not-the-models", ("bench", "--profile", "{w}/local.yaml", "--model", "{w}/tiny.onnx", "--precision", "int8"), r"tiny\.onnx is a fp32 model, not int8: bench it with --precision fp32, or without --precision"),
    Case("hostile-adapt-iters-with-a-time-budget", (*ADAPT, "--time-budget", "20"), r"--iters and --time-budget both set how long fine-tuning runs: give one of them"),
    Case("hostile-export-fp32-with-images", (*EXPORT, "--data-dir", "{w}/adir"), r"--data-dir gives the task's images to int8 calibration .*an fp32 export reads none: drop it"),
    Case("hostile-runtime-bench-empty-file", (*RT_BENCH[:2], "{w}/empty.onnx", *RT_BENCH[3:]), r"empty\.onnx: not an ONNX model \(an empty file\)", runtime=True),
    Case("hostile-runtime-bench-size-not-the-graphs", (*RT_BENCH[:2], "{w}/meta-size-not-the-graphs.onnx", *RT_BENCH[3:]), r"model metadata 'input_size' \[99, 99\] differs from the graph's input 16x16", runtime=True),
    Case("hostile-bench-trust-new-host-on-this-machine", ("bench", "--profile", "{w}/local.yaml", "--model", "{w}/tiny.onnx", "--trust-new-host"), r"--trust-new-host records SSH host keys; \S+ runs on this machine \(transport local\): drop it"),
    *[
        Case(f"hostile-bench-device-{case}", ("bench", "--profile", f"{{w}}/{stem}.yaml", "--model", "{w}/tiny.onnx"), expect)
        for stem, case, expect in (
            ("fewer-runs-device", "ran-fewer-runs", r"does not answer the bench that was asked: it reports 1 timed runs where \d+ were asked"),
            ("other-provider-device", "ran-another-provider", r"it ran on CUDAExecutionProvider, which the profile does not list"),
            ("precision-lie-device", "lies-about-precision", r"it reports precision 'int8' for a fp32 file"),
            ("low-peak-device", "peak-below-its-import", r"its peak memory 1\.0 MiB is below the [\d.]+ MiB it held before the session"),
            ("junk-histogram-device", "histogram-junk", r"its latency histogram .* is not one of its \d+ runs"),
            ("huge-opset-device", "info-opset-huge", r"info is not plausible: max_opset 1000000000 is not the \d+ that onnxruntime \S+ runs"),
            ("junk-engine-device", "info-engine-junk", r"info is not plausible: engine version 'x\.y' is not a version"),
            ("no-cores-device", "info-no-cores", r"info is not plausible: cores 0 is not a number of CPU cores"),
            ("other-version-device", "another-runtime-version", r"reply is not the uploaded runtime's: it says it is runtime '9\.9\.9', but \S+ was uploaded"),
            ("huge-ram-device", "reports-huge-ram", r"info is not plausible: total_ram_mib 1e\+308 \(a measurement lies from 0 to"),
            ("other-command-device", "answers-another-command", r"reply is not the uploaded runtime's: it answered 'bench' to 'info'"),
            ("slow-min-device", "min-above-its-median", r"bench report is not plausible: latency statistics out of order \(min 5000\.0, p50 [\d.]+"),
        )
    ],
    # --- 10. the seventh sweep: messages that name the file at fault and the fix; bounded device work ---
    Case("hostile-ssh-key-file-armoured-garbage", ("bench", "--profile", "{w}/ssh-key-armoured-garbage.yaml", "--model", "{w}/tiny.onnx"), r"SSH key file .*armoured-garbage\.key is not a private key paramiko can read \(.*\); name an OpenSSH or PEM private key"),
    Case("hostile-ssh-key-file-encrypted-pem", ("bench", "--profile", "{w}/ssh-key-encrypted-pem.yaml", "--model", "{w}/tiny.onnx"), r"SSH key .*encrypted\.pem is encrypted: load it into ssh-agent and leave key_file empty"),
    Case("hostile-ssh-key-file-the-public-half", ("bench", "--profile", "{w}/ssh-key-public.yaml", "--model", "{w}/tiny.onnx"), r"SSH key file .*id_ed25519\.pub is a public key: set connection\.key_file to its private half"),
    Case("hostile-ssh-known-hosts-a-folder", ("bench", "--profile", "{w}/ssh-known-hosts-a-folder.yaml", "--model", "{w}/tiny.onnx"), r"known_hosts .*adir\.onnx is a directory, not a file: set connection\.known_hosts to a file"),
    Case("hostile-bench-device-python-missing", ("bench", "--profile", "{w}/missing-python.yaml", "--model", "{w}/tiny.onnx"), r"cannot run '/nonexistent/python': No such file or directory: set connection\.python"),
    Case("hostile-export-out-links-to-the-users-file", (*EXPORT[:4], "{w}/link-to-victim.onnx"), r"link-to-victim\.onnx is a link to .*victim\.txt, which no export wrote"),
    Case("hostile-export-out-holds-no-model", (*EXPORT[:4], "{w}/notes.onnx"), r"notes\.onnx holds a file that is not an ONNX model"),
    Case("hostile-export-pruned-json-class-out-of-range", ("export", "--model-dir", "{w}/model-class-99", "--out", "{s}/m.onnx", "--precision", "int8"), r"model-class-99/pruned\.json names its task wrongly: class ids 99 out of range"),
    Case("hostile-pool-task-dataset-not-its-keys", ("pool", "list", "--pool", "{w}/other-dataset.sqlite"), r"names dataset 'cifar100', not the fashion-mnist of its key; the database is damaged"),
    Case("hostile-deploy-budget-holds-no-model", (*DEPLOY, *DEPLOY_POOL, "--profile", "{w}/profile-tiny-memory.yaml", "--out", "{s}/out"), r"memory_budget 1\.0 KiB holds no model: .*raise memory_budget in the profile"),
    Case("hostile-adapt-classes-negative", (*ADAPT[:7], "--classes", "-1,2", *FAST), r"argument --classes: expected one argument; a value that starts with '-' goes after '=', as in --classes=-1,2"),
    Case("hostile-connection-workdir-takes-no-files", (*LOCAL_BENCH, "--connection", "{{workdir: /proc/self}}"), r"cannot write in work dir /proc/self: .*set connection\.workdir to a folder this user can write"),
    Case("hostile-runtime-describe-input-too-large", ("describe", "--model", "{w}/huge-input.onnx", "--data", "{w}/device-images"), r"out of memory \(.*\): use a model with a smaller input", runtime=True),
    Case("hostile-runtime-probe-a-classifier", ("probe", "--models", "{w}/tiny.onnx", "--data", "{w}/device-images"), r"classifier: probe needs a feature graph", runtime=True),
    Case("hostile-runtime-probe-a-model-twice", ("probe", "--models", "{w}/tiny.onnx", "{w}/tiny.onnx", "--data", "{w}/device-images"), r"probe was given \S+tiny\.onnx more than once: name each model once", runtime=True),
]  # fmt: skip


def hostile_inputs(world: Path, ssh: dict, local: dict) -> None:
    """The files the hostile rows name, beside the table's own world."""
    bomb = "".join(
        f"{chr(97 + level)}: &{chr(97 + level)} ["
        + ",".join([f"*{chr(96 + level)}" if level else '"lol"'] * 9)
        + "]\n"
        for level in range(10)
    )
    (world / "bomb.yaml").write_text(bomb)
    (world / "bomb-connection.yaml").write_text(bomb)
    (world / "deep-flow.yaml").write_text("[" * 100000 + "]" * 100000)
    (world / "deep-block.yaml").write_text("".join("  " * depth + "- \n" for depth in range(500)))
    (world / "large.yaml").write_text("# padding\n" * 40000)
    (world / "random.yaml").write_bytes(np.random.default_rng(1).bytes(2048))
    (world / "python-tag.yaml").write_text("name: !!python/object/apply:os.system [true]\n")
    base = _profile_lines(local)
    (world / "duplicate.yaml").write_text(base + "threads: 2\n")
    (world / (ESC + ".yaml")).write_text("name: [unclosed\n")
    (world / "escape-field.yaml").write_text(base + '"\\e[2J\\e[31m": 1\n')  # YAML's escape for ESC
    for stem, lines in PROFILE_VARIANTS.items():
        (world / f"profile-{stem}.yaml").write_text(_profile_lines(local, lines))
    not_ssh = _not_ssh_server()
    (world / "loop-a").symlink_to(world / "loop-b")
    (world / "loop-b").symlink_to(world / "loop-a")
    (world / "link-to-fifo").symlink_to(world / "fifo")
    os.mkfifo(world / "fifo.onnx")  # adapt's --out must be an .onnx name before anything else is checked
    (world / "loop-a.onnx").symlink_to(world / "loop-b.onnx")
    (world / "loop-b.onnx").symlink_to(world / "loop-a.onnx")
    (world / "adir.onnx").mkdir()
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))  # any ed25519 public key
    key_text = base64.b64encode(blob).decode()
    (world / "bad-hash-known-hosts").write_text(f"|1|garbage|hash ssh-ed25519 {key_text}\n")
    (world / "id_ed25519.pub").write_text(f"ssh-ed25519 {key_text} user@host\n")
    (world / "foreign-deploy").mkdir()  # another tool's output where a deploy is sent
    (world / "foreign-deploy" / "model.onnx").write_bytes(b"\x08\x07")
    (world / "foreign-deploy" / "deploy_report.json").write_text('{"mine": 1}')
    armour = "-----{} OPENSSH PRIVATE KEY-----\n"
    (world / "armoured-garbage.key").write_text(
        armour.format("BEGIN") + "b3BlbnNzaC1rZXk=garbage\n" + armour.format("END")
    )
    (world / "encrypted.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    for stem, change in CONNECTION_VARIANTS.items():
        values = {
            key: (value.format(w=world, not_ssh=not_ssh) if isinstance(value, str) else value)
            for key, value in change.items()
        }
        if values.get("port") == str(not_ssh):
            values["port"] = not_ssh
        small_board_profile(world / f"ssh-{stem}.yaml", f"hostile-{stem}", {**ssh, **values})
    small_board_profile(world / "workdir-nouser.yaml", "hostile-workdir", {**local, "workdir": f"{NOUSER}/w"})
    _pruned_json_variants(world)
    _pool_variants(world)
    _fashion_variants(world)
    _runtime_inputs(world)
    _last_sweep_inputs(world, local)
    _fifth_sweep_inputs(world, local)
    _sixth_sweep_inputs(world)
    _seventh_sweep_inputs(world, local)


def _seventh_sweep_inputs(world: Path, local: dict) -> None:
    """A device Python that is not there, an --out that links to the user's file or holds no model, a saved
    model whose pruned.json names a class its dataset lacks."""
    small_board_profile(world / "missing-python.yaml", "hostile-missing-python", {**local, "python": "/nonexistent/python"})  # fmt: skip
    (world / "victim.txt").write_text("the user's notes\n")
    (world / "link-to-victim.onnx").symlink_to(world / "victim.txt")
    (world / "notes.onnx").write_text("not a model\n")
    shutil.copytree(world / "model", world / "model-class-99")
    meta_path = world / "model-class-99" / "pruned.json"
    meta_path.write_text(
        json.dumps({**json.loads(meta_path.read_text()), "dataset": "fashion-mnist", "classes": [0, 99]})
    )


def _sixth_sweep_inputs(world: Path) -> None:
    """Saved models whose files are not files, or whose description contradicts itself."""
    for name in ("model-json-a-dir", "model-json-dev-zero", "model-size-not-its-own"):
        shutil.copytree(world / "model", world / name)
    (world / "model-json-a-dir" / "pruned.json").unlink()
    (world / "model-json-a-dir" / "pruned.json").mkdir()
    (world / "model-json-dev-zero" / "pruned.json").unlink()
    (world / "model-json-dev-zero" / "pruned.json").symlink_to("/dev/zero")
    meta_path = world / "model-size-not-its-own" / "pruned.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "image_size": 64}))


def _fifth_sweep_inputs(world: Path, local: dict) -> None:
    """Devices whose Python is the real one with its bench reports rewritten (a broken or altered device), and
    folders holding the user's own files where an output would land."""
    small_board_profile(world / "sh-python.yaml", "hostile-sh-python", {**local, "python": "/bin/sh"})
    (world / "users-folder").mkdir()
    (world / "users-folder" / "pruned.json").write_text('{"mine": 1}\n')
    (world / "hf-model").mkdir()
    (world / "hf-model" / "model.safetensors").write_bytes(b"not ours")
    (world / "cfg").mkdir()
    (world / "cfg" / "settings.json").write_text('{"theme": "dark"}\n')
    (world / "cfg" / "app.fp32.onnx").write_bytes(b"the user's own model")
    for stem, pattern in (
        ("lying-device", 's/"p50": [0-9.e+-]+/"p50": -3.0/'),
        ("huge-peak-device", 's/"peak_rss_mib": [0-9.e+-]+/"peak_rss_mib": 1e300/'),
        ("negative-footprint-device", 's/"imported_rss_mib": [0-9.e+-]+/"imported_rss_mib": -500/'),
        ("bigint-device", 's/"p90": [0-9.e+-]+/"p90": 1' + "0" * 400 + "/"),
        ("zero-latency-device", 's/"(p50|p90|p99)": [0-9.e+-]+/"\\1": 0.0/g'),
        ("fewer-runs-device", 's/"runs": [0-9]+/"runs": 1/'),
        (
            "other-provider-device",
            '/"providers": \\[/,/\\]/ s/"CPUExecutionProvider"/"CUDAExecutionProvider"/',
        ),
        ("precision-lie-device", 's/"precision": "fp32"/"precision": "int8"/'),
        ("low-peak-device", 's/"peak_rss_mib": [0-9.e+-]+/"peak_rss_mib": 1.0/'),
        ("junk-histogram-device", '/"counts": \\[/,/\\]/ s/^( *)[0-9]+/\\1-1/'),
        ("huge-opset-device", 's/"max_opset": [0-9]+/"max_opset": 1000000000/'),
        ("junk-engine-device", 's/"engine_version": "[^"]*"/"engine_version": "x.y"/'),
        ("no-cores-device", 's/"cores": [0-9]+/"cores": 0/'),
        ("other-version-device", 's/"runtime_version": "[^"]*"/"runtime_version": "9.9.9"/'),
        ("other-command-device", 's/"command": "info"/"command": "bench"/'),
        ("huge-ram-device", 's/"total_ram_mib": [0-9.e+-]+/"total_ram_mib": 1e308/'),
        ("slow-min-device", 's/"min": [0-9.e+-]+/"min": 5000.0/'),
    ):
        python = world / f"{stem}-python"
        python.write_text(
            f'#!/bin/sh\nout=$("{sys.executable}" "$@"); rc=$?\n'
            f"printf '%s\\n' \"$out\" | sed -E '{pattern}'\nexit $rc\n"
        )
        python.chmod(0o755)
        small_board_profile(world / f"{stem}.yaml", f"hostile-{stem}", {**local, "python": str(python)})


def _profile_lines(local: dict, changes: dict[str, str] | None = None) -> str:
    fields = {
        "name": "hostile",
        "memory_budget": "512MiB",
        "latency_target_ms": "100",
        "latency_percentile": "p90",
        "input_size": "32",
        "threads": "1",
        "providers": "[CPUExecutionProvider]",
        "throughput_gmacs": "5",
        "connection": json.dumps(local),
        **(changes or {}),
    }
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def _not_ssh_server() -> int:
    """A port that answers every connection with random bytes and an HTTP error, then hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            with connection:
                connection.sendall(os.urandom(256) + b"\r\nHTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def _pruned_json_variants(world: Path) -> None:
    meta = json.loads((world / "model" / "pruned.json").read_text())
    texts = {stem: json.dumps(change(meta)) for stem, change in PRUNED_JSON_VARIANTS.items()}
    texts["deep"] = "[" * 100000 + "]" * 100000
    texts["nan"] = json.dumps({**meta, "image_size": float("nan")})
    texts["duplicate"] = '{"format": "x", ' + json.dumps(meta)[1:]
    for stem, text in texts.items():
        directory = world / f"model-{stem}"
        directory.mkdir()
        os.link(world / "model" / "model.safetensors", directory / "model.safetensors")
        (directory / "pruned.json").write_text(text)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(world / "model" / "model.safetensors"))
    for stem, value in (("weights-nan", np.nan), ("weights-inf", np.inf)):
        directory = world / f"model-{stem}"
        directory.mkdir()
        shutil.copy(world / "model" / "pruned.json", directory / "pruned.json")
        broken = {key: array.copy() for key, array in weights.items()}
        first = next(key for key, array in broken.items() if array.dtype.kind == "f")
        broken[first].flat[0] = value
        save_file(broken, str(directory / "model.safetensors"))


def _pool_variants(world: Path) -> None:
    for name, statement in (
        ("deep-extra", "UPDATE entries SET extra = '" + "[" * 100000 + "]" * 100000 + "'"),
        ("nan-extra", """UPDATE entries SET extra = '{"a": NaN}'"""),
        ("duplicate-extra", """UPDATE entries SET extra = '{"a": 1, "a": 2}'"""),
        ("other-dataset", "UPDATE tasks SET dataset = 'cifar100'"),
        ("deep-classes", "UPDATE tasks SET classes = '" + "[" * 50000 + "]" * 50000 + "'"),
    ):
        shutil.copy(world / "good.sqlite", world / f"{name}.sqlite")
        connection = sqlite3.connect(world / f"{name}.sqlite")
        try:
            connection.execute(statement)
            connection.commit()
        finally:
            connection.close()


def _idx(count: int, claimed: int | None = None, dims: tuple[int, ...] = (28, 28)) -> bytes:
    magic = 2049 if not dims else 2051
    header = struct.pack(f">{1 + 1 + len(dims)}I", magic, claimed or count, *dims)
    return header + bytes(count * int(np.prod(dims, dtype=np.int64)))


def _fashion_variants(world: Path) -> None:
    labels = gzip.compress(_idx(10, dims=()))
    images = gzip.compress(_idx(10))
    files = {
        "fashion-bomb": gzip.compress(_idx(4, claimed=4_000_000)),  # claims 3 GB of pixels in a few bytes
        "fashion-corrupt": b"\x1f\x8b\x08\x00" + bytes(range(200)),
        "fashion-short": gzip.compress(_idx(4, claimed=10)),
    }
    for name, train_images in files.items():
        directory = world / name
        directory.mkdir()
        (directory / "train-images-idx3-ubyte.gz").write_bytes(train_images)
        (directory / "train-labels-idx1-ubyte.gz").write_bytes(labels)
        (directory / "t10k-images-idx3-ubyte.gz").write_bytes(images)
        (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)


def _runtime_inputs(world: Path) -> None:
    image = np.zeros((8, 8, 3), dtype=np.float32)
    np.save(world / "nan.npy", np.where(np.eye(8, dtype=bool)[:, :, None], np.nan, image))
    np.save(world / "inf.npy", np.full((8, 8, 3), np.inf, dtype=np.float32))
    np.save(world / "int64-big.npy", np.full((8, 8, 3), 70000, dtype=np.int64))
    np.save(world / "int-negative.npy", np.full((8, 8), -5, dtype=np.int32))
    np.save(world / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(world / "bomb.npy", "wb") as stream:  # claims 10^10 pixels, holds 16 bytes
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "|u1", "fortran_order": False, "shape": (100000, 100000)}
        )
        stream.write(bytes(16))
    for name, shape in (("truncated", (1000, 1000, 3)), ("flat-huge", (10**12,))):  # headers the data belies
        with open(world / f"{name}.npy", "wb") as stream:
            np.lib.format.write_array_header_1_0(
                stream, {"descr": "|u1", "fortran_order": False, "shape": shape}
            )
            stream.write(bytes(16))
    (world / "bomb.pgm").write_bytes(b"P5\n100000 100000\n255\n" + bytes(16))
    model = onnx.load(str(world / "tiny.onnx"))
    argmax = onnx.ModelProto()  # answers a class index, not scores
    argmax.CopyFrom(model)
    argmax.graph.node.append(helper.make_node("ArgMax", [argmax.graph.output[0].name], ["idx"], axis=1))
    del argmax.graph.output[:]
    argmax.graph.output.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1]))
    onnx.save(argmax, str(world / "int-output.onnx"))
    for stem, change in ONNX_METADATA_VARIANTS.items():
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        props = {prop.key: prop.value for prop in copy.metadata_props}
        props.update(change)
        del copy.metadata_props[:]
        for key, value in props.items():
            copy.metadata_props.add(key=key, value=value)
        onnx.save(copy, str(world / f"meta-{stem}.onnx"))
    twice = onnx.ModelProto()
    twice.CopyFrom(model)
    twice.metadata_props.add(key="labels", value='["q", "r", "s", "t"]')  # a second 'labels' entry
    onnx.save(twice, str(world / "meta-key-twice.onnx"))
    constant = helper.make_node(
        "Constant", [], ["out"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    )
    graph = helper.make_graph(
        [constant], "no_inputs", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])]
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(world / "no-inputs.onnx")
    )
    endless_loop(world / "endless-loop.onnx")
    onnx.save(model, str(world / "external-data.onnx"), save_as_external_data=True, location="external-data.bin",
              size_threshold=0)  # fmt: skip
    (world / "zeros.onnx").write_bytes(bytes(1 << 20))
    (world / "empty.onnx").write_bytes(b"")
    with open(world / "sparse-3g.onnx", "wb") as stream:  # sparse: no disk, but 3 GiB of zeros to a reader
        stream.truncate(3 << 30)
    opset = [helper.make_opsetid("", 17)]
    onnx.save(
        helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=opset),
        str(world / "empty-graph.onnx"),
    )
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    same = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    identity = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [image], [same])
    onnx.save(helper.make_model(identity, opset_imports=opset), str(world / "identity.onnx"))
    pooled = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["features"]),
    ]
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 3])
    feature_graph = helper.make_graph(pooled, "features", [image], [features])
    onnx.save(helper.make_model(feature_graph, opset_imports=opset), str(world / "features.onnx"))
    huge = [1, 3, 1000000, 1000000]  # 3e12 values: no device has the 22 TiB to make it
    huge_identity = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, huge)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, huge)],
    )
    onnx.save(helper.make_model(huge_identity, opset_imports=opset), str(world / "huge-input.onnx"))
    for split_class in ("a", "b"):
        (world / "train-only" / "train" / split_class).mkdir(parents=True)
        np.save(world / "train-only" / "train" / split_class / "0.npy", np.zeros((8, 8), dtype=np.uint8))


def _last_sweep_inputs(world: Path, local: dict) -> None:
    """The section 5 rows' files: a task's images on the device, a budget too small to adapt there, a python
    that cannot run, a model of an opset no onnxruntime runs yet, and an adaptable bundle whose params.npz was
    cut short in a copy."""
    from edge_smsp.export.adaptable import bundle_from_onnx
    from tests.light_adapt_helpers import export_unfused, image_folder, tiny_model

    image_folder(world / "device-images", [0, 2, 4], 5, fmt="pgm", split=True)
    (world / "tight.yaml").write_text(_profile_lines(local, {"memory_budget": "40MiB"}))
    (world / "cuda-only.yaml").write_text(_profile_lines(local, {"providers": "[CUDAExecutionProvider]"}))
    (world / "latin-1.yaml").write_bytes(_profile_lines(local, {"name": "caf\xe9"}).encode("latin-1"))
    (world / "utf-16.yaml").write_bytes(_profile_lines(local).encode("utf-16"))
    small_board_profile(
        world / "workdir-a-file.yaml", "hostile-workdir-file", {**local, "workdir": str(world / "afile")}
    )
    small_board_profile(
        world / "python-false.yaml", "hostile-python-false", {**local, "python": "/bin/false"}
    )
    tiny_convnet(world / "opset-40.onnx", opset=40)
    shutil.copy(world / "good.sqlite", world / "deploy-pool.sqlite")
    unfused = export_unfused(tiny_model(), world / "unfused.onnx")
    labels = ["tshirt", "pullover", "coat"]
    bundle_from_onnx(
        unfused, world / "bundle-cut", labels=labels, mean=[0.5] * 3, std=[0.25] * 3, input_size=32
    )
    shutil.copytree(
        world / "bundle-cut", world / "bundle"
    )  # a whole bundle; bundle-cut's params are cut below
    params = world / "bundle-cut" / "params.npz"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    for name, change in (("no-cuts", {"cuts": []}), ("zero-size", {"input_size": [0, 0]})):
        shutil.copytree(world / "bundle", world / f"bundle-{name}")
        spec_path = world / f"bundle-{name}" / "graph.json"
        spec = json.loads(spec_path.read_text())
        if "cuts" in change:
            spec["cuts"] = change["cuts"]
        else:
            spec["preprocessing"]["input_size"] = change["input_size"]
        spec_path.write_text(json.dumps(spec))
    _corrupt_bundles(world)
    constant = helper.make_node(
        "Constant", [], ["y"], value=helper.make_tensor("c", TensorProto.FLOAT, [1, 3], [0.0] * 3)
    )
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    no_inputs = helper.make_graph([constant], "no-inputs", [], [output])
    onnx.save(
        helper.make_model(no_inputs, opset_imports=[helper.make_opsetid("", 17)]), str(world / "noin.onnx")
    )


def _corrupt_bundles(world: Path) -> None:
    """Copies of the whole bundle, each hand-corrupted one way (graph.json or params.npz), and an image folder
    whose class folder holds a symlink back to itself."""

    def param_shape(spec: dict) -> None:
        spec["params"]["classifier.weight"]["shape"] = [3, 7]

    def classifier_weight(spec: dict) -> None:
        spec["classifier"]["weight"] = "nope"

    def classifier_no_features(spec: dict) -> None:
        del spec["classifier"]["features"]

    def node_no_inputs(spec: dict) -> None:
        del spec["nodes"][1]["inputs"]

    def node_strides(spec: dict) -> None:
        spec["nodes"][0]["attrs"]["strides"] = "x"

    def node_epsilon(spec: dict) -> None:
        next(node for node in spec["nodes"] if node["op"] == "BatchNormalization")["attrs"]["epsilon"] = -1.0

    def param_huge(spec: dict) -> None:
        spec["params"]["classifier.weight"]["shape"] = [40000, 40000]

    spec_changes = {
        "param-shape": param_shape,
        "classifier-weight": classifier_weight,
        "classifier-no-features": classifier_no_features,
        "node-no-inputs": node_no_inputs,
        "node-strides": node_strides,
        "node-epsilon": node_epsilon,
        "param-huge": param_huge,
    }
    for name, change in spec_changes.items():
        shutil.copytree(world / "bundle", world / f"bundle-{name}")
        spec_path = world / f"bundle-{name}" / "graph.json"
        spec = json.loads(spec_path.read_text())
        change(spec)
        spec_path.write_text(json.dumps(spec))
    for name, text in (("bigint", '{"version": 1' + "9" * 5000 + "}"), ("deep", "[" * 100000 + "]" * 100000)):
        shutil.copytree(world / "bundle", world / f"bundle-{name}")
        (world / f"bundle-{name}" / "graph.json").write_text(text)
    for name, value in (("params-nan", np.nan), ("params-inf", np.inf)):
        shutil.copytree(world / "bundle", world / f"bundle-{name}")
        path = world / f"bundle-{name}" / "params.npz"
        with np.load(path) as archive:
            arrays = {key: np.array(archive[key]) for key in archive.files}
        arrays["p1"].flat[0] = value  # the stem's BN scale: model.onnx keeps its finite value
        np.savez(path, **arrays)
    # An archive whose classifier.weight header claims 40000 x 40000 floats (6 GB) over a few bytes of data.
    shutil.copytree(world / "bundle", world / "bundle-params-bomb")
    path = world / "bundle-params-bomb" / "params.npz"
    spec = json.loads((world / "bundle" / "graph.json").read_text())
    key = spec["params"]["classifier.weight"]["key"]
    with zipfile.ZipFile(path) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (40000, 40000)}
    )
    members[f"{key}.npy"] = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 64
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    for name in ("coat", "pullover"):
        folder = world / "cycle-images" / name
        folder.mkdir(parents=True)
        for number in range(2):
            np.save(folder / f"{number}.npy", np.zeros((8, 8), dtype=np.uint8))
    (world / "cycle-images" / "coat" / "again").symlink_to(world / "cycle-images" / "coat")
