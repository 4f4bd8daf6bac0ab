"""Helpers of the evaluation tests: images and small benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pope_rows(directory: Path, answers: list[str]) -> list[dict]:
    """POPE rows (lmms-lab layout, image files next to the data file), one solid image per row."""
    rows = []
    for i, answer in enumerate(answers):
        solid((40 * i, 0, 0)).save(directory / f"pope_{i}.png")
        rows.append(
            {
                "question_id": str(i),
                "question": "Is there a cat in the image?",
                "answer": answer,
                "category": "random",
                "image": f"pope_{i}.png",
            }
        )
    return rows
