"""Building the dense MMA mask when one is asked for, against a plain causal mask and a naive builder.

* baseline: ``torch.ones(B, 1, L, L, dtype=torch.bool).tril_()``, the causal mask of the same size;
* ``aki.mma.mma_mask(roles)``: roles -> layout -> dense mask, vectorised (target <= 2x the baseline);
* a naive per-sample builder, written here the way the AKI reference builds its masks: a dense ``L x L``
  causal mask per sample, then Python loops over the media rows setting one element at a time.

Run: ``python benchmarks/bench_mask_build.py`` (about 30 s) or ``--quick``.
"""

from __future__ import annotations

import torch

from _common import (
    QUICK_SINGLE_IMAGE,
    SINGLE_IMAGE,
    layout_roles,
    parse_args,
    print_times,
    report_check,
    report_ratio,
    time_interleaved,
)
from aki.mma import Role, mma_additive_mask, mma_mask

BATCH = 4


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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=11)
    segments, lengths = (QUICK_SINGLE_IMAGE, (128, 256)) if args.quick else (SINGLE_IMAGE, (512, 1024, 2048))
    for length in lengths:
        roles = layout_roles(segments, batch=BATCH, length=length)
        built = mma_mask(roles)
        naive = naive_mma_mask(roles)
        report_check(
            f"L={length} mma_mask == naive builder", torch.equal(built, naive), f"{built.sum()} allowed pairs"
        )
        variants = {
            "causal: ones(B,1,L,L).tril_()": lambda length=length: torch.ones(
                BATCH, 1, length, length, dtype=torch.bool
            ).tril_(),
            "aki.mma.mma_mask(roles)": lambda roles=roles: mma_mask(roles),
            "aki.mma.mma_additive_mask(roles) (float32)": lambda roles=roles: mma_additive_mask(roles),
            "naive per-sample Python loops": lambda roles=roles: naive_mma_mask(roles),
        }
        medians = time_interleaved(variants, repeats=args.repeats)
        print_times(f"dense mask build, B={BATCH}, L={length}", medians, "causal: ones(B,1,L,L).tril_()")
        causal, aki = medians["causal: ones(B,1,L,L).tril_()"], medians["aki.mma.mma_mask(roles)"]
        report_ratio(f"mask build L={length}: mma_mask / causal tril", aki / causal, target=2.0)
        report_ratio(
            f"mask build L={length}: naive per-sample loops / mma_mask (speed-up)",
            medians["naive per-sample Python loops"] / aki,
        )
        print()


if __name__ == "__main__":
    main()
