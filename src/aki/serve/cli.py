"""``aki chat``, ``aki demo`` and ``aki serve``: thin commands over :mod:`aki.serve`.

Each takes a saved AKI directory (model + processor); the default is the embedded default's tiny model
fine-tuned with MMA, ``outputs/quickstart/mma`` (written by ``aki quickstart``). ``register_commands(app)``
adds the three commands to another typer app (the top-level ``aki``); ``python -m aki.serve.cli`` runs them alone.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MODEL_DIR = Path("outputs/quickstart/mma")


class ServeEngine(str, Enum):
    aki = "aki"
    vllm = "vllm"


ModelDir = Annotated[
    Path,
    typer.Argument(
        help="A saved AKI directory (model + processor). Default: the MMA model of `aki quickstart`."
    ),
]
MmaOption = Annotated[
    bool,
    typer.Option("--mma/--no-mma", help="Modality-Mutual Attention, or plain causal attention to compare."),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="Most new tokens per answer.")]
Host = Annotated[str, typer.Option(help="Address to bind (keep 127.0.0.1 unless you mean to expose it).")]
Threads = Annotated[
    int | None,
    typer.Option(min=1, help="torch threads (default: torch's choice; a tiny model is fastest with 1)."),
]


def _engine(model_dir: Path, *, mma: bool, threads: int | None, **kwargs):
    import torch

    from .engine import Engine

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return Engine.from_pretrained(model_dir, mma=mma, **kwargs)
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error), param_hint="MODEL_DIR") from error


def chat(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    mma: MmaOption = True,
    max_tokens: MaxTokens = 128,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    threads: Threads = None,
) -> None:
    """Chat in the terminal: /image PATH attaches an image, /reset starts over, /quit leaves."""
    from rich.console import Console

    from ..generation import InputError, SamplingParams
    from .chat import ChatSession, run_chat

    try:
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
    except InputError as error:
        raise typer.BadParameter(str(error)) from error
    with _engine(model_dir, mma=mma, threads=threads) as engine:
        run_chat(ChatSession(engine, params=params), Console(highlight=False))


def demo(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the web page.")] = 7860,
    max_tokens: MaxTokens = 64,
    threads: Threads = None,
) -> None:
    """A gradio page: image upload, multi-turn chat, MMA and causal answers side by side, attention pictures."""
    with _engine(model_dir, mma=True, threads=threads) as engine:
        from ..generation import SamplingParams
        from .demo import launch_demo  # gradio takes seconds to import: only once the model is there

        typer.echo(f"aki demo on http://{host}:{port}/ (Ctrl+C to stop)")
        launch_demo(engine, host=host, port=port, params=SamplingParams(max_new_tokens=max_tokens))


def serve(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP server.")] = 8000,
    mma: MmaOption = True,
    model_name: Annotated[
        str | None, typer.Option(help="Model id in responses (default: MODEL_DIR as given).")
    ] = None,
    image_dir: Annotated[
        Path | None, typer.Option(help="Allow image_url parts naming local files inside this directory.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most requests in one generate.")] = 8,
    batch_window_ms: Annotated[
        float, typer.Option(min=0.0, help="How long to wait for a batch to fill.")
    ] = 20.0,
    max_tokens_limit: Annotated[
        int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")
    ] = 1024,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Longest prompt, images expanded.")] = 4096,
    max_images: Annotated[int, typer.Option(min=0, help="Most images per request.")] = 8,
    max_image_bytes: Annotated[int, typer.Option(min=1, help="Largest encoded image.")] = 10 * 2**20,
    max_image_pixels: Annotated[int, typer.Option(min=1, help="Largest image, width x height.")] = 4096
    * 4096,
    threads: Threads = None,
    engine: Annotated[
        ServeEngine,
        typer.Option(
            help="aki: the embedded engine. vllm: vLLM's server with aki's plugin (pip install aki[vllm])."
        ),
    ] = ServeEngine.aki,
    vllm_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="With --engine vllm: one more `vllm serve` argument, e.g. --vllm-arg=--max-model-len=2048."
        ),
    ] = None,
) -> None:
    """An OpenAI-compatible /v1/chat/completions server; concurrent requests are batched together."""
    if engine is ServeEngine.vllm:
        from ..vllm.serve import serve_with_vllm

        typer.echo(f"aki serve: vLLM on http://{host}:{port}/v1 (MMA {'on' if mma else 'off'})")
        options = {"host": host, "port": port, "model_name": model_name, "mma": mma, "image_dir": image_dir}
        sizes = {"max_batch_size": max_batch_size, "max_images": max_images}
        serve_with_vllm(model_dir, **options, **sizes, extra=vllm_arg or ())
    if vllm_arg:
        raise typer.BadParameter("--vllm-arg needs --engine vllm", param_hint="--vllm-arg")
    from .engine import Limits

    limits = Limits(
        max_images=max_images,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_tokens_limit,
    )
    engine = _engine(
        model_dir,
        mma=mma,
        threads=threads,
        limits=limits,
        max_batch_size=max_batch_size,
        batch_window_s=batch_window_ms / 1e3,
    )
    from .server import ServerSettings, run_server

    settings = ServerSettings(model_name=model_name or str(model_dir), image_dir=image_dir)
    typer.echo(f"aki serve on http://{host}:{port}/v1 (MMA {'on' if mma else 'off'}; Ctrl+C to stop)")
    run_server(engine, settings, host=host, port=port)


COMMANDS = (chat, demo, serve)


def register_commands(app: typer.Typer) -> None:
    """Add ``chat``, ``demo`` and ``serve`` to ``app``."""
    for command in COMMANDS:
        app.command()(command)


app = typer.Typer(name="aki-serve", help="Chat, demo and serve AKI models.", add_completion=False)
register_commands(app)

if __name__ == "__main__":
    app()
