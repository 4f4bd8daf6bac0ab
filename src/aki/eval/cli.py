"""``aki eval``: score benchmark predictions offline and compare two results.

A typer sub-app (``app``) that the main CLI mounts as ``aki eval``. The commands only read files,
call :mod:`aki.eval.scorers` and print rich tables; every metric is defined there.

Example:
    aki eval score pope --predictions preds.jsonl --answers pope.jsonl --output pope.results.json
    aki eval compare causal.results.json mma.results.json --plot compare.png
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aki.eval.scorers import MetricComparison, compare_results, load_results, score_files, write_results

app = typer.Typer(help="Score benchmark predictions offline and compare results.", no_args_is_help=True)

_SHOWN_IDS = 10  # malformed / missing ids listed on the terminal; the results JSON has them all


class Benchmark(str, Enum):
    """Benchmarks with an offline scorer."""

    cvbench = "cvbench"
    pope = "pope"
    mme = "mme"
    mmbench = "mmbench"


@app.command("score")
def score_command(
    benchmark: Annotated[Benchmark, typer.Argument(case_sensitive=False, help="Benchmark to score.")],
    predictions: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Predictions JSONL: {id, prediction} per line.")
    ],
    answers: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="Benchmark answers: JSON, JSONL, TSV or parquet."),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the results JSON here.")
    ] = None,
) -> None:
    """Score PREDICTIONS against ANSWERS and print the metrics; malformed and missing count as wrong."""
    console = Console()
    try:
        results = score_files(benchmark.value, predictions, answers)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    table = Table(title=f"{benchmark.value}: {predictions.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results["metrics"].items():
        table.add_row(name, _format(value, digits=_digits(value)))
    console.print(table)
    counts = results["counts"]
    console.print(
        f"{counts['answers']} answers, {counts['predictions']} predictions, {counts['correct']} correct; "
        f"{counts['malformed']} malformed, {counts['missing']} missing (scored wrong), "
        f"{counts['extra']} extra (ignored)"
    )
    for label, ids in (
        ("malformed", [f"{key} ({problem})" for key, problem in results["malformed"].items()]),
        ("missing", results["missing"]),
        ("extra", results["extra"]),
    ):
        if ids:
            more = f" ... and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
            console.print(f"{label}: {', '.join(ids[:_SHOWN_IDS])}{more}")
    if output is not None:
        write_results(results, output)
        console.print(f"wrote {output}")


@app.command("compare")
def compare_command(
    a: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="First results JSON.")],
    b: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Second results JSON.")],
    plot: Annotated[Path | None, typer.Option(help="Also save a grouped bar chart (PNG) here.")] = None,
) -> None:
    """Print the metrics of two results JSONs side by side with their differences (B - A)."""
    console = Console()
    try:
        rows = compare_results(load_results(a), load_results(b))
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    table = Table(title=f"{a.name} vs {b.name}")
    table.add_column("metric")
    table.add_column(a.stem, justify="right")
    table.add_column(b.stem, justify="right")
    table.add_column("B - A", justify="right")
    for row in rows:
        digits = _digits(row.a, row.b)
        table.add_row(
            row.name,
            _format(row.a, digits=digits),
            _format(row.b, digits=digits),
            _format(row.difference, digits=digits, signed=True),
        )
    console.print(table)
    if plot is not None:
        try:
            _plot_comparison(rows, labels=(a.stem, b.stem), path=plot)
        except ValueError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(code=1) from error
        console.print(f"wrote {plot}")


def _format(value: float | None, *, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _digits(*values: float | None) -> int:
    """Four decimals for rates in [0, 1], two for points (MME scores)."""
    return 4 if all(value is None or abs(value) <= 1 for value in values) else 2


def _plot_comparison(rows: list[MetricComparison], *, labels: tuple[str, str], path: Path) -> None:
    """Grouped bars of the metrics both results have, drawn with the Agg canvas (no display needed).

    Rates in [0, 1] and points (MME scores) get separate panels so that neither flattens the other.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shared = [row for row in rows if row.a is not None and row.b is not None]
    if not shared:
        raise ValueError("the two results have no metric in common to plot")
    rates = [row for row in shared if _digits(row.a, row.b) == 4]
    points = [row for row in shared if _digits(row.a, row.b) == 2]
    panels = [panel for panel in (rates, points) if panel]
    width = 0.4
    longest = max(len(panel) for panel in panels)
    figure = Figure(figsize=(max(6.0, 0.5 * longest + 2), 4.0 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    for number, panel in enumerate(panels, start=1):
        axes = figure.add_subplot(len(panels), 1, number)
        positions = range(len(panel))
        axes.bar([p - width / 2 for p in positions], [row.a for row in panel], width, label=labels[0])
        axes.bar([p + width / 2 for p in positions], [row.b for row in panel], width, label=labels[1])
        axes.set_xticks(list(positions), [row.name for row in panel], rotation=60, ha="right", fontsize=8)
        axes.set_ylabel("rate" if panel is rates else "points")
        axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
