"""Files in, Python objects out: record files (JSON, JSON lines, TSV, parquet) and strictly decoded images.

Every reader names the file (and the line) it could not read; nothing here knows about models. Data loaders,
evaluation, serving and the image processor all open files through this module.

Example:
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text(json.dumps({"id": 1}) + "\\n" + json.dumps({"id": 2}) + "\\n")
    >>> read_records(path)
    [{'id': 1}, {'id': 2}]
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

__all__ = ["check_decodes", "decode_image_bytes", "load_strictly", "open_image", "read_records"]

Record = dict[str, Any]


def read_records(path: str | Path, *, objects_only: bool = True) -> list[Any]:
    """Rows of a JSON list of objects, a JSON-lines file, a TSV (header row) or a parquet file (needs pandas).

    A ``.json`` file that is not one JSON document is read as JSON lines, since several public answer files
    named ``.json`` are in fact JSON lines. ``ValueError`` names the file, and the line, that is wrong. With
    ``objects_only=False`` a row that is valid JSON but not an object is returned as it is (a training source
    skips and counts it as a bad sample instead of refusing the whole file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".tsv":
        return _read_tsv(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if text.lstrip().startswith("["):
                raise ValueError(f"{path}: not a valid JSON list ({error})") from None
            data = None  # not one JSON document: read it as JSON lines below
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply") from None
        if data is not None:
            if not isinstance(data, list) or (objects_only and not all(isinstance(r, dict) for r in data)):
                raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
            return data
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from None
        if objects_only and not isinstance(row, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_tsv(path: Path) -> list[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # VLMEvalKit TSVs hold base64 images
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pandas
    except ImportError as error:
        raise ValueError(
            f"{path}: reading parquet needs pandas and pyarrow (pip install pandas pyarrow), or convert the "
            "file to JSON lines"
        ) from error
    return pandas.read_parquet(path).to_dict("records")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

_STRICT = threading.Lock()
# What PIL raises for unknown or damaged data.
IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def load_strictly(image: Image.Image) -> Image.Image:
    """Decode ``image`` now, refusing truncated data whatever PIL's process-wide setting says.

    ``ImageFile.LOAD_TRUNCATED_IMAGES``, which some libraries switch on at import (lmms-eval does), would
    otherwise pad a truncated file with grey instead of raising.
    """
    with _STRICT:
        lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return image


def open_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file; ``ValueError`` naming the file if it is missing, corrupt or (with
    ``max_pixels``) larger than that many pixels, checked from its header before decoding.
    """
    try:
        with _bombs_refused(), Image.open(path) as image:
            _check_pixels(image, max_pixels, f"image file {str(path)!r}")
            return load_strictly(image).copy()
    except FileNotFoundError as error:
        raise ValueError(f"image file {str(path)!r} does not exist") from error
    except IMAGE_ERRORS as error:
        raise ValueError(f"image file {str(path)!r} could not be read as an image: {error}") from error


def decode_image_bytes(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Fully decode encoded image bytes (PNG, JPEG, ...); ``ValueError`` if they are not a readable image or
    (with ``max_pixels``) a larger one.
    """
    try:
        with _bombs_refused(), Image.open(io.BytesIO(data)) as image:
            _check_pixels(image, max_pixels, f"{len(data)} image bytes")
            return load_strictly(image).copy()
    except IMAGE_ERRORS as error:
        raise ValueError(f"{len(data)} image bytes could not be read as an image: {error}") from error


def check_decodes(image: Image.Image, *, max_pixels: int | None = None) -> Image.Image:
    """Decode a (lazily opened) PIL image now, so that a damaged file fails here with its name."""
    name = getattr(image, "filename", "") or "a PIL image"
    _check_pixels(image, max_pixels, f"image {name!r}")
    try:
        load_strictly(image)
    except IMAGE_ERRORS as error:
        raise ValueError(f"image {name!r} could not be decoded: {error}") from error
    return image


def _check_pixels(image: Image.Image, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ValueError(
            f"{name} is {image.width} x {image.height} = {image.width * image.height} pixels, above the limit "
            f"of {max_pixels}"
        )


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """PIL's decompression-bomb warning (images above ``Image.MAX_IMAGE_PIXELS``) raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
