"""Start-up cost of the full TinyLLaVA architecture (Phi-2 + SigLIP-so400m, 3.1B parameters) with
random weights saved as local transformers folders, on the CPU with gloo.

    python experiments/meta_init/bench.py prepare --dir /tmp/full     # writes the folders (~13 GB)
    python experiments/meta_init/bench.py start --dir /tmp/full --devices 2 [--no-meta-init]
    python experiments/meta_init/bench.py load --dir /tmp/full        # lmm.load vs reading the file

`start`: launch -> first training step of the SFT stage under FSDP2 (ModelParallelStrategy), the
model built on meta and filled from rank 0's files (or, with --no-meta-init, built for real on
every rank as before). Prints one row per rank: peak RSS (VmHWM) when the first step starts, as a
multiple of one float32 copy of the model, and the wall time from launch.
`load`: `lmm.load` of an lmm checkpoint of the same model vs reading its model.safetensors
(memory-mapped and every byte touched, and with pread into memory).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

START = float(os.environ.setdefault("LMM_BENCH_LAUNCH", str(time.time())))  # the child ranks inherit it

SIGLIP = {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14, "hidden_size": 1152,
          "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
PHI2 = {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}}


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def prepare(root: Path) -> None:
    from transformers import AutoModel, AutoModelForCausalLM

    from lmm.data.tokenizer_build import train_bpe_tokenizer
    from lmm.model.hf import hf_config_from_dict

    train_bpe_tokenizer(["a caption of an image", "what is in the picture"] * 20, root / "tokenizer", vocab_size=300)
    torch.manual_seed(0)
    for name, config, auto in (("siglip", SIGLIP, AutoModel), ("phi2", PHI2, AutoModelForCausalLM)):
        model = auto.from_config(hf_config_from_dict(config), dtype=torch.float32)
        model.save_pretrained(root / name)
        del model
    print(f"wrote {root}/siglip, {root}/phi2, {root}/tokenizer")


def spec(root: Path) -> dict:
    return {"vision": {"_target_": "lmm.model.vision.HFVisionEncoder", "pretrained": str(root / "siglip")},
            "connector": {"_target_": "lmm.model.connector.MLPConnector", "depth": 2, "act": "gelu"},
            "llm": {"_target_": "lmm.model.llm.LanguageModel", "pretrained": str(root / "phi2"),
                    "tokenizer": str(root / "tokenizer"), "template": {"_target_": "lmm.data.templates.vicuna"}}}


def start(root: Path, devices: int, meta_init: bool) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from lmm.data.tokenize import IMAGE_TOKEN_ID
    from lmm.train.module import LMMTrainModule

    torch.set_num_threads(1)
    tune = {"vision": "frozen", "connector": "full", "llm": "full"}  # the SFT stage
    module = LMMTrainModule(spec(root), tune, {"lr": 2e-5}, {"param_dtype": None, "reduce_dtype": None},
                            meta_init=meta_init)
    ids = torch.tensor([[1, IMAGE_TOKEN_ID] + list(range(10, 40))])
    batch = {"num_samples": 1, "skipped": [], "input_ids": ids, "labels": ids.clamp(min=0),
             "attention_mask": torch.ones_like(ids), "pixel_values": torch.zeros(1, 3, 384, 384)}

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            row = {"rank": trainer.global_rank, "meta_init": meta_init, "devices": devices,
                   "seconds_to_first_step": round(time.time() - START, 1), "peak_rss_gb": round(peak_rss_gb(), 2)}
            print(json.dumps(row), flush=True)
            sys.stdout.flush()
            os._exit(0)  # the first step is where start-up ends (its optimizer state would not fit here)

    strategy = L.pytorch.strategies.ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FirstStep()])
    trainer.fit(module, DataLoader([batch] * 4, batch_size=None))


def load(root: Path, cold: bool = False) -> None:
    import subprocess

    ckpt = root / "lmm_checkpoint"
    if not (ckpt / "model.safetensors").is_file():
        from lmm.model.lazy import load_on_meta  # noqa: F401 (imports checked before the long write)
        from lmm.train.module import LMMTrainModule

        module = LMMTrainModule(spec(root), {"connector": "full"}, {"lr": 0.0}, meta_init=True)
        module.configure_model()
        module.model.save_pretrained(ckpt)
    rows = []
    for what in ("mmap", "pread", "lmm.load-first", "lmm.load", "lmm.load-sizes"):
        if cold:  # every read from the disk (root only; the kernel's page cache emptied)
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out = subprocess.run([sys.executable, __file__, "_load_one", "--dir", str(root), "--what", what],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    size = (ckpt / "model.safetensors").stat().st_size / 1e9
    print(f"\n{size:.1f} GB model.safetensors, page cache {'emptied before each' if cold else 'warm'}\n")
    print("| how | seconds | peak RSS GB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.1f} |")


def _load_one(root: Path, what: str) -> None:
    from safetensors.torch import load_file

    import lmm

    file = root / "lmm_checkpoint" / "model.safetensors"
    t0 = time.perf_counter()
    if what.startswith("lmm.load"):
        # by default the manifest's sha256 is checked in a thread beside the load, the first time only
        # (then the files' stat is remembered in .verified); "-first" forgets it, "-sizes" checks sizes only
        if what == "lmm.load-first":
            (root / "lmm_checkpoint" / ".verified").unlink(missing_ok=True)
        model = lmm.load(root / "lmm_checkpoint", verify_hashes=what != "lmm.load-sizes")
        touched = sum(float(p.view(-1)[:: 1024].sum()) for p in model.parameters())  # every page
    else:
        state = load_file(str(file), backend=what)
        touched = sum(float(t.view(-1)[:: 1024].sum()) for t in state.values())
    print(json.dumps({"what": what if what.startswith("lmm.load") else f"safetensors load_file ({what}) + touch",
                      "seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(), "check": touched}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["prepare", "start", "load", "_load_one"])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--no-meta-init", action="store_true")
    ap.add_argument("--what", default=None)
    ap.add_argument("--cold", action="store_true", help="load: empty the page cache before each (needs root)")
    args = ap.parse_args()
    if args.command == "prepare":
        prepare(args.dir)
    elif args.command == "start":
        start(args.dir, args.devices, not args.no_meta_init)
    elif args.command == "load":
        load(args.dir, args.cold)
    else:
        _load_one(args.dir, args.what)


if __name__ == "__main__":
    main()
