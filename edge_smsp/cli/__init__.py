"""Command line: parse arguments, call the library, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from edge_smsp import __version__
from edge_smsp.cli import adapt_commands, deploy_commands, model_commands, pool_commands
from edge_smsp.cli.args import OneLineParser
from edge_smsp.cli.common import Terminated, one_line, terminate_on_sigterm
from edge_smsp.errors import EdgeSmspError

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
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed as one line
        return int(stop.code or 0)
    # SIGTERM unwinds like Ctrl-C, so that every `finally` runs: device work is stopped, temporaries removed.
    with terminate_on_sigterm():
        try:
            return int(args.handler(args) or 0)
        except EdgeSmspError as error:
            # One line whatever the library or a dependency (paramiko, onnx) put in the message.
            print(f"edge-smsp: error: {one_line(str(error))}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt as stop:
            terminated = isinstance(stop, Terminated)
            print(f"edge-smsp: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def entry_point() -> None:
    sys.exit(main())
