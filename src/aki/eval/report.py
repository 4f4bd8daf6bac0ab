"""Formatting of results: metric values and the markdown table that ``aki eval run`` writes.

Rates in [0, 1] get four decimals, points (MME scores) two; the terminal tables of ``aki eval`` use the
same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["digits_for", "format_value", "results_markdown"]


def digits_for(*values: float | None) -> int:
    """Four decimals when every value is a rate in [0, 1], else two (MME scores are points)."""
    return 4 if all(value is None or abs(value) <= 1 for value in values) else 2


def format_value(value: float | None, *, digits: int, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals ("-" for a missing value, a sign with ``signed``)."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def results_markdown(results: Mapping[str, Any]) -> str:
    """A markdown report of one results dict: a metric table, the counts and, if present, the run."""
    lines = [f"# {results['benchmark']}", "", "| metric | value |", "|---|---:|"]
    for name, value in results["metrics"].items():
        lines.append(f"| {name} | {format_value(value, digits=digits_for(value))} |")
    counts = results["counts"]
    lines += [
        "",
        f"{counts['answers']} answers, {counts['predictions']} predictions, {counts['correct']} correct; "
        f"{counts['malformed']} malformed and {counts['missing']} missing (scored wrong).",
    ]
    run = results.get("run")
    if run:
        lines += [
            "",
            f"Model `{run['model']}`, MMA {'on' if run['mma'] else 'off'}, attention {run['attn_implementation']}, "
            f"batch size {run['batch_size']}, at most {run['max_new_tokens']} new tokens: {run['examples']} "
            f"examples in {run['seconds']:.1f} s ({run['examples_per_second']:.2f} examples/s).",
        ]
        prompt = run.get("prompt")
        if prompt:
            instruction = (
                "no instruction" if prompt["instruction"] is None else f"`{prompt['instruction']}` first"
            )
            lines += ["", f"Prompt: {prompt['source']}, images {prompt['image_order']}, {instruction}."]
            lines += [f"Differs from training: {difference}." for difference in prompt["differences"]]
    return "\n".join(lines) + "\n"
