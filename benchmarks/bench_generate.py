"""AKI generation on the tiny model: MMA vs causal, one batch vs one prompt at a time, images encoded once.

Model: ``aki_tiny`` (32 px SigLIP, 4 latents, 2-layer Llama of width 64) with a word-level tokenizer. The
prompts are chats of different lengths with one image each, so the batch is left-padded. Variants (timed
interleaved in one run, median of the repetitions), each generating the same number of new tokens per
prompt (``min_new_tokens`` = ``max_new_tokens``, greedy):

* MMA, one batch: ``model.generate(**processor(...))`` with the processor's ``mma_roles``;
* causal, one batch: the same after ``model.set_mma(False)``;
* MMA, one prompt at a time: the same prompts generated one by one.

Before timing, the script checks that batched output equals per-prompt output, that MMA changes the logits
of the prompt (it is really on) and, with a forward hook, that the vision tower runs once per ``generate`` on
every image of the batch (greedy, beam search, and without a KV cache).

Run: ``python benchmarks/bench_generate.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from _common import parse_args, print_times, report_check, report_ratio, time_interleaved
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

QUESTIONS = ["What is this?", "What color is the cat?", "Describe the image.", "Is it red?"]
MMA_BATCH = "MMA, one batch"
CAUSAL_BATCH = "causal, one batch"
MMA_ONE_BY_ONE = "MMA, one prompt at a time"


def build() -> tuple[AkiForConditionalGeneration, AkiProcessor]:
    tokenizer = tiny_tokenizer(QUESTIONS)
    config = aki_tiny(tokenizer)
    torch.manual_seed(0)
    return AkiForConditionalGeneration(config).eval(), AkiProcessor.for_model(config, tokenizer)


def prompts(processor: AkiProcessor, count: int) -> tuple[list[str], list[list[Image.Image]]]:
    """``count`` chats of different lengths, one random image each."""
    rng = np.random.default_rng(0)
    texts, images = [], []
    for i in range(count):
        question = " ".join(QUESTIONS[: 1 + i % len(QUESTIONS)])
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        texts.append(processor.apply_chat_template(chat, add_generation_prompt=True))
        images.append([Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))])
    return texts, images


def image_encodings(model: AkiForConditionalGeneration, batch, **options) -> tuple[int, int]:
    """(vision tower calls, images encoded) during one ``generate``."""
    seen = [0, 0]

    def hook(module, args, output):
        seen[0] += 1
        seen[1] += args[0].shape[0]

    handle = model.vision_tower.register_forward_hook(hook)
    model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, **options)
    handle.remove()
    return seen[0], seen[1]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=5)
    batch_size, new_tokens = (4, 8) if args.quick else (8, 32)
    model, processor = build()
    texts, images = prompts(processor, batch_size)
    batch = processor(images=images, text=texts)
    singles = [processor(images=group, text=text) for text, group in zip(texts, images, strict=True)]
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}

    def new(inputs):
        return model.generate(**inputs, **options)[:, inputs["input_ids"].shape[1] :]

    together = new(batch)
    same = all(torch.equal(together[i], new(single)[0]) for i, single in enumerate(singles))
    report_check("batched generation equals per-prompt generation", same, f"{batch_size} prompts, greedy")
    with torch.no_grad():
        mma_logits = model(**batch).logits
        model.set_mma(False)
        causal_logits = model(**batch).logits
        model.set_mma(True)
    change = float((mma_logits - causal_logits).abs().max())
    report_check("MMA changes the prompt logits", change > 1e-4, f"max |difference| {change:.2e}")
    for name, extra in {
        "greedy": {},
        "beam search": {"num_beams": 3},
        "no KV cache": {"use_cache": False},
    }.items():
        calls, encoded = image_encodings(model, batch, **extra)
        detail = f"{calls} call(s), {encoded} images encoded for {batch_size} images"
        report_check(
            f"vision tower runs once per image ({name})", (calls, encoded) == (1, batch_size), detail
        )

    def causal_batch():
        model.set_mma(False)
        new(batch)
        model.set_mma(True)

    medians = time_interleaved(
        {
            MMA_BATCH: lambda: new(batch),
            CAUSAL_BATCH: causal_batch,
            MMA_ONE_BY_ONE: lambda: [new(single) for single in singles],
        },
        repeats=args.repeats,
    )
    print_times(f"generate {batch_size} prompts x {new_tokens} new tokens (tiny AKI)", medians, CAUSAL_BATCH)
    tokens = batch_size * new_tokens
    for name, seconds in medians.items():
        print(f"  {name:<48} {tokens / seconds:10.1f} tokens/s")
    report_ratio("generate one batch: MMA / causal", medians[MMA_BATCH] / medians[CAUSAL_BATCH])
    report_ratio(
        "generate MMA: one prompt at a time / one batch (batching speed-up)",
        medians[MMA_ONE_BY_ONE] / medians[MMA_BATCH],
    )


if __name__ == "__main__":
    main()
