"""95 % intervals of accuracies and of paired differences, shared by ``aki eval compare`` and the quickstart.

A proportion's interval is Wilson's; the difference of two runs on the same questions is the normal interval of
the per-question differences (paired: each question counts once, with both answers); means over seeds get
Student's t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95 % quantiles of Student's t by degrees of freedom; beyond 30 the normal 1.96.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_T_975 += (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
_T_975 += (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def wilson_interval(correct: int, total: int, *, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / total``.

    Example:
        >>> [round(v, 4) for v in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if total < 1:
        raise ValueError(f"an interval needs at least one trial, got total={total}")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its 95 % Student-t interval (needs two values).

    Example:
        >>> [round(v, 3) for v in t_interval([0.5, 0.7])]
        [0.6, -0.671, 1.871]
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a t interval needs at least two values, got {n}")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (_T_975[n - 2] if n - 1 <= len(_T_975) else 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_interval(a: Sequence[bool], b: Sequence[bool], *, z: float = 1.96) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the accuracy difference ``b - a`` on the same questions (normal interval).

    Example:
        >>> [round(v, 3) for v in paired_interval([True, False, False, True], [True, True, False, True])]
        [0.25, -0.24, 0.74]
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired answers need two equal, non-empty lists, got {len(a)} and {len(b)}")
    diffs = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


__all__ = ["paired_interval", "t_interval", "wilson_interval"]
