"""A whole training step of a tiny Llama with MMA on, against the same step with causal attention.

Tiny Llama: 4 layers, hidden 256, 8 heads x 32 (no GQA), MLP 1024, vocabulary 1024; batch 4 of one
144-token image after 32 text tokens, a 96-token question, then the answer (RESPONSE, the only labelled
part) to the end of the sequence. One step = ``zero_grad`` + forward + backward + ``AdamW.step``.

Variants, each on its own copy of the same initial weights:

* causal: ``attn_implementation="sdpa"``, a 2D all-ones attention mask (``is_causal`` kernel);
* MMA, default choice: ``enable_mma`` on the sdpa model -> ``aki_mma_sdpa`` (roles given as ``mma_roles``;
  the layout and its mask are built inside every forward, so they are timed) -- target <= 1.05x;
* for context, with the dense MMA mask built once beforehand (not timed): eager attention with the
  additive float mask, and plain sdpa with the boolean mask.

Before timing, the script checks that the MMA loss differs from the causal loss (MMA is really on) and
equals the loss of the dense-mask paths (it is exact).

Run: ``python benchmarks/bench_train_step.py`` (about 3 minutes) or ``--quick``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import LlamaForCausalLM

from _common import (
    QUICK_SINGLE_IMAGE,
    SINGLE_IMAGE,
    TINY_LLAMA_VOCAB,
    layout_roles,
    parse_args,
    print_times,
    report_check,
    report_ratio,
    time_interleaved,
    tiny_llama_config,
)
from aki.integration import enable_mma
from aki.mma import Role, mma_additive_mask, mma_mask

VOCAB = TINY_LLAMA_VOCAB
CAUSAL = "causal sdpa (is_causal)"
MMA = "MMA: enable_mma on sdpa -> aki_mma_sdpa"
EAGER_DENSE = "MMA: eager + dense additive mask (prebuilt)"
SDPA_DENSE = "MMA: sdpa + dense bool mask (prebuilt)"


def model_copy(base: LlamaForCausalLM, attn_implementation: str) -> LlamaForCausalLM:
    """A copy of ``base`` with its own config (a shared config would switch both models' attention)."""
    config = copy.deepcopy(base.config)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    model.load_state_dict(base.state_dict())
    return model.train()


def bench_length(length: int, *, batch: int, segments, repeats: int) -> None:
    torch.manual_seed(0)
    roles = layout_roles(segments, batch=batch, length=length)
    input_ids = torch.randint(0, VOCAB, (batch, length))
    labels = torch.where(roles == Role.RESPONSE, input_ids, -100)
    ones = torch.ones_like(input_ids)
    base = LlamaForCausalLM(tiny_llama_config(length))
    models = {
        CAUSAL: model_copy(base, "sdpa"),
        MMA: enable_mma(model_copy(base, "sdpa")),
        EAGER_DENSE: model_copy(base, "eager"),
        SDPA_DENSE: model_copy(base, "sdpa"),
    }
    inputs = {
        CAUSAL: {"attention_mask": ones},
        MMA: {"attention_mask": ones, "mma_roles": roles},
        EAGER_DENSE: {"attention_mask": mma_additive_mask(roles)},  # (B, 1, L, L) float
        SDPA_DENSE: {"attention_mask": mma_mask(roles)},  # (B, 1, L, L) bool
    }
    tag = f"L={length}"
    print(f"\n# training step, {tag}, B={batch}: {models[MMA].config._attn_implementation} serves MMA")

    with torch.no_grad():
        losses = {
            name: model(input_ids=input_ids, labels=labels, **inputs[name]).loss.item()
            for name, model in models.items()
        }
    print(
        "  losses at the same weights: " + ", ".join(f"{name}: {loss:.6f}" for name, loss in losses.items())
    )
    difference = abs(losses[MMA] - losses[CAUSAL])
    report_check(
        f"{tag} MMA is on (loss differs from causal)", difference > 1e-6, f"|MMA - causal| = {difference:.2e}"
    )
    for reference in (EAGER_DENSE, SDPA_DENSE):
        error = abs(losses[MMA] - losses[reference])
        report_check(f"{tag} MMA loss == {reference}", error < 1e-5, f"|diff| = {error:.1e}")

    steps = {name: training_step(model, input_ids, labels, inputs[name]) for name, model in models.items()}
    medians = time_interleaved(steps, repeats=repeats)
    print_times(f"step = zero_grad + forward + backward + AdamW.step, {tag}, B={batch}", medians, CAUSAL)
    causal = medians[CAUSAL]
    report_ratio(f"train step {tag}: MMA (aki_mma_sdpa) / causal sdpa", medians[MMA] / causal, target=1.05)
    report_ratio(f"train step {tag}: eager + dense MMA mask / causal sdpa", medians[EAGER_DENSE] / causal)
    report_ratio(f"train step {tag}: sdpa + dense MMA mask / causal sdpa", medians[SDPA_DENSE] / causal)


def training_step(model: LlamaForCausalLM, input_ids, labels, inputs: dict) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=input_ids, labels=labels, **inputs).loss.backward()
        optimizer.step()

    return step


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=5)
    if args.quick:
        bench_length(128, batch=2, segments=QUICK_SINGLE_IMAGE, repeats=args.repeats)
    else:
        for length in (512, 2048):
            bench_length(length, batch=4, segments=SINGLE_IMAGE, repeats=args.repeats)


if __name__ == "__main__":
    main()
