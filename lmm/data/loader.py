"""The DataLoader side of the plan: a sampler that yields this rank's micro-batches (resumable)
and a dataset that turns one micro-batch of record indices into a collated batch.

The sampler runs in the main process and the DataLoader returns its workers' batches in sampler
order, so "micro-batches done in this epoch" is the whole position of the data stream.
"""
from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from lmm.data.collate import Collator
from lmm.data.dataset import SampleProcessor, process
from lmm.data.plan import Batch, BatchingConfig, Plan, make_plan

log = logging.getLogger(__name__)


class PlanSampler(Sampler):
    """Yields the micro-batches of `rank` for the current epoch (Lightning calls `set_epoch`).
    `resume(epoch, done)` makes the next iteration of that epoch start after `done` micro-batches."""

    def __init__(self, indices: np.ndarray, lengths: np.ndarray, images: np.ndarray, cfg: BatchingConfig,
                 rank: int, world: int, max_length: int, block_size: int = 1):
        self.indices, self.lengths, self.images = indices, lengths, images
        self.cfg, self.rank, self.world, self.max_length, self.block_size = cfg, rank, world, max_length, block_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self._plans: dict[int, Plan] = {}
        self.num_batches = len(self.plan(0).for_rank(rank))

    def plan(self, epoch: int) -> Plan:
        if epoch not in self._plans:
            self._plans = {epoch: make_plan(self.indices, self.lengths, self.images, self.cfg, self.world, epoch,
                                            self.max_length, self.block_size)}
        return self._plans[epoch]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, done: int) -> None:
        self._resume = (epoch, done)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        batches = self.plan(self.epoch).for_rank(self.rank)
        if len(batches) != self.num_batches:  # a plan bug, not a data problem: never silently shift steps
            raise RuntimeError(f"epoch {self.epoch} planned {len(batches)} micro-batches, epoch 0 had {self.num_batches}")
        start = 0
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            if epoch == self.epoch:
                start = done
                log.info("resuming epoch %d after %d of %d micro-batches", epoch, done, len(batches))
        yield from batches[start:]


class BatchDataset(Dataset):
    """`dataset[micro_batch]` -> collated batch. `cache=True` keeps processed samples in memory
    (per worker): processing is deterministic, so a small data set trained for many epochs decodes
    each image once."""

    def __init__(self, source, processor: SampleProcessor, collator: Collator, strict: bool = False,
                 cache: bool = False):
        self.source, self.processor, self.collator, self.strict = source, processor, collator, strict
        self.cache: dict | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, index: int):
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = process(self.source, self.processor, index, self.strict)
        if self.cache is not None:
            self.cache[index] = item
        return item

    def __getitem__(self, batch: Batch) -> dict:
        items = [[self.sample(i) for i in row] for row in batch]
        return self.collator(items if self.collator.packed else [row[0] for row in items])


class PlanLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes: the position itself is saved by the datamodule
    (`LlavaDataModule.state_dict`), from the training loop's count of micro-batches started, which
    a DataLoader cannot know (Lightning fetches one batch ahead)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass
