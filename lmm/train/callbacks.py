"""Training callbacks: skipped-record accounting and throughput."""
from __future__ import annotations

import time
from collections import Counter, deque

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class SkipMonitor(L.Callback):
    """Counts records the data pipeline skipped (by reason), logs them at each epoch end, and
    stops the run once more than `max_fraction` of the records seen were skipped (checked from
    `min_records` on, so one bad record early in an epoch does not end a run, and at epoch end)."""

    def __init__(self, max_fraction: float = 0.01, min_records: int = 200, examples_per_reason: int = 3):
        self.max_fraction, self.min_records, self.examples = max_fraction, min_records, examples_per_reason
        self.counts: Counter = Counter()
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        skipped = batch.get("skipped", [])
        self.seen += batch["num_samples"] + len(skipped)
        for reason, detail in skipped:
            self.counts[reason] += 1
            if self.counts[reason] <= self.examples:
                rank_zero_warn(f"skipped a record ({reason}): {detail}")
        if self.seen >= self.min_records:
            self._check()

    def _check(self):
        fraction = sum(self.counts.values()) / max(1, self.seen)
        if fraction > self.max_fraction:
            raise RuntimeError(f"{fraction:.1%} of {self.seen} records were skipped, over the limit of "
                               f"{self.max_fraction:.1%}: {dict(self.counts)}. Fix the data or raise "
                               f"callbacks.skip_monitor.max_fraction.")

    def on_train_epoch_end(self, trainer, pl_module):
        total = sum(self.counts.values())
        pl_module.log("data/skipped", float(total))
        pl_module.log("data/skipped_fraction", total / max(1, self.seen))
        for reason, n in self.counts.items():
            pl_module.log(f"data/skipped_{reason}", float(n))
        if total:
            rank_zero_info(f"skipped {total} of {self.seen} records: {dict(self.counts)}")
        self._check()  # small data sets never reach min_records mid-epoch

    def state_dict(self):
        return {"counts": dict(self.counts), "seen": self.seen}

    def load_state_dict(self, state_dict):
        self.counts, self.seen = Counter(state_dict["counts"]), state_dict["seen"]


class ThroughputMonitor(L.Callback):
    """Logs `train/tokens_per_s` (sequence tokens incl. visual tokens, padding excluded, summed over
    ranks) and `train/samples_per_s`, over a sliding window of steps, wall clock incl. data loading."""

    def __init__(self, window: int = 20):
        self.window = deque(maxlen=window)
        self.last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last is None:
            self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        tokens = 0
        if batch["num_samples"]:
            n_images = 0 if batch["pixel_values"] is None else batch["pixel_values"].shape[0]
            tokens = int(batch["attention_mask"].sum()) + n_images * (pl_module.model.num_visual_tokens - 1)
        self.window.append((now - self.last, tokens, batch["num_samples"]))
        self.last = now
        seconds = sum(w[0] for w in self.window)
        pl_module.log("train/tokens_per_s", sum(w[1] for w in self.window) / seconds, reduce_fx="sum", sync_dist=True)
        pl_module.log("train/samples_per_s", sum(w[2] for w in self.window) / seconds, reduce_fx="sum", sync_dist=True)


class SamplePredictions(L.Callback):
    """At the end of a stage, answers the first user turn of a few training records with the
    stage's own prompt format (greedy) and records image, prompt, reference and prediction: a
    W&B table when the logger is W&B, and `samples.jsonl` in the stage folder always. A quick
    look at what the model learnt, not a benchmark (the records are training data)."""

    def __init__(self, num_samples: int = 8, max_new_tokens: int = 32):
        self.num_samples, self.max_new_tokens = num_samples, max_new_tokens

    def on_train_end(self, trainer, pl_module):
        from lmm.train.samples import log_samples, predict_samples

        rows = predict_samples(pl_module, trainer.datamodule, self.num_samples, self.max_new_tokens)
        if trainer.is_global_zero and rows:
            log_samples(rows, trainer)
