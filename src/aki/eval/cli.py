"""``aki eval``: run a model on a local benchmark file, score predictions offline, compare two results.

A typer sub-app (``app``) that the main CLI mounts as ``aki eval``. ``run`` loads a saved AKI model and calls
:mod:`aki.eval.run`; ``score`` and ``compare`` only read files. Every metric is defined in
:mod:`aki.eval.scorers`; the commands print rich tables. ``compare`` pairs the two results question by
question when both hold their outcomes (what ``run`` and ``score`` write): ``B - A`` with a 95 % interval.

Example:
    aki eval run --model checkpoints/aki --benchmark pope --data pope.parquet --no-mma --output out
    aki eval run --model checkpoints/aki --benchmark pope --data pope.parquet --mma --output out
    aki eval run --model runs/mine-mma/final --benchmark vqa --data test.json --output out
    aki eval score pope --predictions preds.jsonl --answers pope.jsonl --output pope.results.json
    aki eval compare out/pope-causal.results.json out/pope-mma.results.json --plot compare.png
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aki.eval.report import digits_for, format_value
from aki.eval.scorers import (
    MetricComparison,
    compare_results,
    load_results,
    paired_differences,
    score_files,
    write_results,
)

app = typer.Typer(
    help="Run a model on a benchmark, score predictions offline and compare results.", no_args_is_help=True
)

_SHOWN_IDS = 10  # malformed / missing ids listed on the terminal; the results JSON has them all


class Benchmark(str, Enum):
    """Benchmarks with an offline scorer; ``vqa`` is any free-form VQA file (LLaVA json or JSON lines)."""

    cvbench = "cvbench"
    pope = "pope"
    mme = "mme"
    mmbench = "mmbench"
    vqa = "vqa"


class ImageOrder(str, Enum):
    """Where a free-form question's images go within its turn (as ``data.order`` in training)."""

    as_is = "as_is"
    image_first = "image_first"
    text_first = "text_first"


CategoryOption = Annotated[
    str, typer.Option(help="vqa: the column whose values break the scores down (absent: overall only).")
]


@app.command("run")
def run_command(
    model: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Saved AKI directory (model and processor).")
    ],
    benchmark: Annotated[Benchmark, typer.Option(case_sensitive=False, help="Benchmark of the data file.")],
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Benchmark file (parquet, JSON, JSONL, TSV) in its public layout; vqa: LLaVA json or JSONL.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the three output files.")
    ] = Path("aki-eval"),
    mma: Annotated[
        bool | None,
        typer.Option("--mma/--no-mma", help="Modality-Mutual Attention on or off (default: as saved)."),
    ] = None,
    attn_implementation: Annotated[
        str, typer.Option(help="Attention backend: sdpa, eager or flex_attention.")
    ] = "sdpa",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per generate call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer in tokens.")] = 64,
    limit: Annotated[int | None, typer.Option(min=1, help="Answer only the first N questions.")] = None,
    device: Annotated[str | None, typer.Option(help="Device (default: cuda if available, else cpu).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    instruction: Annotated[
        str | None, typer.Option(help="Put this instruction before every question (default: none).")
    ] = None,
    paper_instruction: Annotated[
        bool,
        typer.Option(
            "--paper-instruction", help="Put the paper's instruction for the benchmark before every question."
        ),
    ] = False,
    order: Annotated[
        ImageOrder | None,
        typer.Option(
            help="vqa: where the images go in a question's turn (default: as the model was fine-tuned)."
        ),
    ] = None,
    category_field: CategoryOption = "category",
) -> None:
    """Answer every question of DATA with MODEL, score the answers, write predictions, results and a table.

    The questions are asked as the data writes them, in the model's own chat template, with no instruction
    unless one is given; what differs from the model's training is printed. Files in OUTPUT:
    {benchmark}-{mma|causal}.predictions.jsonl, .results.json and .results.md.
    """
    from aki.eval.benchmarks import PAPER_INSTRUCTIONS
    from aki.eval.run import run_benchmark, write_run
    from aki.generation import Runner

    console = Console()
    if paper_instruction:
        if instruction is not None or benchmark.value not in PAPER_INSTRUCTIONS:
            console.print(
                f"[red]error:[/red] --paper-instruction is for {', '.join(PAPER_INSTRUCTIONS)}, alone"
            )
            raise typer.Exit(code=1)
        instruction = PAPER_INSTRUCTIONS[benchmark.value]
    try:
        runner = Runner.from_pretrained(
            model,
            mma=mma,
            attn_implementation=attn_implementation,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )
        results, predictions = run_benchmark(
            runner,
            benchmark.value,
            data,
            max_new_tokens=max_new_tokens,
            limit=limit,
            instruction=instruction,
            order=None if order is None else order.value,
            category_field=category_field,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    stem = f"{benchmark.value}-{'mma' if runner.mma else 'causal'}"
    files = write_run(results, predictions, output, stem=stem)
    _print_metrics(console, results, title=f"{benchmark.value}: {model.name} ({stem})")
    run = results["run"]
    console.print(
        f"{run['examples']} examples in {run['seconds']:.1f} s ({run['examples_per_second']:.2f}/s)"
    )
    _print_prompt(console, run)
    for path in files:
        console.print(f"wrote {path}", soft_wrap=True)


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
    category_field: CategoryOption = "category",
) -> None:
    """Score PREDICTIONS against ANSWERS and print the metrics; malformed and missing count as wrong."""
    console = Console()
    try:
        results = score_files(benchmark.value, predictions, answers, category_field=category_field)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    _print_metrics(console, results, title=f"{benchmark.value}: {predictions.name}")
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
    """Print the metrics of two results JSONs side by side with their differences (B - A), then B - A on the
    questions both answered with its 95 % paired interval (overall and per category), e.g. causal vs MMA.
    """
    console = Console()
    try:
        first, second = load_results(a), load_results(b)
        rows = compare_results(first, second)
        paired = paired_differences(first, second)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    table = Table(title=f"{a.name} vs {b.name}")
    table.add_column("metric")
    table.add_column(a.stem, justify="right")
    table.add_column(b.stem, justify="right")
    table.add_column("B - A", justify="right")
    for row in rows:
        digits = digits_for(row.a, row.b)
        table.add_row(
            row.name,
            format_value(row.a, digits=digits),
            format_value(row.b, digits=digits),
            format_value(row.difference, digits=digits, signed=True),
        )
    console.print(table)
    if paired:
        _print_paired(console, paired, first, second, labels=(a.stem, b.stem))
    if plot is not None:
        try:
            _plot_comparison(rows, labels=(a.stem, b.stem), path=plot)
        except ValueError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(code=1) from error
        console.print(f"wrote {plot}")


def _print_prompt(console: Console, run: dict) -> None:
    """How the questions were asked, and in yellow what of it differs from the model's training."""
    prompt = run["prompt"]
    instruction = (
        "no instruction" if prompt["instruction"] is None else f"instruction {prompt['instruction']!r}"
    )
    console.print(
        f"prompt: {prompt['source']} in {prompt['template']}, images {prompt['image_order']}, {instruction}",
        soft_wrap=True,
    )
    if not prompt["differences"]:
        console.print("the prompt is the one the model was fine-tuned with (its template and image order)")
    for difference in prompt["differences"]:
        console.print(
            f"[yellow]note: the prompt differs from training: {difference}[/yellow]", soft_wrap=True
        )
    if run.get("images_resized"):
        console.print(f"note: images are resized to the vision tower's input ({run['images_resized']})")


def _print_paired(
    console: Console, paired: list, first: dict, second: dict, *, labels: tuple[str, str]
) -> None:
    """The paired table, with notes when the two runs did not answer the same questions in the same way."""
    table = Table(
        title=f"paired on the same questions (A = {labels[0]}, B = {labels[1]}; 95 % interval of B - A)"
    )
    table.add_column("questions", min_width=max(len(row.name) for row in paired), no_wrap=True)
    for name in ("n", "A", "B", "B - A", "low", "high"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in paired:
        values = (row.a, row.b)
        signed = (row.difference, row.low, row.high)
        table.add_row(
            row.name, str(row.questions), *(f"{v:.4f}" for v in values), *(f"{v:+.4f}" for v in signed)
        )
    console.print(table)
    total = (len(first["outcomes"]), len(second["outcomes"]))
    if paired[0].questions < max(total):
        console.print(
            f"note: {paired[0].questions} questions in both results ({total[0]} and {total[1]} in each)"
        )
    prompts = [(result.get("run") or {}).get("prompt") for result in (first, second)]
    keys = ("source", "instruction", "image_order")
    if None not in prompts and any(prompts[0].get(key) != prompts[1].get(key) for key in keys):
        console.print(
            "[yellow]note: the two runs asked the questions differently "
            f"({', '.join(f'{k}: {prompts[0].get(k)!r} vs {prompts[1].get(k)!r}' for k in keys)}): part of the "
            "difference may be the prompt's[/yellow]",
            soft_wrap=True,
        )


def _print_metrics(console: Console, results: dict, *, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results["metrics"].items():
        table.add_row(name, format_value(value, digits=digits_for(value)))
    console.print(table)


def _plot_comparison(rows: list[MetricComparison], *, labels: tuple[str, str], path: Path) -> None:
    """Grouped bars of the metrics both results have, drawn with the Agg canvas (no display needed).

    Rates in [0, 1] and points (MME scores) get separate panels so that neither flattens the other.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shared = [row for row in rows if row.a is not None and row.b is not None]
    if not shared:
        raise ValueError("the two results have no metric in common to plot")
    rates = [row for row in shared if digits_for(row.a, row.b) == 4]
    points = [row for row in shared if digits_for(row.a, row.b) == 2]
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
