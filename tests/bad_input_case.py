"""One row of the bad-input table (tests/test_bad_input.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    """One bad input: the command line ({w}: shared inputs, {s}: the case's own sandbox) and what the
    error line must mention."""

    id: str
    argv: tuple[str, ...]
    expect: str
    runtime: bool = False  # python -m edge_smsp_runtime on a device-like python without torch
    # python -m edge_smsp in a fresh process rather than main(argv) in a fork: for cases that train, since
    # autograd cannot run in a fork of a process whose autograd threads have started (earlier tests')
    fresh_process: bool = False
    env: dict[str, str] = field(default_factory=dict)
    stdout: str | None = None  # a file stdout is written to ({w}/{s} expanded), such as /dev/full
