"""The token-count-changing connectors: Perceiver-style resampler and pixel-shuffle MLP."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID
from lmm.model.lmm import LMM
from lmm.model.pixel_shuffle import PixelShuffleConnector
from lmm.model.resampler import ResamplerConnector
from lmm.model.spec import build
from tests.conftest import llm_spec, vision_spec

RESAMPLER = {"_target_": "lmm.model.resampler.ResamplerConnector", "num_queries": 6, "depth": 2, "num_heads": 4}
PIXEL_SHUFFLE = {"_target_": "lmm.model.pixel_shuffle.PixelShuffleConnector", "factor": 2, "depth": 2, "act": "gelu"}


# --- pixel shuffle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens, factor, expected", [(16, 2, 4), (576, 2, 144), (729, 2, 196), (25, 2, 9),
                                                      (36, 3, 4), (49, 3, 9), (16, 1, 16)])
def test_pixel_shuffle_output_tokens(tokens, factor, expected):
    c = PixelShuffleConnector(8, 12, factor=factor)
    assert c.output_tokens(tokens) == expected
    out = c(torch.randn(2, tokens, 8))
    assert out.shape == (2, expected, 12)
    assert c.mlp[0].in_features == 8 * factor * factor


def unshuffle_reference(x: torch.Tensor, factor: int) -> torch.Tensor:
    """torch's pixel_unshuffle on the (N, C, H, W) grid, zero-padded bottom/right to a multiple of
    the factor, rearranged to the connector's documented order: merged grid row-major, and inside a
    token the block's patches row-major, each patch's C features contiguous."""
    n, tokens, c = x.shape
    side = math.isqrt(tokens)
    image = x.reshape(n, side, side, c).permute(0, 3, 1, 2)  # (N, C, H, W)
    pad = -side % factor
    image = F.pad(image, (0, pad, 0, pad))
    g = (side + pad) // factor
    un = F.pixel_unshuffle(image, factor)  # (N, C * f * f, g, g), channel index c * f * f + dy * f + dx
    un = un.reshape(n, c, factor, factor, g, g).permute(0, 4, 5, 2, 3, 1)  # (N, row, col, dy, dx, C)
    return un.reshape(n, g * g, factor * factor * c)


@pytest.mark.parametrize("side", [4, 5])  # even grid; odd grid padded (5 -> 6, as SigLIP-384's 27 -> 28)
def test_pixel_shuffle_matches_pixel_unshuffle(side):
    torch.manual_seed(0)
    c = PixelShuffleConnector(3, 10, factor=2)
    x = torch.randn(2, side * side, 3)
    merged = c.space_to_depth(x)
    assert torch.equal(merged, unshuffle_reference(x, 2))
    torch.testing.assert_close(c(x), c.mlp(unshuffle_reference(x, 2)))
    # by hand: token 0 is patches (0,0), (0,1), (1,0), (1,1) side by side
    grid = x.reshape(2, side, side, 3)
    assert torch.equal(merged[:, 0], torch.cat([grid[:, 0, 0], grid[:, 0, 1], grid[:, 1, 0], grid[:, 1, 1]], -1))
    if side % 2:  # the last token of an odd grid holds one real patch and three zero pads
        assert torch.equal(merged[:, -1, :3], grid[:, -1, -1]) and not merged[:, -1, 3:].any()


def test_pixel_shuffle_refuses_a_non_square_token_count():
    c = PixelShuffleConnector(8, 12)
    with pytest.raises(ValueError, match="17 tokens.*not a perfect square.*cls_patch"):
        c.output_tokens(17)
    with pytest.raises(ValueError, match="not a perfect square"):
        c(torch.randn(1, 17, 8))


def test_pixel_shuffle_with_clip_cls_kept_fails_loudly(tokenizer_dir):
    model = LMM(vision=vision_spec("clip", feature_select="cls_patch"), connector=PIXEL_SHUFFLE,
                llm=llm_spec(tokenizer_dir))
    with pytest.raises(ValueError, match="not a perfect square"):
        _ = model.num_visual_tokens


# --- resampler -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", [16, 17, 729])
def test_resampler_shapes_any_token_count(tokens):
    c = ResamplerConnector(32, 48, num_queries=5, depth=2, num_heads=4)
    assert c.output_tokens(tokens) == 5
    assert c(torch.randn(2, tokens, 32)).shape == (2, 5, 48)


def test_resampler_rejects_heads_not_dividing_the_width():
    with pytest.raises(ValueError, match="num_heads=5 does not divide its width 48"):
        ResamplerConnector(32, 48, num_heads=5)
    assert ResamplerConnector(32, 48, num_heads=5, width=40).proj_out.out_features == 48


def resampler_reference(c: ResamplerConnector, x: torch.Tensor) -> torch.Tensor:
    """The resampler written out with explicit per-head softmax attention (no SDPA, no reshapes
    shared with the module), from the module's own weights."""
    media = c.proj_in(x)
    q_all = c.queries.expand(x.shape[0], -1, -1)
    for b in c.blocks:
        qn = b.norm_queries(q_all)
        kv_in = torch.cat([b.norm_media(media), qn], 1)
        q, k, v = b.to_q(qn), *b.to_kv(kv_in).chunk(2, -1)
        d = q.shape[-1] // b.num_heads
        heads = []
        for h in range(b.num_heads):
            s = slice(h * d, (h + 1) * d)
            weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), -1)
            heads.append(weights @ v[..., s])
        q_all = q_all + b.to_out(torch.cat(heads, -1))
        q_all = q_all + b.ffn(q_all)
    return c.proj_out(c.norm_out(q_all))


def test_resampler_matches_explicit_attention_and_reads_the_patches():
    torch.manual_seed(0)
    c = ResamplerConnector(8, 24, num_queries=3, depth=2, num_heads=4)  # head dim 6 != 4 heads
    x = torch.randn(2, 10, 8)
    out = c(x)
    torch.testing.assert_close(out, resampler_reference(c, x))
    # the output depends on the patches, per sample, and not on their order (attention over a set)
    other = c(torch.cat([x[:1], torch.randn(1, 10, 8)]))
    torch.testing.assert_close(other[0], out[0])
    assert not torch.allclose(other[1], out[1])
    torch.testing.assert_close(c(x[:, torch.randperm(10)]), out)


# --- both: spec round trip, and inside an LMM --------------------------------------------------------

@pytest.mark.parametrize("cls, config", [
    (ResamplerConnector, {"num_queries": 4, "depth": 1, "num_heads": 2, "ffn_mult": 2, "act": "silu", "width": 24}),
    (ResamplerConnector, {}),
    (PixelShuffleConnector, {"factor": 3, "depth": 1, "act": "relu"}),
    (PixelShuffleConnector, {}),
])
def test_spec_round_trip_gives_identical_outputs(cls, config):
    torch.manual_seed(0)
    c = cls(32, 48, **config)
    spec = c.spec()
    assert spec["_target_"] == f"{cls.__module__}.{cls.__name__}"
    assert {k: spec[k] for k in config} == config
    assert json.loads(json.dumps(spec)) == spec  # primitives only, as a checkpoint's config.json stores it
    rebuilt = build(spec, in_dim=32, out_dim=48)
    rebuilt.load_state_dict(c.state_dict())
    assert rebuilt.spec() == spec
    x = torch.randn(2, 36, 32)
    assert torch.equal(rebuilt(x), c(x))


@pytest.mark.parametrize("connector, image_size, expected_visual", [
    (RESAMPLER, 32, 6),        # 4 x 4 patches -> 6 queries
    (PIXEL_SHUFFLE, 32, 4),    # 4 x 4 patches -> 2 x 2
    (PIXEL_SHUFFLE, 40, 9),    # 5 x 5 patches, padded to 6 x 6 -> 3 x 3
])
def test_lmm_with_connector_expands_trains_and_steps(tokenizer_dir, connector, image_size, expected_visual):
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(image_size=image_size), connector=connector, llm=llm_spec(tokenizer_dir))
    assert model.num_visual_tokens == expected_visual
    # sample 0: one image; sample 1: two images; sample 2: text only, right-padded
    rows = [[7, IMAGE_TOKEN_ID, 8, 9, 10, 11], [IMAGE_TOKEN_ID, 12, IMAGE_TOKEN_ID, 13, 14, 15], [16, 17, 18, 19]]
    pad = model.tokenizer.pad_token_id
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill((input_ids == IMAGE_TOKEN_ID) | (attention_mask == 0), IGNORE_INDEX)
    pixel_values = torch.randn(3, 3, image_size, image_size)

    out = model(input_ids, pixel_values, attention_mask, labels)
    text_tokens = torch.tensor([sum(t != IMAGE_TOKEN_ID for t in r) for r in rows])
    n_images = torch.tensor([r.count(IMAGE_TOKEN_ID) for r in rows])
    expanded = text_tokens + n_images * expected_visual
    assert out.attention_mask.sum(1).tolist() == expanded.tolist()
    assert out.attention_mask.shape == (3, int(expanded.max()))
    assert int((out.labels != IGNORE_INDEX).sum()) == int(text_tokens.sum())  # visual tokens never labelled
    assert torch.isfinite(out.loss)

    before = {n: p.detach().clone() for n, p in model.connector.named_parameters()}
    optimizer = torch.optim.SGD(model.connector.parameters(), lr=0.1)  # moves exactly the params with a gradient
    out.loss.backward()
    optimizer.step()
    unchanged = [n for n, p in model.connector.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"connector parameters not updated: {unchanged}"
