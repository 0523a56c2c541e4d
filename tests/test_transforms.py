import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.data.transforms import ImageTransform

MEAN, STD = (0.5, 0.25, 0.75), (0.5, 0.5, 0.25)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def reference(image: Image.Image, size: int, mean, std, resample="bicubic", pad=True) -> torch.Tensor:
    """The plain recipe the fast transform must reproduce: RGB, mean-colour canvas (int(255 * mean), as
    LLaVA-1.5), resize, normalise."""
    image = image.convert("RGB")
    w, h = image.size
    if pad and w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE[resample])
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def photo(w: int, h: int, seed: int = 0, cell: int = 8) -> Image.Image:
    """Smooth colour fields plus grain: every output pixel mixes different input values."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8))


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "P":
        return image.quantize(64)
    if mode == "CMYK_JPEG":  # a lazily decoded CMYK JPEG, as a file on disk gives it
        buf = io.BytesIO()
        image.convert("CMYK").save(buf, "JPEG", quality=90)
        return Image.open(io.BytesIO(buf.getvalue()))
    if mode == "JPEG":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        return Image.open(io.BytesIO(buf.getvalue()))
    return image.convert(mode)


SIZES = [(64, 48), (48, 64), (50, 50), (101, 40), (37, 90), (120, 119), (24, 16), (32, 20), (40, 33)]
MODES = ["RGB", "L", "RGBA", "P", "CMYK_JPEG", "JPEG"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wh", SIZES)
@pytest.mark.parametrize("size", [32, 27])
def test_pillow_backend_matches_plain_recipe(mode, wh, size):
    """Wide, tall, square, odd margins, up- and down-scaling, an image already the output width."""
    image = as_mode(photo(*wh), mode)
    expected = reference(as_mode(photo(*wh), mode), size, CLIP_MEAN, CLIP_STD)
    x = ImageTransform(size, CLIP_MEAN, CLIP_STD)(image)
    assert x.shape == (3, size, size) and x.dtype == torch.float32 and x.is_contiguous()
    assert (x - expected).abs().max() < 1e-5


@pytest.mark.parametrize("resample", sorted(RESAMPLE))
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("wh", [(64, 40), (40, 64), (30, 30), (16, 12)])
def test_pillow_backend_matches_plain_recipe_every_resample(resample, pad, wh):
    image = photo(*wh, seed=1)
    x = ImageTransform(24, MEAN, STD, pad_to_square=pad, resample=resample)(image)
    assert (x - reference(image, 24, MEAN, STD, resample, pad)).abs().max() < 1e-5


def grey_levels(x: torch.Tensor, expected: torch.Tensor, std) -> torch.Tensor:
    """|x - expected| in 0-255 grey levels before normalising."""
    return ((x - expected).abs() * torch.tensor(std).view(3, 1, 1) * 255).round()


@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
@pytest.mark.parametrize("wh", SIZES + [(640, 480), (427, 640), (500, 375), (1024, 768), (200, 150), (100, 75)])
@pytest.mark.parametrize("seed", [0, 2])
def test_torch_backend_within_a_grey_level_or_two(resample, wh, seed):
    """Torch's uint8 kernel uses narrower fixed-point weights than Pillow: a few values are off by
    one grey level when shrinking, by up to two when enlarging (bicubic's lobes amplify the
    intermediate rounding); COCO-size photos shrunk to 336/384 px: one level, under 1% of values."""
    sizes = [384, 336] if wh[0] > 150 else [32, 27]
    image = photo(*wh, seed=seed)
    for size in sizes:
        expected = reference(image, size, CLIP_MEAN, CLIP_STD, resample)
        x = ImageTransform(size, CLIP_MEAN, CLIP_STD, resample=resample, backend="torch")(image)
        assert x.shape == (3, size, size) and x.dtype == torch.float32 and x.is_contiguous()
        levels = grey_levels(x, expected, CLIP_STD)
        shrinking = max(wh) >= size
        assert levels.max() <= (1 if shrinking else 2)
        assert (levels > 0).float().mean() < (0.01 if max(wh) > 400 else 0.1)


@pytest.mark.parametrize("mode", MODES)
def test_torch_backend_converts_every_mode(mode):
    image = as_mode(photo(50, 30), mode)
    x = ImageTransform(32, MEAN, STD, backend="torch")(image)
    assert grey_levels(x, reference(as_mode(photo(50, 30), mode), 32, MEAN, STD), STD).max() <= 1


def jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    photo(w, h, seed=3, cell=40).save(buf, "JPEG", quality=90)  # features larger than an output pixel
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["pillow", "torch"])
def test_jpeg_draft_decodes_smaller_but_never_below_the_output_size(backend):
    data = jpeg(400, 200)
    tf = ImageTransform(48, CLIP_MEAN, CLIP_STD, backend=backend, fast_jpeg_draft=True)
    image = Image.open(io.BytesIO(data))
    x = tf(image)
    assert image.size == (50, 25)  # 1/8 scale: the long side 50 >= 48, a 1/16 scale does not exist
    assert x.shape == (3, 48, 48)
    # close to the full decode but not equal: the DCT scaling is another low-pass (grey levels)
    levels = grey_levels(x, reference(Image.open(io.BytesIO(data)), 48, CLIP_MEAN, CLIP_STD), CLIP_STD)
    assert 0 < levels.mean() < 8

    image = Image.open(io.BytesIO(data))
    ImageTransform(120, CLIP_MEAN, CLIP_STD, fast_jpeg_draft=True)(image)
    assert image.size == (200, 100)  # 1/2: a 1/4 decode (100 px) would be smaller than 120


def test_jpeg_draft_leaves_small_images_and_other_formats_alone():
    data = jpeg(64, 48)  # a 1/2 decode would be 32 px < 40: decoded in full, output exact
    tf = ImageTransform(40, CLIP_MEAN, CLIP_STD, fast_jpeg_draft=True)
    image = Image.open(io.BytesIO(data))
    x = tf(image)
    assert image.size == (64, 48)
    assert (x - reference(Image.open(io.BytesIO(data)), 40, CLIP_MEAN, CLIP_STD)).abs().max() < 1e-5
    png = photo(400, 200)
    assert (tf(png) - reference(png, 40, CLIP_MEAN, CLIP_STD)).abs().max() < 1e-5
    loaded = Image.open(io.BytesIO(jpeg(400, 200)))
    loaded.load()  # already decoded: draft cannot apply any more
    tf(loaded)
    assert loaded.size == (400, 200)


def test_jpeg_draft_without_padding_keeps_both_sides():
    image = Image.open(io.BytesIO(jpeg(400, 200)))
    ImageTransform(48, CLIP_MEAN, CLIP_STD, pad_to_square=False, fast_jpeg_draft=True)(image)
    assert image.size == (100, 50)  # both sides stretch to 48: the short side must stay >= 48


def test_pickles_after_use():
    tf = ImageTransform(16, MEAN, STD, backend="torch")
    image = photo(20, 12)
    x = tf(image)
    clone = pickle.loads(pickle.dumps(tf))
    assert clone == tf and torch.equal(clone(image), x)


def test_pad_to_square_keeps_content_and_fills_with_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))  # wide red image
    x = ImageTransform(40, MEAN, STD, resample="nearest")(image)
    assert x.shape == (3, 40, 40)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 20, :], red[:, None].expand(3, 40))  # the whole width of the image is kept
    fill = (torch.tensor([int(255 * m) / 255 for m in MEAN]) - torch.tensor(MEAN)) / torch.tensor(STD)
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


def test_unknown_backend_and_torch_resample_rejected():
    with pytest.raises(ValueError, match="pillow"):
        ImageTransform(8, MEAN, STD, backend="cv2")
    with pytest.raises(ValueError, match="bilinear"):
        ImageTransform(8, MEAN, STD, resample="lanczos", backend="torch")


def test_uint8_pixels_reach_the_model_normalised(tiny_lmm):
    """The data pipeline ships uint8; the model normalises on its device, to the same input."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8))
    pixels = tiny_lmm.image_transform.pixels(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    normalised = tiny_lmm.image_transform(image)
    assert torch.allclose(tiny_lmm.image_transform.normalize(pixels), normalised, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(tiny_lmm.encode_images(pixels[None]), tiny_lmm.encode_images(normalised[None]), atol=1e-6)


def test_the_resize_backend_is_part_of_the_checkpoint(tiny_specs, tmp_path):
    import lmm
    from lmm.model.lmm import LMM

    specs = {**tiny_specs, "vision": {**tiny_specs["vision"], "resize_backend": "torch"}}
    model = LMM(**specs)
    assert model.image_transform.backend == "torch"
    model.save_pretrained(tmp_path / "ckpt")
    assert lmm.load(tmp_path / "ckpt").image_transform.backend == "torch"
