"""AKI image preprocessing: RGB, 384 x 384 bicubic (antialiased, as PIL resizes), no crop, [0, 1], mean/std 0.5.

A Hugging Face image processor on the PIL / NumPy backend (no torchvision needed); it takes PIL images, NumPy
arrays, torch tensors and file paths, and names the file when one cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

from ...io import check_decodes, open_image


class AkiImageProcessor(PilBackend):
    """``pixel_values`` ``(N, 3, 384, 384)`` for SigLIP so400m-patch14-384; pass ``size=`` for other towers.

    Example:
        >>> processor = AkiImageProcessor(size={"height": 32, "width": 32})
        >>> processor(Image.new("RGB", (50, 40)), return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 3, 32, 32])
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 384, "width": 384}
    default_to_square = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def fetch_images(self, images: Any) -> Any:
        """Open file paths (``str`` / ``Path``) and check that PIL images decode; other inputs pass through."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(image) for image in images]
        if isinstance(images, (str, Path)):
            return open_image(images)
        if isinstance(images, Image.Image):
            return check_decodes(images)
        return super().fetch_images(images)


__all__ = ["AkiImageProcessor"]
