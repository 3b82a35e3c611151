"""Image decoding and preprocessing: Pillow when installed, else .npy and binary PGM/PPM in pure numpy."""

import os
from typing import Any, List, Tuple

from .errors import RuntimeToolError, one_line
from .model import import_numpy

PILLOW_HINT = "pip install pillow"


def _have_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def _scale_to_unit(array: Any) -> Any:
    """Pixels as float32 in [0, 1] from uint8/uint16/bool/float arrays (floats are taken as already scaled)."""
    np = import_numpy()
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_ or array.dtype.kind in "fiu":
        return array.astype(np.float32)
    raise RuntimeToolError(f"unsupported pixel type {array.dtype}")


def _to_hwc(array: Any, path: str) -> Any:
    """HW, HWC or CHW (C in 1, 3, 4) arrays as HWC."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        if array.shape[-1] in (1, 3, 4):
            return array
        if array.shape[0] in (1, 3, 4):
            return array.transpose(1, 2, 0)
    raise RuntimeToolError(
        f"{path}: expected an HxW, HxWxC or CxHxW image array, got shape {tuple(array.shape)}"
    )


def _read_netpbm(path: str) -> Any:
    """Binary PGM (P5) or PPM (P6), 8 or 16 bits per sample."""
    np = import_numpy()
    with open(path, "rb") as handle:
        data = handle.read()
    magic = data[:2]
    tokens = []  # type: List[bytes]
    position = 2
    while len(tokens) < 3:
        while position < len(data) and data[position : position + 1].isspace():
            position += 1
        if data[position : position + 1] == b"#":
            while position < len(data) and data[position : position + 1] not in (b"\n", b"\r"):
                position += 1
            continue
        start = position
        while position < len(data) and not data[position : position + 1].isspace():
            position += 1
        if start == position:
            raise RuntimeToolError(f"{path}: truncated PGM/PPM header")
        tokens.append(data[start:position])
    position += 1  # exactly one whitespace byte separates the header from the samples
    try:
        width, height, maxval = (int(token) for token in tokens)
    except ValueError:
        raise RuntimeToolError(f"{path}: malformed PGM/PPM header") from None
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise RuntimeToolError(f"{path}: malformed PGM/PPM header")
    channels = 3 if magic == b"P6" else 1
    dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
    count = width * height * channels
    if len(data) - position < count * dtype.itemsize:
        raise RuntimeToolError(f"{path}: truncated PGM/PPM pixel data")
    samples = np.frombuffer(data, dtype=dtype, count=count, offset=position)
    return samples.reshape(height, width, channels).astype(np.float32) / float(maxval)


def _read_pillow(path: str) -> Any:
    np = import_numpy()
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(image, dtype=np.float32)[:, :, None] / 65535.0
            converted = image.convert("L" if image.mode in ("1", "L", "LA", "I", "F") else "RGB")
            array = np.asarray(converted, dtype=np.uint8)
    except OSError as error:
        raise RuntimeToolError(f"cannot read image {path}: {one_line(error)}") from None
    return _to_hwc(array, path).astype(np.float32) / 255.0


def load_image(path: str, use_pillow: bool = True) -> Any:
    """An image as float32 HxWxC in [0, 1] (C = 1 or 3)."""
    np = import_numpy()
    if not os.path.isfile(path):
        raise RuntimeToolError(f"image not found: {path}")
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise RuntimeToolError(f"cannot read {path}: {one_line(error)}") from None
        image = _scale_to_unit(_to_hwc(array, path))
    else:
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if use_pillow and _have_pillow():
            image = _read_pillow(path)
        elif magic in (b"P5", b"P6"):
            image = _read_netpbm(path)
        else:
            raise RuntimeToolError(
                f"cannot read {path} without Pillow ({PILLOW_HINT}); "
                "without it the runtime reads .npy and binary .pgm/.ppm images"
            )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise RuntimeToolError(f"{path}: the image is empty ({image.shape[0]}x{image.shape[1]} pixels)")
    if image.shape[-1] == 4:
        image = image[:, :, :3]
    if image.shape[-1] not in (1, 3):
        raise RuntimeToolError(f"{path}: expected 1, 3 or 4 channels, got {image.shape[-1]}")
    return image


def _triangle_weights(source: int, target: int) -> Any:
    """[target, source] resampling matrix of the bilinear (triangle) filter, widened when downscaling."""
    np = import_numpy()
    scale = source / target
    stretch = max(scale, 1.0)  # antialiasing: the filter covers every source pixel of an output pixel
    centres = (np.arange(target, dtype=np.float64) + 0.5) * scale
    offsets = (np.arange(source, dtype=np.float64)[None, :] + 0.5 - centres[:, None]) / stretch
    weights = np.clip(1.0 - np.abs(offsets), 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_antialiased(image: Any, height: int, width: int) -> Any:
    """HxWxC resize with an antialiased bilinear filter (torch interpolate antialias=True, PIL BILINEAR)."""
    np = import_numpy()
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    rows = _triangle_weights(image.shape[0], height)
    columns = _triangle_weights(image.shape[1], width)
    resized = np.tensordot(rows, image.astype(np.float32, copy=False), axes=(1, 0))  # [height, W, C]
    resized = np.tensordot(resized, columns, axes=(1, 1))  # [height, C, width]
    return resized.transpose(0, 2, 1).astype(np.float32)


def resize_and_crop(image: Any, height: int, width: int) -> Any:
    """Cover the target size keeping the aspect ratio, centre-crop, round to 8-bit levels: as the host trains.

    Mirrors edge_smsp.data: uint8 pixels, shorter side to size, antialiased bilinear, centre crop, rounding.
    """
    np = import_numpy()
    source_height, source_width = image.shape[:2]
    pixels = np.round(image * 255.0)
    if (source_height, source_width) != (height, width):
        scale = max(height / source_height, width / source_width)
        new_height = max(height, round(source_height * scale))
        new_width = max(width, round(source_width * scale))
        resized = resize_antialiased(pixels, new_height, new_width)
        top, left = (new_height - height) // 2, (new_width - width) // 2
        pixels = np.clip(np.round(resized[top : top + height, left : left + width]), 0, 255)
    return (pixels / 255.0).astype(np.float32)


def preprocess(image: Any, size: Tuple[int, int], channels: int, mean: List[float], std: List[float]) -> Any:
    """HxWxC [0, 1] image -> normalised float32 NCHW batch of one, the way the host fed the model."""
    np = import_numpy()
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 1 and image.shape[-1] == 3:
        image = (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    resized = resize_and_crop(image, size[0], size[1])
    normalised = (resized - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)
