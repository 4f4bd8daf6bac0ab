"""``aki quickstart``: the embedded default, one command from nothing to a measured answer.

The lead mounts :func:`quickstart` on the main app (``app.command("quickstart")(quickstart)``); ``app`` here
runs it alone (``python -m aki.quickstart``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .presets import PRESETS, STOP_STAGES

app = typer.Typer(add_completion=False)


def quickstart(
    preset: Annotated[
        str, typer.Option(help=f"Study size: {', '.join(PRESETS)} (default: minutes on 2 CPU cores).")
    ] = "default",
    seeds: Annotated[
        int,
        typer.Option(min=1, help="Repeat the study with seeds 0..N-1; rows get a mean and a 95 % interval."),
    ] = 1,
    latents: Annotated[
        str,
        typer.Option(
            help='Visual token budgets to sweep, comma-separated (e.g. "4,8,16"); default: the preset\'s.'
        ),
    ] = "",
    include_dot: Annotated[
        bool, typer.Option("--include-dot", help="Add the paper's dual-order training (DOT) arm, causal.")
    ] = False,
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", "-o", help="Where data, models, results and plots go (overwritten)."),
    ] = Path("outputs/quickstart"),
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of torch in each process.")] = 1,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Arms trained at once, one process each (default: one per arm, up to the cores)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    stop_after: Annotated[
        str | None,
        typer.Option(
            help=f"Stop after one stage ({', '.join(STOP_STAGES)}): the models so far, no evaluation; e.g. "
            "pretrain gives a seeing pre-trained model (pretrained/) to fine-tune on your own data."
        ),
    ] = None,
) -> None:
    """Generate synthetic data, pre-train a tiny AKI, fine-tune it with causal attention and with MMA from the
    same checkpoint, evaluate both per question family and print the table (results.json and plots too).
    """
    from rich.console import Console

    from . import report
    from .presets import get_preset
    from .study import StudyOptions, run_study

    try:
        budgets = [int(value) for value in latents.replace(" ", "").split(",") if value]
        options = StudyOptions(
            preset=get_preset(preset),
            output_dir=output_dir,
            seeds=seeds,
            latents=budgets,
            include_dot=include_dot,
            threads=threads,
            workers=workers,
            progress=progress,
            stop_after=stop_after,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console = Console()
    results = run_study(options)
    if "stopped_after" in results:
        console.print(f"stopped after {results['stopped_after']}; nothing evaluated. Models:")
        for label, path in results["models"].items():
            console.print(f"  {label}: {path}", soft_wrap=True)
        return
    report.print_tables(results, console)
    console.print(f"results, plots and models: {output_dir}/", style="dim")


app.command()(quickstart)

__all__ = ["app", "quickstart"]
