"""The LightningModule: builds the LMM from configs, applies the stage's tuning, trains it."""
from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from lmm.model.lmm import LMM
from lmm.model.spec import to_plain
from lmm.train.optim import build_optimizer
from lmm.train.parallel import enable_activation_checkpointing, shard_fsdp2
from lmm.train.tuning import apply_tuning


class LMMTrainModule(L.LightningModule):
    """`model`: {vision, connector, llm} component specs; `tune`: a mode per module; `optim`: the
    keyword arguments of `build_optimizer`; `parallel`: options of `lmm.train.parallel` (FSDP2
    mixed precision, activation checkpointing). All primitives, saved as hyper-parameters, so
    `LMMTrainModule.load_from_checkpoint(path)` works with no other argument."""

    def __init__(self, model: Mapping, tune: Mapping, optim: Mapping, parallel: Mapping | None = None):
        super().__init__()
        self.save_hyperparameters({"model": to_plain(model), "tune": to_plain(tune), "optim": to_plain(optim),
                                   "parallel": to_plain(parallel or {})})
        self.model = LMM(**self.hparams.model)
        # transformers' from_pretrained leaves models in eval mode and Lightning keeps modules' modes:
        # without this, a pretrained LLM would fine-tune with its dropout switched off.
        self.model.train()
        self.trainable = apply_tuning(self.model, self.hparams.tune)
        self._configured = False

    def configure_model(self):
        """Lightning calls this on every rank before the optimisers exist: under
        `ModelParallelStrategy` the model is sharded here (FSDP2), per block."""
        if self._configured:
            return
        self._configured = True
        options = dict(self.hparams.parallel)
        if options.pop("activation_checkpointing", False):
            enable_activation_checkpointing(self.model)
        if self.device_mesh is not None:
            shard_fsdp2(self.model, self.device_mesh["data_parallel"], **options)
            self.model.always_run_vision = True  # text-only batches must gather the tower's shards too

    @property
    def sharded(self) -> bool:
        return self.device_mesh is not None

    def training_step(self, batch, batch_idx):
        if batch["num_samples"] == 0:  # every record of the batch was skipped (counted by SkipMonitor)
            return None
        packed = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}
        out = self.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"], **packed)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["num_samples"])
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return out.loss

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.parameters(), int(self.trainer.estimated_stepping_batches),
                                               **self.hparams.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on every rank's CPU (a collective when sharded)."""
        if not self.sharded:
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
