"""Typed errors. The CLI turns every EdgeSmspError into one line on stderr and exit code 2."""


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
