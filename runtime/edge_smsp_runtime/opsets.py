"""Which ONNX opset each onnxruntime release runs: the one table the device and the host both read.

A release runs models stamped with any opset from 7 up to its own. Up to 1.20 the values are onnxruntime's
compatibility page (onnxruntime.ai/docs/reference/compatibility.html), except 1.15: it loads opset-19 models
but has no CPU kernel for Reshape-19, so edge-smsp's opset-19 exports of efficientnet_lite0, resnet18 and deit_small
fail there; it runs them up to opset 18. 1.21 to 1.32 were measured on their PyPI wheels: the opset named in the
"official support ... is till opset N" message each gives for a model stamped newer, confirmed by running those
three exports at every opset from 15 to that N (the same probes reproduce the page for 1.16 to 1.20).
"""

from typing import Optional, Tuple

# (first release, opset it runs), oldest first: a release runs the opset of the last row at or below it.
ONNXRUNTIME_OPSETS = (
    ((1, 0), 11),
    ((1, 3), 12),
    ((1, 6), 13),
    ((1, 8), 14),
    ((1, 9), 15),
    ((1, 11), 16),
    ((1, 12), 17),
    ((1, 14), 18),
    ((1, 16), 19),
    ((1, 17), 20),
    ((1, 18), 21),
    ((1, 21), 22),
    ((1, 23), 23),
    ((1, 24), 25),
    ((1, 25), 26),
    ((1, 32), 28),
)
NEWEST_KNOWN_OPSET = ONNXRUNTIME_OPSETS[-1][1]


def major_minor(version: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of a version such as '1.10.0', '1.16.3+cu118' or Python's '3.6.9'; None if it is none."""
    parts = version.strip().split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    minor = ""
    for character in parts[1]:
        if not character.isdigit():
            break
        minor += character
    return (int(parts[0]), int(minor)) if minor else None


def onnxruntime_max_opset(version: str) -> Optional[int]:
    """Highest ai.onnx opset an onnxruntime version runs (a release newer than the table: at least its last row);
    None for an unparseable version or one older than 1.0."""
    found = major_minor(version)
    if found is None:
        return None
    opset = None
    for first, implemented in ONNXRUNTIME_OPSETS:
        if found >= first:
            opset = implemented
    return opset
