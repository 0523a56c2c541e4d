"""Batching: right-padded ids, labels and attention mask; the batch's images in reading order."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmm.data.dataset import Skip
from lmm.data.tokenize import IGNORE_INDEX


def pad_right(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


@dataclass
class Collator:
    pad_token_id: int

    def __call__(self, items: list) -> dict:
        samples = [s for s in items if not isinstance(s, Skip)]
        batch = {"num_samples": len(samples), "skipped": [(s.reason, s.detail) for s in items if isinstance(s, Skip)]}
        if not samples:
            return batch
        ids = [s["input_ids"] for s in samples]
        images = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
        batch.update(
            ids=[s["id"] for s in samples],
            input_ids=pad_right(ids, self.pad_token_id),
            labels=pad_right([s["labels"] for s in samples], IGNORE_INDEX),
            attention_mask=pad_right([torch.ones_like(i) for i in ids], 0),
            pixel_values=torch.cat(images) if images else None,
        )
        return batch
