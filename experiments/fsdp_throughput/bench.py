"""Training throughput and peak memory of a full-size TinyLLaVA architecture (random weights, no
download) under a training strategy, on synthetic batches shaped like LLaVA SFT samples.

    python experiments/fsdp_throughput/bench.py --vision siglip_so400m_384 --llm phi2 --strategy fsdp --devices 1
    python experiments/fsdp_throughput/bench.py --vision tiny --llm tiny --accelerator cpu --steps 3   # smoke run

Prints one table row per run: tokens/s (text + visual tokens, all ranks), samples/s, step time,
peak GPU memory per rank, model TFLOP/s per device and model FLOPs utilisation against the device's
dense bf16 peak. FLOPs are lmm.train.flops's count, the one behind `train/mfu` in every training
run: matmul weights and attention, 6 x trained / 2 x frozen-upstream / 4 x frozen-with-gradient
parameters per token of each module (activation recompute not counted).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID
from lmm.data.tokenizer_build import train_bpe_tokenizer
from lmm.train.flops import PEAK_BF16_TFLOPS, device_peak_tflops, flop_rates, head_on_trained_positions, trained_targets
from lmm.train.module import LMMTrainModule
from lmm.train.run import make_strategy

# Published architecture hyper-parameters (transformers config keys); weights stay random.
VISION = {
    "siglip_so400m_384": {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14, "hidden_size": 1152,
                          "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
    "clip_l14_336": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14, "hidden_size": 1024,
                     "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "hidden_act": "quick_gelu"},
    "tiny": {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 64,
             "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}
LLM = {
    "phi2": {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
             "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}},
    "tinyllama_1_1b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
                       "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
                       "max_position_embeddings": 2048},
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 2048},
}


class Synthetic(Dataset):
    """One image + `text_tokens` text tokens per sample, the second half labelled (an answer);
    `length`: the expanded sequence length (the image token replaced by the visual tokens)."""

    def __init__(self, n: int, text_tokens: int, image_size: int, vocab: int, visual_tokens: int):
        self.n, self.text_tokens, self.image_size, self.vocab = n, text_tokens, image_size, vocab
        self.length = text_tokens - 1 + visual_tokens

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(10, self.vocab, (self.text_tokens,), generator=g)
        ids[1] = IMAGE_TOKEN_ID
        labels = ids.clone()
        labels[: self.text_tokens // 2] = IGNORE_INDEX
        return ids, labels, torch.randn(3, self.image_size, self.image_size, generator=g), self.length


def collate(items):
    ids, labels, pixels = map(torch.stack, list(zip(*items))[:3])
    lengths = [item[3] for item in items]
    return {"num_samples": len(items), "skipped": [], "input_ids": ids, "labels": labels,
            "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "lengths": lengths,
            "real_tokens": sum(lengths), "computed_tokens": len(items) * max(lengths)}


class Timer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.start = warmup, [], None

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(trainer)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(trainer)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vision", choices=sorted(VISION), default="siglip_so400m_384")
    ap.add_argument("--llm", choices=sorted(LLM), default="phi2")
    ap.add_argument("--strategy", choices=["auto", "ddp", "fsdp"], default="fsdp")
    ap.add_argument("--accelerator", default="gpu")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--text-tokens", type=int, default=512, help="text tokens per sample (visual tokens come on top)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default=None, help="trainer precision (default: bf16-mixed on GPU, 32-true on CPU)")
    ap.add_argument("--no-activation-checkpointing", action="store_true")
    args = ap.parse_args()

    tokenizer_dir = tempfile.mkdtemp(prefix="bench-tokenizer-")
    train_bpe_tokenizer(["a caption of an image"] * 10, tokenizer_dir, vocab_size=300)
    model = {"vision": {"_target_": "lmm.model.vision.HFVisionEncoder", "hf_config": VISION[args.vision]},
             "connector": {"_target_": "lmm.model.connector.MLPConnector", "depth": 2, "act": "gelu"},
             "llm": {"_target_": "lmm.model.llm.LanguageModel", "tokenizer": tokenizer_dir,
                     "template": {"_target_": "lmm.data.templates.vicuna"}, "hf_config": LLM[args.llm]}}
    parallel = {"activation_checkpointing": not args.no_activation_checkpointing}
    if args.strategy == "fsdp":
        parallel.update(param_dtype="bfloat16" if args.accelerator == "gpu" else None, reduce_dtype="float32")
        strategy = make_strategy_config(args.devices)
    else:
        strategy = args.strategy
    tune = {"vision": "frozen", "connector": "full", "llm": "full"}  # the SFT stage of both paper recipes
    module = LMMTrainModule(model, tune, {"lr": 2e-5}, parallel)
    rates = flop_rates(module.model)  # from the architecture and the tuned parameters
    image_size = VISION[args.vision]["image_size"]
    steps = args.warmup + args.steps
    vocab = module.model.llm.model.get_input_embeddings().num_embeddings
    dataset = Synthetic(steps * args.micro_batch * args.devices, args.text_tokens, image_size, vocab,
                        module.model.num_visual_tokens)
    data = DataLoader(dataset, batch_size=args.micro_batch, collate_fn=collate, num_workers=2)
    # Every micro-batch has the same shape, so one gives each rank's step FLOPs.
    sample = collate([dataset[i] for i in range(args.micro_batch)])
    head_rows = int(trained_targets(sample["labels"])) if head_on_trained_positions(module.model) else None
    flops = rates(sample["lengths"], sample["pixel_values"].shape[0], head_rows)
    timer = Timer(args.warmup)
    precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32-true")
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=strategy, precision=precision,
                        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, data)
    if not trainer.is_global_zero:
        return
    step = statistics.median(timer.times)
    tokens = args.micro_batch * args.devices * dataset.length
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if args.accelerator == "gpu" else "n/a"
    name = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    peak = device_peak_tflops(trainer.strategy.root_device)  # PEAK_BF16_TFLOPS by device name
    tflops = flops / step / 1e12  # per device: every rank computes one micro-batch per step
    mfu = f"{tflops / peak:.1%}" if peak else f"n/a (peak known for {', '.join(PEAK_BF16_TFLOPS)})"
    print("| vision | llm | strategy | devices | micro batch | tokens/sample | step s (median) | tokens/s | "
          "samples/s | peak GiB/rank | TFLOP/s/device | MFU | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.vision} | {args.llm} | {args.strategy} | {args.devices} | {args.micro_batch} | "
          f"{dataset.length} | {step:.3f} | {tokens / step:,.0f} | "
          f"{args.micro_batch * args.devices / step:.1f} | {memory} | {tflops:.3g} | {mfu} | {name} |")


def make_strategy_config(devices: int):
    from omegaconf import OmegaConf

    return make_strategy(OmegaConf.create({"_target_": "lightning.pytorch.strategies.ModelParallelStrategy",
                                           "data_parallel_size": "auto", "tensor_parallel_size": 1}), devices)


if __name__ == "__main__":
    main()
