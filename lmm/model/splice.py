"""Replace each image sentinel in `input_ids` by that image's visual token embeddings.

Images are consumed in reading order over the batch (sample 0's images first), so a batch may mix
samples with no image, one image or several. The result is re-padded, right for training and left
for generation (so every prompt ends at the last column).

Packed rows (several samples end to end, then right padding) come with `segment_ids`: 1, 2, ... per
sample, 0 on padding. Their position ids restart at 0 on every segment, which is what transformers
reads the sample boundaries from (a block-diagonal causal mask when no 2-D mask is given).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor | None  # (B, L), -100 on visual tokens, padding and prompts
    segment_ids: torch.Tensor | None = None  # (B, L) sample of each slot (0 on padding) when packed


def splice_images(
    input_ids: torch.Tensor,
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
    segment_ids: torch.Tensor | None = None,
) -> Spliced:
    """input_ids (B, T) with IMAGE_TOKEN_ID sentinels; text_embeds (B, T, D) their embeddings (any
    value at sentinel positions); image_embeds (N_images, V, D) in reading order; segment_ids (B, T)
    for packed rows (right padding only)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if segment_ids is not None and padding_side != "right":
        raise ValueError("packed rows (segment_ids) are only supported with right padding")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids) if segment_ids is None else (segment_ids > 0).long()
    if segment_ids is not None and not torch.equal(segment_ids > 0, attention_mask.bool()):
        # a mismatch would silently train on padding or drop real tokens
        raise ValueError("segment_ids must be 0 exactly where attention_mask is 0 (padding)")
    is_image = (input_ids == IMAGE_TOKEN_ID) & attention_mask.bool()
    n_images = 0 if image_embeds is None else image_embeds.shape[0]
    if int(is_image.sum()) != n_images:
        raise ValueError(f"the batch has {int(is_image.sum())} image placeholder(s) but {n_images} image(s)")

    # One gather instead of a per-sample loop: every output position names its source row in a
    # table [text embeddings; image token embeddings; a zero row for padding]. Its backward is
    # a single index_add, where per-sample slicing would cost O(batch^2) memory traffic.
    batch, width_in, dim = text_embeds.shape
    device = input_ids.device
    n_visual = 0 if image_embeds is None else image_embeds.shape[1]
    keep = attention_mask.bool()
    token_len = torch.where(is_image, n_visual, 1) * keep  # output slots each input token fills
    row_len = token_len.sum(1)
    width = int(row_len.max())
    start = token_len.cumsum(1) - token_len  # first output slot of each token
    if padding_side == "left":
        start = start + (width - row_len)[:, None]
    row_of = torch.arange(batch, device=device)[:, None].expand(batch, width_in)
    text_row = torch.arange(batch * width_in, device=device).view(batch, width_in)  # row in the table
    image_row = batch * width_in + torch.arange(n_images * n_visual, device=device).view(n_images, n_visual)
    pad_row = batch * width_in + n_images * n_visual

    index = torch.full((batch, width), pad_row, dtype=torch.long, device=device)
    is_text = keep & ~is_image
    index[row_of[is_text], start[is_text]] = text_row[is_text]
    if n_images:  # image j (reading order) fills n_visual slots from its placeholder's start
        slots = start[is_image][:, None] + torch.arange(n_visual, device=device)
        index[row_of[is_image][:, None], slots] = image_row
    table = [text_embeds.reshape(-1, dim)] + ([image_embeds.reshape(-1, dim)] if n_images else [])
    out_embeds = torch.cat(table + [text_embeds.new_zeros(1, dim)])[index]

    positions = torch.arange(width, device=device)[None]
    filled = positions >= (width - row_len)[:, None] if padding_side == "left" else positions < row_len[:, None]
    out_mask = filled.to(attention_mask.dtype)
    out_labels = None
    if labels is not None:
        out_labels = torch.cat([labels.reshape(-1), labels.new_full((pad_row - batch * width_in + 1,), IGNORE_INDEX)])[index]
    position_ids = (out_mask.cumsum(-1) - 1).clamp(min=0)
    out_segments = None
    if segment_ids is not None:
        # Same table layout as the embeddings: a visual token takes its placeholder's segment
        # (images are in reading order, as segment_ids[is_image] is), padding slots segment 0.
        image_segments = segment_ids[is_image].repeat_interleave(n_visual)
        seg_table = torch.cat([segment_ids.reshape(-1), image_segments, segment_ids.new_zeros(1)])
        out_segments = seg_table[index]
        # Positions restart at 0 where the segment changes; the padding tail restarts too, so it
        # is a block of its own rather than a continuation of the last sample.
        col = positions.expand(batch, width)
        is_start = torch.ones_like(out_segments, dtype=torch.bool)
        is_start[:, 1:] = out_segments[:, 1:] != out_segments[:, :-1]
        position_ids = col - torch.where(is_start, col, 0).cummax(-1).values
    return Spliced(out_embeds, out_mask, position_ids, out_labels, out_segments)
