"""Segments -> `input_ids` + `labels`, with one sentinel id per image.

Every image is a single `IMAGE_TOKEN_ID` (-200, LLaVA's convention) in `input_ids`; the model
replaces it with that image's visual tokens. Using a sentinel instead of a vocabulary entry means a
pretrained LLM's embedding matrix never has to grow for an `<image>` token.
"""
from __future__ import annotations

import torch

from lmm.data.templates import IMAGE_PLACEHOLDER, Segment

IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100


class SampleError(ValueError):
    """A record that cannot become a training sample; `reason` is a short key used for skip counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _special_id(tokenizer, name: str) -> int:
    tid = getattr(tokenizer, f"{name}_token_id")
    if tid is None:
        raise ValueError(f"the template asks for a {name.upper()} token but the tokenizer has none; "
                         f"set the template's `bos: none` / `answer_end: none` or use a tokenizer with one")
    return tid


def encode_segments(segments: list[Segment], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (input_ids, labels) as 1-D long tensors; untrained positions and images are -100.
    All text pieces of a sample go to the tokenizer in one batch call: its per-call overhead is
    most of the cost for short pieces (the length pass tokenises every record of a data set)."""
    pieces = [[] if seg.special else seg.text.split(IMAGE_PLACEHOLDER) for seg in segments]
    flat = [chunk for chunks in pieces for chunk in chunks if chunk]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    ids: list[int] = []
    labels: list[int] = []
    for seg, chunks in zip(segments, pieces):
        if seg.special:
            seg_ids = [_special_id(tokenizer, seg.special)]
        else:
            seg_ids = []
            for i, chunk in enumerate(chunks):
                if i > 0:
                    seg_ids.append(IMAGE_TOKEN_ID)
                if chunk:
                    seg_ids.extend(next(encoded))
        if seg.trained and IMAGE_TOKEN_ID in seg_ids:
            raise SampleError("image_in_answer", "an <image> placeholder inside an assistant turn")
        ids.extend(seg_ids)
        labels.extend(seg_ids if seg.trained else [IGNORE_INDEX] * len(seg_ids))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
