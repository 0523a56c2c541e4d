"""Replace each image sentinel in `input_ids` by that image's visual token embeddings.

Images are consumed in reading order over the batch (sample 0's images first), so a batch may mix
samples with no image, one image or several. The result is re-padded, right for training and left
for generation (so every prompt ends at the last column).
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


def splice_images(
    input_ids: torch.Tensor,
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
) -> Spliced:
    """input_ids (B, T) with IMAGE_TOKEN_ID sentinels; text_embeds (B, T, D) their embeddings (any
    value at sentinel positions); image_embeds (N_images, V, D) in reading order."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    is_image = (input_ids == IMAGE_TOKEN_ID) & attention_mask.bool()
    n_placeholders = int(is_image.sum())
    n_images = 0 if image_embeds is None else image_embeds.shape[0]
    if n_placeholders != n_images:
        raise ValueError(f"the batch has {n_placeholders} image placeholder(s) but {n_images} image(s)")

    rows_embeds, rows_labels = [], []
    next_image = 0
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        embeds, img = text_embeds[b][keep], is_image[b][keep]
        lab = labels[b][keep] if labels is not None else None
        pieces, piece_labels, start = [], [], 0
        for pos in img.nonzero().flatten().tolist():
            pieces += [embeds[start:pos], image_embeds[next_image]]
            if lab is not None:
                piece_labels += [lab[start:pos], lab.new_full((image_embeds.shape[1],), IGNORE_INDEX)]
            next_image += 1
            start = pos + 1
        pieces.append(embeds[start:])
        rows_embeds.append(torch.cat(pieces))
        if lab is not None:
            piece_labels.append(lab[start:])
            rows_labels.append(torch.cat(piece_labels))

    lengths = [r.shape[0] for r in rows_embeds]
    batch, width, dim = len(rows_embeds), max(lengths), text_embeds.shape[-1]
    out_embeds = text_embeds.new_zeros(batch, width, dim)
    out_mask = attention_mask.new_zeros(batch, width)
    out_labels = None if labels is None else labels.new_full((batch, width), IGNORE_INDEX)
    for b, n in enumerate(lengths):
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        out_embeds[b, cols] = rows_embeds[b]
        out_mask[b, cols] = 1
        if out_labels is not None:
            out_labels[b, cols] = rows_labels[b]
    position_ids = (out_mask.cumsum(-1) - 1).clamp(min=0)
    return Spliced(out_embeds, out_mask, position_ids, out_labels)
