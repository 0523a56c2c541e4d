"""Run by tests/test_meta_init.py as `python tests/fsdp_meta_worker.py <spec.json> <out dir>`:
the second process is forked from the first after the imports, as `python -m lmm.train` does
on the CPU (lmm/train/launch.py). Builds an LMMTrainModule on the meta device, lets
FSDP2 (2 CPU ranks, gloo) shard it and fill it from rank 0's files in configure_model, then
writes what every rank ends up with: the gathered full weights and the logits of a fixed batch."""
import json
import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.train.module import LMMTrainModule


def probe(model):
    g = torch.Generator().manual_seed(0)
    size = model.vision.transform.image_size
    ids = torch.tensor([[1, IMAGE_TOKEN_ID, 5, 6, 7, 8]])
    return ids, torch.randn(1, 3, size, size, generator=g)


class Capture(L.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(pl_module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ids, pixels = probe(pl_module.model)
        with torch.no_grad():
            logits = pl_module.model(ids, pixels).logits  # activations are plain tensors under FSDP2
        rank = trainer.global_rank
        torch.save(logits, self.out / f"logits{rank}.pt")
        if rank == 0:
            assert state, "rank 0 gathered nothing"
            save_file({k: v.contiguous() for k, v in state.items()}, str(self.out / "weights.safetensors"))
        else:
            assert not state, "a rank other than 0 received the full state dict"
        (self.out / f"buffers{rank}.json").write_text(json.dumps(
            {k: b.float().sum().item() for k, b in pl_module.model.named_buffers()}))
        trainer.should_stop = True


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = LMMTrainModule(spec["model"], spec["tune"], {"lr": 0.0}, {"param_dtype": None, "reduce_dtype": None},
                            init=spec.get("init"), meta_init=True)
    ids, pixels = probe(module.model)
    batch = {"num_samples": 1, "skipped": [], "input_ids": ids, "labels": ids.clamp(min=0),
             "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    strategy = L.pytorch.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Capture(out)])
    trainer.fit(module, DataLoader([batch] * 4, batch_size=None))


if __name__ == "__main__":
    from lmm.train.launch import ranks_to_fork, run_on_local_ranks

    run_on_local_ranks(main, ranks_to_fork(2, "cpu"))
