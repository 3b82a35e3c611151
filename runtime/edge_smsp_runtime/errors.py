"""The one error type of the runtime: the command line prints its message on one line and exits 2."""

import re
from typing import Union

PROG = "edge-smsp-runtime"


class RuntimeToolError(Exception):
    """A problem the user can act on: missing file or dependency, unreadable model or image, bad option."""


MAX_MESSAGE = 1000  # characters: an error names what is wrong, it never quotes a whole input


def one_line(error: "Union[BaseException, str]") -> str:
    """An exception's (or any) message squeezed onto one line (onnxruntime's span several), cut short."""
    line = " ".join(str(error).split()) or type(error).__name__
    if not line.isprintable():  # terminal escape codes in a file name are shown, never sent to the terminal
        line = "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


# onnxruntime's messages: "[ONNXRuntimeError] : 1 : FAIL : Load model from PATH failed:Fatal error: REASON"
_ORT_HEADING = re.compile(
    r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?(Fatal error: )?"
)
MAX_REASON = 300  # characters: a C++ signature the pattern below misses must not crowd out what to do
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src\S*:\d+ \S+\(.*?\) ")  # a C++ source line and function


def engine_reason(error: BaseException) -> str:
    """An inference engine's error as its reason alone: onnxruntime's heading (error code, the model's path
    again) and C++ source locations dropped, on one line."""
    line = one_line(error)
    reason = _ORT_SOURCE.sub("", _ORT_HEADING.sub("", line)) or line
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
