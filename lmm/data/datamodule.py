"""LightningDataModule over LLaVA-format annotation files.

The model's facts (tokenizer, template, image transform, visual-token count) are handed over with
`attach` before fitting; the data config only says where the data is and how to batch it.
"""
from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmm.data.collate import Collator
from lmm.data.dataset import LlavaDataset, SampleProcessor
from lmm.data.formats import read_records


class LlavaDataModule(L.LightningDataModule):
    def __init__(
        self,
        annotations: Sequence[str],
        image_root: str,
        micro_batch_size: int = 8,
        num_workers: int = 2,
        max_length: int = 2048,
        shuffle: bool = True,
        cache: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if isinstance(annotations, str):
            annotations = [annotations]
        self.annotations, self.image_root = list(annotations), image_root
        self.micro_batch_size, self.num_workers, self.max_length = micro_batch_size, num_workers, max_length
        self.shuffle, self.cache, self.seed = shuffle, cache, seed
        self.processor: SampleProcessor | None = None
        self.train_set: LlavaDataset | None = None

    def attach(self, model, template) -> LlavaDataModule:
        """Take the tokenizer, image transform and visual-token count from `model`; `template`
        is the stage's prompt format (the LLM's chat template, or the plain pretrain one)."""
        self.processor = SampleProcessor(model.tokenizer, template, model.image_transform, model.num_visual_tokens,
                                         self.image_root, self.max_length)
        return self

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            raise RuntimeError("LlavaDataModule.attach(model, template) must be called before setup")
        if self.train_set is None:
            records = [r for path in self.annotations for r in read_records(path)]
            self.train_set = LlavaDataset(records, self.processor, cache=self.cache)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.micro_batch_size, shuffle=self.shuffle,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            collate_fn=Collator(self.processor.tokenizer.pad_token_id),
            generator=torch.Generator().manual_seed(self.seed),
        )
