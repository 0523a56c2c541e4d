"""Training callbacks: skipped-record accounting and throughput."""
from __future__ import annotations

import sys
import time
from collections import Counter, deque

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lmm.data.dataset import SKIP_REASONS
from lmm.train.flops import device_peak_tflops, flop_rates, head_on_trained_positions, trained_targets


class SkipMonitor(L.Callback):
    """Counts the records the data pipeline skipped, by reason, and stops the run once more than
    `max_fraction` of the records were skipped.

    Two kinds add up: records the datamodule's length pass left out of the plan (unusable text,
    over-long under `over_length: drop`; known before the first step, so checked at fit start) and
    records found bad when loaded (images), which travel with their batch. Load-time counts are
    summed over ranks every `check_every` micro-batches (every rank at the same step, so a stop is
    collective) and at each epoch end, when all counts are logged as `data/skipped*`."""

    def __init__(self, max_fraction: float = 0.01, min_records: int = 200, examples_per_reason: int = 3,
                 check_every: int = 50):
        self.max_fraction, self.min_records, self.examples = max_fraction, min_records, examples_per_reason
        self.check_every = check_every
        self.counts: Counter = Counter()  # load-time skips of this rank, this epoch
        self.seen = 0  # records loaded by this rank this epoch (used or skipped)
        self.truncated = 0
        self._restored = False

    def _planned(self, trainer) -> tuple[Counter, int]:
        dm = trainer.datamodule
        return (Counter(getattr(dm, "skip_counts", {})), len(dm.source)) if getattr(dm, "source", None) else (Counter(), 0)

    def on_fit_start(self, trainer, pl_module):
        planned, records = self._planned(trainer)
        if records and sum(planned.values()) > self.max_fraction * records:
            self._stop(planned, records)

    def on_train_epoch_start(self, trainer, pl_module):
        if self._restored:  # a resumed epoch keeps what its first part counted
            self._restored = False
            return
        self.counts, self.seen, self.truncated = Counter(), 0, 0

    def state_dict(self):
        return {"counts": dict(self.counts), "seen": self.seen, "truncated": self.truncated}

    def load_state_dict(self, state_dict):
        self.counts, self.seen = Counter(state_dict["counts"]), state_dict["seen"]
        self.truncated, self._restored = state_dict.get("truncated", 0), True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        skipped = batch.get("skipped", [])
        self.seen += batch["num_samples"] + len(skipped)
        self.truncated += batch.get("truncated", 0)
        for reason, detail in skipped:
            self.counts[reason] += 1
            if self.counts[reason] <= self.examples:
                rank_zero_warn(f"skipped a record ({reason}): {detail}")
        if (batch_idx + 1) % self.check_every == 0:
            counts, seen, _ = self._summed(trainer)
            if seen >= self.min_records and sum(counts.values()) > self.max_fraction * seen:
                self._stop(counts, seen)

    def _summed(self, trainer) -> tuple[Counter, int, int]:
        """Load-time counts over all ranks (a collective: every rank calls it at the same step)."""
        vector = torch.tensor([self.counts.get(r, 0) for r in SKIP_REASONS] + [self.seen, self.truncated],
                              dtype=torch.float64, device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            vector = trainer.strategy.reduce(vector, reduce_op="sum")
        values = [int(v) for v in vector.tolist()]
        return Counter({r: n for r, n in zip(SKIP_REASONS, values) if n}), values[-2], values[-1]

    def _stop(self, counts: Counter, seen: int):
        fraction = sum(counts.values()) / max(1, seen)
        raise RuntimeError(f"{fraction:.1%} of {seen} records were skipped, over the limit of "
                           f"{self.max_fraction:.1%}: {dict(counts)}. Fix the data or raise "
                           f"callbacks.skip_monitor.max_fraction.")

    def on_train_epoch_end(self, trainer, pl_module):
        loaded, seen, truncated = self._summed(trainer)
        planned, records = self._planned(trainer)
        counts = planned + loaded
        total = sum(counts.values())
        # Every record of the epoch is either planned out or loaded (a resumed epoch loads fewer).
        records = max(records, seen + sum(planned.values()))
        # Every rank holds the same (summed) values: "max" over ranks is a no-op that keeps Lightning
        # from warning about unsynchronised epoch-level logs.
        log = {"data/skipped": float(total), "data/skipped_fraction": total / max(1, records),
               "data/truncated": float(truncated)}
        log.update({f"data/skipped/{r}": float(counts[r]) for r in SKIP_REASONS if counts.get(r)})
        log.update({f"data/normalised/{k}": float(n) for k, n in getattr(trainer.datamodule, "note_counts", {}).items()})
        for key, value in log.items():
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")
        if total or truncated:
            rank_zero_info(f"epoch {trainer.current_epoch}: skipped {total} of {records} records {dict(counts)}, "
                           f"truncated {truncated}")
        self.last = {"skipped": dict(counts), "records": records, "truncated": truncated}
        if total > self.max_fraction * records:
            self._stop(counts, records)


class ThroughputMonitor(L.Callback):
    """Logs `train/tokens_per_s` (sequence tokens incl. visual tokens, padding excluded, summed over
    ranks) and `train/samples_per_s`, over a sliding window of steps, wall clock incl. data loading.

    Also, over the same window: `train/tflops_per_device`, the model FLOPs of the window's batches
    (lmm/train/flops.py: counted from the architecture and the tuned parameters once at fit start,
    then per batch from its samples' lengths, images and trained targets; activation recompute and
    padding not counted) per second, in TFLOP/s, averaged over ranks; `train/mfu`, that over the
    device's dense bf16 peak, only where the peak is known (CUDA H100 / H200 / A100, by
    `torch.cuda.get_device_name`); and `train/peak_memory_gb`, the most memory the process has held
    so far in GB (1e9 bytes; the maximum over ranks): on CUDA `torch.cuda.max_memory_allocated`
    (tensors allocated by PyTorch on the device), elsewhere the process's peak resident set size
    (`resource.getrusage`, host memory, everything the process holds)."""

    def __init__(self, window: int = 20):
        self.window = deque(maxlen=window)
        self.last = None
        self.rates = None  # FlopRates of the model being fitted (None: not an LMM, no FLOPs logged)
        self.head_on_trained = False
        self.peak_tflops = None

    def on_fit_start(self, trainer, pl_module):
        model = getattr(pl_module, "model", None)
        if all(hasattr(model, name) for name in ("vision", "connector", "llm")):
            self.rates = flop_rates(model)  # global parameter shapes, also once FSDP2 has sharded them
            self.head_on_trained = head_on_trained_positions(model)
        self.peak_tflops = device_peak_tflops(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last is None:
            self.last = time.perf_counter()

    def _flops(self, batch):
        """The batch's model FLOPs (a tensor when counted from device labels), None when unknown."""
        if not batch["num_samples"]:
            return 0.0
        if self.rates is None or "lengths" not in batch:
            return None
        images = 0 if batch.get("pixel_values") is None else batch["pixel_values"].shape[0]
        head = trained_targets(batch["labels"], batch.get("segment_ids")) if self.head_on_trained else None
        return self.rates(batch["lengths"], images, head)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        tokens = batch.get("real_tokens", 0)  # sample lengths with their visual tokens, padding excluded
        self.window.append((now - self.last, tokens, batch["num_samples"], batch.get("computed_tokens", 0),
                            self._flops(batch)))
        self.last = now
        seconds = sum(w[0] for w in self.window)
        pl_module.log("train/tokens_per_s", sum(w[1] for w in self.window) / seconds, reduce_fx="sum", sync_dist=True)
        pl_module.log("train/samples_per_s", sum(w[2] for w in self.window) / seconds, reduce_fx="sum", sync_dist=True)
        computed = sum(w[3] for w in self.window)
        if computed:  # real tokens / computed (rows x longest row): what padding costs, measured
            pl_module.log("train/token_efficiency", sum(w[1] for w in self.window) / computed)
        if all(w[4] is not None for w in self.window):
            tflops = sum(w[4] for w in self.window) / seconds / 1e12  # this rank's; the mean over ranks is logged
            pl_module.log("train/tflops_per_device", tflops, reduce_fx="mean", sync_dist=True)
            if self.peak_tflops:
                pl_module.log("train/mfu", tflops / self.peak_tflops, reduce_fx="mean", sync_dist=True)
        pl_module.log("train/peak_memory_gb", peak_memory_gb(trainer.strategy.root_device), reduce_fx="max",
                      sync_dist=True)


def peak_memory_gb(device: torch.device) -> float:
    """The process's peak memory so far, GB: CUDA tensors allocated on `device`, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e9


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
