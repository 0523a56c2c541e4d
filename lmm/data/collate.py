"""Batching: right-padded rows of ids, labels and attention mask; the batch's images in reading order.

A row holds one sample, or several in `packed` mode: then `segment_ids` numbers the samples of a row
1, 2, ... (0 on padding), and the model restarts positions and blocks attention at each boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmm.data.dataset import Skip
from lmm.data.tokenize import IGNORE_INDEX


def pad_right(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def cat_images(images: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat; in a DataLoader worker straight into shared memory, which the batch is sent
    through anyway (as torch's default collate does): the pixels are copied once, not twice."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        n = sum(x.shape[0] for x in images)
        storage = images[0].untyped_storage()._new_shared(n * images[0][0].numel() * images[0].element_size())
        out = images[0].new(storage).view(n, *images[0].shape[1:])
    return torch.cat(images, out=out)


@dataclass
class Collator:
    pad_token_id: int
    packed: bool = False

    def __call__(self, items: list) -> dict:
        """`items`: samples or `Skip`s, one per row, or (packed) a list of them per row."""
        rows = [row if isinstance(row, (list, tuple)) else [row] for row in items]
        flat = [s for row in rows for s in row]
        samples = [s for s in flat if not isinstance(s, Skip)]
        batch = {"num_samples": len(samples), "skipped": [(s.reason, s.detail) for s in flat if isinstance(s, Skip)],
                 "truncated": sum(bool(s.get("truncated")) for s in samples)}
        rows = [[s for s in row if not isinstance(s, Skip)] for row in rows]
        rows = [row for row in rows if row]
        if not samples:
            return batch
        ids = [torch.cat([s["input_ids"] for s in row]) for row in rows]
        images = [s["pixel_values"] for row in rows for s in row if s["pixel_values"] is not None]
        batch.update(
            ids=[s["id"] for row in rows for s in row],
            input_ids=pad_right(ids, self.pad_token_id),
            labels=pad_right([torch.cat([s["labels"] for s in row]) for row in rows], IGNORE_INDEX),
            attention_mask=pad_right([torch.ones_like(i) for i in ids], 0),
            pixel_values=cat_images(images) if images else None,
            # sequence lengths the model sees (visual tokens included), for the padding efficiency
            real_tokens=sum(s["length"] for s in samples),
            lengths=[s["length"] for row in rows for s in row],  # per sample, in `ids` order (model FLOPs)
            computed_tokens=len(rows) * max(sum(s["length"] for s in row) for row in rows),
        )
        if self.packed:
            batch["segment_ids"] = pad_right(
                [torch.cat([torch.full_like(s["input_ids"], k + 1) for k, s in enumerate(row)]) for row in rows], 0)
        return batch
