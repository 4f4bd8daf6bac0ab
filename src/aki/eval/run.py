"""``aki eval run``: answer a local benchmark file with an AKI model, score the answers, write the results.

:func:`run_benchmark` reads the file (:mod:`aki.eval.benchmarks`), generates the answers in batches with a
progress bar (:class:`aki.generation.Runner`; images are decoded one chunk of batches at a time) and
scores them (:mod:`aki.eval.scorers`). :func:`write_run` writes three files:

- ``{stem}.predictions.jsonl``: ``{"id", "prediction", "prompt"}`` per example, ids as the scorers assign them
  (so ``aki eval score`` reads it back);
- ``{stem}.results.json``: the scorer's results dict plus ``"run"`` (model, MMA, attention backend, batch size,
  token limit, examples, seconds, examples per second);
- ``{stem}.results.md``: the same as a markdown table.

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
from .benchmarks import load_images, read_examples
from .report import results_markdown
from .scorers import score, write_results

__all__ = ["RunFiles", "run_benchmark", "write_run"]


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
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Answer every question of ``data`` (the first ``limit`` only, if given) and score the answers.

    Returns the results dict (with a ``"run"`` entry) and the prediction records, in file order.
    """
    rows, examples = read_examples(benchmark, data, limit=limit)
    answers: dict[str, str] = {}
    start = time.perf_counter()
    with tqdm(total=len(examples), desc=f"aki eval {benchmark}", unit="example", disable=not progress) as bar:
        for chunk in chunks(examples, runner.chunk_size):
            prompts = [Prompt(example.text, load_images(example)) for example in chunk]
            texts = runner.generate(
                prompts, SamplingParams(max_new_tokens=max_new_tokens), on_batch=bar.update
            )
            answers.update(zip((example.id for example in chunk), texts, strict=True))
    seconds = time.perf_counter() - start
    results = score(benchmark, answers, rows)
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
    }
    predictions = [
        {"id": example.id, "prediction": answers[example.id], "prompt": example.text} for example in examples
    ]
    return results, predictions


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
