"""Where training samples come from: caption files, LLaVA conversations, webdataset shards, synthetic scenes.

A source yields :class:`RawSample` records: an id, image references (a path, encoded bytes or a PIL image;
decoded later, so that a damaged file is reported with its sample) and either a caption (pre-training) or a
LLaVA conversation (fine-tuning). A record that cannot be read carries a ``problem`` instead of raising. Map-style sources (:class:`IndexedSource`) have a length and are read by
index; webdataset shards (:class:`ShardSource`) are read sequentially, one shard after another.

Formats (``format:`` of a source in the YAML config):

* ``jsonl``: one ``{"image": path, "caption": text}`` per line (optional ``"id"``); paths relative to the file.
* ``folder``: ``name.{jpg,jpeg,png,webp}`` with the caption in ``name.txt`` beside it.
* ``llava``: a JSON list (or JSON lines) of ``{"id", "image": path | [paths], "conversations": [{"from":
  "human" | "gpt" | "system", "value"}]}``; ``<image>`` marks where each image goes.
* ``webdataset``: tar shards (brace patterns such as ``shards/{000..099}.tar``) whose samples hold an image
  (``jpg``, ``jpeg``, ``png`` or ``webp``) and a caption (``txt``, or ``json`` with a ``caption`` field).
* ``synthetic``: scenes of :mod:`aki.data.synthetic`, made on the fly (captions or one-question chats).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ..io import check_decodes, decode_image_bytes, open_image, read_records
from . import synthetic
from .config import SourceConfig

ImageRef = str | bytes | Image.Image
_NOT_AN_OBJECT = "the record is not a JSON object"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class BadSample(ValueError):
    """A sample that cannot be trained on (missing or corrupt image, too long, placeholder mismatch ...).

    The message names the sample; the stream skips and counts it or stops the run (``data.on_bad_sample``).
    """

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"bad sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


@dataclass(frozen=True)
class RawSample:
    """One record as a source stores it: images not yet decoded, text not yet tokenized."""

    id: str
    images: tuple[ImageRef, ...]
    caption: str | None = None
    conversations: tuple[dict[str, str], ...] | None = None
    problem: str | None = None  # why the record cannot be used (reported as a bad sample by the stream)


class IndexedSource(Protocol):
    """A source with random access: ``len(source)`` records, ``source[i]`` reads one."""

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RawSample: ...


def load_image(reference: ImageRef, sample_id: str, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image reference to an RGB PIL image; :class:`BadSample` naming the sample if it cannot be read
    or (with ``max_pixels``) has more pixels, checked before decoding.
    """
    try:
        if isinstance(reference, Image.Image):
            image = check_decodes(reference, max_pixels=max_pixels)
        elif isinstance(reference, bytes):
            image = decode_image_bytes(reference, max_pixels=max_pixels)
        elif isinstance(reference, str):
            image = open_image(reference, max_pixels=max_pixels)
        else:
            raise ValueError(f"an image reference must be a path, bytes or an image, got {reference!r}")
    except ValueError as error:
        raise BadSample(sample_id, str(error)) from None
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------------
# Map-style sources
# --------------------------------------------------------------------------------------------------


class _RecordFile:
    """A JSON list or JSON-lines file of records; image paths relative to ``image_root`` (default: its folder)."""

    def __init__(
        self, path: str | Path, *, image_root: str | Path | None = None, name: str | None = None
    ) -> None:
        self.path = Path(path)
        self.records = read_records(self.path, objects_only=False)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.name = name or self.path.stem

    def __len__(self) -> int:
        return len(self.records)

    def _record(self, index: int) -> tuple[str, dict[str, Any] | None]:
        """The sample id and the record (None when it is not a JSON object: a bad sample)."""
        record = self.records[index]
        if not isinstance(record, dict):
            return f"{self.name}:{index}", None
        return f"{self.name}:{record.get('id', index)}", record


class CaptionFile(_RecordFile):
    """``jsonl`` captions: ``{"image": path, "caption": text}`` per line."""

    def __getitem__(self, index: int) -> RawSample:
        sample_id, record = self._record(index)
        if record is None:
            return RawSample(sample_id, (), problem=_NOT_AN_OBJECT)
        if not isinstance(record.get("caption"), str) or not isinstance(record.get("image"), str):
            return RawSample(
                sample_id, (), problem=f"a caption record needs string 'image' and 'caption', got {record}"
            )
        return RawSample(sample_id, (str(self.image_root / record["image"]),), caption=record["caption"])


class CaptionFolder:
    """``folder`` captions: every ``name.{jpg,jpeg,png,webp}`` with a ``name.txt`` beside it, in name order."""

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"caption folder {str(self.path)!r} does not exist")
        self.images = sorted(
            p
            for p in self.path.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".txt").is_file()
        )
        self.name = name or self.path.name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> RawSample:
        image = self.images[index]
        caption = image.with_suffix(".txt").read_text().strip()
        return RawSample(f"{self.name}:{image.stem}", (str(image),), caption=caption)


class LlavaFile(_RecordFile):
    """``llava`` conversations: ``{"id", "image": path | [paths], "conversations": [...]}`` records."""

    def __getitem__(self, index: int) -> RawSample:
        sample_id, record = self._record(index)
        if record is None:
            return RawSample(sample_id, (), problem=_NOT_AN_OBJECT)
        turns = record.get("conversations")
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and "from" in t and "value" in t for t in turns
        ):
            return RawSample(
                sample_id, (), problem="'conversations' must be a list of {'from', 'value'} turns"
            )
        images = record.get("image") or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(path, str) for path in images):
            return RawSample(
                sample_id, (), problem=f"'image' must be a path or a list of paths, got {images!r}"
            )
        return RawSample(
            sample_id, tuple(str(self.image_root / p) for p in images), conversations=tuple(turns)
        )


class SyntheticScenes:
    """``synthetic`` scenes made on the fly: sample ``i`` is ``make_sample(split, i)``; captions or chats.

    With ``family``, sample ``i`` is the ``i``-th question of that family in the whole split (families take
    turns, so it is ``make_sample(split, i * 6 + k)`` for the family's place ``k``): the records a file of that
    family's questions written from the split holds, in its order.
    """

    def __init__(
        self,
        *,
        size: int,
        split: str = "train",
        seed: int = 0,
        image_size: int = 64,
        family: str | None = None,
        name: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a synthetic source needs size >= 1, got {size}")
        families = [f.value for f in synthetic.Family]
        if family is not None and family not in families:
            raise ValueError(f"unknown question family {family!r}; expected one of {families}")
        self.size, self.split, self.seed, self.image_size = size, split, seed, image_size
        self.family = family
        self.name = name or f"synthetic-{split}" + (f"-{family}" if family else "")

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> synthetic.Sample:
        """The synthetic sample behind record ``index``."""
        if self.family is not None:
            families = list(synthetic.Family)
            index = index * len(families) + families.index(synthetic.Family(self.family))
        return synthetic.make_sample(self.split, index, seed=self.seed, image_size=self.image_size)

    def __getitem__(self, index: int) -> RawSample:
        sample = self.sample(index)
        record = sample.to_llava("")
        return RawSample(
            f"{self.name}:{sample.id}",
            (sample.image,),
            caption=synthetic.caption(sample.scene),
            conversations=tuple(record["conversations"]),
        )


# --------------------------------------------------------------------------------------------------
# Webdataset shards
# --------------------------------------------------------------------------------------------------


class ShardSource:
    """``webdataset`` tar shards of image + caption samples, read one shard at a time.

    ``samples(shard)`` yields the records of one shard in stored order; which shards a rank and worker read,
    and in which order, is the stream's business (:mod:`aki.data.stream`).
    """

    def __init__(self, urls: str | list[str], *, name: str | None = None) -> None:
        from webdataset.shardlists import expand_urls

        self.shards = list(expand_urls(urls)) if isinstance(urls, str) else list(urls)
        if not self.shards:
            raise ValueError(f"no webdataset shards match {urls!r}")
        self.name = name or Path(self.shards[0]).parent.name or "webdataset"

    def samples(self, shard: int) -> Iterator[RawSample]:
        import webdataset

        for record in webdataset.tarfile_samples([{"url": self.shards[shard]}]):
            sample_id = f"{self.name}:{record['__key__']}"
            image = next((record[k] for k in ("jpg", "jpeg", "png", "webp") if k in record), None)
            caption = _shard_caption(record)
            if image is None or caption is None:
                fields = sorted(k for k in record if not k.startswith("__"))
                problem = f"a shard sample needs an image (jpg/jpeg/png/webp) and a caption (txt/json), has {fields}"
                yield RawSample(sample_id, (), problem=problem)
            else:
                yield RawSample(sample_id, (image,), caption=caption)


def open_source(config: SourceConfig, root: str | Path | None = None) -> IndexedSource | ShardSource:
    """The reader of one configured source (see the module docstring for the formats); a relative ``path`` is
    read from ``root`` when given.
    """
    if config.format == "synthetic":
        return SyntheticScenes(
            size=config.size,
            split=config.split,
            seed=config.seed,
            image_size=config.image_size,
            family=config.family,
            name=config.name,
        )
    if not config.path:
        raise ValueError(f"a {config.format!r} source needs a path")
    if root is not None and not Path(config.path).is_absolute():
        config = dataclasses.replace(config, path=str(Path(root) / config.path))
    if config.format == "webdataset":
        return ShardSource(config.path, name=config.name)
    if config.format == "folder":
        return CaptionFolder(config.path, name=config.name)
    reader = CaptionFile if config.format == "jsonl" else LlavaFile
    return reader(config.path, image_root=config.image_root, name=config.name)


def _shard_caption(record: dict[str, Any]) -> str | None:
    if "txt" in record:
        return record["txt"].decode("utf-8").strip()
    if "json" in record:
        caption = json.loads(record["json"]).get("caption")
        return caption if isinstance(caption, str) else None
    return None


__all__ = [
    "BadSample",
    "CaptionFile",
    "CaptionFolder",
    "IndexedSource",
    "LlavaFile",
    "RawSample",
    "ShardSource",
    "SyntheticScenes",
    "load_image",
    "open_source",
]
