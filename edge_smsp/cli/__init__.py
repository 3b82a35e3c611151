"""Command line: parse arguments, call the library, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from collections.abc import Sequence

from edge_smsp.cli import adapt_commands, deploy_commands, model_commands, pool_commands
from edge_smsp.cli.converters import OneLineParser
from edge_smsp.cli.output import Terminated, escaped_stdout, one_line, unwind_on_signals
from edge_smsp.core.address_space import is_memory_failure, memory_failure_line
from edge_smsp.core.errors import EdgeSmspError
from edge_smsp.core.version import __version__

WRITING_THE_OUTPUT = " (writing the output)"
COMMAND_MODULES = (model_commands, pool_commands, adapt_commands, deploy_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edge-smsp",
        description="Prune a pre-trained vision model for a new task with SMSP and deploy it to an edge device.",
    )
    parser.add_argument("--version", action="version", version=f"edge-smsp {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if sys.stdout is None:  # started with stdout closed: say so before any work (help and --version included)
        print("edge-smsp: error: stdout is closed; run it with stdout open", file=sys.stderr)
        return 2
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help, --version, or a usage error already printed as one line
            if not stop.code and sys.stdout is not None:
                sys.stdout.flush()  # help or the version, buffered: a full device fails here
            return int(stop.code or 0)
    except OSError as error:  # help or the version could not be printed (stdout on a full device)
        print(f"edge-smsp: error: {one_line(os_error_line(error))}", file=sys.stderr)
        return 2
    started = time.time()
    # SIGTERM unwinds like Ctrl-C, so that every `finally` runs: device work is stopped, temporaries removed.
    with unwind_on_signals() as received, escaped_stdout():
        try:
            code = int(args.handler(args) or 0)
            sys.stdout.flush()  # a full device or a closed pipe fails here, not in the interpreter's exit
            # A dependency may have swallowed the interruption (caught in an import, say): it still counts.
            if received:
                raise KeyboardInterrupt
            return code
        except BaseException as error:
            if received or isinstance(error, KeyboardInterrupt):
                ending = next((signum for signum in received if signum != signal.SIGINT), None)
                terminated = isinstance(error, Terminated) or ending is not None
                kept = written_before(
                    getattr(args, "out", None), started, "; what it wrote before that is in {}"
                )
                print(f"edge-smsp: {'terminated' if terminated else 'interrupted'}{kept}", file=sys.stderr)
                if not terminated:
                    return 128 + signal.SIGINT
                return 128 + (ending or signal.SIGTERM)  # 143 for SIGTERM, 129 for a closed terminal
            if isinstance(error, EdgeSmspError):
                # One line whatever the library or a dependency (paramiko, onnx) put in the message.
                # A note (add_note) says what was kept, e.g. deploy's model when only the bench failed.
                message = "; ".join([str(error), *getattr(error, "__notes__", ())])
                print(f"edge-smsp: error: {one_line(message)}", file=sys.stderr)
                return error.exit_code
            if is_memory_failure(error):  # torch's allocator, a library that could not be mapped: one line
                print(f"edge-smsp: error: {one_line(memory_failure_line(error))}", file=sys.stderr)
                return 2
            if isinstance(error, OSError):  # the disk filled, stdout is /dev/full or a closed pipe: one line
                line = os_error_line(error)
                if line.endswith(WRITING_THE_OUTPUT):  # the work is done and whole; only its summary is lost
                    line += written_before(getattr(args, "out", None), started)
                print(f"edge-smsp: error: {one_line(line)}", file=sys.stderr)
                return 2
            raise


def os_error_line(error: OSError) -> str:
    """An OSError the library did not foresee, said as what failed and where; stdout that cannot be written is
    pointed at /dev/null so that the interpreter's own final flush cannot print a traceback."""
    try:
        broken_stdout = sys.stdout.fileno() >= 0 and error.errno in (errno.ENOSPC, errno.EPIPE, errno.EIO)
    except (OSError, ValueError, AttributeError):
        broken_stdout = False
    where = f": {error.filename}" if error.filename else WRITING_THE_OUTPUT if broken_stdout else ""
    if broken_stdout:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return f"{error.strerror or error}{where}"


def written_before(
    out: object, started: float, said: str = "; the command's results were written to {} before that"
) -> str:
    """Where the command's results are, when it wrote `out` (made or changed since `started`) before its
    summary failed: a whole model is kept, and the user is told where."""
    if not isinstance(out, (str, os.PathLike)):
        return ""
    try:
        changed = os.stat(out).st_mtime >= started - 1
    except OSError:
        return ""
    return said.format(os.fspath(out)) if changed else ""


def entry_point() -> None:
    sys.exit(main())
