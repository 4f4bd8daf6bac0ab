"""Evaluation throughput on the tiny model: ``aki eval run``'s pipeline at batch 8 vs batch 1.

Model: ``aki_tiny`` (32 px SigLIP, 4 latents, 2-layer Llama of width 64) with a word-level tokenizer, saved
and loaded like a checkpoint. Data: a POPE file in the public layout (JSON lines, one 64 x 48 PNG per
question, next to the file). Each variant runs :func:`aki.eval.run.run_benchmark` end to end (read the
file, decode the images, build the prompts, generate ``max_new_tokens`` greedy tokens, score), timed
interleaved in one run (median of the repetitions); the only difference is the runner's batch size.

Before timing, the script checks that both batch sizes give the same predictions. The issue's target:
examples/s at batch 8 >= 4x examples/s at batch 1.

Run: ``python benchmarks/bench_eval.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import parse_args, print_times, report_check, time_interleaved
from aki.eval.run import run_benchmark
from aki.generation import Runner
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

QUESTIONS = [
    "Is there a cat in the image?",
    "Is there a dog in the image?",
    "Is there a red car on the road?",
]
TARGET = 4.0


def save_model(directory: Path) -> Path:
    tokenizer = tiny_tokenizer([*QUESTIONS, "Answer the question using a single word or phrase. Yes No"])
    config = aki_tiny(tokenizer)
    torch.manual_seed(0)
    AkiForConditionalGeneration(config).save_pretrained(directory)
    AkiProcessor.for_model(config, tokenizer).save_pretrained(directory)
    return directory


def write_pope(directory: Path, count: int) -> Path:
    """``count`` POPE rows (lmms-lab layout) with random images saved next to the data file."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{i}.png")
        question = QUESTIONS[i % len(QUESTIONS)]
        answer = "yes" if i % 2 else "no"
        rows.append(
            {
                "question_id": i,
                "question": question,
                "answer": answer,
                "category": "random",
                "image": f"{i}.png",
            }
        )
    data = directory / "pope.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=3)
    examples, new_tokens = (32, 8) if args.quick else (64, 8)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        (root / "model").mkdir()
        (root / "data").mkdir()
        one = Runner.from_pretrained(save_model(root / "model"), device="cpu", batch_size=1)
        eight = Runner(one.model, one.processor, batch_size=8)
        data = write_pope(root / "data", examples)

        def evaluate(runner: Runner) -> list[dict]:
            return run_benchmark(runner, "pope", data, max_new_tokens=new_tokens, progress=False)[1]

        same = [p["prediction"] for p in evaluate(one)] == [p["prediction"] for p in evaluate(eight)]
        report_check("batch 8 gives the predictions of batch 1", same, f"{examples} POPE questions, greedy")
        names = {"batch 1": lambda: evaluate(one), "batch 8": lambda: evaluate(eight)}
        medians = time_interleaved(names, repeats=args.repeats)
    print_times(f"aki eval run: {examples} examples x {new_tokens} new tokens (tiny AKI)", medians, "batch 1")
    for name, seconds in medians.items():
        print(f"  {name:<48} {examples / seconds:10.1f} examples/s")
    speedup = medians["batch 1"] / medians["batch 8"]
    verdict = "PASS" if speedup >= TARGET else "FAIL"
    print(f"RATIO eval examples/s: batch 8 / batch 1: {speedup:.2f}x  [target >= {TARGET:.2f}x: {verdict}]")


if __name__ == "__main__":
    main()
