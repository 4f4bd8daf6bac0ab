"""The vision stage (``aki train vision``): pre-train a tiny vision tower on synthetic scenes, the stand-in for a
pre-trained SigLIP.

The real AKI starts from SigLIP, a vision tower that already sees, kept frozen while the resampler and the
language model learn. The tiny tower starts random, and learning to see only through the gradient of caption
tokens costs more CPU time than the whole study has. So the study first trains the tower alone on a dense,
exactly known target: for every patch, the colour, kind, size and centre (column and row of a 6 x 6 grid) of
the shape that covers it (or background), read from :func:`aki.data.synthetic.render_labels`. Only the tower's
weights are kept; the classification heads are thrown away, and from then on the tower is frozen, as in the
paper. :func:`run_vision` is the recipe: config -> scenes -> model -> loop -> ``output_dir/final`` (model and
processor, the ``model.init`` of pre-training).

Example:
    >>> scene = synthetic.make_sample("train", 0, image_size=48).scene
    >>> patch_targets(scene, image_size=48, patch_size=6).shape
    torch.Size([5, 64])
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import set_seed

from ..data import synthetic
from ..data.config import SourceConfig
from ..data.sources import open_source
from ..generation import default_device
from ..io import open_image, read_records
from .checkpoint import claim_output_dir
from .config import TrainConfig, load_config
from .lineage import stage_entry, write_record
from .model import build_model

# Where a shape's centre lies, as a column and a row of a POSITION_BINS x POSITION_BINS grid of the image.
POSITION_BINS = 6
_BIN_NAMES = tuple(f"{index}/{POSITION_BINS}" for index in range(POSITION_BINS))

# What each patch is taught, and the classes of each target: 0 is background, then the names in order. Every
# patch of a shape is taught the shape's attributes, its centre included, so whichever of its patches a
# resampler latent reads, it reads where the whole shape is (docs/design.md: why the place targets).
TARGETS: dict[str, tuple[str, ...]] = {
    "colour": tuple(synthetic.COLOURS),
    "kind": synthetic.KINDS,
    "size": tuple(synthetic.SIZES),
    "column": _BIN_NAMES,
    "row": _BIN_NAMES,
}


def _bin(fraction: float) -> int:
    return min(int(fraction * POSITION_BINS), POSITION_BINS - 1)


def _classes(shape: synthetic.Shape) -> tuple[int, ...]:
    """The class id of each target for a shape's patches, in ``TARGETS`` order (0 is background)."""
    names = (shape.colour, shape.kind, shape.size, _BIN_NAMES[_bin(shape.x)], _BIN_NAMES[_bin(shape.y)])
    return tuple(options.index(name) + 1 for options, name in zip(TARGETS.values(), names, strict=True))


def patch_targets(scene: synthetic.Scene, *, image_size: int, patch_size: int) -> torch.Tensor:
    """``(len(TARGETS), num_patches)`` class ids, patches in row-major order: for each patch the shape
    covering most of its pixels (at least an eighth of them), else background (0).
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    labels = np.asarray(synthetic.render_labels(scene, image_size), dtype=np.int64)  # (H, W)
    patches = (
        labels.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    )
    counts = np.stack([(patches == index).sum(-1) for index in range(len(scene.shapes) + 1)], -1)  # (P, S+1)
    counts[:, 0] = 0
    owner = counts.argmax(-1)  # (P,)
    owner[counts.max(-1) < max(1, patch_size * patch_size // 8)] = 0
    table = np.zeros((len(TARGETS), len(scene.shapes) + 1), dtype=np.int64)
    for index, shape in enumerate(scene.shapes, start=1):
        table[:, index] = _classes(shape)
    return torch.from_numpy(table[:, owner])


class PatchHeads(nn.Module):
    """One linear classifier per target over the tower's patch features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(width, len(names) + 1) for names in TARGETS.values())

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:  # (N, P, D) -> [(N, P, C_t)]
        return [head(features) for head in self.heads]


def pretrain_vision_tower(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    on_step: Callable[[int, float], object] | None = None,
) -> tuple[list[float], PatchHeads]:
    """Train ``tower`` (a ``SiglipVisionModel``) in place to classify every patch; the losses and the heads.

    ``pixel_values`` ``(N, 3, H, W)`` are processed images and ``targets`` ``(N, len(TARGETS), P)`` their
    :func:`patch_targets` (both may stay on the CPU: batches move to the tower's device). Batches are drawn
    with a generator seeded by ``seed``; AdamW, linear warmup over ``warmup_steps`` (default: a tenth of the
    steps), cosine decay to ``min_lr_ratio`` of ``lr``.
    """
    if len(pixel_values) != len(targets):
        raise ValueError(f"{len(pixel_values)} images but {len(targets)} target rows")
    device = next(tower.parameters()).device
    heads = PatchHeads(tower.config.hidden_size).to(device)
    parameters = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10 if warmup_steps is None else warmup_steps)
    half_range = (1 - min_lr_ratio) / 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else min_lr_ratio
            + half_range * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    losses = []
    for step in range(steps):
        batch = torch.randint(len(pixel_values), (batch_size,), generator=generator)
        features = tower(pixel_values[batch].to(device)).last_hidden_state  # (B, P, D)
        logits = heads(features)
        target = targets[batch].to(device)
        loss = sum(
            nn.functional.cross_entropy(logit.flatten(0, 1), target[:, row].flatten())
            for row, logit in enumerate(logits)
        ) / len(logits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    tower.eval()
    return losses, heads


@torch.no_grad()
def patch_accuracy(
    tower: nn.Module, heads: PatchHeads, pixel_values: torch.Tensor, targets: torch.Tensor
) -> dict:
    """Accuracy per target over the patches that show a shape (background patches are easy)."""
    logits = heads(tower(pixel_values).last_hidden_state)
    shown = targets[:, 0] > 0  # (N, P)
    return {
        name: float((logit.argmax(-1) == targets[:, row])[shown].float().mean())
        for row, (name, logit) in enumerate(zip(TARGETS, logits, strict=True))
    }


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------


def read_scenes(source: SourceConfig, root: str | None = None) -> list[tuple[Image.Image, synthetic.Scene]]:
    """``(image, scene)`` pairs of a source: ``synthetic`` scenes made on the fly, or a ``llava`` / ``jsonl``
    file written by :func:`aki.data.synthetic.write_split` (records with ``image`` and ``scene``), in file order.
    """
    if source.format == "synthetic":
        scenes = open_source(source)
        samples = (scenes.sample(index) for index in range(len(scenes)))
        return [(sample.image.convert("RGB"), sample.scene) for sample in samples]
    if source.format not in ("llava", "jsonl"):
        raise ValueError(f"the vision stage reads synthetic, llava or jsonl sources, got {source.format!r}")
    path = Path(source.path) if root is None else Path(root) / source.path
    pairs = []
    for number, record in enumerate(read_records(path), start=1):
        if "scene" not in record or "image" not in record:
            raise ValueError(f"{path}: record {number} has no 'scene' and 'image' (a synthetic scene file?)")
        image = open_image(Path(source.image_root or path.parent) / record["image"]).convert("RGB")
        pairs.append((image, synthetic.Scene.from_dict(record["scene"])))
    return pairs


def run_vision(config: TrainConfig | str | Path | None = None):
    """Train the vision tower of a fresh (or ``model.init``) AKI on the patch targets of the configured scenes
    and save the whole model with its processor in ``output_dir/final``; returns a :class:`TrainResult`.

    Only the tower learns (the heads are thrown away); ``steps``, ``batch_size``, ``seed`` and ``optim`` (lr,
    weight decay, warmup, ``min_lr_ratio``, ``max_grad_norm``) set the loop. One line per step goes to
    ``output_dir/history.jsonl``.
    """
    from .recipe import TrainResult

    if not isinstance(config, TrainConfig):
        config = load_config("vision", config)
    if config.stage != "vision":
        raise ValueError(f"run_vision got a config for stage {config.stage!r}")
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    claim_output_dir(output_dir, overwrite=config.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = [pair for source in config.data.sources for pair in read_scenes(source, config.data.root)]
    set_seed(config.seed)  # the initial weights, then the heads' (the batches have their own generator)
    _, model, processor = build_model(config.model)
    model.vision_tower.requires_grad_(True)  # what this stage trains, whatever model.train_vision_tower says
    vision = model.config.vision_config
    images = [image for image, _ in pairs]
    targets = torch.stack(
        [
            patch_targets(scene, image_size=vision.image_size, patch_size=vision.patch_size)
            for _, scene in pairs
        ]
    )
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (N, 3, H, W)
    progress = tqdm(total=config.steps, desc="vision", disable=not config.logging.progress_bar)
    with (output_dir / "history.jsonl").open("w") as history:

        def on_step(step: int, loss: float) -> None:
            history.write(json.dumps({"step": step + 1, "loss": loss}) + "\n")
            history.flush()
            progress.update(1)

        optim = config.optim
        losses, _ = pretrain_vision_tower(
            model.vision_tower.to(default_device()),
            pixel_values,
            targets,
            steps=config.steps,
            batch_size=config.batch_size,
            lr=optim.lr,
            seed=config.seed,
            warmup_steps=optim.warmup_steps,
            min_lr_ratio=optim.min_lr_ratio,
            weight_decay=optim.weight_decay,
            max_grad_norm=optim.max_grad_norm or math.inf,
            on_step=on_step,
        )
    progress.close()
    final_dir = output_dir / "final"
    model.cpu().save_pretrained(final_dir)
    processor.save_pretrained(final_dir)
    write_record(final_dir, config, stage_entry(config, trains_vision_tower=True))
    return TrainResult(
        output_dir=output_dir,
        final_dir=final_dir,
        losses=losses,
        steps=config.steps,
        tokens=0,
        seconds=time.perf_counter() - started,
    )


__all__ = [
    "TARGETS",
    "PatchHeads",
    "patch_accuracy",
    "patch_targets",
    "pretrain_vision_tower",
    "read_scenes",
    "run_vision",
]
