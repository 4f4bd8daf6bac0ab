"""The data part of a training config: which sources, how they are mixed, encoded and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceFormat = Literal["jsonl", "folder", "llava", "webdataset", "synthetic"]
Order = Literal["image_first", "text_first", "as_is"]


@dataclass
class SourceConfig:
    """One data source; ``weight`` is its share of the mixture (normalised over the sources).

    ``path`` is a file, folder or shard pattern (see :mod:`aki.data.sources`); ``image_root`` resolves
    relative image paths of ``jsonl`` and ``llava`` files (default: the file's folder). ``size``, ``split``,
    ``seed``, ``image_size`` and ``family`` are read by ``synthetic`` sources only: ``size`` samples of the
    split, or with ``family`` the first ``size`` questions of that family in the order the whole split has them
    (what :func:`aki.quickstart.study.write_data` writes to ``train_<family>.jsonl``).
    :data:`SOURCE_FIELDS` lists the fields each format reads.
    """

    format: SourceFormat
    path: str = ""
    weight: float = 1.0
    name: str | None = None
    image_root: str | None = None
    size: int = 1000
    split: str = "train"
    seed: int = 0
    image_size: int = 64
    family: str | None = None

    def applicable(self) -> dict[str, object]:
        """The fields this source's format reads, as a dict (what ``--print-config`` shows)."""
        return {name: getattr(self, name) for name in SOURCE_FIELDS[self.format]}


_COMMON_FIELDS = ("format", "name", "weight")
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "jsonl": (*_COMMON_FIELDS, "path", "image_root"),
    "llava": (*_COMMON_FIELDS, "path", "image_root"),
    "folder": (*_COMMON_FIELDS, "path"),
    "webdataset": (*_COMMON_FIELDS, "path"),
    "synthetic": (*_COMMON_FIELDS, "size", "split", "seed", "image_size", "family"),
}


@dataclass
class DataConfig:
    """Sources, mixture, encoding and the bad-sample policy of a run.

    * ``order``: where images go relative to the text of their turn (DOT trains ``text_first`` then
      ``image_first``); ``as_is`` keeps the data's own placement.
    * ``max_length``: samples longer than this (after image expansion) are bad samples.
    * ``max_image_pixels``: an image larger than this (width x height, read from its header before decoding)
      makes its sample a bad sample.
    * ``flip_probability``: chance of a horizontal flip, which also swaps left/right words and boxes.
    * ``on_bad_sample``: ``skip`` drops and counts a bad sample, ``error`` stops the run (after a checkpoint)
      with a message naming it.
    * ``num_workers``: DataLoader worker processes per rank (0: in the training process).
    * ``shuffle``: visit each map-style source in a seeded random order per epoch (else in stored order).
    * ``root``: the folder that relative source paths are read from (None: the working directory).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    root: str | None = None
    max_length: int = 128
    max_image_pixels: int = 40_000_000
    order: Order = "image_first"
    flip_probability: float = 0.0
    on_bad_sample: Literal["skip", "error"] = "skip"
    num_workers: int = 0
    shuffle: bool = True


__all__ = ["SOURCE_FIELDS", "DataConfig", "Order", "SourceConfig", "SourceFormat"]
