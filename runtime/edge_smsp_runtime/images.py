"""Image decoding and preprocessing: Pillow when installed, else .npy and binary PGM/PPM in pure numpy."""

import os
import warnings
from typing import Any, List, Tuple

from .errors import RuntimeToolError, one_line
from .model import import_numpy
from .paths import path_kind, require_file

PILLOW_HINT = "pip install pillow"
# Decompression bombs: an 83-byte PNG may claim 100,000 x 100,000 pixels. Checked on the header, before decoding.
MAX_PIXELS = 50000000
FLOAT_SLACK = 1e-3  # float pixels a little outside [0, 1] (rounding in a user's own scaling) are clipped
CHUNK_VALUES = 1 << 22  # float32 values a resize step gathers at once (16 MiB)


def _have_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def _scale_to_unit(array: Any, path: str = "image") -> Any:
    """Pixels as float32 in [0, 1]: uint8 and uint16 by their range, other integers as 8-bit (0-255) or 16-bit
    (0-65535) levels by their largest value, bools as 0/1, floats taken as already scaled but finite."""
    np = import_numpy()
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 65535:
            raise RuntimeToolError(
                f"{path}: integer pixels must be 8-bit (0-255) or 16-bit (0-65535) levels, got {low} to {high}"
            )
        return array.astype(np.float32) / (255.0 if high <= 255 else 65535.0)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise RuntimeToolError(f"{path}: the image holds NaN or infinite pixels")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
            raise RuntimeToolError(
                f"{path}: float pixels must be scaled to [0, 1], got {low:g} to {high:g}; "
                "divide by 255 (or save 8-bit levels as uint8)"
            )
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    raise RuntimeToolError(f"{path}: unsupported pixel type {array.dtype}")


def check_pixels(height: int, width: int, path: str) -> None:
    """RuntimeToolError for an image larger than MAX_PIXELS (read from its header: nothing is decoded yet)."""
    if height * width > MAX_PIXELS:
        raise RuntimeToolError(
            f"{path}: {width} x {height} pixels, more than the {MAX_PIXELS:,} an image may have "
            "(a decompression bomb?)"
        )


def _read_npy(path: str) -> Any:
    """A .npy image: its header's shape and type checked before the pixels are read (no pickle)."""
    np = import_numpy()
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            pixel_bytes = os.fstat(handle.fileno()).st_size - handle.tell()
        if dtype.hasobject:
            raise RuntimeToolError(f"cannot read {path}: it holds Python objects, not pixels")
        if len(shape) not in (2, 3):
            raise RuntimeToolError(
                f"{path}: expected an HxW, HxWxC or CxHxW image array, got shape {tuple(shape)}"
            )
        spatial = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[1:]
        check_pixels(int(spatial[0]), int(spatial[1]), path)
        promised = dtype.itemsize
        for extent in shape:
            promised *= int(extent)
        if promised > pixel_bytes:  # a header that promises more than the file holds: never allocated
            raise RuntimeToolError(
                f"cannot read {path}: its header promises {promised:,} bytes of pixels, the file holds "
                f"{pixel_bytes:,} (truncated or corrupt)"
            )
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise RuntimeToolError(f"cannot read {path}: {one_line(error)}") from None


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
    check_pixels(height, width, path)
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
        with warnings.catch_warnings():
            # Pillow warns of a large image on opening; check_pixels refuses one from its header in one line.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            check_pixels(image.size[1], image.size[0], path)
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(image, dtype=np.float32)[:, :, None] / 65535.0
            if image.mode in (
                "I",
                "F",
            ):  # 32-bit levels or floats (TIFF): read as the same array in .npy would be
                return _scale_to_unit(_to_hwc(np.asarray(image), path), path)
            converted = image.convert("L" if image.mode in ("1", "L", "LA") else "RGB")
            array = np.asarray(converted, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RuntimeToolError(f"cannot read image {path}: {one_line(error)}") from None
    return _to_hwc(array, path).astype(np.float32) / 255.0


def load_image(path: str, use_pillow: bool = True) -> Any:
    """An image as float32 HxWxC in [0, 1] (C = 1 or 3)."""
    import_numpy()  # a missing numpy says so in one line
    kind = path_kind(path)
    if kind == "a directory":
        raise RuntimeToolError(f"{path} is a directory, not an image: name the image files in it")
    require_file(path, "image")
    if path.lower().endswith(".npy"):
        image = _scale_to_unit(_to_hwc(_read_npy(path), path), path)
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


def _triangle_taps(source: int, target: int, start: int, count: int) -> Any:
    """Output pixels start..start+count of the bilinear (triangle) filter from `source` to `target` pixels,
    widened when downscaling, as (indices, weights), both [count, taps]: only the source pixels each output
    pixel covers, so the memory grows with the output, never with source x target."""
    np = import_numpy()
    scale = source / target
    stretch = max(scale, 1.0)  # antialiasing: the filter covers every source pixel of an output pixel
    centres = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale
    taps = int(np.ceil(2 * stretch)) + 2
    first = np.floor(centres - 0.5 - stretch).astype(np.int64)
    indices = first[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    offsets = (indices + 0.5 - centres[:, None]) / stretch
    weights = np.clip(1.0 - np.abs(offsets), 0.0, None)
    weights[(indices < 0) | (indices >= source)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(indices, 0, source - 1), weights.astype(np.float32)


def _resize_axis0(image: Any, target: int, start: int, count: int) -> Any:
    """Rows start..start+count of `image` (float32 [H, ...]) resized to `target` rows, in chunks of rows."""
    np = import_numpy()
    indices, weights = _triangle_taps(image.shape[0], target, start, count)
    row_values = max(1, int(np.prod(image.shape[1:])))
    step = max(1, CHUNK_VALUES // (row_values * indices.shape[1]))
    out = np.empty((count,) + image.shape[1:], dtype=np.float32)
    for begin in range(0, count, step):
        chunk = slice(begin, begin + step)
        out[chunk] = np.einsum("ij,ij...->i...", weights[chunk], image[indices[chunk]])
    return out


def resize_antialiased(
    image: Any, height: int, width: int, top: int = 0, left: int = 0, crop: Any = None
) -> Any:
    """HxWxC resize with an antialiased bilinear filter (torch interpolate antialias=True, PIL BILINEAR); with
    `crop` (rows, columns), only that window from (top, left) of the resized image is computed."""
    np = import_numpy()
    rows, columns = crop if crop is not None else (height, width)
    image = image.astype(np.float32, copy=False)
    if image.shape[:2] == (height, width):
        return image[top : top + rows, left : left + columns].astype(np.float32)
    resized = _resize_axis0(image, height, top, rows)  # [rows, W, C]
    resized = _resize_axis0(resized.transpose(1, 0, 2), width, left, columns)  # [columns, rows, C]
    return resized.transpose(1, 0, 2).astype(np.float32)


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
        top, left = (new_height - height) // 2, (new_width - width) // 2
        # Only the crop is computed: a 3000x1 image covers 32 px as 96000x32, of which 32 rows are kept.
        resized = resize_antialiased(pixels, new_height, new_width, top, left, crop=(height, width))
        pixels = np.clip(np.round(resized), 0, 255)
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
