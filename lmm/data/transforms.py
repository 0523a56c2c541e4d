"""Image preprocessing owned by the vision encoder: pad to square, resize, normalise.

Pad-to-square with the normalisation mean colour is the TinyLLaVA/LLaVA-1.5 choice: the whole
image is kept (a centre crop would cut content away) and the padding becomes ~0 after normalising.
A plain picklable object, so DataLoader workers can carry it.

Speed (the data pipeline's per-core budget is set by this call; numbers in
`experiments/data_throughput/README.md`). The default `backend="pillow"` gives the same output
as the plain recipe (convert, paste onto a mean-colour canvas, `Image.resize`, `/255`, `-mean`,
`/std`) to float rounding (< 1e-5), only faster: no copy of an image already RGB, a wide image is
resized along its width before its padding rows are added (Pillow resizes in two separable passes,
width first, and a padding row stays the fill colour, so this is the same arithmetic on fewer
rows), and `uint8 -> (x/255 - mean)/std` is one copy into a preallocated tensor plus a fused
per-channel scale and offset. Two opt-in choices trade exactness for time:

* `backend="torch"`: the resize runs in torch's uint8 antialiased kernel (Pillow's algorithm,
  vectorised: ~5x faster than Pillow's resize), bicubic or bilinear only. Its fixed-point weights
  are narrower than Pillow's, so some values differ from the exact output by one grey level (1/255
  before normalising): under 0.5% of them for a photo shrunk to 336/384 px (up to ~8% for tiny
  images at some ratios), and by up to two levels when a small image is enlarged.
* `fast_jpeg_draft=True`: a JPEG not yet decoded is decoded at 1/2, 1/4 or 1/8 scale in the DCT
  (Pillow's `Image.draft`) when the reduced image keeps the longer side >= `image_size` (each side
  >= `image_size` without padding), so the final resize still only shrinks. Pixels change: the DCT
  scaling is a cruder low-pass than a bicubic over the full image, and an odd side rounds up, which
  can move the padding by up to half an output pixel (a 1-2 grey-level mean difference on
  photo-like images, hard edges up to tens of levels). It only applies to images at least twice
  the output size: never to COCO's <= 640 px images at 336/384 px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
BACKENDS = ("pillow", "torch")
TORCH_RESAMPLING = ("bicubic", "bilinear")  # torch's antialiased kernels follow Pillow's only for these


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":  # `convert` would return a copy
        image.load()
        return image
    return image.convert("RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8, writable (torch.from_numpy warns on the read-only `np.asarray` of an image)."""
    return np.array(image, dtype=np.uint8)


def _pad_pixels(image: Image.Image, fill: tuple[int, int, int]) -> np.ndarray:
    """`_pixels(pad_to_square(image, fill))` with one copy of the image instead of three."""
    src = np.asarray(image)
    h, w, _ = src.shape
    side = max(w, h)
    if w == h:
        return src.copy()
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    row = np.empty((side, 3), dtype=np.uint8)
    row[:] = fill  # one row, then whole rows at a time (a per-pixel broadcast of 3 values is slow)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:top] = row
    canvas[top + h:] = row
    canvas[top:top + h, :left] = row[:left]
    canvas[top:top + h, left + w:] = row[left + w:]
    canvas[top:top + h, left:left + w] = src
    return canvas


@dataclass(frozen=True)
class ImageTransform:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = True
    resample: str = "bicubic"
    backend: str = "pillow"         # "pillow": exact; "torch": faster resize, 1-2 grey levels off (module docstring)
    fast_jpeg_draft: bool = False   # DCT-domain downscale of large JPEGs while decoding (module docstring)

    def __post_init__(self):
        if self.resample not in RESAMPLING:
            raise ValueError(f"unknown resample {self.resample!r}; valid: {sorted(RESAMPLING)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {list(BACKENDS)}")
        if self.backend == "torch" and self.resample not in TORCH_RESAMPLING:
            raise ValueError(f"backend 'torch' resizes with {list(TORCH_RESAMPLING)} only, not {self.resample!r}; "
                             f"use backend 'pillow'")

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(int(255 * m) for m in self.mean)  # truncated, as LLaVA-1.5 and TinyLLaVA_Factory: int(x * 255)

    @cached_property
    def _scale_offset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x/255 - mean)/std == x * scale - offset, per channel."""
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=torch.float64)
        offset = torch.tensor(self.mean, dtype=torch.float64) / torch.tensor(self.std, dtype=torch.float64)
        return scale.float().view(3, 1, 1), offset.float().view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> normalised float tensor (3, image_size, image_size)."""
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> padded, resized uint8 tensor (3, image_size, image_size). The data
        pipeline ships these: a quarter of float32's bytes through worker queues and pinned memory,
        and the model normalises them on its device (`normalize`)."""
        if self.fast_jpeg_draft:
            self._draft(image)
        image = _as_rgb(image)
        if self.backend == "torch":
            return self._resize_torch(image)
        return torch.from_numpy(self._resize_pillow(image)).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, h, w) -> float32 `(x/255 - mean)/std`, on the tensor's device."""
        scale, offset = (t.to(pixels.device) for t in self._scale_offset)
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        out.copy_(pixels)  # also makes a permuted (channels-last) view contiguous
        return out.mul_(scale).sub_(offset)

    def _draft(self, image: Image.Image) -> None:
        """Ask a not-yet-decoded JPEG for a DCT-scaled decode that keeps every side the resize needs.
        `Image.draft` picks the largest of 1/1, 1/2, 1/4, 1/8 that leaves each side >= the request
        and is a no-op for other formats and for an image already loaded."""
        if getattr(image, "format", None) not in ("JPEG", "MPO"):
            return
        w, h = image.size
        s = self.image_size
        if self.pad_to_square:  # the padded square's side becomes s: each side shrinks by s / max(w, h)
            side = max(w, h)
            need = (math.ceil(w * s / side), math.ceil(h * s / side))
        else:
            need = (s, s)
        image.draft(None, need)

    def _resize_pillow(self, image: Image.Image) -> np.ndarray:
        s, resample = self.image_size, RESAMPLING[self.resample]
        w, h = image.size
        if self.pad_to_square and w > h and resample != Image.Resampling.NEAREST:
            # Pillow resizes in two separable passes, width first; a padding row stays the fill
            # colour through the width pass. So resizing the unpadded rows' width, then adding the
            # padding rows and resizing the height, is the padded canvas' arithmetic minus the
            # padding rows' width pass (a tall image's padding columns take part in every row's
            # width pass, so it keeps the plain order).
            image = image.resize((s, h), resample)
            canvas = Image.new("RGB", (s, w), self.fill)
            canvas.paste(image, (0, (w - h) // 2))
            image = canvas
        elif self.pad_to_square:
            image = pad_to_square(image, self.fill)
        if image.size != (s, s):
            image = image.resize((s, s), resample)
        return _pixels(image)

    def _resize_torch(self, image: Image.Image) -> torch.Tensor:
        s = self.image_size
        pixels = _pad_pixels(image, self.fill) if self.pad_to_square else _pixels(image)
        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # channels-last, as the uint8 kernel wants
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode=self.resample, antialias=True)
        return x[0]
