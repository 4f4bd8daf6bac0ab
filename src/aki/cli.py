"""The ``aki`` command line: thin commands over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="aki",
    help="Modality-Mutual Attention (MMA) for multimodal LLMs: masks, models, training, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main_callback() -> None:
    """Modality-Mutual Attention (MMA) for multimodal LLMs."""


@app.command()
def mask(
    layout: Annotated[
        str,
        typer.Argument(help='Roles, one letter per token: T text, M media, R response, e.g. "T M M T R".'),
    ],
    padding: Annotated[
        str, typer.Option(help='Optional 0/1 per token (1 = real token), e.g. "0 1 1 1 1".')
    ] = "",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save a PNG picture here.")] = None,
    causal: Annotated[bool, typer.Option(help="Show the plain causal mask instead, for comparison.")] = False,
) -> None:
    """Print (or save as PNG) the MMA attention mask of a token layout."""
    import torch

    from .mma import Role, mma_mask, parse_layout
    from .viz import mask_to_text, save_mask_png

    try:
        roles = parse_layout(layout)
        attention_mask = None
        if padding:
            values = [int(v) for v in padding.replace(",", " ").split()]
            if len(values) != roles.shape[1] or set(values) - {0, 1}:
                raise ValueError(f"--padding needs {roles.shape[1]} values of 0 or 1, got {padding!r}")
            attention_mask = torch.tensor([values])
        roles_for_mask = torch.full_like(roles, int(Role.TEXT)) if causal else roles
        allowed = mma_mask(roles_for_mask, attention_mask)[0, 0]
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if output is None:
        typer.echo(mask_to_text(allowed, roles[0]))
    else:
        title = "causal mask" if causal else "MMA mask"
        typer.echo(f"saved {save_mask_png(allowed, roles[0], output, title=title)}")


convert_app = typer.Typer(help="Convert checkpoints into Hugging Face directories.", no_args_is_help=True)


@convert_app.command("reference")
def convert_reference(
    checkpoint_dir: Annotated[
        Path,
        typer.Argument(help="The released AKI checkpoint (config.json + model.safetensors + tokenizer)."),
    ],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the Hugging Face directory.")],
) -> None:
    """Convert the reference (PyTorchModelHubMixin) AKI checkpoint into a normal Hugging Face directory."""
    from .models.aki.convert import convert_reference as convert

    try:
        written = convert(checkpoint_dir, out_dir)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        raise typer.Exit(1) from error
    typer.echo(f"wrote {written}")


def _mount_subcommands() -> None:
    from .eval.cli import app as eval_app
    from .quickstart.cli import quickstart
    from .serve.cli import register_commands
    from .train.cli import app as train_app

    app.command("quickstart")(quickstart)
    register_commands(app)
    app.add_typer(convert_app, name="convert")
    app.add_typer(train_app, name="train", help="Pre-train and fine-tune (MMA or causal) from YAML configs.")
    app.add_typer(
        eval_app,
        name="eval",
        help="Evaluate models on local benchmark files, score predictions offline, compare results.",
    )


_mount_subcommands()


# What each optional dependency is installed with (pyproject.toml's extras).
EXTRAS = {
    "accelerate": "train",
    "peft": "train",
    "tensorboard": "train",
    "webdataset": "train",
    "matplotlib": "train,eval",
    "fastapi": "serve",
    "uvicorn": "serve",
    "gradio": "serve",
    "httpx": "serve",
}


def main() -> None:
    """The ``aki`` entry point: the app, with a missing optional dependency named with the extra to install."""
    try:
        app()
    except ModuleNotFoundError as error:
        root = (error.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        typer.secho(
            f"error: this command needs {root!r}, which the core install leaves out: "
            f'pip install "aki[{EXTRAS[root]}]"',
            err=True,
            fg="red",
        )
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()
