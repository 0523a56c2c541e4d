"""The LightningModule: builds the LMM from configs, applies the stage's tuning, trains it."""
from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from lmm import faults
from lmm.model.lazy import build_on_meta
from lmm.model.lmm import LMM
from lmm.model.meta import buffers_snapshot
from lmm.model.spec import to_plain
from lmm.model.weights import check_sources, follow_renames, load_plain, load_sharded
from lmm.train.optim import build_optimizer
from lmm.train.parallel import compile_llm_layers, enable_activation_checkpointing, shard_fsdp2
from lmm.train.tuning import apply_tuning


class LMMTrainModule(L.LightningModule):
    """`model`: {vision, connector, llm} component specs; `tune`: a mode per module; `optim`: the
    keyword arguments of `build_optimizer`; `parallel`: options of `lmm.train.parallel` (FSDP2
    mixed precision, activation checkpointing). All primitives, saved as hyper-parameters, so
    `LMMTrainModule.load_from_checkpoint(path)` works with no other argument."""

    def __init__(self, model: Mapping, tune: Mapping, optim: Mapping, parallel: Mapping | None = None,
                 init: Mapping | None = None, meta_init: bool = False):
        """`meta_init`: build on the meta device and read the weights once, in `configure_model`
        (rank 0 reads and broadcasts under FSDP2): from `init` ({checkpoint, modules}: the stage's
        starting checkpoint) for the modules it covers, else from the pretrained files. Neither is a
        hyper-parameter: `load_from_checkpoint` builds for real and loads the Lightning checkpoint."""
        super().__init__()
        self.save_hyperparameters({"model": to_plain(model), "tune": to_plain(tune), "optim": to_plain(optim),
                                   "parallel": to_plain(parallel or {})})
        self.weight_sources = None  # what configure_model still has to read (meta_init)
        if meta_init:
            init = to_plain(init or {})
            modules = init.get("modules")
            self.model, self.weight_sources = build_on_meta(self.hparams.model, init.get("checkpoint"),
                                                            list(modules) if modules else None)
        else:
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
        sources, self.weight_sources = self.weight_sources, None
        if sources is not None and self.device_mesh is None:
            load_plain(self.model, sources)
        if options.pop("activation_checkpointing", False):
            enable_activation_checkpointing(self.model)
        if options.pop("compile", False):
            compile_llm_layers(self.model)
        # how a forward with labels computes its loss (lmm/model/loss.py)
        self.model.loss_impl = options.pop("loss_impl", self.model.loss_impl)
        self.model.loss_chunk_tokens = options.pop("loss_chunk_tokens", self.model.loss_chunk_tokens)
        if self.device_mesh is not None:
            if sources is None:
                shard_fsdp2(self.model, self.device_mesh["data_parallel"], **options)
            else:
                self._shard_and_load(sources, options)
            self.model.always_run_vision = True  # text-only batches must gather the tower's shards too
        elif self._world_size() > 1 and any(p.requires_grad for m in (self.model.vision, self.model.connector)
                                            for p in m.parameters()):
            # DDP reduces every trained parameter's gradient each step: a text-only batch (length-
            # grouped batching keeps them apart) would leave the connector without one and stop the run
            self.model.always_run_vision = True

    def _world_size(self) -> int:
        trainer = getattr(self, "_trainer", None)  # None when configured outside a Trainer
        return trainer.world_size if trainer is not None else 1

    def _shard_and_load(self, sources, options):
        """Meta init under FSDP2: shard the (meta) model, give every rank its empty shards, then fill
        them from rank 0's files. Whatever was built for real (a random-init connector, LoRA
        adapters) is rank 0's, broadcast too; buffers are computed at build time and restored."""
        rank0 = torch.distributed.get_rank() == 0
        sources = follow_renames(self.model, sources)
        check_sources(self.model, sources)  # on every rank: an error here must not leave the others waiting
        buffers = buffers_snapshot(self.model)
        real = {k: v.detach().clone() for k, v in self.model.state_dict(keep_vars=True).items()
                if not v.is_meta and k not in buffers} if rank0 else {}
        self.model.to(device="meta")  # every parameter alike before sharding
        shard_fsdp2(self.model, self.device_mesh["data_parallel"], **options)
        load_sharded(self.model, sources if rank0 else {}, real, self.trainer.strategy.root_device, buffers)

    @property
    def sharded(self) -> bool:
        return self.device_mesh is not None

    def training_step(self, batch, batch_idx):
        faults.reached("train_step")
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
