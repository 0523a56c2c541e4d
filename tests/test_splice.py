"""Placeholder splice: samples without an image, with one, and with several, in one batch."""
import pytest
import torch

from lmm.data.tokenize import IGNORE_INDEX
from lmm.data.tokenize import IMAGE_TOKEN_ID as IMG
from lmm.model.splice import splice_images


def embed(ids):
    """A fake embedding that makes every token recognisable: value = token id."""
    return ids.clamp(min=0).float()[..., None].expand(*ids.shape, 2).clone()


def test_mixed_batch_right_padding():
    ids = torch.tensor([[5, IMG, 6, 7], [8, 9, 0, 0], [IMG, 4, IMG, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 6, 7], [-100, 9, -100, -100], [-100, 4, -100, -100]])
    images = torch.stack([torch.full((3, 2), 100.0 + k) for k in range(3)])  # 3 images, 3 tokens each
    s = splice_images(ids, embed(ids), images, mask, labels, "right")
    assert s.inputs_embeds.shape == (3, 7, 2)
    assert s.inputs_embeds[0, :, 0].tolist() == [5, 100, 100, 100, 6, 7, 0]
    assert s.inputs_embeds[1, :, 0].tolist() == [8, 9, 0, 0, 0, 0, 0]
    assert s.inputs_embeds[2, :, 0].tolist() == [101, 101, 101, 4, 102, 102, 102]
    assert s.attention_mask.tolist() == [[1] * 6 + [0], [1] * 2 + [0] * 5, [1] * 7]
    assert s.labels[0].tolist() == [IGNORE_INDEX] * 4 + [6, 7, IGNORE_INDEX]
    assert s.labels[1].tolist() == [IGNORE_INDEX, 9] + [IGNORE_INDEX] * 5
    assert s.labels[2].tolist() == [IGNORE_INDEX] * 3 + [4] + [IGNORE_INDEX] * 3
    assert s.position_ids[0].tolist()[:6] == list(range(6))


def test_left_padding_puts_every_prompt_end_in_the_last_column():
    ids = torch.tensor([[0, 0, IMG, 3], [7, 8, 9, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    images = torch.full((1, 2, 2), 50.0)
    s = splice_images(ids, embed(ids), images, mask, None, "left")
    assert s.inputs_embeds[:, -1, 0].tolist() == [3, 3]
    assert s.inputs_embeds[0, :, 0].tolist() == [0, 50, 50, 3]
    assert s.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert s.position_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    assert s.labels is None


def test_text_only_batch_needs_no_images():
    ids = torch.tensor([[1, 2, 3]])
    s = splice_images(ids, embed(ids), None)
    assert torch.equal(s.inputs_embeds, embed(ids))


@pytest.mark.parametrize("n_images", [0, 2])
def test_placeholder_count_must_match_images(n_images):
    ids = torch.tensor([[1, IMG, 3]])
    images = torch.zeros(n_images, 2, 2) if n_images else None
    with pytest.raises(ValueError, match="1 image placeholder"):
        splice_images(ids, embed(ids), images)


def test_gradients_reach_image_features():
    ids = torch.tensor([[1, IMG, 3]])
    images = torch.ones(1, 2, 2, requires_grad=True)
    s = splice_images(ids, embed(ids), images)
    s.inputs_embeds.sum().backward()
    assert torch.equal(images.grad, torch.ones(1, 2, 2))
