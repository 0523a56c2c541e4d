"""Image preprocessing owned by the vision encoder: pad to square, resize, normalise.

Pad-to-square with the normalisation mean colour is the TinyLLaVA/LLaVA-1.5 choice: the whole
image is kept (a centre crop would cut content away) and the padding becomes ~0 after normalising.
A plain picklable object, so DataLoader workers can carry it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


@dataclass(frozen=True)
class ImageTransform:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = True
    resample: str = "bicubic"

    def __post_init__(self):
        if self.resample not in RESAMPLING:
            raise ValueError(f"unknown resample {self.resample!r}; valid: {sorted(RESAMPLING)}")

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(int(round(255 * m)) for m in self.mean)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> float tensor (3, image_size, image_size)."""
        image = image.convert("RGB")
        if self.pad_to_square:
            image = pad_to_square(image, self.fill)
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), RESAMPLING[self.resample])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std
