"""``aki eval run``: answer a local benchmark file with an AKI model, score the answers, write the results.

:func:`run_benchmark` reads the file (:mod:`aki.eval.benchmarks`), generates the answers in batches with a
progress bar (:class:`aki.generation.Runner`; images are decoded one chunk of batches at a time) and
scores them (:mod:`aki.eval.scorers`). :func:`write_run` writes three files:

- ``{stem}.predictions.jsonl``: ``{"id", "prediction", "prompt"}`` per example, ids as the scorers assign them
  (so ``aki eval score`` reads it back);
- ``{stem}.results.json``: the scorer's results dict plus ``"run"`` (model, MMA, attention backend, batch size,
  token limit, examples, seconds, examples per second, and ``"prompt"``: how the questions were asked and how
  that differs from what the model was trained on, see :func:`prompt_record`);
- ``{stem}.results.md``: the same as a markdown table.

The prompt: by default the question as the data writes it in the model's own chat template (the processor saved
with it), free-form questions with their images placed as the model's fine-tuning placed them (its training
record, :mod:`aki.train.lineage`), and no instruction. An instruction is prepended only when asked; whatever
differs from training is listed in ``run.prompt.differences`` and printed.

Example:
    >>> runner = Runner.from_pretrained("checkpoints/aki", mma=True, batch_size=8)  # doctest: +SKIP
    >>> results, predictions = run_benchmark(runner, "pope", "pope.parquet")  # doctest: +SKIP
    >>> write_run(results, predictions, "out", stem="pope-mma")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from ..generation import Prompt, Runner, SamplingParams, chunks
from ..train.lineage import read_stages, trained_order
from .benchmarks import Example, load_images, read_examples
from .report import results_markdown
from .scorers import benchmark_name, score, write_results

__all__ = ["RunFiles", "example_prompt", "prompt_record", "run_benchmark", "write_run"]


class RunFiles(NamedTuple):
    """The three files :func:`write_run` writes."""

    predictions: Path
    results: Path
    markdown: Path


def run_benchmark(
    runner: Runner,
    benchmark: str,
    data: str | Path,
    *,
    max_new_tokens: int = 64,
    limit: int | None = None,
    progress: bool = True,
    instruction: str | None = None,
    order: str | None = None,
    category_field: str = "category",
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Answer every question of ``data`` (the first ``limit`` only, if given) and score the answers.

    ``instruction`` goes before every question; ``order`` places a free-form question's images (None: as the
    model's fine-tuning did, else as the data does); ``category_field`` breaks free-form scores down. Returns the
    results dict (with a ``"run"`` entry) and the prediction records, in file order.
    """
    prompt = prompt_record(runner.model.config.name_or_path, benchmark, instruction=instruction, order=order)
    rows, examples = read_examples(
        benchmark, data, limit=limit, instruction=instruction, order=prompt["image_order"]
    )
    answers: dict[str, str] = {}
    resized: str | None = None
    start = time.perf_counter()
    with tqdm(total=len(examples), desc=f"aki eval {benchmark}", unit="example", disable=not progress) as bar:
        for chunk in chunks(examples, runner.chunk_size):
            images = [load_images(example) for example in chunk]
            resized = resized or _resized(images, runner.processor)
            prompts = [example_prompt(example, shown) for example, shown in zip(chunk, images, strict=True)]
            texts = runner.generate(
                prompts, SamplingParams(max_new_tokens=max_new_tokens), on_batch=bar.update
            )
            answers.update(zip((example.id for example in chunk), texts, strict=True))
    seconds = time.perf_counter() - start
    results = score(benchmark, answers, rows, category_field=category_field)
    results["run"] = {
        "model": str(runner.model.config.name_or_path),
        "data": str(data),
        "mma": runner.mma,
        "attn_implementation": runner.attn_implementation,
        "batch_size": runner.batch_size,
        "max_new_tokens": max_new_tokens,
        "examples": len(examples),
        "seconds": seconds,
        "examples_per_second": len(examples) / seconds,
        "prompt": prompt,
        "images_resized": resized,
    }
    predictions = [
        {"id": example.id, "prediction": answers[example.id], "prompt": example.text} for example in examples
    ]
    return results, predictions


def prompt_record(
    model_dir: str | Path, benchmark: str, *, instruction: str | None = None, order: str | None = None
) -> dict[str, Any]:
    """How the questions are asked, and what of it differs from the model's training (``differences``).

    Free-form questions are the data's turns, their images placed by ``order`` (None: as the model's last
    fine-tuning stage did, from its training record; ``as_is`` without a record); benchmark questions are
    written in the benchmark's format with the images first. Either way the template is the model's own.
    """
    trained = trained_order(model_dir)
    free_form = benchmark_name(benchmark) == "vqa"
    used = (order or trained or "as_is") if free_form else "image_first"
    differences = []
    if instruction:
        differences.append(f"an instruction the model was not trained with is prepended: {instruction!r}")
    if read_stages(model_dir) is None:
        differences.append(
            "the model has no training record (aki_training.json): how it was trained is unknown"
        )
    elif trained is None:
        differences.append(
            "the model's training record has no fine-tuning stage: it was not trained on questions"
        )
    elif used != trained and not (trained == "as_is" and not free_form):
        differences.append(f"the images are placed {used} but the model was fine-tuned with {trained}")
    return {
        "source": "data" if free_form else "benchmark format",
        "template": "the model's chat template",
        "instruction": instruction,
        "image_order": used,
        "trained_image_order": trained,
        "differences": differences,
    }


def example_prompt(example: Example, images: list[Any]) -> Prompt | list[dict[str, Any]]:
    """What the runner answers: a free-form example's chat with its images in its image items, else a prompt."""
    if example.messages is None:
        return Prompt(example.text, images)
    remaining = iter(images)
    return [
        {
            "role": message["role"],
            "content": [
                {"type": "image", "image": next(remaining)} if item["type"] == "image" else dict(item)
                for item in message["content"]
            ],
        }
        for message in example.messages
    ]


def _resized(images: list[list[Any]], processor: Any) -> str | None:
    """``"W x H -> w x h"`` for the first image of another size than the vision tower's input, else None."""
    size = getattr(processor.image_processor, "size", None) or {}
    target = (size.get("width"), size.get("height"))
    other = next((image for group in images for image in group if image.size != target), None)
    if other is None or None in target:
        return None
    return f"{other.width} x {other.height} -> {target[0]} x {target[1]}"


def write_run(
    results: Mapping[str, Any], predictions: Sequence[Mapping[str, str]], output_dir: str | Path, *, stem: str
) -> RunFiles:
    """Write the predictions JSONL, the results JSON and the markdown table into ``output_dir``."""
    output_dir = Path(output_dir)
    files = RunFiles(
        output_dir / f"{stem}.predictions.jsonl",
        output_dir / f"{stem}.results.json",
        output_dir / f"{stem}.results.md",
    )
    write_results(results, files.results)  # creates the directory
    files.predictions.write_text(
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in predictions), encoding="utf-8"
    )
    files.markdown.write_text(results_markdown(results), encoding="utf-8")
    return files
