"""Converters for argparse `type=`: every number bounded, every path checked before anything slow runs, each
failure one line (argparse.ArgumentTypeError). Torch-free."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

from edge_smsp.cli.output import one_line
from edge_smsp.core.errors import EdgeSmspError
from edge_smsp.core.fileio import checked_output_path
from edge_smsp.core.paths import expand_user, status
from edge_smsp.core.ratio import checked_ratio
from edge_smsp.data.catalog import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_smsp.deploy.bench import MAX_BENCH_SECONDS
from edge_smsp.devices.stack import opset_problem
from edge_smsp.pool import check_pool_file

T = TypeVar("T")


MAX_ITERS = 1_000_000
MAX_BATCH_SIZE = 4096
MAX_PER_CLASS = 1_000_000
MAX_TASKS = 100_000
SEED_RANGE = (0, 2**32 - 1)  # what numpy's and torch's generators both take


def ratio_arg(text: str) -> float:
    """A pruning ratio in [0, 1) (checked by its owner, edge_smsp.core.ratio)."""
    return _converted(checked_ratio, text)


def int_in_range(minimum: int, maximum: int) -> Callable[[str], int]:
    """A converter for integers in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {minimum:,} to {maximum:,}, got {quoted(text)}"
            )
        return value

    return parse


def nonempty_arg(what: str) -> Callable[[str], str]:
    """A converter for a name that must not be empty ('' would mean the working directory, or nothing at all);
    `what` says what to name instead."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must not be empty: name {what}")
        return text

    return parse


PROFILE_NAME = "a profile YAML file or a bundled profile (localhost)"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A converter for integers >= minimum (and below a bound no command gets near)."""
    return int_in_range(minimum, 2**63 - 1)


def number_in_range(minimum: float, maximum: float, *, above: bool = False) -> Callable[[str], float]:
    """A converter for finite numbers in [minimum, maximum] (or (minimum, maximum] with above=True)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value > minimum if above else value >= minimum
        if not (low_ok and value <= maximum):  # also refuses NaN
            low = f"above {minimum:g}" if above else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(
                f"must be a number {low} and at most {maximum:g}, got {quoted(text)}"
            )
        return value

    return parse


def seconds_arg(text: str) -> float:
    """A number of benchmark seconds, from 0 to MAX_BENCH_SECONDS."""
    return number_in_range(0.0, MAX_BENCH_SECONDS)(text)


def image_size_arg(text: str) -> int:
    """An input resolution in pixels, in the range every part of edge-smsp accepts."""
    return int_in_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)(text)


def opset_arg(text: str) -> int:
    """An ONNX opset edge-smsp can export (the exporter narrows it to what this host's packages write)."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    problem = opset_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(text)


def classes_arg(text: str) -> tuple[int, ...]:
    """'0,3,5' -> (0, 3, 5); whether the dataset has them is checked with the dataset (check_task_args)."""
    parts = text.split(",")
    if len(parts) > 1 and not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(
            f"has an empty field in {quoted(text)}: write class ids such as 0,3,5"
        )
    try:
        classes = tuple(int(part) for part in parts if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers such as 0,3,5, got {quoted(text)}"
        ) from None
    if not classes:
        raise argparse.ArgumentTypeError("must name at least 2 class ids, such as 0,3,5")
    return classes


def out_dir_arg(text: str) -> Path:
    """A directory a command will write: refused now if it cannot be, not after minutes of work."""
    return _converted(lambda value: checked_output_path(value, directory=True), text)


def out_file_arg(text: str) -> Path:
    """A file a command will write (its folder is made if missing): refused now if it cannot be."""
    return _converted(lambda value: checked_output_path(value, directory=False), text)


def path_arg(text: str) -> Path:
    """Any path argument: `~` and `~user` expanded (an unknown user refused, never a literal '~x' folder), a name
    too long for the filesystem or a symlink loop refused in one line, before anything opens it."""
    return _converted(_checked_path, text)


def _checked_path(text: str) -> Path:
    path = expand_user(text)
    status(path)  # ELOOP, ENAMETOOLONG: PathError
    return path


def input_file_arg(text: str) -> str:
    """An existing regular file to read (a FIFO or a device such as /dev/zero is refused: it never ends)."""
    path = path_arg(text)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
        raise argparse.ArgumentTypeError(f"{quoted(text)}: {what}")
    return text


def onnx_file_arg(text: str) -> Path:
    """An ONNX model file (checked by the device bench's owner of that check)."""
    from edge_smsp.deploy.bench import check_onnx_file

    return _converted(lambda value: check_onnx_file(_checked_path(value)) or _checked_path(value), text)


def pool_arg(text: str) -> Path:
    """A pool file path: a directory, FIFO or device is refused now (reading one could block forever)."""
    return _converted(lambda value: check_pool_file(_checked_path(value)) or _checked_path(value), text)


def quoted(text: str, limit: int = 200) -> str:
    """repr() of a value for a message, cut short: an error never quotes a whole 100 KB argument."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def model_dir_arg(text: str) -> Path:
    """A saved model's directory to read (prune's or adapt's --out): checked like any path, then that it is a
    directory."""
    path = path_arg(text)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise argparse.ArgumentTypeError(f"{quoted(text)}: {what}")
    return path


def _converted(convert: Callable[[str], T], text: str) -> T:
    try:
        return convert(text)
    except EdgeSmspError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class GivenOnce(argparse.Action):
    """action= for an option that takes one value: given twice, it is refused (argparse would keep the last
    silently); the option's `help` need not say so."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option=None):
        seen = getattr(namespace, "_given_once", set())
        if self.dest in seen:
            before = getattr(namespace, self.dest)
            simple = all(isinstance(value, (str, int, float, Path)) for value in (before, values))
            # A parsed value (a connection's fields, say) is shown only as the user wrote it: never as a repr.
            said = f" ({quoted(str(before), 80)}, then {quoted(str(values), 80)})" if simple else ""
            raise argparse.ArgumentError(self, f"given more than once{said}; give it once")
        namespace._given_once = seen | {self.dest}
        setattr(namespace, self.dest, values)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit 2, like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An option that stores one value is refused when given twice (argparse would keep the last silently:
        # `--out a ... --out b`). Registered, so that argument groups, which share the registry, do the same.
        self.register("action", None, GivenOnce)
        self.register("action", "store", GivenOnce)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)  # for error(): the words as typed
        return super().parse_known_args(args, namespace)

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        # argparse drops a failed write: help or the version on a full device would exit 0 with nothing shown.
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str) -> NoReturn:
        option = re.fullmatch(r"argument (--[\w-]+)(?:/\S+)?: expected one argument", message)
        given = getattr(self, "_given", [])
        if option and option[1] in given[:-1]:
            value = given[given.index(option[1]) + 1]
            if value.startswith("-") and not value.startswith("--"):  # argparse took the value for an option
                message += f"; a value that starts with '-' goes after '=', as in {option[1]}={value}"
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
