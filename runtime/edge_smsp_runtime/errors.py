"""The one error type of the runtime: the command line prints its message on one line and exits 2."""


class RuntimeToolError(Exception):
    """A problem the user can act on: missing file or dependency, unreadable model or image, bad option."""


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line (onnxruntime messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__
