"""Which records each epoch trained on, as the checkpoints commit it.

The ids of every micro-batch (all ranks, gathered to each) are added on batch end, and the ledger
travels in each Lightning checkpoint: after a kill and `resume=true` it holds exactly the batches
whose updates the restored weights contain, so a record counted twice in an epoch was trained
twice, and one missing was skipped. At the end of the fit, rank 0 writes `<stage>/records.json`:
per epoch, the number of micro-batches and records, and the ids counted more than once.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L

from lmm.files import write_text
from lmm.train.nonfinite import gather_ids


class RecordLedger(L.Callback):
    def __init__(self, filename: str = "records.json"):
        self.filename = filename
        self.epochs: dict[str, list[str]] = {}  # epoch -> record ids in training order
        self.batches: dict[str, int] = {}

    def state_dict(self):
        return {"epochs": self.epochs, "batches": self.batches}

    def load_state_dict(self, state_dict):
        self.epochs, self.batches = dict(state_dict["epochs"]), dict(state_dict["batches"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ids = gather_ids([str(i) for i in batch.get("ids", ())])
        epoch = str(trainer.current_epoch)
        self.epochs.setdefault(epoch, []).extend(ids)
        self.batches[epoch] = self.batches.get(epoch, 0) + 1

    def summary(self) -> dict:
        out = {}
        for epoch, ids in self.epochs.items():
            twice = sorted(i for i, n in Counter(ids).items() if n > 1)
            out[epoch] = {"micro_batches": self.batches.get(epoch, 0), "records": len(ids), "unique": len(set(ids)),
                          "twice": twice, "ids": sorted(set(ids))}
        return out

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            write_text(Path(trainer.default_root_dir) / self.filename, json.dumps(self.summary(), indent=1))
