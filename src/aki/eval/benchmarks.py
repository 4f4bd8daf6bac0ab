"""Benchmark prompts in the formats of the paper's evaluation, free-form VQA files asked as the model was trained,
and local benchmark files read as examples.

Prompts (the user turn; the image goes before it as ``<image>\\n``, as in AKI's training template). An
instruction is prepended only when asked (``instruction=``): the paper's, :data:`PAPER_INSTRUCTIONS`, are those
the released AKI was trained and evaluated with (sony/aki: the SFT templates in
``train/sft_data_utils/templates/templates.py``, the CV-Bench script ``eval_cv_bench/eval.py``); a model trained
on other data answers what it was trained on. The formats:

- multiple choice (``cvbench``, ``mmbench``): ``"{question}\\nOptions:\\nA. {choice}\\nB. {choice}\\n"``, with
  the paper's instruction ``"Answer with the option's letter from the given choices directly. "`` before it:
  with it, exactly the CV-Bench script and the A-OKVQA template; MMBench's hint goes after the question as
  ``Context: {hint}\\n``, as in the ScienceQA template (VLMEvalKit, which the paper used for MMBench, writes
  "Hint:" first and ends with "Please select the correct answer from the options above."; AKI was trained on
  the format above);
- yes/no (``pope``, ``mme``): the question, with the paper's instruction ``"Answer the question using a single
  word or phrase. "`` before it: the template AKI was trained with for VQA-style short answers and that its
  repository lists for MME (MME questions already end with "Please answer yes or no."; VLMEvalKit sends POPE
  and MME questions bare);
- free-form VQA (``vqa``): LLaVA records (``{"id", "image", "conversations"}``; the last turn is the reference
  answer, the turns before it are the prompt) or flat rows (``{"id", "image", "question", "answer"}``, the
  image before the question). Each turn becomes a chat message by :func:`aki.data.encoding.chat_message`, the
  rule training renders LLaVA turns with, so the prompt is token for token the one the model was trained on
  (with the images placed by ``order``, as its fine-tuning placed them).

Files: JSON (a list), JSON lines, TSV or parquet in the benchmark's public column layout (``question``;
CV-Bench ``choices``; MMBench option columns ``A``..``H`` and ``hint``). The image is the first non-empty of
the columns ``image``, ``image_path``, ``filename``: a path relative to the data file (or absolute), raw
bytes, a ``{"bytes", "path"}`` struct (Hugging Face parquet), base64 text (VLMEvalKit TSV) or, as in
VLMEvalKit's MMBench TSV, the index of another row whose image it shares; a list gives several images.
Example ids are :func:`aki.eval.scorers.assign_ids`, so predictions line up with the scorers.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ..data.encoding import chat_message
from ..io import decode_image_bytes, open_image, read_records
from .scorers import (
    MMBENCH_OPTION_COLUMNS,
    Row,
    assign_ids,
    benchmark_name,
    cvbench_choices,
    is_blank,
    vqa_rows,
)

__all__ = ["PAPER_INSTRUCTIONS", "Example", "load_images", "prompt_text", "read_examples"]

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
# The instruction the released AKI was trained and evaluated with, per benchmark (prepended when asked).
PAPER_INSTRUCTIONS = {
    "cvbench": CHOICE_INSTRUCTION,
    "mmbench": CHOICE_INSTRUCTION,
    "pope": SHORT_ANSWER_INSTRUCTION,
    "mme": SHORT_ANSWER_INSTRUCTION,
}
IMAGE_COLUMNS = ("image", "image_path", "filename")
# VLMEvalKit TSVs store an image once; other rows name that row's index instead (short text, not base64).
REFERENCE_MAX_LENGTH = 64

ImageSource = Path | bytes


class Example(NamedTuple):
    """One benchmark question: the answer row's ``id``, the prompt ``text`` and where its images are.

    A free-form example also has its chat ``messages`` (images as ``{"type": "image"}`` items, in order);
    ``text`` is then the text of its user turns.
    """

    id: str
    text: str
    images: tuple[ImageSource, ...]
    messages: tuple[dict[str, Any], ...] | None = None


def prompt_text(benchmark: str, row: Row, *, instruction: str | None = None) -> str:
    """The user-turn text for one answer row of ``benchmark`` (see the module docstring for the formats), with
    ``instruction`` before the question when given (e.g. ``PAPER_INSTRUCTIONS[benchmark]``).
    """
    name = benchmark_name(benchmark)
    question = str(_required(row, "question")).strip()
    prefix = f"{instruction.strip()} " if instruction else ""
    if name in ("pope", "mme"):
        return f"{prefix}{question}"
    if name == "cvbench":
        options = [str(choice) for choice in cvbench_choices(row)]
        context = ""
    else:
        options = [str(row[letter]) for letter in MMBENCH_OPTION_COLUMNS if not is_blank(row.get(letter))]
        context = "" if is_blank(row.get("hint")) else f"Context: {row['hint']}\n"
    if not options:
        raise ValueError(f"row {row.get('id')!r} has no options")
    lines = "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
    return f"{prefix}{question}\n{context}Options:\n{lines}\n"


def read_examples(
    benchmark: str,
    path: str | Path,
    *,
    limit: int | None = None,
    instruction: str | None = None,
    order: str = "as_is",
) -> tuple[list[Row], list[Example]]:
    """The answer rows of a local benchmark file (with ids) and one :class:`Example` per row.

    ``limit`` keeps the first rows only (the scorers then see only those). ``instruction`` goes before every
    question; ``order`` places a free-form example's images within its turns as
    :func:`aki.data.encoding.chat_message` does (``as_is``, ``image_first``, ``text_first``). Images are located,
    not decoded: :func:`load_images` decodes them when their batch runs.
    """
    path = Path(path)
    free_form = benchmark_name(benchmark) == "vqa"
    records = read_records(path)
    rows = assign_ids(vqa_rows(records) if free_form else records)
    if not rows:
        raise ValueError(f"{path}: no rows")
    images_by_id = {
        str(row[column]): row.get("image") for row in rows for column in ("index", "id") if column in row
    }
    if limit is not None:
        rows = rows[:limit]
    if free_form:
        return rows, [_chat_example(row, path.parent, images_by_id, instruction, order) for row in rows]
    examples = [
        Example(
            row["id"],
            prompt_text(benchmark, row, instruction=instruction),
            _image_sources(row, path.parent, images_by_id),
        )
        for row in rows
    ]
    return rows, examples


def load_images(example: Example) -> list[Image.Image]:
    """Decode the images of one example; a bad file or bad bytes raise ``ValueError`` naming the example."""
    images = []
    for source in example.images:
        try:
            images.append(open_image(source) if isinstance(source, Path) else decode_image_bytes(source))
        except ValueError as error:
            raise ValueError(f"example {example.id!r}: {error}") from error
    return images


# --------------------------------------------------------------------------------------------------


def _chat_example(
    row: Row, base_dir: Path, images_by_id: dict[str, Any], instruction: str | None, order: str
) -> Example:
    """A free-form row as the chat before its answer: its LLaVA turns but the last, or its question."""
    has_image = any(not _is_empty(row.get(name)) for name in IMAGE_COLUMNS)
    images = _image_sources(row, base_dir, images_by_id) if has_image else ()
    if "conversations" in row:
        turns = row["conversations"][:-1]
    else:
        question = str(_required(row, "question"))
        marks = "" if "<image>" in question else "<image>\n" * len(images)
        turns = [{"from": "human", "value": marks + question}]
    try:
        messages = [chat_message(turn["from"], turn["value"], order=order) for turn in turns]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"row {row['id']!r}: {error}") from None
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"row {row['id']!r}: the turns before the answer must end with the question")
    marks = sum(item["type"] == "image" for message in messages for item in message["content"])
    if marks != len(images):
        raise ValueError(
            f"row {row['id']!r}: its text has {marks} <image> marks but it has {len(images)} images"
        )
    if instruction:
        _prepend(messages, instruction.strip())
    texts = [
        item["text"]
        for m in messages
        if m["role"] == "user"
        for item in m["content"]
        if item["type"] == "text"
    ]
    return Example(row["id"], "\n".join(texts), images, tuple(messages))


def _prepend(messages: list[dict[str, Any]], instruction: str) -> None:
    """Put ``instruction`` before the text of the first user turn (as its own text if the turn has none)."""
    content = next(message for message in messages if message["role"] == "user")["content"]
    text = next((item for item in content if item["type"] == "text"), None)
    if text is None:
        content.append({"type": "text", "text": instruction})
    else:
        text["text"] = f"{instruction} {text['text']}"


def _required(row: Row, column: str) -> Any:
    if is_blank(row.get(column)):
        raise ValueError(f"row {row.get('id')!r} has no {column!r}")
    return row[column]


def _image_sources(row: Row, base_dir: Path, images_by_id: dict[str, Any]) -> tuple[ImageSource, ...]:
    column = next((name for name in IMAGE_COLUMNS if not _is_empty(row.get(name))), None)
    if column is None:
        raise ValueError(f"row {row['id']!r} has no image (one of the columns {', '.join(IMAGE_COLUMNS)})")
    value = row[column]
    several = isinstance(value, list | tuple | np.ndarray)  # parquet list columns come back as arrays
    values = list(value) if several else [value]
    return tuple(_image_source(item, base_dir, images_by_id, row["id"]) for item in values)


def _image_source(value: Any, base_dir: Path, images_by_id: dict[str, Any], row_id: str) -> ImageSource:
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return _image_source(str(value["path"]), base_dir, images_by_id, row_id)
        raise ValueError(f"row {row_id!r}: image struct has neither 'bytes' nor 'path': {sorted(value)}")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"row {row_id!r}: cannot read an image from a {type(value).__name__}")
    if _is_file(base_dir / value):
        return base_dir / value
    referenced = images_by_id.get(value.strip())
    if (
        len(value) <= REFERENCE_MAX_LENGTH
        and isinstance(referenced, str)
        and len(referenced) > REFERENCE_MAX_LENGTH
    ):
        return _base64(referenced, row_id)
    if len(value) <= REFERENCE_MAX_LENGTH:
        raise ValueError(
            f"row {row_id!r}: image {value!r} is not a file under {base_dir} (nor another row's image)"
        )
    return _base64(value, row_id)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. base64 text far longer than a file name may be
        return False


def _base64(text: str, row_id: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"row {row_id!r}: image text {text[:40]!r}... is neither a file path nor base64"
        ) from error


def _is_empty(value: Any) -> bool:
    if isinstance(value, list | tuple | dict | np.ndarray):
        return len(value) == 0
    return is_blank(value)
