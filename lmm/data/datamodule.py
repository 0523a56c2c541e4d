"""LightningDataModule over LLaVA-format data: lazy sources, a length pass, a batching plan per rank,
and the position in the epoch saved in Lightning checkpoints.

The model's facts (tokenizer, template, image transform, visual-token count) are handed over with
`attach` before fitting; the data config only says where the data is and how to batch it.

Bad records: those whose text is unusable (malformed turns, placeholder/image mismatch, over-long
under `over_length: drop`, invalid JSON) are found by the length pass, left out of the plan and
counted up front (`skip_counts`); image problems are found when a sample is loaded and travel with
its batch. `SkipMonitor` adds both up (over all ranks), logs them and enforces the limit.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
from filelock import FileLock

from lmm.data.collate import Collator
from lmm.data.dataset import SampleProcessor
from lmm.data.lengths import LengthTable, length_table
from lmm.data.loader import BatchDataset, PlanLoader, PlanSampler
from lmm.data.plan import BatchingConfig
from lmm.data.sources import open_sources

log = logging.getLogger(__name__)


class LlavaDataModule(L.LightningDataModule):
    def __init__(
        self,
        annotations: Sequence[str],
        image_root: str | Sequence[str],
        micro_batch_size: int = 8,
        num_workers: int = 2,
        max_length: int = 2048,
        shuffle: bool = True,
        cache: bool = False,
        seed: int = 0,
        batching: str = "random",
        max_tokens: int | None = None,
        pack_length: int | None = None,
        window: int | None = None,
        over_length: str = "drop",
        strict: bool = False,
        source: str = "json",
        index_dir: str | None = None,
        image_placeholder: str = "front",
        leading_assistant: str = "drop",
    ):
        super().__init__()
        self.annotations = [annotations] if isinstance(annotations, str) else list(annotations)
        self.image_root = image_root
        self.batching = BatchingConfig(batching, micro_batch_size, max_tokens, pack_length, window, shuffle, seed)
        self.num_workers, self.max_length, self.cache = num_workers, max_length, cache
        self.over_length, self.strict, self.source_kind, self.index_dir = over_length, strict, source, index_dir
        self.normalise = {"image_placeholder": image_placeholder, "leading_assistant": leading_assistant}
        self.processor: SampleProcessor | None = None
        self.source = None
        self.table: LengthTable | None = None
        self.sampler: PlanSampler | None = None
        self.indices = self.lengths = None
        self.skip_counts: Counter = Counter()  # records left out of every epoch, by reason
        self.note_counts: Counter = Counter()  # usable records the normalisation changed, by kind
        self._resume: dict | None = None

    @property
    def micro_batch_size(self) -> int:
        return self.batching.micro_batch_size

    def attach(self, model, template) -> LlavaDataModule:
        """Take the tokenizer, image transform and visual-token count from `model`; `template`
        is the stage's prompt format (the LLM's chat template, or the plain pretrain one)."""
        self.processor = SampleProcessor(model.tokenizer, template, model.image_transform, model.num_visual_tokens,
                                         self.max_length, self.over_length, **self.normalise)
        return self

    def setup(self, stage: str | None = None, rank: int | None = None, world: int | None = None) -> None:
        """Reads the lengths (once) and plans this rank's micro-batches. `rank`/`world` default to
        the trainer's; the runner calls it before the trainer exists, to size gradient accumulation."""
        if self.processor is None:
            raise RuntimeError("LlavaDataModule.attach(model, template) must be called before setup")
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1 and getattr(
                trainer._accelerator_connector, "use_distributed_sampler", False):
            # Lightning would wrap the plan's sampler in a DistributedSampler: each rank would then
            # train on half (a world-th) of its own share and skip the rest.
            raise ValueError("LlavaDataModule splits the data over ranks itself: create the Trainer with "
                             "use_distributed_sampler=False")
        rank = rank if rank is not None else trainer.global_rank if trainer else 0
        world = world if world is not None else trainer.world_size if trainer else 1
        if self.table is None:
            self._measure()
        if self.sampler is not None and (self.sampler.rank, self.sampler.world) == (rank, world):
            return
        self.sampler = PlanSampler(self.indices, self.lengths, self.table.images, self.batching, rank, world,
                                   self.max_length, self.source.block_size)
        plan = self.sampler.plan(0)
        self.plan_stats = {"records": len(self.source), "samples": len(self.indices), "batching": self.batching.batching,
                           "micro_batches_per_rank": len(self.sampler), "token_efficiency": plan.efficiency}
        log.info("data: %d of %d records usable, %d micro-batches per rank of %d (%s), planned token efficiency %.3f",
                 len(self.indices), len(self.source), len(self.sampler), world, self.batching.batching, plan.efficiency)
        if self._resume is not None:
            self._apply_resume()

    def _measure(self) -> None:
        self.source = open_sources(self.annotations, self.image_root, self.index_dir, self.source_kind)
        lock = nullcontext()
        if self.index_dir:  # every rank asks; one measures, the others read its cache
            Path(self.index_dir).mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(Path(self.index_dir) / ".lengths.lock"))
        with lock:
            self.table = length_table(self.source, self.processor, self.index_dir, self.num_workers, self.strict)
        self.lengths = self.table.lengths(self.processor.num_visual_tokens)
        usable = self.table.status == 0
        too_long = usable & (self.lengths > self.max_length)
        if self.over_length == "drop":
            usable &= ~too_long
        if self.strict and too_long.any() and self.over_length == "drop":
            i = int(np.flatnonzero(too_long)[0])
            raise ValueError(f"record {i} of {self.source.describe()} is {self.lengths[i]} tokens, over max_length "
                             f"{self.max_length} (data.loader.strict is on; or set over_length: truncate)")
        self.skip_counts = self.table.skip_counts()
        if self.over_length == "drop" and too_long.any():
            self.skip_counts["too_long"] += int(too_long.sum())
        self.truncated_planned = int(too_long.sum()) if self.over_length == "truncate" else 0
        self.indices = np.flatnonzero(usable)
        self.note_counts = self.table.note_counts(usable)
        log.info("data: %s%s", self.source.describe(),
                 f" | left out of every epoch: {dict(self.skip_counts)}" if self.skip_counts else "")
        if self.note_counts:
            log.info("data: normalised as the reference pipelines do (data.loader.image_placeholder=%s, "
                     "leading_assistant=%s): %s", self.normalise["image_placeholder"],
                     self.normalise["leading_assistant"], dict(self.note_counts))
        for reason, details in self.table.examples.items():
            for d in details:
                log.warning("bad record (%s): %s", reason, d)

    @property
    def samples_per_micro_batch(self) -> float:
        """Mean samples per micro-batch (varies in the token modes); sets gradient accumulation."""
        plan = self.sampler.plan(0)
        return plan.num_samples / max(1, len(plan.batches))

    def train_dataloader(self) -> PlanLoader:
        dataset = BatchDataset(self.source, self.processor,
                               Collator(self.processor.tokenizer.pad_token_id, packed=self.batching.batching == "packed"),
                               strict=self.strict, cache=self.cache)
        return PlanLoader(dataset, batch_size=None, sampler=self.sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    # -- resuming: the position in the epoch goes into Lightning checkpoints --------------------------
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or self.sampler is None:
            return {}
        # `ready` counts the micro-batches this epoch has started; a checkpoint is written after the
        # step that consumed the last of them (mid-epoch) or at the epoch's end.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"epoch": trainer.current_epoch, "done": done, **self._plan_identity()}

    def _plan_identity(self) -> dict:
        """What must be unchanged for a saved position to mean the same samples."""
        return {"micro_batches": len(self.sampler), "world": self.sampler.world, "samples": len(self.sampler.indices),
                "batching": self.batching.batching, "seed": self.batching.seed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = dict(state)
            if self.sampler is not None:
                self._apply_resume()

    def _apply_resume(self) -> None:
        state, self._resume = self._resume, None
        changed = {k: (state.get(k), v) for k, v in self._plan_identity().items() if state.get(k) != v}
        if changed:
            raise ValueError(f"cannot resume the data position exactly: the checkpoint's plan differs in "
                             f"{ {k: f'{a} -> {b}' for k, (a, b) in changed.items()} }. Resume with the same "
                             f"devices, data, batching and seed, or start the stage afresh.")
        if state["done"] < len(self.sampler):
            self.sampler.resume(state["epoch"], state["done"])
