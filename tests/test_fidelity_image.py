"""Image preprocessing against the references: LLaVA-1.5's `expand2square` (its own code, llava-torch)
with the mean colour as `int(x * 255)`, then transformers' CLIP / SigLIP image processors, for the
paper's towers (CLIP ViT-L/14-336, SigLIP so400m-384), on photo-like images of odd sizes.

LLaVA-1.5 ran the PIL image processors (transformers 4.x; `*ImageProcessorPil` in transformers 5):
lmm's exact backend must be within one grey level of them everywhere. The `torch` resize backend's
deviation is measured and bounded here too (it is an opt-in speed switch).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.data.transforms import ImageTransform

L = pytest.importorskip("tests.reference_llava")

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TOWERS = {"clip_336": (336, CLIP_MEAN, CLIP_STD), "siglip_384": (384, (0.5,) * 3, (0.5,) * 3)}
SIZES = [(500, 375), (333, 500), (640, 427), (427, 640), (1023, 767), (257, 256), (100, 300), (337, 336), (96, 64)]


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth gradients, a few hard-edged shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / (17 + 7 * c) + y / (29 + 5 * c) + c) for c in range(3)], -1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, max(w, h) / 4)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def reference_processor(tower: str, pil: bool = True):
    import transformers

    size, mean, std = TOWERS[tower]
    if tower.startswith("clip"):
        cls = transformers.CLIPImageProcessorPil if pil else transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=mean,
                   image_std=std)
    cls = transformers.SiglipImageProcessorPil if pil else transformers.SiglipImageProcessor
    return cls(size={"height": size, "width": size}, image_mean=mean, image_std=std)


def reference_pixels(image: Image.Image, processor) -> torch.Tensor:
    """LLaVA-1.5's `process_images` with image_aspect_ratio "pad" (TinyLLaVA_Factory's ImagePreprocess)."""
    padded = L.expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor(padded, return_tensors="pt")["pixel_values"][0]


def grey_levels(ours: torch.Tensor, ref: torch.Tensor, std) -> torch.Tensor:
    """|difference| in 1/255 steps of the unnormalised image."""
    return (ours - ref).abs() * torch.tensor(std).view(3, 1, 1) * 255


@pytest.mark.parametrize("tower", list(TOWERS))
def test_pixels_equal_expand2square_and_the_pil_processor(tower):
    size, mean, std = TOWERS[tower]
    processor = reference_processor(tower)
    exact = ImageTransform(size, mean, std, backend="pillow")
    fast = ImageTransform(size, mean, std, backend="torch")
    assert exact.fill == tuple(int(x * 255) for x in mean)  # the references' (truncated) padding colour
    worst, fast_worst, fast_off = 0.0, 0.0, []
    for k, (w, h) in enumerate(SIZES):
        image = photo(w, h, k)
        ref = reference_pixels(image, processor)
        assert ref.shape == (3, size, size)
        diff = grey_levels(exact(image), ref, std)
        worst = max(worst, float(diff.max()))
        fdiff = grey_levels(fast(image), ref, std)
        fast_worst = max(fast_worst, float(fdiff.max()))
        fast_off.append(float((fdiff > 0.5).float().mean()))
    print(f"\n{tower}: pillow backend max {worst:.3f} grey levels; torch backend max {fast_worst:.2f}, "
          f"values off by a level or more: mean {np.mean(fast_off):.2%}, worst image {max(fast_off):.2%}")
    assert worst <= 0.01, worst  # the bound is one grey level; the exact backend is equal
    assert fast_worst <= 2.01 and np.mean(fast_off) < 0.01, (fast_worst, fast_off)


@pytest.mark.parametrize("tower", list(TOWERS))
def test_transformers_5_default_processor_is_within_a_few_levels(tower):
    """transformers 5's default (torchvision) processor, which a user may compare against: not the
    reference (LLaVA-1.5 used the PIL one); its resize differs slightly, measured here."""
    size, mean, std = TOWERS[tower]
    processor = reference_processor(tower, pil=False)
    exact = ImageTransform(size, mean, std, backend="pillow")
    diffs = [grey_levels(exact(photo(w, h, k)), reference_pixels(photo(w, h, k), processor), std)
             for k, (w, h) in enumerate(SIZES[:4])]
    print(f"\n{tower}: vs the torchvision processor, max {max(float(d.max()) for d in diffs):.2f} grey levels")
    assert max(float(d.max()) for d in diffs) <= 1.01
