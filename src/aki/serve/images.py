"""Images from outside (uploaded bytes, data URLs, files) opened within :class:`~aki.serve.engine.Limits`.

Sizes are checked before pixels are decoded: the encoded bytes against ``max_image_bytes``, then width x height
from the header against ``max_image_pixels`` (:func:`image_pixels` reads only the header, so a front end can
check the total of a request's images before it decodes any). Anything PIL cannot read is an :class:`InputError` naming the
image, so a front end can answer it as a client error. Decoding is strict: PIL's process-wide
``ImageFile.LOAD_TRUNCATED_IMAGES``, which some libraries switch on at import (lmms-eval does), is held off
while an image decodes here, so a truncated upload is refused instead of being padded with grey.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..generation import InputError
from ..io import load_strictly
from .engine import Limits

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)


def image_pixels(data: bytes, limits: Limits, *, name: str = "the image") -> int:
    """Width x height of encoded image bytes, read from the header only (nothing is decoded);
    :class:`InputError` if the bytes are too many, the image too large or no image at all.
    """
    return _checked_size(_open(data, limits, name=name), len(data), limits, name=name)


def decode_image(data: bytes, limits: Limits, *, name: str = "the image") -> Image.Image:
    """An RGB image from encoded bytes (PNG, JPEG, ...); :class:`InputError` if too big or not an image."""
    image = _open(data, limits, name=name)
    _checked_size(image, len(data), limits, name=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            load_strictly(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{name} is too large to decode: {error}", status=413) from error
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for unknown or damaged data
        raise InputError(f"{name} is not an image PIL can read ({len(data)} bytes): {error}") from error
    return image.convert("RGB")


def _open(data: bytes, limits: Limits, *, name: str) -> Image.Image:
    """The image of ``data`` opened lazily (its header read, no pixels decoded)."""
    if len(data) > limits.max_image_bytes:
        raise InputError(
            f"{name} is {len(data)} bytes, above the limit of {limits.max_image_bytes} bytes", status=413
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{name} is too large to decode: {error}", status=413) from error
    except UnidentifiedImageError as error:
        raise InputError(f"{name} is not an image: {len(data)} bytes in no format PIL knows") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name} is not an image PIL can read ({len(data)} bytes): {error}") from error


def _checked_size(image: Image.Image, size: int, limits: Limits, *, name: str) -> int:
    pixels = image.width * image.height
    if pixels > limits.max_image_pixels:
        raise InputError(
            f"{name} is {image.width} x {image.height} = {pixels} pixels, above the limit of "
            f"{limits.max_image_pixels} pixels",
            status=413,
        )
    return pixels


def data_url_bytes(url: str, limits: Limits, *, name: str = "the image") -> bytes:
    """The encoded image of a ``data:image/...;base64,...`` URL; :class:`InputError` for another scheme or
    type, bad base64 or more bytes than ``max_image_bytes`` (counted before decoding the base64).
    """
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise InputError(f"{name} is not a base64 data URL (data:image/png;base64,...)")
    mime = match["mime"] or ""
    if not mime.startswith("image/"):
        raise InputError(f"{name} is a data URL of type {mime or 'unknown'!r}; send an image/* data URL")
    encoded = match["data"]
    if len(encoded) > 4 * (limits.max_image_bytes // 3 + 1) + 4:  # refuse before decoding
        raise InputError(
            f"{name} has {len(encoded)} base64 characters, above the limit of {limits.max_image_bytes} bytes",
            status=413,
        )
    try:
        return base64.b64decode(re.sub(r"\s+", "", encoded), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputError(f"{name} is not valid base64: {error}") from error


def image_file_bytes(
    path: str | Path, limits: Limits, *, root: str | Path | None = None
) -> tuple[bytes, str]:
    """``(bytes, name)`` of an image file; with ``root``, a relative path is read from ``root`` and the
    resolved path must lie inside it. :class:`InputError` otherwise, or when the file has too many bytes.
    """
    path = Path(path).expanduser()
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    name = f"image file {str(path)!r}"
    if root is not None:
        resolved, base = path.resolve(), Path(root).resolve()
        if not resolved.is_relative_to(base):
            raise InputError(f"{name} is outside the allowed image directory {str(base)!r}", status=403)
        path = resolved
    if not path.is_file():
        raise InputError(f"{name} does not exist")
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        raise InputError(
            f"{name} is {size} bytes, above the limit of {limits.max_image_bytes} bytes", status=413
        )
    return path.read_bytes(), name


def decode_data_url(url: str, limits: Limits, *, name: str = "the image") -> Image.Image:
    """An image from a ``data:image/...;base64,...`` URL (:func:`data_url_bytes`, then :func:`decode_image`)."""
    return decode_image(data_url_bytes(url, limits, name=name), limits, name=name)


def open_image_file(path: str | Path, limits: Limits, *, root: str | Path | None = None) -> Image.Image:
    """An image file (:func:`image_file_bytes`, then :func:`decode_image`)."""
    data, name = image_file_bytes(path, limits, root=root)
    return decode_image(data, limits, name=name)


__all__ = [
    "data_url_bytes",
    "decode_data_url",
    "decode_image",
    "image_file_bytes",
    "image_pixels",
    "open_image_file",
]
