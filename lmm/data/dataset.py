"""Records -> model-ready samples. A record that cannot be used becomes a `Skip` with its reason,
which the collator counts and `lmm.train.callbacks.SkipMonitor` reports (and stops on past a limit).

The dataset is a thin shell over (records, processor) so a streaming source can replace the
in-memory record list without touching how a record becomes a sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from lmm.data.formats import image_paths, to_messages
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, SampleError, encode_segments


@dataclass(frozen=True)
class Skip:
    reason: str
    detail: str


@dataclass
class SampleProcessor:
    """Everything needed to turn a LLaVA record into tensors; the model supplies its parts."""

    tokenizer: object
    template: object
    image_transform: object
    num_visual_tokens: int
    image_root: str
    max_length: int = 2048

    def load_image(self, relative: str) -> torch.Tensor:
        path = Path(self.image_root) / relative
        if not path.is_file():
            raise SampleError("image_missing", str(path))
        try:
            with Image.open(path) as im:
                return self.image_transform(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise SampleError("image_corrupt", f"{path}: {e}") from e

    def __call__(self, record: dict) -> dict:
        messages = to_messages(record)
        input_ids, labels = encode_segments(self.template.render(messages), self.tokenizer)
        if not (labels != IGNORE_INDEX).any():
            raise SampleError("no_trained_tokens", f"record {record.get('id')!r}")
        n_images = int((input_ids == IMAGE_TOKEN_ID).sum())
        length = len(input_ids) + n_images * (self.num_visual_tokens - 1)
        if length > self.max_length:
            raise SampleError("too_long", f"record {record.get('id')!r}: {length} > max_length {self.max_length}")
        pixels = [self.load_image(p) for p in image_paths(record)]
        return {"id": record.get("id"), "input_ids": input_ids, "labels": labels,
                "pixel_values": torch.stack(pixels) if pixels else None}


class LlavaDataset(Dataset):
    """`cache=True` keeps every processed sample in memory (per worker): processing is
    deterministic, so a small data set trained for many epochs decodes each image once."""

    def __init__(self, records: list[dict], processor: SampleProcessor, cache: bool = False):
        self.records, self.processor = records, processor
        self.cache: dict[int, dict | Skip] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | Skip:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        try:
            item = self.processor(self.records[index])
        except SampleError as e:
            item = Skip(e.reason, str(e))
        if self.cache is not None:
            self.cache[index] = item
        return item
