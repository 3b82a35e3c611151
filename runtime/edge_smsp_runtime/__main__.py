"""python -m edge_smsp_runtime {bench,infer,adapt,describe,scan,probe,info}: one JSON report on stdout, one-line errors, exit 2."""

import argparse
import contextlib
import json
import os
import platform
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from . import __version__
from .backends import DEFAULT_BACKEND, backend_names
from .deadline import DEFAULT_RUN_TIMEOUT, FIRST_RUN_FACTOR, PLAIN_FIRST_RUN_FACTOR
from .errors import PROG, RuntimeToolError, one_line


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit 2, like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        sys.exit(2)

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse drops a failed write: help or the version on a full device would exit 0 with nothing shown.
        if message:
            try:
                (file or sys.stderr).write(message)
            except OSError as error:
                sys.exit(_stdout_failed(error))


def _int_in(minimum: int, maximum: int) -> Callable[[str], int]:
    """Integers in [minimum, maximum]: every count bounded (the host's bounds), so that none hangs or crashes."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:60]!r}") from None
        if not minimum <= value <= maximum:
            shown = str(value) if len(str(value)) <= 30 else f"{str(value)[:30]}..."
            raise argparse.ArgumentTypeError(
                f"expected an integer from {minimum:,} to {maximum:,}, got {shown}"
            )
        return value

    return parse


# The host's bounds (edge_smsp.cli.converters, edge_smsp.deploy.bench, device profiles).
_nonnegative_int = _int_in(0, 1000000)
_positive_int = _int_in(1, 1000000)
_threads = _int_in(0, 256)  # a profile's threads: 1-256
_runs = _int_in(0, 100000)  # MAX_BENCH_RUNS
_seed = _int_in(0, 2**32 - 1)  # what numpy's and torch's generators both take
_batch = _int_in(1, 4096)  # MAX_BATCH_SIZE


def _number_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:  # also refuses NaN and infinity
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}")
        return value

    return parse


_seconds = _number_in(0.0, 3600.0)  # MAX_BENCH_SECONDS


def _out_file(text: str) -> str:
    """A file to write: an empty name is refused before any work."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got an empty one")
    return text


def _onnx_out_file(text: str) -> str:
    """adapt's output: an .onnx name (checked before any work), so that no ONNX model lands in a .txt file."""
    _out_file(text)
    if os.path.splitext(os.path.basename(text))[1].lower() != ".onnx":
        shown = text if len(text) <= 200 else text[:200] + "..."
        raise argparse.ArgumentTypeError(
            f"must name an .onnx file, got {shown!r}; name the adapted model like adapted.onnx"
        )
    return text


def _providers_text(text: str) -> str:
    """Comma-separated provider names: an empty list is refused rather than read as the default."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one execution provider, such as CPUExecutionProvider")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # onnxruntime would warn on stderr and drop it; the order the user meant is unclear
        raise argparse.ArgumentTypeError(
            "{} is given twice; name each provider once".format(", ".join(repeated))
        )
    return text


def _add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=backend_names(),
        default=DEFAULT_BACKEND,
        help="inference engine (default: %(default)s)",
    )


def _add_session_options(parser: argparse.ArgumentParser) -> None:
    _add_runtime_option(parser)
    parser.add_argument(
        "--run-timeout",
        type=_number_in(0.1, 86400.0),
        default=DEFAULT_RUN_TIMEOUT,
        help=f"seconds one inference may take before it is stopped (the first: {PLAIN_FIRST_RUN_FACTOR} times it, "
        f"{FIRST_RUN_FACTOR} on TensorRT, which builds its engine then; default: %(default)g)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="the precision the model must be in: fp32, int8 or fp16 (default: read from its graph)",
    )
    parser.add_argument("--threads", type=_threads, default=0, help="intra-op threads (0 = default)")
    parser.add_argument(
        "--providers",
        type=_providers_text,
        default="CPUExecutionProvider",
        help="execution providers in order, comma-separated (those missing here are skipped and reported)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description="Benchmark and run edge-smsp ONNX models on this device.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    commands.required = True

    bench = commands.add_parser(
        "bench", help="latency, throughput and memory of a model (batch 1 by default)"
    )
    bench.add_argument("--model", required=True, help="ONNX file")
    bench.add_argument("--warmup", type=_runs, default=10, help="warm-up runs, at least 10")
    bench.add_argument("--runs", type=_runs, default=100, help="timed runs, at least")
    bench.add_argument("--min-seconds", type=_seconds, default=1.0, help="timed seconds, at least")
    bench.add_argument("--seed", type=_seed, default=0, help="seed of the fixed random inputs")
    bench.add_argument(
        "--batch-size",
        type=_int_in(1, 1024),  # a profile's batch_size
        default=None,
        help="images per run (a dynamic-batch model; default: the model's fixed batch, else 1)",
    )
    _add_session_options(bench)

    infer = commands.add_parser(
        "infer", help="top-k labels of images, labels and preprocessing from metadata"
    )
    infer.add_argument("--model", required=True, help="ONNX file exported by edge-smsp")
    infer.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (.npy/.pgm/.ppm; more with Pillow)"
    )
    infer.add_argument(
        "--top-k", type=_positive_int, default=5, help="labels per image, 1 to 1,000,000 (default 5)"
    )
    _add_session_options(infer)

    adapt = commands.add_parser(
        "adapt",
        help="adapt a bundle's model to an image folder (light: numpy + onnxruntime; torch: the whole recipe)",
    )
    adapt.add_argument(
        "--tier",
        choices=("light", "torch"),
        default="light",
        help="light: numpy + onnxruntime, the layers after a cut (default); torch: every parameter, the host's "
        "recipe (needs torch >= 1.4, not edge-smsp)",
    )
    adapt.add_argument("--model", required=True, help="BUNDLE/model.onnx of an adaptable bundle (or BUNDLE)")
    adapt.add_argument(
        "--data", required=True, help="ImageFolder: train/ and val/ of class folders, or class folders"
    )
    adapt.add_argument(
        "--iters", type=_nonnegative_int, required=True, help="SGD steps after BN and imprinting"
    )
    adapt.add_argument("--out", required=True, type=_onnx_out_file, help="the adapted .onnx file to write")
    adapt.add_argument(
        "--trainable-blocks",
        type=_nonnegative_int,
        default=None,
        help="train after the bundle's K-th cut, last first (0: the classifier alone; default 6)",
    )
    adapt.add_argument("--batch-size", type=_batch, default=128)
    adapt.add_argument("--lr", type=_number_in(1e-12, 100.0), default=None, help="default 0.01 x batch / 32")
    adapt.add_argument("--seed", type=_seed, default=0)
    adapt.add_argument(
        "--sample", type=_positive_int, default=512, help="images for BN statistics and imprinting"
    )
    adapt.add_argument("--val-fraction", type=_number_in(0.0, 0.99), default=0.2)
    adapt.add_argument(
        "--max-per-class",
        type=_positive_int,
        default=None,
        help="at most N training and N validation images per class (seeded; default: all)",
    )
    adapt.add_argument("--threads", type=_threads, default=0, help="threads (0 = default)")

    describe = commands.add_parser(
        "describe", help="class prototypes of a feature graph over an image folder (the task descriptor)"
    )
    describe.add_argument("--model", required=True, help="feature graph: images -> penultimate features")
    describe.add_argument("--data", required=True, help="ImageFolder, as adapt reads it")
    describe.add_argument("--sample", type=_positive_int, default=512, help="class-balanced images in all")
    describe.add_argument("--seed", type=_seed, default=0)
    describe.add_argument("--val-fraction", type=_number_in(0.0, 0.99), default=0.2)
    describe.add_argument("--threads", type=_threads, default=0, help="intra-op threads (0 = default)")

    scan = commands.add_parser(
        "scan", help="class names and image counts of an image folder, every image decoded once"
    )
    scan.add_argument("--data", required=True, help="ImageFolder, as adapt reads it")
    scan.add_argument("--seed", type=_seed, default=0)
    scan.add_argument("--val-fraction", type=_number_in(0.0, 0.99), default=0.2)
    scan.add_argument("--threads", type=_threads, default=0, help=argparse.SUPPRESS)

    probe = commands.add_parser(
        "probe", help="nearest-class-mean accuracy of candidate feature graphs over an image folder"
    )
    probe.add_argument("--models", required=True, nargs="+", help="feature graphs: images -> features")
    probe.add_argument("--data", required=True, help="ImageFolder, as adapt reads it")
    probe.add_argument("--sample", type=_positive_int, default=512, help="class-balanced images in all")
    probe.add_argument("--seed", type=_seed, default=0)
    probe.add_argument("--val-fraction", type=_number_in(0.0, 0.99), default=0.2)
    probe.add_argument("--threads", type=_threads, default=0, help="intra-op threads (0 = default)")

    info = commands.add_parser("info", help="versions, the highest ONNX opset the runtime runs, device facts")
    _add_runtime_option(info)
    return parser


def _info(runtime: Optional[str]) -> Dict[str, Any]:
    from .backends import get_backend
    from .device import current_rss_mib, device_facts, mem_available_mib
    from .model import import_numpy
    from .precision import device_precisions, provider_precisions
    from .torch_tier import torch_version

    numpy = import_numpy()
    backend = get_backend(runtime)
    imported_rss = current_rss_mib()  # the host plans memory on top of this, as bench will start from it
    report = {
        "command": "info",
        "runtime_version": __version__,
        "runtime_path": os.path.dirname(os.path.abspath(__file__)),
        "runtime": backend.name,
        "runtimes": backend_names(),
        "engine_version": backend.version(),
        "max_opset": backend.max_opset(),
        # The precisions this device's providers run natively (CPU: fp32, int8; CUDA adds fp16), overall and each.
        "precisions": device_precisions(backend.available_providers()),
        "provider_precisions": provider_precisions(backend.available_providers()),
        "python_version": platform.python_version(),
        "numpy_version": numpy.__version__,
        "available_providers": backend.available_providers(),
        "imported_rss_mib": imported_rss,
        "torch_version": torch_version(),  # read from torch/version.py: torch is not imported
        "mem_available_mib": mem_available_mib(),
        "device": device_facts(),
    }
    report.update(backend.version_keys())
    return report


def _run_light(args: argparse.Namespace) -> Dict[str, Any]:
    """adapt and describe: numpy + onnxruntime only; --threads also caps numpy's BLAS when not yet loaded."""
    if args.threads and "numpy" not in sys.modules:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    if args.command == "scan":
        from .probe import run_scan

        return run_scan(args.data, seed=args.seed, val_fraction=args.val_fraction)
    if args.command == "probe":
        from .probe import run_probe

        return run_probe(
            args.models, args.data, sample=args.sample, seed=args.seed, val_fraction=args.val_fraction,
            threads=args.threads,
        )  # fmt: skip
    if args.command == "describe":
        from .describe import run_describe

        return run_describe(
            args.model, args.data, sample=args.sample, seed=args.seed, val_fraction=args.val_fraction,
            threads=args.threads,
        )  # fmt: skip
    if args.tier == "torch":
        from .torch_tier import run_torch_adapt

        if args.trainable_blocks is not None:
            raise RuntimeToolError(
                "--trainable-blocks is the light tier's: --tier torch trains every parameter"
            )
        return run_torch_adapt(
            args.model, args.data, iters=args.iters, out_path=args.out, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, sample=args.sample, val_fraction=args.val_fraction, max_per_class=args.max_per_class,
            threads=args.threads,
        )  # fmt: skip
    from .adapt import run_adapt

    return run_adapt(
        args.model,
        args.data,
        iters=args.iters,
        out_path=args.out,
        trainable_blocks=args.trainable_blocks,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        sample=args.sample,
        val_fraction=args.val_fraction,
        max_per_class=args.max_per_class,
        threads=args.threads,
    )


def run_command(args: argparse.Namespace) -> Dict[str, Any]:
    """Dispatch a parsed command line to the library; returns the JSON report."""
    from .model import parse_providers

    if args.command == "info":
        return _info(args.runtime)
    if args.command in ("adapt", "describe", "scan", "probe"):
        return _run_light(args)
    providers = parse_providers(args.providers)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(
            args.model,
            warmup=args.warmup,
            runs=args.runs,
            min_seconds=args.min_seconds,
            threads=args.threads,
            providers=providers,
            seed=args.seed,
            batch_size=args.batch_size,
            runtime=args.runtime,
            precision=args.precision,
            run_timeout=args.run_timeout,
        )
    if args.command == "infer":
        from .infer import run_infer

        return run_infer(
            args.model,
            args.images,
            top_k=args.top_k,
            threads=args.threads,
            providers=providers,
            runtime=args.runtime,
            precision=args.precision,
            run_timeout=args.run_timeout,
        )
    raise RuntimeToolError(f"unknown command {args.command}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run, print one JSON report; any error is one line on stderr and exit 2."""
    if not _stdout_open():  # checked before any work (help and --version included): nowhere to put the output
        sys.stderr.write(f"{PROG}: error: stdout is closed; run it with stdout open\n")
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        # Help or the version, buffered: a full device fails here.
        if not stop.code and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except OSError as error:
                return _stdout_failed(error)
        raise
    try:
        report = run_command(args)
    except RuntimeToolError as error:
        sys.stderr.write(f"{PROG} {args.command}: error: {one_line(error)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130
    except MemoryError as error:  # numpy's message says how much; what to change is ours to say
        sys.stderr.write(
            f"{PROG} {args.command}: error: out of memory ({one_line(error) or 'an allocation failed'}): use a model "
            "with a smaller input, or fewer images\n"
        )
        return 2
    except (
        Exception
    ) as error:  # the contract is one line and exit 2, even for bugs; set the variable to debug
        if os.environ.get("EDGE_SMSP_RUNTIME_DEBUG"):
            raise
        sys.stderr.write(f"{PROG} {args.command}: error: {type(error).__name__}: {one_line(error)}\n")
        return 2
    try:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        sys.stdout.flush()
    except OSError as error:  # a full disk or a closed pipe behind stdout
        return _stdout_failed(error, f" {args.command}", "the report ")
    return 0


def _stdout_failed(error: OSError, command: str = "", what: str = "") -> int:
    """One line for output that could not be written; stdout then points at /dev/null, so that the interpreter's
    last flush of what is still buffered cannot print a second message."""
    sys.stderr.write(f"{PROG}{command}: error: cannot write {what}to stdout: {one_line(error)}\n")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 2


def _stdout_open() -> bool:
    """False when the process was started with stdout closed (Python then sets sys.stdout to None)."""
    if sys.stdout is None:
        return False
    try:
        os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
