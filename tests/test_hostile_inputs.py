"""Issue 25's causes, each pinned at its owner: atomic writes never replace what is not a regular file, the
bounded YAML/JSON loader, user paths, the IDX reader, .npz headers, the runtime's images and metadata, one-line
messages without raw escape codes. Real files, symlinks and FIFOs in tmp dirs; /dev/null is never touched."""

from __future__ import annotations

import gzip
import io
import os
import resource
import stat
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import paramiko
import pytest

from edge_smsp.cli.output import one_line
from edge_smsp.core.documents import DocumentError, load_json, load_yaml
from edge_smsp.core.errors import DataError, OutputPathError, PathError, PoolError, PruneError, TransportError
from edge_smsp.core.fileio import checked_output_path, write_atomically
from edge_smsp.core.paths import expand_user
from edge_smsp.data.fashion_mnist import _read_idx
from edge_smsp.pool.entry_data import decode_arrays
from edge_smsp.transport import host_keys
from edge_smsp.transport.host_keys import record_host_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from edge_smsp_runtime.errors import RuntimeToolError  # noqa: E402
from edge_smsp_runtime.errors import one_line as runtime_one_line  # noqa: E402
from edge_smsp_runtime.images import load_image, preprocess, resize_and_crop  # noqa: E402
from edge_smsp_runtime.model import metadata_input_size  # noqa: E402

BOMB = "".join(
    f"{chr(97 + level)}: &{chr(97 + level)} ["
    + ",".join([f"*{chr(96 + level)}" if level else '"lol"'] * 9)
    + "]\n"
    for level in range(10)
)


# --- write_atomically: regular files only, links followed --------------------------------------------------------


def test_write_atomically_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "known_hosts"
    shared.parent.mkdir()
    shared.write_text("old\n")
    link = tmp_path / "known_hosts"
    link.symlink_to(shared)
    write_atomically(link, b"new\n", mode=0o600)
    assert link.is_symlink() and os.readlink(link) == str(shared)
    assert shared.read_text() == "new\n"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["known_hosts", "shared"]  # no temporaries


def test_write_atomically_through_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "real.json")
    write_atomically(link, b"{}")
    assert link.is_symlink() and (tmp_path / "real.json").read_bytes() == b"{}"


@pytest.mark.parametrize("through_link", [False, True])
def test_write_atomically_refuses_a_fifo_and_leaves_it(tmp_path: Path, through_link: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = fifo
    if through_link:
        target = tmp_path / "link"
        target.symlink_to(fifo)
    with pytest.raises(OutputPathError, match="is a FIFO, not a regular file"):
        write_atomically(target, b"x")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({"fifo", target.name})


def test_checked_output_path_refuses_fifos_loops_long_names_and_unknown_users(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for path, message in (
        (tmp_path / "fifo", "FIFO"),
        (tmp_path / "a", "symlink loop"),
        (tmp_path / ("n" * 300), "too long"),
        ("~edge_smsp_no_such_user/out", "no user"),
    ):
        with pytest.raises(OutputPathError, match=message):
            checked_output_path(path, directory=False)


def test_a_full_disk_is_one_error_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(handle: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputPathError, match="No space left on device"):
        write_atomically(tmp_path / "model.onnx", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


# --- known_hosts: /dev/null records nothing, links update their target, special files are refused --------------


class _HostKey:
    """What record_host_key reads of a paramiko key."""

    def get_name(self) -> str:
        return "ssh-ed25519"

    def get_base64(self) -> str:
        return "AAAAC3NzaC1lZDI1NTE5AAAAIO9jUerUF90lJJNMnYnRbyYFDbA6ddj2aHtSo9losSYg"


def _host_key() -> paramiko.PKey:
    return _HostKey()  # type: ignore[return-value]


def test_known_hosts_behind_a_symlink_is_updated_in_its_target(tmp_path: Path) -> None:
    target = tmp_path / "team" / "known_hosts"
    target.parent.mkdir()
    target.write_text("other.example ssh-ed25519 AAAA\n")
    link = tmp_path / "known_hosts"
    link.symlink_to(target)
    record_host_key(link, "[127.0.0.1]:2222", _host_key())
    assert link.is_symlink()
    lines = target.read_text().splitlines()
    assert lines[0] == "other.example ssh-ed25519 AAAA" and lines[1].startswith(
        "[127.0.0.1]:2222 ssh-ed25519 "
    )


def test_known_hosts_fifo_is_refused_in_one_line_and_left_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "known_hosts"
    os.mkfifo(fifo)
    with pytest.raises(TransportError, match="is a FIFO, not a regular file") as raised:
        record_host_key(fifo, "host", _host_key())
    assert "\n" not in str(raised.value)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and sorted(tmp_path.iterdir()) == [fifo]  # no lock file either


def test_the_null_device_records_nothing_and_makes_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """known_hosts: /dev/null (OpenSSH's UserKnownHostsFile=/dev/null): trusted for this connection only. A FIFO
    stands in for /dev/null, which a test must never touch; a link to it is the null device too."""
    null = tmp_path / "dev" / "null"
    null.parent.mkdir()
    os.mkfifo(null)
    monkeypatch.setattr(host_keys, "NULL_DEVICE", str(null))
    link = tmp_path / "known_hosts"
    link.symlink_to(null)
    for known_hosts in (null, link):
        record_host_key(known_hosts, "host", _host_key())
    assert stat.S_ISFIFO(null.lstat().st_mode) and list(null.parent.iterdir()) == [null]


# --- the bounded loader -------------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_fast_without_expanding_or_quoting_it() -> None:
    started = time.perf_counter()
    with pytest.raises(DocumentError, match="alias") as raised:
        load_yaml(BOMB)
    assert time.perf_counter() - started < 1.0
    assert len(str(raised.value)) < 200 and "lol" not in str(raised.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100000, "nested more than 64"),
        ("".join("  " * depth + "-\n" for depth in range(200)), "nested more than 64"),
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3"),
        ("a: {b: .nan}\n", r"a\.b: holds a non-finite number"),
        ("a: [1, -.inf]\n", r"a\[1\]: holds a non-finite"),
        ("&x [*x]", "recursive"),
        ("x: !!python/object/apply:os.system [ls]", "constructor"),
        ("x" * (300 << 10), "bytes, more than"),
    ],
)
def test_yaml_documents_beyond_the_limits_are_refused(text: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        load_yaml(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100000, "nested more than 64"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": NaN}', "NaN"),
        ('{"a": [1e999]}', "non-finite"),
        ("{bad", "malformed JSON at line 1"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_json_documents_beyond_the_limits_are_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        load_json(text)


def test_ordinary_documents_load_as_before() -> None:
    assert load_yaml("a: &x {b: [1, 2.5, c]}\nd: *x\n") == {
        "a": {"b": [1, 2.5, "c"]},
        "d": {"b": [1, 2.5, "c"]},
    }
    assert load_json('{"a": [1, 2.5, "x", null, true], "b": "[[["}') == {
        "a": [1, 2.5, "x", None, True],
        "b": "[[[",
    }


def test_user_paths_refuse_unknown_users_and_over_long_names() -> None:
    assert expand_user("~/x") == Path.home() / "x"
    with pytest.raises(PathError, match="no user 'edge_smsp_no_such_user'"):
        expand_user("~edge_smsp_no_such_user/w")
    with pytest.raises(PathError, match="too long"):
        expand_user("/tmp/" + "n" * 256)
    with pytest.raises(PathError, match="path too long"):
        expand_user("/d" * 2100)


def test_one_line_messages_escape_terminal_codes() -> None:
    assert one_line("cannot read /tmp/\x1b[2Jx\n.yaml") == "cannot read /tmp/\\x1b[2Jx .yaml"
    assert runtime_one_line(RuntimeToolError("image not found: \x1b]0;t\x07.png")) == (
        "image not found: \\x1b]0;t\\x07.png"
    )


# --- data files: IDX, .npz, pruned.json ----------------------------------------------------------------------------


def test_the_idx_reader_checks_the_header_before_inflating(tmp_path: Path) -> None:
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(struct.pack(">4I", 2051, 4_000_000, 28, 28) + bytes(784)))
    with pytest.raises(DataError, match="header claims 3,136,000,000 values"):
        _read_idx(bomb, 2051, 3)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(struct.pack(">4I", 2051, 10, 28, 28) + bytes(784))
    with pytest.raises(DataError, match="not what the file holds"):
        _read_idx(short, 2051, 3)
    corrupt = tmp_path / "corrupt-idx3-ubyte.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(100)))
    with pytest.raises(DataError, match="cannot read IDX file"):
        _read_idx(corrupt, 2051, 3)
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(struct.pack(">4I", 2051, 2, 28, 28) + bytes(range(256)) * 6 + bytes(32)))
    assert _read_idx(good, 2051, 3).shape == (2, 28, 28)


def _npz_claiming(shape: tuple[int, ...]) -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "|b1", "fortran_order": False, "shape": shape})
    member.write(bytes(8))
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("layer1.npy", member.getvalue())
    return archive.getvalue()


def test_pool_npz_shapes_are_checked_before_any_allocation() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(PoolError, match="claims shape"):
        decode_arrays(_npz_claiming((10**12,)), "masks of entry 1", Path("p.sqlite"))
    assert resource.getrlimit(resource.RLIMIT_AS) == (soft, hard)
    good = io.BytesIO()
    np.savez(good, layer1=np.array([True, False]))
    assert decode_arrays(good.getvalue(), "masks", Path("p.sqlite"))["layer1"].tolist() == [True, False]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_classes": 10**12}, "num_classes must be an integer from 1 to 100,000"),
        ({"num_classes": "abc"}, "num_classes"),
        ({"image_size": True}, "image_size"),
        ({"backbone": ["resnet18"]}, "backbone"),
        ({"kept_indices": []}, "kept_indices"),
    ],
)
def test_pruned_json_fields_are_checked_before_anything_is_built(change: dict, message: str) -> None:
    import json

    from edge_smsp.models.pruned_model import FORMAT_NAME, checked_meta

    meta = {
        "format": FORMAT_NAME,
        "backbone": "resnet18",
        "image_size": 32,
        "num_classes": 3,
        "kept_indices": {},
    }
    assert checked_meta(json.dumps(meta).encode(), "m/pruned.json") == meta
    with pytest.raises(PruneError, match=message):
        checked_meta(json.dumps({**meta, **change}).encode(), "m/pruned.json")


# --- the device runtime's images and metadata ------------------------------------------------------------------


def test_a_3000_by_1_image_resizes_without_quadratic_buffers(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.fromarray(np.full((3000, 1), 200, dtype=np.uint8)).save(path)
    assert path.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = preprocess(load_image(str(path)), (32, 32), 1, [0.0], [1.0])
    assert batch.shape == (1, 1, 32, 32) and np.allclose(batch, 200 / 255)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # the old resize matrix took 1.5 GiB


def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path) -> None:
    import zlib

    png = tmp_path / "bomb.png"
    rows = (b"\x00" + bytes(8000)) * 8000  # 64 M pixels of zeros: 64 KB compressed
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    png.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(RuntimeToolError, match="8000 x 8000 pixels, more than the 50,000,000"):
        load_image(str(png))
    npy = tmp_path / "bomb.npy"
    with open(npy, "wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "|u1", "fortran_order": False, "shape": (10**5, 10**5)}
        )
    with pytest.raises(RuntimeToolError, match="pixels"):
        load_image(str(npy))


@pytest.mark.parametrize(
    "pixels, expected",
    [
        (np.full((4, 4), 51, dtype=np.int64), 0.2),  # 8-bit levels in a wide integer type
        (np.full((4, 4), 13107, dtype=np.int32), 0.2),  # 16-bit levels
        (np.full((4, 4), 0.2, dtype=np.float64), 0.2),
    ],
)
def test_integer_pixels_are_scaled_by_their_range(
    tmp_path: Path, pixels: np.ndarray, expected: float
) -> None:
    np.save(tmp_path / "image.npy", pixels)
    assert np.allclose(load_image(str(tmp_path / "image.npy")), expected)


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4), np.inf, dtype=np.float64), "NaN or infinite"),
        (np.full((4, 4), 70000, dtype=np.int64), "integer pixels"),
        (np.full((4, 4), -1, dtype=np.int16), "integer pixels"),
        (
            np.full((4, 4), 200.0, dtype=np.float32),
            r"float pixels must be scaled to \[0, 1\], got 200 to 200",
        ),
        (np.full((4, 4), 1e30, dtype=np.float32), r"float pixels must be scaled to \[0, 1\], got 1e\+30"),
        (np.full((4, 4), -0.5, dtype=np.float64), r"float pixels must be scaled to \[0, 1\], got -0.5"),
    ],
)
def test_non_finite_and_out_of_range_pixels_are_refused(
    tmp_path: Path, pixels: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "image.npy", pixels)
    with pytest.raises(RuntimeToolError, match=message):
        load_image(str(tmp_path / "image.npy"))


@pytest.mark.parametrize("value", ["true", "0", "[-16, 16]", "5000", "[16]", "16.0"])
def test_runtime_input_size_metadata_is_a_bounded_positive_int(value: str) -> None:
    with pytest.raises(RuntimeToolError, match="input_size"):
        metadata_input_size({"input_size": value})
    assert metadata_input_size({"input_size": "[24, 16]"}) == (24, 16)


def test_resize_and_crop_still_matches_the_full_resize_then_crop() -> None:
    from edge_smsp_runtime.images import resize_antialiased

    image = np.random.default_rng(0).random((37, 23, 3)).astype(np.float32) * 255
    full = resize_antialiased(image, 52, 32)
    window = resize_antialiased(image, 52, 32, 10, 0, crop=(32, 32))
    assert np.allclose(full[10:42], window, atol=1e-4)
    assert resize_and_crop(image / 255, 32, 32).shape == (32, 32, 3)


def test_the_runtime_refuses_a_png_bomb_in_one_line_with_no_pillow_warning(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("1", (9500, 9500)).save(tmp_path / "bomb.png")  # past Pillow's warning (89 M pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeToolError, match=r"9500 x 9500 pixels, more than the 50,000,000"):
            load_image(str(tmp_path / "bomb.png"))
