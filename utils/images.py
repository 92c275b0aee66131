"""Safe image reading and writing: every decodable image becomes HxWx3 uint8 RGB, every bad one a DataError.

Handles grey, grey+alpha, RGBA (alpha dropped), palette, CMYK, 16-bit and 32-bit integer/float images;
truncated, empty, non-image and over-large files are reported by name instead of crashing later. Files
(:func:`read_image`) and encoded bytes (:func:`decode_image`, e.g. RecordIO records) go through one decoder:
the pixel limit is checked on the size in the header, before decoding, and the EXIF orientation is applied
(as cameras, browsers and OpenCV do), so a photo gives the same pixels whichever way it is stored.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.atomic import atomic_path
from utils.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 100_000_000  # larger images are refused (decompression-bomb guard); override per call


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth or float image to 0..255 uint8 by its dtype's range."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or array.max(initial=0) > 255:
        return (array.astype(np.float64) / 257.0).clip(0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
        return (array * 255.0).clip(0, 255).round().astype(np.uint8)
    return array.clip(0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an HxWx3 uint8 RGB array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _decode(source: Path | BinaryIO, where: str | Path, max_pixels: int, noun: str) -> np.ndarray:
    """Decode an image file or stream to HxWx3 uint8 RGB, EXIF orientation applied; DataError naming ``where``
    (``noun``: what it should have been) when unusable or over ``max_pixels`` (checked on the header's size)."""
    try:
        with warnings.catch_warnings():
            # Our own limit below decides (PIL's warning comes at 89 M pixels); PIL still refuses twice its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise DataError(where, f"image is {width}x{height}, over the {max_pixels} pixel limit")
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                array = pil_to_rgb(image)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(where, f"not an {noun} (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(where, f"image is too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(where, f"corrupt or truncated image ({exc})") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(where, f"image has unusable shape {array.shape}")
    if not array.flags.writeable:
        array = array.copy()  # PIL hands out read-only buffers; callers transform in place
    return np.ascontiguousarray(array)


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an HxWx3 uint8 RGB array; raise DataError naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty (0 bytes)")
    return _decode(path, path, max_pixels, "image file")


def decode_image(data: bytes, where: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) as an HxWx3 uint8 RGB array, decoded as :func:`read_image` decodes
    files; raise DataError naming ``where`` when they are unusable."""
    if not data:
        raise DataError(where, "holds no image (0 bytes)")
    return _decode(io.BytesIO(data), where, max_pixels, "image record")


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Write an HxWx3 uint8 RGB array atomically; the format follows the file extension."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, quality=quality)
