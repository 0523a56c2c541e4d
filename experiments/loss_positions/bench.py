"""Step time and peak memory of the next-token loss from full logits ("full", the return_logits=True
path) against the LM head on the trained positions only ("chunked", the default; "liger" on CUDA).

    python experiments/loss_positions/bench.py                 # Phi-2-shaped, 2 layers, 729 visual tokens, 2,048 tokens
    python experiments/loss_positions/bench.py --tiny --steps 2 # smoke run (seconds, CPU)

Each variant runs in a fresh subprocess (same seed, same weights, same batch): peak memory is
torch.cuda.max_memory_allocated on CUDA, and on the CPU the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs after the model is built, or else a 1 ms RSS sampler), both as the increase over
the model and batch alone, over all the steps (forward + backward + zero_grad, micro-batch 1).
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

VARIANTS = ("full", "chunked", "liger")

# Phi-2's LLM shapes cut to a few layers; SigLIP-384's 729 visual tokens (378 / 14 = 27 x 27) from a
# one-layer tower (its cost is not what is measured).
FULL = {
    "llm": {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
            "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 4096, "hidden_act": "gelu_new",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}},
    "vision": {"model_type": "siglip_vision_model", "image_size": 378, "patch_size": 14, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2},
    "length": 2048,
}
TINY = {
    "llm": {**FULL["llm"], "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 4},
    "vision": {**FULL["vision"], "image_size": 32, "patch_size": 8},
    "length": 256,
}


def build(shape: dict, label_fraction: float, seed: int = 0):
    from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID
    from lmm.data.tokenizer_build import train_bpe_tokenizer
    from lmm.model.lmm import LMM

    tokenizer_dir = tempfile.mkdtemp(prefix="bench-tokenizer-")
    train_bpe_tokenizer(["a caption of an image"] * 10, tokenizer_dir, vocab_size=300)
    torch.manual_seed(seed)
    vision = {"_target_": "lmm.model.vision.HFVisionEncoder", "hf_config": shape["vision"], "feature_layer": -1}
    model = LMM(vision=vision,
                connector={"_target_": "lmm.model.connector.MLPConnector", "depth": 2, "act": "gelu"},
                llm={"_target_": "lmm.model.llm.LanguageModel", "tokenizer": tokenizer_dir,
                     "template": {"_target_": "lmm.data.templates.vicuna"}, "hf_config": shape["llm"]})
    model.vision.requires_grad_(False)  # the SFT stage: connector + LLM trained, the tower frozen
    # One image after a short system prompt, then turns of (prompt, answer): `label_fraction` of the
    # text tokens are answer tokens (trained); the expanded sequence is `length` tokens long.
    text = shape["length"] - model.num_visual_tokens + 1
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, model.llm.model.config.vocab_size, (1, text), generator=g)
    ids[0, 8] = IMAGE_TOKEN_ID
    labels = torch.full_like(ids, IGNORE_INDEX)
    turn = 64
    answer = max(1, round(turn * label_fraction))
    for start in range(9, text, turn):
        labels[0, start + turn - answer:start + turn] = ids[0, start + turn - answer:start + turn]
    size = shape["vision"]["image_size"]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g)}
    return model, batch


class PeakRSS:
    """Peak resident memory of this process from now on, in bytes above the current RSS."""

    def __init__(self):
        self.base = self._status("VmRSS")
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.sampler, self.how = None, "peak RSS (VmHWM)"
        except OSError:
            self.peak, self.stop, self.how = self.base, threading.Event(), "peak RSS (1 ms sampler)"
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self._status("VmRSS"))
            time.sleep(0.001)

    def read(self) -> int:
        if self.sampler is None:
            return self._status("VmHWM") - self.base
        self.stop.set()
        self.sampler.join()
        return self.peak - self.base


def worker(args) -> dict:
    shape = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model, batch = build(shape, args.label_fraction)
    model.to(device).train()
    model.loss_chunk_tokens = args.chunk_tokens
    if args.variant == "liger":
        model.loss_impl = "liger"
    batch = {k: v.to(device) for k, v in batch.items()}
    trained = int((batch["labels"][:, 1:] != -100).sum())
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        rss = PeakRSS()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        with autocast:
            out = model(**batch, return_logits=args.variant == "full")
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(out.loss))
        del out
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else rss.read()
    return {"variant": args.variant, "device": str(device), "precision": precision,
            "length": int(batch["attention_mask"].shape[1]) + model.num_visual_tokens - 1,
            "visual": model.num_visual_tokens, "trained": trained, "vocab": model.llm.model.config.vocab_size,
            "step_ms": 1000 * statistics.median(times), "peak_mib": peak / 2**20, "loss": losses[0],
            "memory": "cuda max_memory_allocated" if device.type == "cuda" else rss.how}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model and 256 tokens: a smoke run")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                    help="default: full and chunked, and liger where CUDA and liger_kernel are there")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--label-fraction", type=float, default=0.25, help="share of the text tokens trained")
    ap.add_argument("--chunk-tokens", type=int, default=4096, help="LMM.loss_chunk_tokens for the chunked path")
    ap.add_argument("--precision", choices=["32", "bf16-mixed"], default=None,
                    help="default: bf16-mixed on CUDA (as the GPU trainer config), 32 on the CPU")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one worker subprocess
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(worker(args)))
        return

    variants = args.variants or ["full", "chunked"]
    if args.variants is None and torch.cuda.is_available() and not args.cpu:
        try:
            import liger_kernel  # noqa: F401
            variants.append("liger")
        except ImportError:
            pass
    passthrough = [a for a in sys.argv[1:] if a != "--variants" and a not in VARIANTS]
    rows = []
    for variant in variants:
        done = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-3000:])
            raise SystemExit(f"variant {variant} failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    first = rows[0]
    full = next((r for r in rows if r["variant"] == "full"), first)  # the ratios' reference
    print(f"{first['device']}, {first['precision']}, micro-batch 1, {first['length']} tokens "
          f"({first['visual']} visual), {first['trained']} trained targets, vocab {first['vocab']}; "
          f"memory: {first['memory']} above the model and batch\n")
    print("| loss path | step time (ms) | vs full | peak memory (MiB) | vs full | loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['step_ms']:.1f} | {r['step_ms'] / full['step_ms']:.2f}x | {r['peak_mib']:.0f} "
              f"| {r['peak_mib'] / max(full['peak_mib'], 1e-9):.2f}x | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
