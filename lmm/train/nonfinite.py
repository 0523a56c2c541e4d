"""Skip optimizer steps whose loss or gradients are not finite, and stop a run that keeps making them.

A step is skipped by dropping its gradients (`grad = None`) just before the optimizer runs: torch's
optimizers leave a parameter without a gradient alone, so neither the weights nor AdamW's moments
and step counts move (the LR schedule still advances one step). The decision is collective: every
rank reports its own finding and all of them skip if any saw a NaN or Inf, so DDP replicas and
FSDP2 shards stay in step. Under fp16 mixed precision the gradients are already unscaled here and
the scaler, which recorded the Inf, skips the step too.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)


class NonFiniteStepsError(RuntimeError):
    pass


class NonFiniteGuard(L.Callback):
    """`max_consecutive`: stop after more than this many skipped steps in a row; `max_fraction`: stop
    once the skipped steps are more than this fraction of the run's optimizer steps. The records of
    each skipped step (all ranks, all micro-batches of the accumulation window) are logged, and named
    in the error."""

    def __init__(self, max_consecutive: int = 3, max_fraction: float = 0.01, examples: int = 20):
        self.max_consecutive, self.max_fraction, self.examples = max_consecutive, max_fraction, examples
        self.skipped = 0
        self.consecutive = 0
        self.skipped_ids: list[list[str]] = []  # per skipped step in the current run of consecutive ones
        self._window_ids: list[str] = []
        self._window_bad = False

    def state_dict(self):
        return {"skipped": self.skipped, "consecutive": self.consecutive, "skipped_ids": self.skipped_ids}

    def load_state_dict(self, state_dict):
        self.skipped, self.consecutive = state_dict["skipped"], state_dict["consecutive"]
        self.skipped_ids = state_dict.get("skipped_ids", [])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._window_ids.extend(str(i) for i in batch.get("ids", ()))

    def on_before_backward(self, trainer, pl_module, loss):
        if not bool(torch.isfinite(loss.detach()).all()):
            self._window_bad = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        bad = self._window_bad or not _grads_finite(optimizer)
        ids, self._window_ids, self._window_bad = self._window_ids, [], False
        if not _any_rank(bad, pl_module.device):
            self.consecutive, self.skipped_ids = 0, []
            pl_module.log("train/skipped_steps", float(self.skipped), reduce_fx="max")
            return
        optimizer.zero_grad(set_to_none=True)  # every rank: the step is skipped everywhere
        ids = gather_ids(ids)
        self.skipped += 1
        self.consecutive += 1
        self.skipped_ids.append(ids)
        pl_module.log("train/skipped_steps", float(self.skipped), reduce_fx="max")
        if trainer.is_global_zero:
            log.warning("step %d skipped: non-finite loss or gradient (%d skipped so far); records %s",
                        trainer.global_step, self.skipped, _shown(ids, self.examples))
        total = max(1, int(trainer.estimated_stepping_batches))
        if self.consecutive > self.max_consecutive or self.skipped > max(1.0, self.max_fraction * total):
            records = [i for step in self.skipped_ids for i in step]
            why = (f"{self.consecutive} steps in a row (max_consecutive={self.max_consecutive})"
                   if self.consecutive > self.max_consecutive else
                   f"{self.skipped} of the run's {total} steps (max_fraction={self.max_fraction})")
            raise NonFiniteStepsError(f"stopping: non-finite loss or gradients in {why}; records of the last skipped "
                                      f"steps: {_shown(records, self.examples)} (raise callbacks.nonfinite.* to allow more)")


def _grads_finite(optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]  # this rank's shard
    if not grads:
        return True
    norms = torch._foreach_norm(grads)  # one pass; a NaN or Inf anywhere gives a non-finite norm
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _any_rank(flag: bool, device) -> bool:
    if not _distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def gather_ids(ids: list[str]) -> list[str]:
    """Every rank's record ids, rank 0's first, on every rank (these ids alone outside a process group)."""
    if not _distributed():
        return ids
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, ids)
    return [i for rank_ids in gathered for i in rank_ids]


def _shown(ids: list[str], n: int) -> str:
    return ", ".join(ids[:n]) + (f" ... ({len(ids)} in all)" if len(ids) > n else "") if ids else "(no record ids)"
