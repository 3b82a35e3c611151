"""The device runtime's numbers by value: the reported latency percentiles and histogram, and the greyscale
conversion for one-channel models (the order checks of test_runtime.py would miss a wrong value)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_smsp_runtime import bench
from edge_smsp_runtime.bench import latency_histogram, latency_summary, run_bench
from edge_smsp_runtime.images import preprocess

from tests.tiny_onnx import tiny_convnet

MS = 1_000_000  # ns


def test_latency_summary_is_numpys_percentiles_of_the_runs() -> None:
    # 1 to 100 ms: numpy's linear interpolation gives p50 50.5, p90 90.1 and p99 99.01 ms.
    summary = latency_summary([k * MS for k in range(1, 101)])
    assert summary == {
        "p50": 50.5,
        "p90": 90.1,
        "p99": 99.01,
        "mean": 50.5,
        "min": 1.0,
        "max": 100.0,
        "std": pytest.approx(28.8661, abs=1e-4),
    }
    skewed = np.random.default_rng(3).lognormal(14.0, 0.6, size=997).astype(np.int64)
    summary = latency_summary(list(skewed))
    for name, expected in zip(("p50", "p90", "p99"), np.percentile(skewed, [50, 90, 99]), strict=True):
        assert summary[name] == pytest.approx(expected / 1e6, abs=1e-4)
    assert summary["mean"] == pytest.approx(skewed.mean() / 1e6, abs=1e-4)


def test_latency_histogram_spans_min_to_p99_and_counts_every_run() -> None:
    histogram = latency_histogram([k * MS for k in range(1, 101)], bins=24)
    edges, counts = histogram["edges"], histogram["counts"]
    assert len(edges) == 25 and len(counts) == 24
    assert edges[0] == 1.0 and edges[-1] == 99.01  # from the fastest run to p99
    assert edges[1] == round(1.0 + 98.01 / 24, 4)  # 5.08375 ms, reported to 0.1 microsecond
    assert sum(counts) == 100  # the runs above p99 fall in the last bin
    assert counts[0] == 5  # 1-5 ms, below 5.08
    assert counts[-1] == 6  # 95-99 ms, and 100 ms clipped to p99
    skewed = list(np.random.default_rng(4).lognormal(14.0, 0.8, size=500).astype(np.int64))
    histogram = latency_histogram(skewed)
    assert sum(histogram["counts"]) == 500
    assert histogram["edges"][0] == pytest.approx(min(skewed) / 1e6, abs=1e-4)
    assert histogram["edges"][-1] == pytest.approx(np.percentile(skewed, 99) / 1e6, abs=1e-4)
    assert latency_histogram([]) == {"edges": [], "counts": []}
    flat = latency_histogram([2 * MS] * 7, bins=4)
    assert sum(flat["counts"]) == 7 and flat["edges"][0] == 2.0 and flat["edges"][-1] > 2.0


class _Clock:
    """A fake now_ns: time moves only when the timed session runs, by the latencies given."""

    def __init__(self, latencies: list[int]) -> None:
        self.now, self.latencies = 0, list(latencies)

    def __call__(self) -> int:
        return self.now

    def run(self) -> None:
        self.now += self.latencies.pop(0)


class _TimedSession:
    """A real session whose run() also advances the fake clock."""

    def __init__(self, session: object, clock: _Clock) -> None:
        self._session, self._clock = session, clock

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)

    def run(self, feeds: dict) -> object:
        self._clock.run()
        return self._session.run(feeds)


def test_bench_reports_the_percentiles_of_the_runs_it_timed(tmp_path: Path, monkeypatch) -> None:
    """Through run_bench: the reported p50/p90/p99 and histogram are those of exactly the timed runs (the first
    inference and the warm-ups excluded)."""
    model = tiny_convnet(tmp_path / "tiny.onnx")
    warmup, runs = 10, 40
    rng = np.random.default_rng(5)
    untimed = [50 * MS] * (1 + warmup)  # the first inference and the warm-ups: slow, and not in the report
    timed = [int(value) for value in rng.integers(1 * MS, 9 * MS, size=runs)]
    timed[0] += 300  # 0.1876053 s in all: a sum whose rounding to microseconds shows
    clock = _Clock(untimed + timed)
    real_open = bench.open_model

    def open_model(*args: object, **kwargs: object) -> tuple:
        backend, session, skipped = real_open(*args, **kwargs)
        return backend, _TimedSession(session, clock), skipped

    monkeypatch.setattr(bench, "now_ns", clock)
    monkeypatch.setattr(bench, "open_model", open_model)
    report = run_bench(str(model), warmup=warmup, runs=runs, min_seconds=0.0)
    assert report["runs"] == runs and clock.latencies == []
    expected = np.percentile(np.array(timed, dtype=np.float64) / 1e6, [50, 90, 99])
    for name, value in zip(("p50", "p90", "p99"), expected, strict=True):
        assert report["latency_ms"][name] == pytest.approx(value, abs=1e-4)
    assert report["latency_ms"]["max"] == pytest.approx(max(timed) / 1e6, abs=1e-4)
    assert report["first_inference_ms"] == 50.0
    assert report["measured_seconds"] == round(sum(timed) / 1e9, 6)  # microseconds
    assert report["throughput_ips"] == pytest.approx(runs / (sum(timed) / 1e9), rel=1e-4)
    histogram = report["latency_histogram_ms"]
    assert sum(histogram["counts"]) == runs
    assert histogram["edges"][0] == pytest.approx(min(timed) / 1e6, abs=1e-4)
    assert histogram["edges"][-1] == pytest.approx(expected[2], abs=1e-4)


def test_rgb_is_converted_to_luma_for_one_channel_models() -> None:
    """ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B, rounded to 8-bit levels like the host's "L" images."""
    pixels = np.array(
        [
            [[255, 0, 0], [0, 255, 0]],  # red 76.245 -> 76, green 149.685 -> 150
            [[0, 0, 255], [200, 100, 50]],  # blue 29.07 -> 29, 59.8 + 58.7 + 5.7 = 124.2 -> 124
        ],
        dtype=np.float32,
    )
    batch = preprocess(pixels / 255.0, (2, 2), 1, [0.5], [0.25])
    assert batch.shape == (1, 1, 2, 2) and batch.dtype == np.float32
    levels = np.array([[76, 150], [29, 124]], dtype=np.float64)
    np.testing.assert_allclose(batch[0, 0], (levels / 255.0 - 0.5) / 0.25, atol=1e-6)
    # A one-channel image for a one-channel model passes as it is; for three channels it is repeated.
    grey = np.array([[[0.2], [0.4]], [[0.6], [0.8]]], dtype=np.float32)
    single = preprocess(grey, (2, 2), 1, [0.0], [1.0])
    assert single.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(single[0, 0], np.round(grey[:, :, 0] * 255) / 255, atol=1e-6)
    three = preprocess(grey, (2, 2), 3, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    for channel in range(3):
        np.testing.assert_array_equal(three[0, channel], single[0, 0])


def test_integer_pixels_outside_8_and_16_bit_levels_are_refused(tmp_path: Path) -> None:
    from edge_smsp_runtime.errors import RuntimeToolError
    from edge_smsp_runtime.images import load_image

    for values, text in (([[-1, 5], [7, 9]], "-1 to 9"), ([[0, 5], [7, 70000]], "0 to 70000")):
        path = tmp_path / "pixels.npy"
        np.save(path, np.array(values, dtype=np.int32))
        with pytest.raises(RuntimeToolError, match=f"8-bit .* 16-bit .*got {text}"):
            load_image(str(path))
    np.save(path, np.array([[0, 1000], [2, 3]], dtype=np.int32))  # 16-bit levels
    np.testing.assert_allclose(load_image(str(path))[:, :, 0], [[0, 1000 / 65535], [2 / 65535, 3 / 65535]])


def test_float_and_32_bit_tiff_pixels_are_read_as_the_same_array_in_npy_would_be(tmp_path: Path) -> None:
    """Pillow's convert('L') truncated float TIFFs to 0-255 levels (0.5 became 0, NaN became black): such pixels
    now go through the .npy rules, scaled floats kept, NaN refused, 32-bit levels scaled by their range."""
    from edge_smsp_runtime.errors import RuntimeToolError
    from edge_smsp_runtime.images import load_image
    from PIL import Image

    half = np.full((4, 4), 0.5, dtype=np.float32)
    Image.fromarray(half, mode="F").save(tmp_path / "half.tiff")
    np.save(tmp_path / "half.npy", half)
    np.testing.assert_array_equal(
        load_image(str(tmp_path / "half.tiff")), load_image(str(tmp_path / "half.npy"))
    )
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(RuntimeToolError, match="NaN or infinite pixels"):
        load_image(str(tmp_path / "nan.tiff"))
    Image.fromarray(np.full((4, 4), 300, dtype=np.int32), mode="I").save(tmp_path / "levels.tiff")
    np.testing.assert_allclose(load_image(str(tmp_path / "levels.tiff")), 300 / 65535)
