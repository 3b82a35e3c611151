"""Typed errors. The CLI turns every EdgeSmspError into one line on stderr and exit code 2."""

from __future__ import annotations

import re


class EdgeSmspError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, unreachable device)."""

    exit_code = 2


class OutputPathError(EdgeSmspError):
    """An output file or directory that cannot be written (a file in the way, a place that takes no new files)."""


class ModelError(EdgeSmspError):
    """Unknown model name, unreadable checkpoint, weights that cannot be had offline."""


class PruneError(EdgeSmspError):
    """Bad ratio, scores of the wrong shape, unknown unit groups, a pruned-model file that does not match."""


class DataError(EdgeSmspError):
    """Unknown dataset, missing data files, class ids out of range."""


class PoolError(EdgeSmspError):
    """Pool database missing, corrupt, empty, or built for another backbone."""


class NoPoolEntriesError(PoolError):
    """The pool holds no entries for this backbone (and input size): build one, or use a baseline."""


class ProfileError(EdgeSmspError):
    """Device profile that is missing or invalid (message names the field path)."""


class PlanError(EdgeSmspError):
    """No pruning ratio meets the device's budget."""


class ExportError(EdgeSmspError):
    """ONNX export, simplification, checking or parity failed; corrupt ONNX file."""


class TransportError(EdgeSmspError):
    """Device unreachable, host key refused, upload corrupted, remote command failed or timed out."""


class DeviceStackError(EdgeSmspError):
    """The device's software (Python, runtime, ONNX opset) cannot run the model, or is older than its profile says."""


class ClusterError(EdgeSmspError):
    """Ray missing or unreachable, or a task that failed on the cluster more often than it is retried."""


class PathError(EdgeSmspError):
    """A path that cannot name a file: an unknown ~user, a name too long, a symlink loop, a special file where a
    regular one is needed."""


_COLOUR_CODE = re.compile(r"\x1b\[[0-9;]*m")
_QUOTED_KEY = re.compile(r'"([^"]+)"')
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def error_text(error: BaseException, limit: int = 300) -> str:
    """A dependency's error as one line: its whole text, not its first line (torch's and onnxruntime's first lines
    are often only a heading), without colour codes, torch's state_dict listing condensed, cut at `limit`."""
    text = _COLOUR_CODE.sub("", str(error)).strip()
    line = _state_dict_problems(text) or " ".join(text.split()) or type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _state_dict_problems(text: str) -> str | None:
    """torch's 'Error(s) in loading state_dict' page as 'missing: ...; unexpected: ...; shape mismatch: ...'."""
    if "in loading state_dict" not in text:
        return None
    problems = []
    for label, heading in (("missing", "Missing key(s)"), ("unexpected", "Unexpected key(s)")):
        line = next((line for line in text.splitlines() if heading in line), None)
        if line is not None:
            problems.append(f"{label}: {_first_few(_QUOTED_KEY.findall(line))}")
    mismatches = [
        f"{key} (file {saved}, model {wanted})" for key, saved, wanted in _SIZE_MISMATCH.findall(text)
    ]
    if mismatches:
        problems.append(f"shape mismatch: {_first_few(mismatches)}")
    return "; ".join(problems) or None


def _first_few(items: list[str], shown: int = 3) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
