"""Batched greedy generation for evaluation.

Prompts are left-padded and images stacked; decoding is KV-cached. Requests are batched by prompt
length (longest first, so a batch that does not fit in memory fails at once rather than at the end)
and the answers come back in request order. Images are decoded and resized by DataLoader workers
when `num_workers` > 0; pixels travel as uint8 and the model normalises them on its device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lmm.eval.benchmark import Request, open_image


def left_pad(rows: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


class _Batches(Dataset):
    """Item i: the i-th batch of requests as (request positions, ids, mask, uint8 pixels or None)."""

    def __init__(self, requests: Sequence[Request], prompts: list[torch.Tensor], batches: list[list[int]],
                 transform, pad_id: int):
        self.requests, self.prompts, self.batches = requests, prompts, batches
        self.transform, self.pad_id = transform, pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        order = self.batches[i]
        ids, mask = left_pad([self.prompts[j] for j in order], self.pad_id)
        pixels = []
        for j in order:
            for ref in self.requests[j].images:
                try:
                    pixels.append(image_pixels(self.transform, ref))
                except OSError as e:  # name the request: a bare PIL error does not say which question
                    raise OSError(f"request {self.requests[j].key!r}: cannot read image {ref!r}: {e}") from e
        return order, ids, mask, (torch.stack(pixels) if pixels else None)


def image_pixels(transform, ref) -> torch.Tensor:
    """One image's pixel values: a PIL image, a path or encoded bytes (opened and closed here)."""
    if isinstance(ref, Image.Image):  # the caller's object: used, not closed
        return transform.pixels(ref)
    with open_image(ref) as im:
        return transform.pixels(im)


def length_batches(lengths: Sequence[int], images: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions grouped by (image count, prompt length), longest first, `batch_size` at most each."""
    order = sorted(range(len(lengths)), key=lambda i: (-images[i], -lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_answers(model, requests: Sequence[Request], batch_size: int = 32, max_new_tokens: int = 16,
                     num_workers: int = 0, progress: bool = True, desc: str = "generating", cache=None,
                     **gen) -> list[str]:
    """One stripped answer per request, in request order. `cache` (lmm.eval.answer_cache.AnswerCache):
    batches it fully answers are not generated again, and each generated batch is added to it."""
    if not requests:
        return []
    device = next(model.parameters()).device
    prompts = [model.prompt_ids(r.prompt, len(r.images)) for r in requests]
    batches = length_batches([len(p) for p in prompts], [len(r.images) for r in requests], batch_size)
    answers: list[str | None] = [None] * len(requests)
    if cache is not None:  # the plan is the same as without a cache: only whole batches are skipped
        cached = {j: cache.get(requests[j]) for order in batches for j in order}
        for j, text in cached.items():
            answers[j] = text
        batches = [order for order in batches if any(cached[j] is None for j in order)]
    data = _Batches(requests, prompts, batches, model.image_transform, model.tokenizer.pad_token_id)
    loader = DataLoader(data, batch_size=None, num_workers=num_workers, collate_fn=lambda x: x)
    for order, ids, mask, pixels in tqdm(loader, desc=desc, disable=not progress):
        pixels = pixels.to(device) if pixels is not None else None
        new = model.generate(ids.to(device), pixels, mask.to(device), max_new_tokens=max_new_tokens, **gen)
        texts = [t.strip() for t in model.tokenizer.batch_decode(new, skip_special_tokens=True)]
        for j, text in zip(order, texts):
            answers[j] = text
        if cache is not None:
            cache.put([(requests[j], text) for j, text in zip(order, texts)])
    return answers
