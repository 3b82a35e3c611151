"""Property-based fuzzing (Hypothesis, seeded and bounded in time) of the readers of untrusted input: the device
profile loader, the pool's array and JSON columns, pruned.json, ONNX metadata (host and device) and the device
runtime's image loader. Whatever the input, each either returns a value or raises its one typed error: never
another exception, never a hang (a per-example deadline)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edge_smsp.core.documents import DocumentError, load_json, load_yaml
from edge_smsp.core.errors import ExportError, PoolError, ProfileError, PruneError
from edge_smsp.devices.profiles import load_connection_override, profile_from_dict
from edge_smsp.export.metadata import decode_metadata
from edge_smsp.models.pruned_model import FORMAT_NAME, checked_meta
from edge_smsp.pool.entry_data import decode_arrays

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from edge_smsp_runtime.errors import RuntimeToolError  # noqa: E402
from edge_smsp_runtime.images import load_image, preprocess  # noqa: E402
from edge_smsp_runtime.infer import _channel_list  # noqa: E402
from edge_smsp_runtime.model import metadata_input_size  # noqa: E402

FUZZ = settings(
    max_examples=60,
    deadline=2000,  # ms per example: a hang or a blow-up fails
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)

# JSON-like values: what YAML and JSON documents are made of, odd numbers included.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
PROFILE_KEYS = (
    "name",
    "memory_budget",
    "latency_target_ms",
    "latency_percentile",
    "input_size",
    "threads",
    "providers",
    "throughput_gmacs",
    "connection",
    "batch_size",
    "runtime_overhead",
    "max_opset",
)
VALID_PROFILE = {
    "name": "fuzz",
    "memory_budget": "512MiB",
    "latency_target_ms": 100,
    "latency_percentile": "p90",
    "input_size": 32,
    "threads": 1,
    "providers": ["CPUExecutionProvider"],
    "throughput_gmacs": 5,
    "connection": {"transport": "local"},
}


@seed(25)
@FUZZ
@given(st.text(max_size=400))
def test_the_yaml_loader_returns_or_refuses_any_text(text: str) -> None:
    try:
        load_yaml(text)
    except DocumentError as error:
        assert "\n" not in str(error) and len(str(error)) < 400


@seed(25)
@FUZZ
@given(st.binary(max_size=400))
def test_the_json_loader_returns_or_refuses_any_bytes(data: bytes) -> None:
    with contextlib.suppress(DocumentError):
        load_json(data)


@seed(25)
@FUZZ
@given(st.dictionaries(st.sampled_from(PROFILE_KEYS), values, max_size=6))
def test_a_profile_with_any_field_values_is_valid_or_one_profile_error(changes: dict) -> None:
    document = {**VALID_PROFILE, **changes}
    try:
        profile = profile_from_dict(document)
    except ProfileError as error:
        assert "\n" not in str(error) and len(str(error)) < 1000
        return
    assert profile.threads >= 1 and 0 < profile.latency_target_ms < float("inf")


@seed(25)
@FUZZ
@given(values)
def test_a_profile_document_through_yaml_is_valid_or_one_error(document: object) -> None:
    text = yaml.safe_dump(document)
    with contextlib.suppress(ProfileError, DocumentError):
        profile_from_dict(load_yaml(text))


@seed(25)
@FUZZ
@given(st.text(max_size=200))
def test_an_inline_connection_override_is_a_mapping_or_one_error(text: str) -> None:
    try:
        document, _ = load_connection_override(text)
    except ProfileError:
        return
    assert isinstance(document, dict)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


@seed(25)
@FUZZ
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=599))
def test_the_pool_decodes_any_blob_or_calls_it_damaged(noise: bytes, where: int) -> None:
    valid = _npz({"layer1": np.array([True, False, True]), "layer2": np.zeros(5)})
    for blob in (noise, valid[:where] + noise[:8] + valid[where + 8 :]):
        try:
            arrays = decode_arrays(blob, "masks of entry 1", Path("pool.sqlite"))
        except PoolError as error:
            assert "damaged" in str(error)
            continue
        assert all(isinstance(array, np.ndarray) for array in arrays.values())


@seed(25)
@FUZZ
@given(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), st.sampled_from(["|b1", "<f8", "<i4", "|O"]))
def test_pool_npz_headers_claiming_any_shape_never_allocate_it(shape: tuple[int, int], descr: str) -> None:
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": descr, "fortran_order": False, "shape": shape})
    member.write(bytes(64))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("layer1.npy", member.getvalue())
    try:
        arrays = decode_arrays(archive.getvalue(), "scores", Path("pool.sqlite"))
    except PoolError:
        return
    assert arrays["layer1"].nbytes <= 64


@seed(25)
@FUZZ
@given(st.dictionaries(st.sampled_from(["backbone", "image_size", "num_classes", "kept_indices"]), values))
def test_pruned_json_with_any_field_values_is_checked_or_refused(changes: dict) -> None:
    meta = {
        "format": FORMAT_NAME,
        "backbone": "resnet18",
        "image_size": 32,
        "num_classes": 3,
        "kept_indices": {},
    }
    try:
        text = json.dumps({**meta, **changes})
    except ValueError:
        return
    try:
        checked = checked_meta(text.encode(), "m/pruned.json")
    except PruneError:
        return
    assert 1 <= checked["num_classes"] <= 100_000 and isinstance(checked["kept_indices"], dict)


@seed(25)
@FUZZ
@given(
    st.dictionaries(st.sampled_from(["labels", "mean", "std", "input_size", "ratio"]), st.text(max_size=60))
)
def test_host_onnx_metadata_decodes_or_is_one_export_error(metadata: dict[str, str]) -> None:
    with contextlib.suppress(ExportError):
        decode_metadata(metadata)


@seed(25)
@FUZZ
@given(values)
def test_runtime_onnx_metadata_is_checked_or_refused(value: object) -> None:
    text = json.dumps(value)
    try:
        size = metadata_input_size({"input_size": text})
    except RuntimeToolError:
        size = None
    if size is not None:
        assert all(isinstance(side, int) and 0 < side <= 4096 for side in size)
    try:
        channels = _channel_list(json.loads(text), "mean", 3)
    except RuntimeToolError:
        return
    assert channels is None or (len(channels) == 3 and all(np.isfinite(channels)))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-images")


@seed(25)
@FUZZ
@given(
    st.binary(max_size=300),
    st.sampled_from([".npy", ".pgm", ".png"]),
    st.sampled_from([b"", b"P5\n", b"P6\n"]),
)
def test_the_runtime_image_loader_returns_an_image_or_one_error(
    image_dir: Path, data: bytes, suffix: str, prefix: bytes
) -> None:
    path = image_dir / f"image{suffix}"
    path.write_bytes(prefix + data)
    try:
        image = load_image(str(path), use_pillow=suffix == ".png")
    except RuntimeToolError as error:
        assert "\n" not in str(error)
        return
    assert image.ndim == 3 and image.shape[-1] in (1, 3) and np.all(np.isfinite(image))
    assert preprocess(image, (8, 8), 3, [0.5] * 3, [0.25] * 3).shape == (1, 3, 8, 8)


@seed(25)
@FUZZ
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([np.uint8, np.uint16, np.int64, np.float32, np.bool_]),
    st.integers(0, 2**16),
)
def test_runtime_npy_images_of_any_shape_and_type_preprocess_to_finite_batches(
    image_dir: Path, height: int, width: int, dtype: type, fill: int
) -> None:
    path = image_dir / "pixels.npy"
    np.save(path, np.full((height, width), fill, dtype=np.float64).astype(dtype))
    try:
        image = load_image(str(path))
    except RuntimeToolError:
        return
    batch = preprocess(image, (16, 16), 1, [0.0], [1.0])
    assert batch.shape == (1, 1, 16, 16) and np.all((batch >= 0) & (batch <= 1))
