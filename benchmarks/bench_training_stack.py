"""MMA inside the training stacks: HF ``Trainer`` and TRL ``SFTTrainer`` steps, the split on a FlashAttention
stand-in, and the graph breaks of the compiled MMA forward.

Tiny Llama as in ``bench_train_step.py`` (4 layers, hidden 256, 8 heads x 32, vocabulary 1024), batch 4 of one
144-token image after 32 text tokens, a 96-token question, then the answer (the only labelled part) to the end.
The image positions hold an image token id, so aki derives roles as it would for a VLM. Variants, each a
trainer on its own copy of the same initial weights:

* HF ``Trainer``, causal sdpa, against ``enable_mma`` (-> ``aki_mma_sdpa``) with ``aki.MmaDataCollator``;
* TRL ``SFTTrainer`` on a pre-tokenized prompt-completion dataset (its collator's labels mark the answer, its
  fused LM head replaces ``forward``), causal against ``enable_mma``;
* HF ``Trainer`` on the causal stand-in kernel (``benchmarks/_common.py``; like FlashAttention it ignores custom
  masks), alone against ``enable_mma(attn_implementation="causal_stand_in")``: the split on top of it.

A sample is one optimizer step as the trainer runs it, from its ``on_step_begin`` to its ``on_step_end``
callback (``training_step`` with the trainer's own loss, clipping, optimizer, scheduler, zero_grad); each
``train()`` call runs one step, the variants alternating. Collation (with the roles) happens before
``on_step_begin``: it is not timed (O(B x L), against a step's O(B x L^2)). Before timing, each MMA trainer's
first loss must equal the loss of the same weights with the dense MMA mask, and differ from causal.

Last, ``torch._dynamo.explain`` of the MMA forward: how many graph breaks, and whether any is inside a decoder
layer (expected: 3, all before the layers).

Run: ``python benchmarks/bench_training_stack.py --threads 1 --clock cpu`` (about 6 minutes) or ``--quick``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import tempfile
import warnings
from collections.abc import Callable

import datasets
import torch
from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import SFTConfig, SFTTrainer

import aki.integration
from _common import (
    QUICK_SINGLE_IMAGE,
    SINGLE_IMAGE,
    TINY_LLAMA_VOCAB,
    layout_roles,
    now,
    parse_args,
    print_times,
    register_causal_stand_in,
    report_check,
    report_ratio,
    time_interleaved,
    tiny_llama_config,
)
from aki.collator import MmaDataCollator
from aki.integration import enable_mma
from aki.mma import Role, mma_mask

VOCAB = TINY_LLAMA_VOCAB
IMAGE_TOKEN = 3  # the image placeholder id; text ids are drawn from [8, VOCAB)
FIRST_TEXT_TOKEN = 8
BATCH = 4
TRAINER, TRAINER_MMA = "Trainer, causal sdpa", "Trainer, MMA (aki_mma_sdpa)"
SFT, SFT_MMA = "SFTTrainer, causal sdpa", "SFTTrainer, MMA (aki_mma_sdpa)"
STAND_IN, STAND_IN_MMA = "Trainer, stand-in kernel alone (causal)", "Trainer, MMA split on the stand-in"
# name -> (training stack, attention kernel, MMA on); the first line is the baseline of the printed tables.
VARIANTS = {
    TRAINER: ("Trainer", "sdpa", False),
    TRAINER_MMA: ("Trainer", "sdpa", True),
    SFT: ("SFTTrainer", "sdpa", False),
    SFT_MMA: ("SFTTrainer", "sdpa", True),
    STAND_IN: ("Trainer", "stand-in", False),
    STAND_IN_MMA: ("Trainer", "stand-in", True),
}


def tiny_llama(length: int) -> LlamaForCausalLM:
    # aki derives MEDIA from the image token id (and RESPONSE from the labels).
    config = tiny_llama_config(length, image_token_id=IMAGE_TOKEN, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def model_copy(base: LlamaForCausalLM, attn_implementation: str, *, mma: bool) -> LlamaForCausalLM:
    """A copy of ``base`` with its own config (a shared config would switch both models' attention)."""
    model = LlamaForCausalLM(copy.deepcopy(base.config))
    model.load_state_dict(base.state_dict())
    if mma:
        return enable_mma(model, attn_implementation=attn_implementation)
    model.config._attn_implementation = attn_implementation
    return model


def samples(length: int, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``labels`` (the answer only) and roles, ``[BATCH, length]`` each."""
    roles = layout_roles(prompt, batch=BATCH, length=length)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(FIRST_TEXT_TOKEN, VOCAB, roles.shape, generator=generator)
    input_ids = torch.where(roles == Role.MEDIA, IMAGE_TOKEN, input_ids)
    labels = torch.where(roles == Role.RESPONSE, input_ids, -100)
    return input_ids, labels, roles


class StepClock(TrainerCallback):
    """The time of the trainer's last optimizer step on the benchmark clock, from step begin to step end."""

    def __init__(self) -> None:
        self.started = self.seconds = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = now()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = now() - self.started


def quiet(trainer: Trainer, clock: StepClock) -> Trainer:
    """No progress bars or printed logs; the step clock added."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(clock)
    return trainer


def common_arguments(directory: str) -> dict:
    return dict(
        output_dir=directory,
        max_steps=1,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def hf_trainer(model, input_ids, labels, directory: str, clock: StepClock, *, mma: bool) -> Trainer:
    features = [{"input_ids": ids, "labels": row} for ids, row in zip(input_ids, labels, strict=True)]

    def stack(rows: list[dict]) -> dict:
        batch = {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "labels")}
        return batch | {"attention_mask": torch.ones_like(batch["input_ids"])}

    arguments = TrainingArguments(**common_arguments(directory), remove_unused_columns=False)
    collator = MmaDataCollator.for_model(stack, model) if mma else stack
    return quiet(Trainer(model=model, args=arguments, train_dataset=features, data_collator=collator), clock)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny vocabulary: TRL needs one for its pad id."""
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<image>": IMAGE_TOKEN} | {f"w{i}": i for i in range(4, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w4"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="w4"
    )


def sft_trainer(model, input_ids, labels, directory: str, clock: StepClock) -> Trainer:
    rows = [
        {"input_ids": ids.tolist(), "completion_mask": (row != -100).int().tolist()}
        for ids, row in zip(input_ids, labels, strict=True)
    ]
    arguments = SFTConfig(
        **common_arguments(directory),
        max_length=None,
        completion_only_loss=True,  # the loss on the answer: labels from completion_mask
        bf16=False,  # SFTConfig's defaults (bf16, gradient checkpointing) are for GPUs
        gradient_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
    )
    return quiet(trainer, clock)


def dense_reference_loss(base: LlamaForCausalLM, input_ids, labels, roles) -> float:
    """The loss of ``base``'s weights with the dense MMA mask through plain sdpa."""
    model = model_copy(base, "sdpa", mma=False)
    with torch.no_grad():
        return model(input_ids=input_ids, labels=labels, attention_mask=mma_mask(roles)).loss.item()


def bench_length(length: int, prompt: str, *, repeats: int) -> None:
    input_ids, labels, roles = samples(length, prompt)
    base = tiny_llama(length)
    kernels = {"sdpa": "sdpa", "stand-in": register_causal_stand_in()}
    tag = f"L={length}"
    with tempfile.TemporaryDirectory() as directory:
        trainers, clocks = {}, {}
        for name, (stack, kernel, mma) in VARIANTS.items():
            clocks[name] = StepClock()
            model = model_copy(base, kernels[kernel], mma=mma)
            if stack == "Trainer":
                trainers[name] = hf_trainer(model, input_ids, labels, directory, clocks[name], mma=mma)
            else:
                trainers[name] = sft_trainer(model, input_ids, labels, directory, clocks[name])
        print(f"\n# training stack, {tag}, B={BATCH}")
        first_losses = {name: trainer.train().training_loss for name, trainer in trainers.items()}
        check_losses(first_losses, dense_reference_loss(base, input_ids, labels, roles), tag)

        def one_step(name: str) -> Callable[[], float]:
            return lambda: (trainers[name].train(), clocks[name].seconds)[1]

        medians = time_interleaved(
            {name: one_step(name) for name in trainers}, repeats=repeats, warmup=0, self_timed=True
        )
    print_times(f"one trainer step (step begin -> step end), {tag}, B={BATCH}", medians, TRAINER)
    target = 1.03 if length >= 1024 else None
    report_ratio(f"Trainer step {tag}: MMA / causal", medians[TRAINER_MMA] / medians[TRAINER], target=target)
    report_ratio(f"SFTTrainer step {tag}: MMA / causal", medians[SFT_MMA] / medians[SFT], target=target)
    report_ratio(
        f"Trainer step {tag}: split on the stand-in kernel / the stand-in alone",
        medians[STAND_IN_MMA] / medians[STAND_IN],
        target=1.03 if length >= 2048 else None,
    )


def check_losses(losses: dict[str, float], reference: float, tag: str) -> None:
    print("  first-step losses: " + ", ".join(f"{name}: {loss:.6f}" for name, loss in losses.items()))
    for mma, causal in ((TRAINER_MMA, TRAINER), (SFT_MMA, SFT), (STAND_IN_MMA, STAND_IN)):
        error = abs(losses[mma] - reference)
        report_check(f"{tag} {mma} loss == dense MMA mask loss", error < 1e-5, f"|diff| = {error:.1e}")
        difference = abs(losses[mma] - losses[causal])
        report_check(
            f"{tag} {mma}: MMA is on (loss differs from causal)", difference > 1e-6, f"{difference:.1e}"
        )


def graph_breaks(length: int, prompt: str) -> None:
    """``torch._dynamo.explain`` of the MMA forward: the break count, and none inside a decoder layer."""
    input_ids, _, roles = samples(length, prompt)
    model = enable_mma(tiny_llama(length)).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(input_ids=input_ids, mma_roles=roles)
    inside = [reason.reason for reason in explanation.break_reasons if _inside_a_layer(reason.user_stack)]
    count = explanation.graph_break_count
    print(
        f"\n## torch.compile of the MMA forward, L={length}: {explanation.graph_count} graphs, {count} breaks"
    )
    for reason in explanation.break_reasons:
        where = reason.user_stack[-1] if reason.user_stack else None
        place = f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno} {where.name}" if where else "?"
        print(f"  {place}: {reason.reason.splitlines()[0][:100]}")
    report_check(
        f"compiled MMA forward L={length}: at most 3 graph breaks, none inside a decoder layer",
        count <= 3 and not inside,
        f"{explanation.graph_count} graphs, {count} breaks, {len(inside)} inside a layer",
    )


def _inside_a_layer(stack) -> bool:
    """Whether a break's user stack runs through the decoder layer or its attention (by source lines)."""
    spans = []
    for module in (LlamaDecoderLayer, LlamaAttention):
        lines, first = inspect.getsourcelines(module)
        spans.append((inspect.getsourcefile(module), first, first + len(lines)))
    return any(
        frame.filename == path and first <= (frame.lineno or 0) < stop
        for frame in stack
        for path, first, stop in spans
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=5)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.quick:
        aki.integration.SDPA_DENSE_MASK_MAX_KEYS = (
            0  # the split at the quick length too (dense below 512 keys)
        )
        bench_length(128, QUICK_SINGLE_IMAGE, repeats=args.repeats)
        graph_breaks(128, QUICK_SINGLE_IMAGE)
    else:
        for length in (1024, 2048):
            bench_length(length, SINGLE_IMAGE, repeats=args.repeats)
        graph_breaks(1024, SINGLE_IMAGE)


if __name__ == "__main__":
    main()
