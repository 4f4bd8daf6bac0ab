"""What the quickstart study reports: intervals, the summary rows, the terminal table and the plots.

Everything here reads the results dict that :mod:`aki.quickstart.study` writes as ``results.json`` (schema in
:data:`RESULTS_SCHEMA`), so the table and the plots can be redrawn from the file alone.

Intervals are 95 %. With one seed an accuracy's interval is the Wilson interval over the test questions and
a difference's is the normal interval of the per-question paired differences (both arms answer the same
questions): they show test-set noise only. With several seeds both are Student-t intervals over the seeds
(a difference is paired per seed: both arms of a seed share the pre-trained model and the data order), which
also cover training noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..eval.stats import paired_interval, t_interval, wilson_interval

ARM_LABELS = {"causal": "causal", "mma": "MMA", "dot": "DOT"}
OVERALL = "overall"

# Keys of results.json and what they hold; tests check a written file against it.
RESULTS_SCHEMA: dict[str, str] = {
    "schema_version": "int, 2",
    "question": "str, the question the study answers",
    "preset": "dict: name, train_samples, test_per_family, eval_batch_size, stages (each stage's resolved config)",
    "options": "dict: seeds (list[int]), latents (list[int]), include_dot (bool), threads (int)",
    "data": "dict: train_samples, test_samples, test_per_family, image_size, data_seed, directory",
    "families": "list[str], the question families in table order",
    "chance": "dict family -> chance accuracy (aki.data.synthetic.chance_level), plus 'overall' (their mean)",
    "arms": "list[str]: 'causal', 'mma' and, with --include-dot, 'dot'",
    "runs": "list of dicts, one per (latents, seed, arm): accuracy, correct, total, losses, ...",
    "summary": "list of dicts, one per (latents, family or 'overall'): chance, per arm and per delta "
    "{mean, low, high}",
    "interval": "str, how the 95 % intervals were computed",
    "timings": "dict stage -> seconds, plus 'total'",
    "environment": "dict: torch, transformers, threads, cpu_count, device",
    "files": "dict name -> file path relative to the output directory",
}
RUN_KEYS = (
    "latents",
    "seed",
    "arm",
    "accuracy",
    "correct",
    "total",
    "losses",
    "pretrain_losses",
    "vision_losses",
    "train_seconds",
    "eval_seconds",
    "model_dir",
)


def summarise(
    runs: Sequence[Mapping[str, Any]],
    outcomes: Mapping[tuple[int, int, str], Mapping[str, list[bool]]],
    *,
    families: Sequence[str],
    chance: Mapping[str, float],
    arms: Sequence[str],
) -> list[dict[str, Any]]:
    """Summary rows, one per (latents, family) and one ``overall`` per latents, in table order.

    ``outcomes[(latents, seed, arm)][family]`` lists whether each test question was answered right, in test
    order (``overall``: every question). Each row holds ``chance``, ``{mean, low, high}`` per arm and per
    ``delta_<arm>`` (arm minus causal) for every arm but causal.
    """
    rows = []
    for latents in sorted({run["latents"] for run in runs}):
        seeds = sorted({run["seed"] for run in runs if run["latents"] == latents})
        for family in [*families, OVERALL]:
            row: dict[str, Any] = {"latents": latents, "family": family, "chance": chance[family]}
            for arm in arms:
                row[arm] = _arm_cell(outcomes, latents, seeds, arm, family)
            for arm in arms:
                if arm != "causal":
                    row[f"delta_{arm}"] = _delta_cell(outcomes, latents, seeds, arm, family)
            rows.append(row)
    return rows


def _arm_cell(outcomes, latents: int, seeds: list[int], arm: str, family: str) -> dict[str, float]:
    answers = [outcomes[latents, seed, arm][family] for seed in seeds]
    if len(seeds) == 1:
        low, high = wilson_interval(sum(answers[0]), len(answers[0]))
        return {"mean": sum(answers[0]) / len(answers[0]), "low": low, "high": high}
    mean, low, high = t_interval([sum(a) / len(a) for a in answers])
    return {"mean": mean, "low": low, "high": high}


def _delta_cell(outcomes, latents: int, seeds: list[int], arm: str, family: str) -> dict[str, float]:
    pairs = [(outcomes[latents, s, "causal"][family], outcomes[latents, s, arm][family]) for s in seeds]
    if len(seeds) == 1:
        mean, low, high = paired_interval(*pairs[0])
    else:
        mean, low, high = t_interval([sum(b) / len(b) - sum(a) / len(a) for a, b in pairs])
    return {"mean": mean, "low": low, "high": high}


# --------------------------------------------------------------------------------------------------
# The terminal table
# --------------------------------------------------------------------------------------------------


def table_rows(results: Mapping[str, Any], latents: int) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the table of one visual token budget: family | chance | accuracy per arm |
    difference to causal per other arm, with its 95 % interval (the accuracies' intervals are in the JSON
    and the plot).
    """
    arms = results["arms"]
    header = ["family", "chance", *(ARM_LABELS[arm] for arm in arms)]
    header += [f"Δ {ARM_LABELS[arm]} [95 % CI]" for arm in arms if arm != "causal"]
    lines = []
    for row in results["summary"]:
        if row["latents"] != latents:
            continue
        cells = [row["family"], f"{row['chance']:.3f}", *(f"{row[arm]['mean']:.3f}" for arm in arms)]
        for arm in arms[1:]:
            delta = row[f"delta_{arm}"]
            cells.append(f"{delta['mean']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]")
        lines.append(cells)
    return header, lines


def markdown_table(results: Mapping[str, Any], latents: int) -> str:
    """The table of one visual token budget as markdown (what the README shows)."""
    header, rows = table_rows(results, latents)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def print_tables(results: Mapping[str, Any], console: Any) -> None:
    """Print one rich table per visual token budget, and the seconds the study took."""
    from rich.table import Table

    seeds = results["options"]["seeds"]
    for latents in results["options"]["latents"]:
        header, rows = table_rows(results, latents)
        title = (
            f"Test accuracy per question family ({latents} visual tokens, {len(seeds)} seed"
            f"{'s' if len(seeds) > 1 else ''}; 95 % intervals)"
        )
        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for cells in rows:
            table.add_row(*cells, style="bold" if cells[0] == OVERALL else None)
        console.print(table)
    console.print(f"interval: {results['interval']}", style="dim")
    console.print(f"wall time: {results['timings']['total']:.0f} s", style="dim")


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------

_ARM_COLOURS = {"causal": "#4c72b0", "mma": "#dd8452", "dot": "#55a868"}


def plot_accuracy(results: Mapping[str, Any], path: str | Path) -> Path:
    """Bars of test accuracy per family and arm (95 % intervals as error bars), chance as black ticks; one
    panel per visual token budget.
    """
    plt = _pyplot()
    budgets = results["options"]["latents"]
    arms, families = results["arms"], [*results["families"], OVERALL]
    figure, axes = plt.subplots(len(budgets), 1, figsize=(10, 3.6 * len(budgets)), squeeze=False)
    width = 0.8 / len(arms)
    for axis, latents in zip(axes[:, 0], budgets, strict=True):
        rows = {row["family"]: row for row in results["summary"] if row["latents"] == latents}
        for i, arm in enumerate(arms):
            means = [rows[f][arm]["mean"] for f in families]
            errors = [
                [m - rows[f][arm]["low"] for f, m in zip(families, means, strict=True)],
                [rows[f][arm]["high"] - m for f, m in zip(families, means, strict=True)],
            ]
            positions = [x + (i - (len(arms) - 1) / 2) * width for x in range(len(families))]
            axis.bar(
                positions,
                means,
                width,
                yerr=errors,
                capsize=2,
                label=ARM_LABELS[arm],
                color=_ARM_COLOURS[arm],
            )
        for x, family in enumerate(families):
            axis.hlines(rows[family]["chance"], x - 0.45, x + 0.45, colors="black", linewidth=1.5)
        axis.set_xticks(range(len(families)), [f.replace("_", "\n") for f in families])
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{latents} visual tokens (black: chance)")
        axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return _save(figure, path, plt)


def plot_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Training loss per step, first seed and budget: the vision tower alone (left), pre-training (middle) and
    fine-tuning of every arm (right).
    """
    plt = _pyplot()
    latents, seed = results["options"]["latents"][0], results["options"]["seeds"][0]
    runs = [r for r in results["runs"] if r["latents"] == latents and r["seed"] == seed]
    figure, (first, left, right) = plt.subplots(1, 3, figsize=(14, 3.8))
    causal = next(r for r in runs if r["arm"] == "causal")
    first.plot(range(1, len(causal["vision_losses"]) + 1), causal["vision_losses"], color="#777777")
    first.set_title("vision tower (patch classes)")
    left.plot(range(1, len(causal["pretrain_losses"]) + 1), causal["pretrain_losses"], color="#777777")
    left.set_title("pre-training (captions, causal)")
    for run in runs:
        right.plot(
            range(1, len(run["losses"]) + 1),
            run["losses"],
            label=ARM_LABELS[run["arm"]],
            color=_ARM_COLOURS[run["arm"]],
            alpha=0.85,
            linewidth=1,
        )
    right.set_title("fine-tuning (questions)")
    right.legend(fontsize=8)
    labels = {first: "loss per patch", left: "loss per caption token", right: "loss per answer token"}
    for axis, label in labels.items():
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.set_yscale("log")
    figure.suptitle(f"training curves ({latents} visual tokens, seed {seed})")
    figure.tight_layout()
    return _save(figure, path, plt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | Path, plt: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = [
    "OVERALL",
    "RESULTS_SCHEMA",
    "RUN_KEYS",
    "markdown_table",
    "paired_interval",
    "plot_accuracy",
    "plot_curves",
    "print_tables",
    "summarise",
    "t_interval",
    "table_rows",
    "wilson_interval",
]
