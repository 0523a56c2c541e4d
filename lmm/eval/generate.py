"""Batched generation for evaluation: prompts left-padded, images stacked, KV-cached decoding."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm


@dataclass
class Query:
    text: str
    images: Sequence[str | Path] = ()  # image files, one <image> each (prepended unless in the text)


def left_pad(rows: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def generate_answers(model, queries: Sequence[Query], batch_size: int = 32, max_new_tokens: int = 16,
                     progress: bool = True, **gen) -> list[str]:
    device = next(model.parameters()).device
    answers: list[str] = []
    batches = range(0, len(queries), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress):
        chunk = queries[start:start + batch_size]
        ids, mask = left_pad([model.prompt_ids(q.text, len(q.images)) for q in chunk], model.tokenizer.pad_token_id)
        pixels = []
        for q in chunk:
            for path in q.images:
                with Image.open(path) as im:
                    pixels.append(model.image_transform(im))
        pixel_values = torch.stack(pixels).to(device) if pixels else None
        new = model.generate(ids.to(device), pixel_values, mask.to(device), max_new_tokens=max_new_tokens, **gen)
        answers += [a.strip() for a in model.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers
