"""``aki train pretrain`` and ``aki train sft``: a YAML config plus ``key=value`` overrides, then the recipe.

Examples::

    aki train vision                                      # the tiny CPU demo: vision tower (configs/vision.yaml)
    aki train pretrain                                    # then captions (configs/pretrain.yaml)
    aki train sft --config paper/sft_4b.yaml optim.lr=1e-5
    aki train sft model.attention=causal output_dir=runs/sft-causal
    aki train sft --resume                                # continue the run in output_dir
    aki train sft --overwrite                             # replace the run in output_dir
    accelerate launch --multi_gpu --num_processes 2 -m aki.train.cli sft   # 2 processes (gloo on a CPU)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="train",
    help="Train AKI: pre-training on captions, fine-tuning on conversations (accelerate).",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config over the stage's defaults; also a packaged one such as paper/sft_4b.yaml.",
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Overrides key=value, e.g. optim.lr=1e-4 model.attention=causal steps=50."),
]
ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue from the latest checkpoint in output_dir (an error if none)."),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace the earlier run's files in output_dir (else it must be empty)."
    ),
]
PrintOption = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]


def _run(
    stage: str,
    config_path: Path | None,
    overrides: list[str] | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    print_only: bool = False,
) -> None:
    import yaml

    from .config import load_config
    from .lineage import UntrainedVisionTower
    from .recipe import DataError, DivergedError, run  # needs the train extra

    extra = [*(overrides or []), *(["checkpoint.resume=auto"] if resume else [])]
    extra += ["overwrite_output_dir=true"] if overwrite else []
    try:
        config = load_config(stage, config_path, extra)
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error
    if print_only:
        typer.echo(yaml.safe_dump(config.to_dict(applicable_only=True), sort_keys=False))
        return
    try:
        run(config)
    except (
        DataError,
        DivergedError,
        UntrainedVisionTower,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as error:
        # bad data, a diverged loss, an untrained vision tower, a model.init or checkpoint that is not there,
        # an output_dir in use, a file or checkpoint aki refuses: each message names what to fix
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error


@app.command()
def vision(
    overrides: Overrides = None,
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    print_config: PrintOption = False,
) -> None:
    """Train a fresh model's vision tower alone on synthetic scenes (the stand-in for a pre-trained SigLIP)."""
    _run("vision", config, overrides, overwrite=overwrite, print_only=print_config)


@app.command()
def pretrain(
    overrides: Overrides = None,
    config: ConfigOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    print_config: PrintOption = False,
) -> None:
    """Pre-train on image-caption pairs ("<image>{caption}<|endofchunk|>", causal attention)."""
    _run("pretrain", config, overrides, resume=resume, overwrite=overwrite, print_only=print_config)


@app.command()
def sft(
    overrides: Overrides = None,
    config: ConfigOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    print_config: PrintOption = False,
) -> None:
    """Fine-tune on LLaVA-format conversations (Modality-Mutual Attention by default)."""
    _run("sft", config, overrides, resume=resume, overwrite=overwrite, print_only=print_config)


if __name__ == "__main__":
    app()
