import numpy as np
import pytest
import torch
from PIL import Image

from lmm.data.transforms import ImageTransform

MEAN, STD = (0.5, 0.25, 0.75), (0.5, 0.5, 0.25)


def test_pad_to_square_keeps_content_and_fills_with_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))  # wide red image
    x = ImageTransform(40, MEAN, STD, resample="nearest")(image)
    assert x.shape == (3, 40, 40)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 20, :], red[:, None].expand(3, 40))  # the whole width of the image is kept
    fill = (torch.tensor([round(255 * m) / 255 for m in MEAN]) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 0, :], fill[:, None].expand(3, 40), atol=1e-2)  # padding ~0 after normalising
    assert torch.allclose(x[:, 39, :], fill[:, None].expand(3, 40), atol=1e-2)


def test_resize_and_normalise_values():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    x = ImageTransform(16, MEAN, STD)(image)
    expected = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
                - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(x, expected, atol=1e-6)
    assert ImageTransform(8, MEAN, STD)(image).shape == (3, 8, 8)


def test_grayscale_and_rgba_become_rgb():
    assert ImageTransform(8, MEAN, STD)(Image.new("L", (8, 8), 3)).shape == (3, 8, 8)
    assert ImageTransform(8, MEAN, STD)(Image.new("RGBA", (8, 4))).shape == (3, 8, 8)


def test_unknown_resample_lists_valid():
    with pytest.raises(ValueError, match="bicubic"):
        ImageTransform(8, MEAN, STD, resample="cubic")
