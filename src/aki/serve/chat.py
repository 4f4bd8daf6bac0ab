"""``aki chat``: a multi-turn terminal chat (rich) on the batching :class:`Engine`, answers streamed as they grow.

At the prompt, ``/image PATH`` attaches an image to the next question, ``/reset`` starts a new conversation and
``/quit`` (or end of input) leaves. ``--no-mma`` answers with plain causal attention, for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..generation import InputError, Message, SamplingParams
from .engine import Engine
from .images import open_image_file

HELP = "/image PATH  attach an image to the next question · /reset  new conversation · /quit  leave"


class ChatSession:
    """One conversation: images attached by path, questions answered with the history of earlier turns.

    Example:
        >>> session = ChatSession(engine)  # doctest: +SKIP
        >>> session.attach_image("cat.png")  # doctest: +SKIP
        >>> "".join(session.ask("What is this?"))  # doctest: +SKIP
    """

    def __init__(
        self, engine: Engine, *, params: SamplingParams | None = None, mma: bool | None = None
    ) -> None:
        self.engine = engine
        self.params = params or SamplingParams(max_new_tokens=128)
        self.mma = engine.default_mma if mma is None else mma
        self.messages: list[Message] = []
        self.pending_images: list[Any] = []

    def attach_image(self, path: str | Path) -> Any:
        """Open an image file (within the engine's limits) for the next question; returns the image."""
        image = open_image_file(path, self.engine.limits)
        self.pending_images.append(image)
        return image

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to ``question`` (with the attached images); the turn joins the history when done."""
        content = [{"type": "image", "image": image} for image in self.pending_images]
        user = {"role": "user", "content": [*content, {"type": "text", "text": question}]}
        generation = self.engine.submit([*self.messages, user], self.params, mma=self.mma)
        yield from generation
        self.messages += [user, {"role": "assistant", "content": generation.completion.text}]
        self.pending_images = []

    def reset(self) -> None:
        self.messages, self.pending_images = [], []


def run_chat(session: ChatSession, console: Any, *, read: Callable[[str], str] | None = None) -> None:
    """The terminal loop: read a line, run a command or stream the answer, until ``/quit`` or end of input."""
    read = read or console.input
    attention = "Modality-Mutual Attention" if session.mma else "causal attention (--no-mma)"
    console.print(f"[bold]aki chat[/bold] · {attention}")
    console.print(HELP, style="dim")
    while True:
        try:
            line = read("[bold cyan]you>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        try:
            if line.startswith("/"):
                _command(session, console, line)
                continue
            console.print("[bold green]aki>[/bold green] ", end="")
            for piece in session.ask(line):
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
        except InputError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    console.print("bye", style="dim")


def _command(session: ChatSession, console: Any, line: str) -> None:
    name, _, argument = line.partition(" ")
    if name == "/image":
        path = argument.strip().strip("'\"")
        if not path:
            raise InputError("usage: /image PATH")
        image = session.attach_image(path)
        console.print(
            f"attached {path} ({image.width} x {image.height}) to the next question",
            style="dim",
            soft_wrap=True,
        )
    elif name == "/reset":
        session.reset()
        console.print("new conversation", style="dim")
    else:
        console.print(f"unknown command {name!r}. {HELP}", style="yellow", highlight=False, soft_wrap=True)


__all__ = ["ChatSession", "run_chat"]
