"""Building the dense MMA mask when one is asked for, against a plain causal mask and a naive builder.

* baseline: ``torch.ones(B, 1, L, L, dtype=torch.bool).tril_()``, the causal mask of the same size;
* ``aki.mma.mma_mask(roles)``: roles -> layout -> dense mask, vectorised (target <= 2x the baseline);
* a naive per-sample builder, written here the way the AKI reference builds its masks: a dense ``L x L``
  causal mask per sample, then Python loops over the media rows setting one element at a time.

Then many media tokens: four 576-token images at L=4096, B=8 (``MANY_IMAGES``, 56 % of the rows media), where
``mma_mask`` is checked against the mask function evaluated over every pair (the loops would take minutes).

Run: ``python benchmarks/bench_mask_build.py`` (about 30 s) or ``--quick``.
"""

from __future__ import annotations

import torch

from _common import (
    MANY_IMAGES,
    QUICK_MANY_IMAGES,
    QUICK_SINGLE_IMAGE,
    SINGLE_IMAGE,
    layout_roles,
    parse_args,
    print_times,
    report_check,
    report_ratio,
    time_interleaved,
)
from aki.mma import Role, mma_additive_mask, mma_layout, mma_mask

BATCH = 4
CAUSAL = "causal: ones(B,1,L,L).tril_()"
MMA = "aki.mma.mma_mask(roles)"


def naive_mma_mask(roles: torch.Tensor) -> torch.Tensor:
    """The MMA rule one sample and one element at a time (no padding): ``[B, 1, L, L]`` bool."""
    masks = []
    for sample in roles.tolist():
        length = len(sample)
        mask = torch.ones(length, length, dtype=torch.bool).tril()
        for query, role in enumerate(sample):
            if role != Role.MEDIA:
                continue
            for key in range(query + 1, length):
                if sample[key] == Role.RESPONSE:
                    break
                if sample[key] == Role.TEXT:
                    mask[query, key] = True
        masks.append(mask)
    return torch.stack(masks)[:, None]


def bench_single_image(lengths: tuple[int, ...], segments: str, *, repeats: int) -> None:
    for length in lengths:
        roles = layout_roles(segments, batch=BATCH, length=length)
        built = mma_mask(roles)
        naive = naive_mma_mask(roles)
        report_check(
            f"L={length} mma_mask == naive builder", torch.equal(built, naive), f"{built.sum()} allowed pairs"
        )
        variants = {
            CAUSAL: lambda length=length: torch.ones(BATCH, 1, length, length, dtype=torch.bool).tril_(),
            MMA: lambda roles=roles: mma_mask(roles),
            "aki.mma.mma_additive_mask(roles) (float32)": lambda roles=roles: mma_additive_mask(roles),
            "naive per-sample Python loops": lambda roles=roles: naive_mma_mask(roles),
        }
        medians = time_interleaved(variants, repeats=repeats)
        print_times(f"dense mask build, B={BATCH}, L={length}", medians, CAUSAL)
        report_ratio(
            f"mask build L={length}: mma_mask / causal tril", medians[MMA] / medians[CAUSAL], target=2.0
        )
        report_ratio(
            f"mask build L={length}: naive per-sample loops / mma_mask (speed-up)",
            medians["naive per-sample Python loops"] / medians[MMA],
        )
        print()


def bench_many_images(segments: str, *, batch: int, length: int, repeats: int) -> None:
    roles = layout_roles(segments, batch=batch, length=length)
    built = mma_mask(roles)
    b = torch.arange(batch)[:, None, None, None]
    q, k = torch.arange(length)[None, None, :, None], torch.arange(length)[None, None, None, :]
    by_pairs = mma_layout(roles).mask_function()(b, torch.zeros_like(b), q, k)
    media = float((roles == Role.MEDIA).float().mean())
    report_check(
        f"many images L={length} mma_mask == the mask function over every pair",
        torch.equal(built, by_pairs),
        f"{media:.0%} of the rows media, {built.sum()} allowed pairs",
    )
    del built, by_pairs
    variants = {
        CAUSAL: lambda: torch.ones(batch, 1, length, length, dtype=torch.bool).tril_(),
        MMA: lambda: mma_mask(roles),
    }
    medians = time_interleaved(variants, repeats=repeats)
    print_times(f"dense mask build, many images, B={batch}, L={length}", medians, CAUSAL)
    report_ratio(
        f"mask build many images B={batch} L={length}: mma_mask / causal tril",
        medians[MMA] / medians[CAUSAL],
        target=2.0,
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=11)
    if args.quick:
        bench_single_image((128, 256), QUICK_SINGLE_IMAGE, repeats=args.repeats)
        bench_many_images(QUICK_MANY_IMAGES, batch=2, length=256, repeats=args.repeats)
    else:
        bench_single_image((512, 1024, 2048), SINGLE_IMAGE, repeats=args.repeats)
        bench_many_images(MANY_IMAGES, batch=8, length=4096, repeats=args.repeats)


if __name__ == "__main__":
    main()
