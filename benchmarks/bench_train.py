"""The training recipe: an MMA fine-tuning step against a causal one, and the data loader against the step.

Both recipes are the tiny AKI of ``configs/sft.yaml`` built fresh from the same seed (same weights) on the
same synthetic chats, differing only in ``model.attention``. A step is ``Recipe.step`` on prefetched
micro-batches: forward, backward, one clip, AdamW and the schedule, as in training (accelerate included).

1. tokens/s of the MMA step and of the causal step, alternating; target: MMA time <= 1.05x causal.
2. the data loader alone (in this process, one core: sampling, decoding, flips off, tokenizing, collating)
   in samples/s, against the training step's samples/s; the loader must be faster than the step, so that
   one DataLoader worker on the second core keeps up.
3. end to end: steps fed by a DataLoader with one worker, and how much of each step is spent waiting for
   the next batch; the loader is no bottleneck when the time with the wait is close to the time without.

Run: ``python benchmarks/bench_train.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from _common import parse_args, print_times, report_check, report_ratio, time_interleaved
from aki.mma import Role
from aki.train.config import load_config
from aki.train.recipe import Recipe

MMA, CAUSAL = "MMA fine-tuning step", "causal fine-tuning step"


def recipe(attention: str, output_dir: Path, *, batch_size: int, num_workers: int = 0) -> Recipe:
    config = load_config(
        "sft",
        overrides=[
            f"output_dir={output_dir}",
            f"batch_size={batch_size}",
            "steps=1000000",
            "model.init=null",
            "model.tokenizer=synthetic",
            'model.system_message=""',  # the quickstart's template (no system turn)
            "model.allow_untrained_vision_tower=true",  # a step's cost does not depend on what the tower saw
            f"model.attention={attention}",
            f"data.num_workers={num_workers}",
            "logging.tensorboard=false",
            "logging.progress_bar=false",
        ],
    )
    built = Recipe(config)
    built.setup()
    return built


def media_logits(built: Recipe, item: dict) -> torch.Tensor:
    """The logits of the media rows of one micro-batch, as the recipe's model computes them."""
    batch = item["batch"]
    with torch.no_grad():
        logits = built.trainable(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            mma_roles=batch["mma_roles"],
        ).logits
    return logits[batch["mma_roles"] == Role.MEDIA]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=20)
    batch_size = 8 if args.quick else 16
    with tempfile.TemporaryDirectory() as scratch:
        mma = recipe("mma", Path(scratch) / "mma", batch_size=batch_size)
        causal = recipe("causal", Path(scratch) / "causal", batch_size=batch_size)
        micro_batches = [[next(mma.loader)] for _ in range(4)]
        tokens = [int(batch[0]["batch"]["attention_mask"].sum()) for batch in micro_batches]
        print(f"# batch {batch_size} chats, {sum(tokens) / len(tokens):.0f} tokens per batch on average")

        # Same initial weights: MMA shows in the media rows (a fresh model's loss moves below float32's resolution).
        changed = (
            (media_logits(mma, micro_batches[0][0]) - media_logits(causal, micro_batches[0][0])).abs().max()
        )
        report_check(
            "MMA is on (the media rows' logits differ)", float(changed) > 1e-4, f"max |diff| {changed:.2e}"
        )

        rounds = itertools.cycle(micro_batches)
        medians = time_interleaved(
            {MMA: lambda: mma.step(next(rounds)), CAUSAL: lambda: causal.step(next(rounds))},
            repeats=args.repeats,
            warmup=2,
        )
        print_times("one optimizer step, tiny AKI", medians, CAUSAL)
        mean_tokens = sum(tokens) / len(tokens)
        for name, seconds in medians.items():
            print(f"  {name:<48} {mean_tokens / seconds:10.0f} tokens/s")
        report_ratio("MMA step time / causal step time", medians[MMA] / medians[CAUSAL], target=1.05)

        # The loader alone, in this process.
        loader = iter(DataLoader(mma.stream, batch_size=None, num_workers=0))
        next(loader)
        count = 3 if args.quick else 10
        start = time.perf_counter()
        samples = sum(len(next(loader)["sample_ids"]) for _ in range(count))
        loader_rate = samples / (time.perf_counter() - start)
        step_rate = batch_size / medians[MMA]
        print(
            f"\n## data loader alone: {loader_rate:.0f} samples/s; MMA training step: {step_rate:.0f} samples/s"
        )
        # A timing, not a correctness condition: a ratio (the loader must take less time per sample than the step).
        report_ratio(
            "data loader time / MMA training step time, per sample", step_rate / loader_rate, target=1.0
        )

        # End to end: one worker feeding the steps; the time blocked waiting for its batches is the bottleneck.
        fed = recipe("mma", Path(scratch) / "fed", batch_size=batch_size, num_workers=1)
        for _ in range(2):
            fed.step([next(fed.loader)])
        waiting, start = 0.0, time.perf_counter()
        for _ in range(count * 2):
            asked = time.perf_counter()
            batch = next(fed.loader)
            waiting += time.perf_counter() - asked
            fed.step([batch])
        total = time.perf_counter() - start
        print(
            f"  fed by 1 DataLoader worker: {total / (count * 2) * 1e3:.1f} ms per step, of which "
            f"{waiting / (count * 2) * 1e3:.1f} ms waiting for data"
        )
        report_ratio(
            "step time with 1 loader worker / the same steps without the wait", total / (total - waiting)
        )


if __name__ == "__main__":
    main()
