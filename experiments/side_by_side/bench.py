"""lmm side by side: against transformers' LlavaForConditionalGeneration on the same weights, and
Lightning's fit loop against a bare PyTorch loop over the same LMMTrainModule.

    python experiments/side_by_side/bench.py                       # both shapes, CPU, float32
    python experiments/side_by_side/bench.py --shape phi2 --steps 10 --warmup 3
    python experiments/side_by_side/bench.py --device cuda
    python experiments/side_by_side/bench.py --tiny                # smoke run (tiny shapes, in one process)

(a) A random-weight HF Llava is built from configs and converted with `LMM.from_hf_llava`; both
train on one identical SFT-shaped batch (forward + backward + AdamW step, vision frozen, connector
+ LLM trained) and generate greedily from one identical prompt + image. The generated ids must be
identical: the script exits with status 1 if they are not, or if a check that both sides ran the same
thing fails (weights checksum, first-step loss).
(b) `trainer.fit` of an `LMMTrainModule` against a hand loop (forward, backward, optimizer step,
scheduler step, zero_grad with the optimiser of `lmm.train.optim.build_optimizer`), same data.

Each variant runs in a fresh subprocess, so its peak memory is its own: CPU peak = VmHWM of
/proc/self/status, reset (/proc/self/clear_refs) after the model is built, so it covers the
measured phase; CUDA peak = torch.cuda.max_memory_allocated over the same phase.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

TARGETS = {"train": 0.85, "generate": 1.0, "lightning": 1.05}
# Realised as Llama text configs: `from_hf_llava` maps LLaVA's bias-free `lm_head`, and Phi's head
# has a bias (a Phi text config fails the conversion with "lacks weights for llm.model.lm_head.bias").
SHAPES = {
    "small": {
        "vision": {"model_type": "clip_vision_model", "image_size": 224, "patch_size": 16, "hidden_size": 256,
                   "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
        "feature_layer": -2, "select": "default",  # LLaVA: second-to-last layer, CLS dropped
        "text": {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6,
                 "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 2048},
        "text_tokens": 256,
    },
    "phi2": {  # Phi-2's vocabulary and widths, 2 layers; SigLIP-384's 729 visual tokens from a narrow tower
        "vision": {"model_type": "siglip_vision_model", "image_size": 378, "patch_size": 14, "hidden_size": 64,
                   "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2},
        "feature_layer": -1, "select": "full",  # SigLIP has no CLS: every patch is kept
        "text": {"vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 2,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048},
        "text_tokens": 256,
    },
}
TINY = {
    "small": {
        "vision": {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2},
        "feature_layer": -2, "select": "default",
        "text": {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512},
        "text_tokens": 48,
    },
    "phi2": {
        "vision": {"model_type": "siglip_vision_model", "image_size": 48, "patch_size": 8, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "feature_layer": -1, "select": "full",
        "text": {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512},
        "text_tokens": 48,
    },
}
TUNE = {"vision": "frozen", "connector": "full", "llm": "full"}  # the SFT stage of both paper recipes
OPTIM = {"lr": 2e-5}
# An SFT conversation of two rounds, as fractions of the text tokens: (share, trained). The image
# placeholder follows the system prompt; 40% of the text tokens are trained (the two answers).
ROUNDS = [(0.35, False), (0.20, True), (0.25, False), (0.20, True)]
N_SPECIAL = 4  # ids 0-3: <unk> <s> </s> <pad> of the locally trained tokenizer


# ---------------------------------------------------------------- shared pieces (parent and workers)

def shape_of(name: str, tiny: bool) -> dict:
    return (TINY if tiny else SHAPES)[name]


def n_visual(shape: dict) -> int:
    v = shape["vision"]
    return (v["image_size"] // v["patch_size"]) ** 2  # CLIP's CLS is dropped, SigLIP has none


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or the process's resident high-water mark
    (VmHWM), reset at the start of the phase; where the kernel refuses the reset, a thread samples
    VmRSS every millisecond instead."""

    def __init__(self, device: str):
        self.device, self.method, self._peak, self._stop = device, None, 0, None

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def __enter__(self):
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.method, self.start = "cuda max_memory_allocated", torch.cuda.memory_allocated()
            return self
        self.start = self._status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM"
        except OSError:
            self.method, self._peak, self._stop = "sampled VmRSS", self._status("VmRSS"), threading.Event()

            def sample():
                while not self._stop.wait(0.001):
                    self._peak = max(self._peak, self._status("VmRSS"))
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        elif self._stop is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._peak, self._status("VmRSS"))
        else:
            self.peak = self._status("VmHWM")
        return False


def make_tokenizer(out_dir: str) -> str:
    from lmm.data.tokenizer_build import train_bpe_tokenizer

    train_bpe_tokenizer(["USER: what is in the image? ASSISTANT: a red circle on a blue square."] * 10, out_dir,
                        vocab_size=300)
    return out_dir


def special_ids(tokenizer_dir: str) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def make_sample(shape: dict, specials: dict, batch: int) -> dict:
    """One SFT batch in both formats. lmm: one IMAGE_TOKEN_ID placeholder per sample, labels -100 on
    it and on the prompts; HF Llava: the placeholder expanded to one image token per visual token,
    labelled -100. Plus the generation prompt (the first round's prompt, image included)."""
    from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID

    text, vocab = shape["text_tokens"], shape["text"]["vocab_size"]
    hf_image_id, visual = vocab - 1, n_visual(shape)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(N_SPECIAL, vocab - 1, (batch, text), generator=g)  # never an image token or special
    labels = torch.full_like(ids, IGNORE_INDEX)
    ids[:, 0] = specials["bos"]
    ends = [round(text * sum(s for s, _ in ROUNDS[: i + 1])) for i in range(len(ROUNDS))]
    start = 0
    for (_, trained), end in zip(ROUNDS, ends):
        if trained:
            ids[:, end - 1] = specials["eos"]  # each answer ends with </s>, trained as LLaVA does
            labels[:, start:end] = ids[:, start:end]
        start = end
    image_at = max(2, round(0.12 * text))  # after BOS + the system prompt
    ids[:, image_at] = IMAGE_TOKEN_ID
    prompt_end = ends[0]

    def expand(t, fill):
        return torch.cat([t[:, :image_at], torch.full((t.shape[0], visual), fill), t[:, image_at + 1:]], 1)

    pixels = torch.randn(batch, 3, shape["vision"]["image_size"], shape["vision"]["image_size"], generator=g)
    trained = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return {
        "lmm": {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "pixel_values": pixels},
        "hf": {"input_ids": expand(ids, hf_image_id), "labels": expand(labels, IGNORE_INDEX),
               "attention_mask": torch.ones(batch, text - 1 + visual, dtype=torch.long), "pixel_values": pixels},
        "lmm_prompt": {"input_ids": ids[:1, :prompt_end], "attention_mask": torch.ones(1, prompt_end, dtype=torch.long),
                       "pixel_values": pixels[:1]},
        "hf_prompt": {"input_ids": expand(ids[:1, :prompt_end], hf_image_id),
                      "attention_mask": torch.ones(1, prompt_end - 1 + visual, dtype=torch.long),
                      "pixel_values": pixels[:1]},
        "trained_tokens": trained, "text_tokens": text, "visual_tokens": visual,
    }


def build_hf_llava(shape: dict, specials: dict):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    vision = dict(shape["vision"])
    vision_config = CONFIG_MAPPING[vision.pop("model_type")](**vision)
    # The text config carries the tokenizer's special ids, as lmm's LLM does (pad is the embedding's padding_idx).
    text_config = LlamaConfig(**shape["text"], bos_token_id=specials["bos"], eos_token_id=specials["eos"],
                              pad_token_id=specials["pad"])
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_id=shape["text"]["vocab_size"] - 1, image_seq_length=n_visual(shape),
                         vision_feature_layer=shape["feature_layer"],
                         vision_feature_select_strategy=shape["select"], projector_hidden_act="gelu")
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


def lmm_specs(shape: dict, tokenizer_dir: str) -> dict:
    """The same architecture as lmm component specs (for LMMTrainModule)."""
    return {
        "vision": {"_target_": "lmm.model.vision.HFVisionEncoder", "hf_config": shape["vision"],
                   "feature_layer": shape["feature_layer"], "feature_select": "patch"},
        "connector": {"_target_": "lmm.model.connector.MLPConnector", "depth": 2, "act": "gelu"},
        "llm": {"_target_": "lmm.model.llm.LanguageModel", "tokenizer": tokenizer_dir,
                "template": {"_target_": "lmm.data.templates.vicuna"},
                "hf_config": {"model_type": "llama", **shape["text"]}},
    }


def checksum(*tensors) -> float:
    return float(sum(t.detach().double().sum().item() for t in tensors))


def to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------- workers (one variant each)

def worker_llava(kind: str, shape: dict, tokenizer_dir: str, args) -> dict:
    """kind 'hf' or 'lmm': train steps, then greedy generation, on the same weights."""
    from lmm.model.lmm import LMM
    from lmm.train.optim import build_optimizer

    specials = special_ids(tokenizer_dir)
    sample = make_sample(shape, specials, args.batch)
    hf = build_hf_llava(shape, specials)
    if kind == "hf":
        model, batch, prompt = hf, sample["hf"], sample["hf_prompt"]
        model.model.vision_tower.requires_grad_(False)
        weights = (model.model.multi_modal_projector.linear_1.weight, model.get_input_embeddings().weight)
    else:
        model, batch, prompt = LMM.from_hf_llava(hf, tokenizer=tokenizer_dir), sample["lmm"], sample["lmm_prompt"]
        del hf
        model.vision.requires_grad_(False)
        weights = (model.connector[0].weight, model.llm.model.get_input_embeddings().weight)
    result = {"checksum": checksum(*weights), "trained_tokens": sample["trained_tokens"]}
    del weights
    device = args.device
    model.to(device).train()
    batch, prompt = to(batch, device), to(prompt, device)
    total = args.warmup + args.steps
    optimizer, scheduler = build_optimizer(model.parameters(), total, **OPTIM)

    times, losses = [], []
    if args.phase == "gen":  # generation alone, in a process that did not train (see compare_shape)
        total = 0
    with PeakMemory(device) as mem:
        for _ in range(total):
            sync(device)
            t0 = time.perf_counter()
            out = model(**batch)  # only the loss is used: lmm may leave out.logits None when given labels
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(out.loss.item())
            del out
    result.update(train_times=times[args.warmup:], losses=losses, train_peak=mem.peak, train_start=mem.start,
                  memory_method=mem.method)
    del optimizer, scheduler
    if args.phase == "train":
        return result

    model.eval()
    n = args.max_new_tokens
    options = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False,  # the full length, always
               "eos_token_id": specials["eos"], "pad_token_id": specials["pad"]}
    times = []
    with PeakMemory(device) as mem, torch.no_grad():
        for _ in range(args.warmup + args.steps):
            sync(device)
            t0 = time.perf_counter()
            new = model.generate(**prompt, **options)
            sync(device)
            times.append(time.perf_counter() - t0)
    if kind == "hf":
        new = new[:, prompt["input_ids"].shape[1]:]  # HF returns prompt + answer; lmm (from embeddings) the answer
    result.update(gen_times=times[args.warmup:], gen_ids=new[0].tolist(), gen_peak=mem.peak, gen_start=mem.start)
    return result


class LoopTimer:
    """Time stamps at each batch's start (after the batch is fetched) and at the last batch's end:
    consecutive differences are whole loop periods (data, hooks, step)."""

    def __init__(self, device):
        self.device, self.stamps = device, []

    def stamp(self):
        sync(self.device)
        self.stamps.append(time.perf_counter())


def worker_fit(kind: str, shape: dict, tokenizer_dir: str, args) -> dict:
    """kind 'lightning' (trainer.fit) or 'loop' (the same steps by hand), same module and data."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lmm.train.module import LMMTrainModule
    from lmm.train.optim import build_optimizer

    specials = special_ids(tokenizer_dir)
    sample = make_sample(shape, specials, args.batch)
    total = args.warmup + args.steps
    batch = {"num_samples": args.batch, "skipped": [], **sample["lmm"]}
    data = DataLoader([batch] * total, batch_size=None, shuffle=False, num_workers=0)
    torch.manual_seed(0)
    module = LMMTrainModule(lmm_specs(shape, tokenizer_dir), TUNE, OPTIM)
    result = {"checksum": checksum(module.model.connector[0].weight, module.model.llm.embed(torch.arange(8)))}
    timer, losses, device = LoopTimer(args.device), [], args.device

    if kind == "lightning":
        class Stamps(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                timer.stamp()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses.append(outputs["loss"].item() if isinstance(outputs, dict) else outputs.item())
                if batch_idx == total - 1:
                    timer.stamp()

        trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
                            precision="32-true", max_steps=total, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[Stamps()])
        with PeakMemory(device) as mem:
            trainer.fit(module, data)
    else:
        module.configure_model()
        module.to(device)
        optimizer, scheduler = build_optimizer(module.parameters(), total, **OPTIM)
        with PeakMemory(device) as mem:
            for batch in data:
                timer.stamp()
                batch = to(batch, device)
                out = module.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(out.loss.item())
                del out
            timer.stamp()
    periods = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
    result.update(times=periods[args.warmup:], losses=losses, peak=mem.peak, start=mem.start, memory_method=mem.method)
    return result


WORKERS = {"hf": worker_llava, "lmm": worker_llava, "lightning": worker_fit, "loop": worker_fit}


def run_worker(kind: str, shape_name: str, tokenizer_dir: str, args, phase: str = "both") -> dict:
    shape = shape_of(shape_name, args.tiny)
    args = argparse.Namespace(**{**vars(args), "phase": phase})
    if args.in_process:
        gc.collect()
        return WORKERS[kind](kind, shape, tokenizer_dir, args)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape_name, "--tokenizer", tokenizer_dir,
           "--out", out, "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
           "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens), "--phase", args.phase]
    cmd += (["--tiny"] if args.tiny else []) + (["--threads", str(args.threads)] if args.threads else [])
    print(f"  running {kind} ({shape_name}) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"worker {kind} ({shape_name}) failed with status {proc.returncode}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


# ---------------------------------------------------------------- the table

def row(*cells) -> str:
    return "| " + " | ".join(cells) + " |"


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def peak(r: dict, phase: str = "") -> str:
    """Peak of the phase, and in brackets its rise over the phase's start (weights already resident)."""
    key = f"{phase}_" if phase else ""
    return f"{mib(r[key + 'peak'])} (+{mib(max(0, r[key + 'peak'] - r[key + 'start']))})"


def rise_ratio(a: dict, b: dict, phase: str) -> str:
    rise_a, rise_b = (max(0, r[f"{phase}_peak"] - r[f"{phase}_start"]) for r in (a, b))
    return f"{rise_b / rise_a:.2f}x" if rise_a > 0 else "-"


def met(ratio: float, target: float, at_most: bool) -> str:
    return "yes" if (ratio <= target if at_most else ratio >= target) else "no"


def compare_shape(name: str, tokenizer_dir: str, args) -> tuple[list[str], list[str], str, list[str]]:
    """Table rows of (a) and (b), the shape's description and the failed checks, for one shape."""
    shape = shape_of(name, args.tiny)
    # Train and generate in separate fresh processes: a process that has just trained holds another
    # heap, which moved generation times by up to 15% either way; the generation processes alternate
    # HF and lmm for --rounds rounds and the medians pool all their timed calls.
    r = {kind: run_worker(kind, name, tokenizer_dir, args, phase="train") for kind in ("hf", "lmm")}
    for _ in range(args.rounds):
        for kind in ("hf", "lmm"):
            gen = run_worker(kind, name, tokenizer_dir, args, phase="gen")
            r[kind].setdefault("gen_times", []).extend(gen["gen_times"])
            r[kind].update(gen_ids=gen["gen_ids"], gen_peak=max(gen["gen_peak"], r[kind].get("gen_peak", 0)),
                           gen_start=gen["gen_start"])
    # The same for (b): one Lightning and one bare-loop process gave 1.06x at phi2, alternated rounds
    # of the same two gave 0.95x and 1.02x (12 s steps moving by 5% from process to process).
    for _ in range(args.rounds):
        for kind in ("lightning", "loop"):
            fit = run_worker(kind, name, tokenizer_dir, args)
            if kind in r:
                fit = {**r[kind], "times": r[kind]["times"] + fit["times"], "peak": max(r[kind]["peak"], fit["peak"])}
            r[kind] = fit
    hf, ours, fit, loop = r["hf"], r["lmm"], r["lightning"], r["loop"]
    failures = []
    if not math.isclose(hf["checksum"], ours["checksum"], rel_tol=1e-9):
        failures.append(f"{name}: the two models do not hold the same weights")
    if not math.isclose(hf["losses"][0], ours["losses"][0], rel_tol=1e-4, abs_tol=1e-5):
        failures.append(f"{name}: first-step losses differ (HF {hf['losses'][0]:.6f}, lmm {ours['losses'][0]:.6f})")
    identical = hf["gen_ids"] == ours["gen_ids"]
    if not identical:
        first = next((i for i, (a, b) in enumerate(zip(hf["gen_ids"], ours["gen_ids"])) if a != b),
                     min(len(hf["gen_ids"]), len(ours["gen_ids"])))
        failures.append(f"{name}: generated ids differ from position {first} on")
    if fit["checksum"] != loop["checksum"] or not math.isclose(fit["losses"][0], loop["losses"][0], rel_tol=1e-4):
        failures.append(f"{name}: the Lightning and bare-loop runs did not start from the same model and data")

    median = statistics.median
    step_hf, step_ours = median(hf["train_times"]), median(ours["train_times"])
    tokens = args.max_new_tokens  # one prompt
    tps_hf, tps_ours = tokens / median(hf["gen_times"]), tokens / median(ours["gen_times"])
    fit_s, loop_s = median(fit["times"]), median(loop["times"])
    train_ratio, gen_ratio, fit_ratio = step_ours / step_hf, tps_ours / tps_hf, fit_s / loop_s
    vocab = shape["text"]["vocab_size"]
    # The train-step target is stated at the Phi-2-shaped vocabulary: judged on that shape only.
    train_target = f"<= {TARGETS['train']}x" if name == "phi2" else f"(<= {TARGETS['train']}x at phi2)"
    train_met = met(train_ratio, TARGETS["train"], True) if name == "phi2" else "-"
    yes_no = "yes" if identical else "no"
    rows = [
        row(name, "train step s (fwd + bwd + AdamW)", f"{step_hf:.4f}", f"{step_ours:.4f}", f"{train_ratio:.2f}x",
            train_target, train_met),
        row(name, "train peak memory MiB (+ rise in the phase)", peak(hf, "train"), peak(ours, "train"),
            f"{ours['train_peak'] / hf['train_peak']:.2f}x (rise {rise_ratio(hf, ours, 'train')})", "", ""),
        row(name, "first-step loss", f"{hf['losses'][0]:.6f}", f"{ours['losses'][0]:.6f}", "", "", ""),
        row(name, f"greedy generation tokens/s ({args.max_new_tokens} new)", f"{tps_hf:.1f}", f"{tps_ours:.1f}",
            f"{gen_ratio:.2f}x", f">= {TARGETS['generate']}x", met(gen_ratio, TARGETS["generate"], False)),
        row(name, "generation peak memory MiB (+ rise in the phase)", peak(hf, "gen"), peak(ours, "gen"),
            f"{ours['gen_peak'] / hf['gen_peak']:.2f}x (rise {rise_ratio(hf, ours, 'gen')})", "", ""),
        row(name, "generated ids identical", "", "", yes_no, "yes", yes_no),
    ]
    fit_rows = [row(name, f"{fit_s:.4f}", f"{loop_s:.4f}", f"{fit_ratio:.3f}x", f"<= {TARGETS['lightning']}x",
                    met(fit_ratio, TARGETS["lightning"], True), peak(fit), peak(loop))]
    v = shape["vision"]
    sizes = (f"- {name}: {v['model_type']}, {v['num_hidden_layers']} layer(s) (width {v['hidden_size']}, image "
             f"{v['image_size']}/{v['patch_size']}, {n_visual(shape)} visual tokens); Llama text config, vocab "
             f"{vocab:,}, hidden {shape['text']['hidden_size']:,}, intermediate {shape['text']['intermediate_size']:,}, "
             f"{shape['text']['num_attention_heads']} heads, {shape['text']['num_hidden_layers']} layers; "
             f"{shape['text_tokens']} text tokens per sample, {ours['trained_tokens'] // args.batch} of them trained; "
             f"memory: {ours['memory_method']}")
    return rows, fit_rows, sizes, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["small", "phi2", "both"], default="both")
    ap.add_argument("--steps", type=int, help="timed repetitions (train steps, generations, fit steps); "
                    "default 5 (2 with --tiny)")
    ap.add_argument("--warmup", type=int, help="untimed repetitions before them; default 2 (1 with --tiny)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=1, help="samples per train batch (one image each)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, help="fresh processes per variant for generation and for (b), alternating "
                    "HF/lmm and Lightning/loop, their timed calls pooled; default 3 (1 with --tiny)")
    ap.add_argument("--phase", choices=["train", "gen", "both"], default="both", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads per variant (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, all variants in this process (a smoke run)")
    ap.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                    help="run the variants in this process (faster start, but memory figures overlap); "
                         "default: only with --tiny")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.in_process is None:
        args.in_process = args.tiny
    if args.steps is None:
        args.steps = 2 if args.tiny else 5
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    if args.rounds is None:
        args.rounds = 1 if args.tiny else 3
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = WORKERS[args.worker](args.worker, shape_of(args.shape, args.tiny), args.tokenizer, args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    import transformers

    shapes = ["small", "phi2"] if args.shape == "both" else [args.shape]
    rows, fit_rows, sizes, failures = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="side-by-side-tokenizer-") as tokenizer_dir:
        make_tokenizer(tokenizer_dir)
        for name in shapes:
            r, f, s, bad = compare_shape(name, tokenizer_dir, args)
            rows += r
            fit_rows += f
            sizes.append(s)
            failures += bad

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or "cpu")
    print(f"## lmm side by side{' (tiny smoke run: not a measurement)' if args.tiny else ''}\n")
    print(f"{device}, {torch.get_num_threads()} threads, float32, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; medians of {args.steps} after {args.warmup} warm-up; batch {args.batch}; "
          f"{'all variants in one process (memory figures overlap)' if args.in_process else 'each variant in a fresh process'}; "
          f"generation and (b) pooled over {args.rounds} alternating round(s).")
    print(f"Targets (issue 12): train step <= {TARGETS['train']}x HF's time at the Phi-2-shaped vocabulary; "
          f"generation >= {TARGETS['generate']}x HF's speed; Lightning overhead <= {TARGETS['lightning']}x.\n")
    print("### (a) lmm vs transformers LlavaForConditionalGeneration, same weights\n")
    print("| shape | metric | HF Llava | lmm | lmm/HF | target | met |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n### (b) Lightning trainer.fit vs a bare PyTorch loop, same LMMTrainModule and data\n")
    print("| shape | fit s/step | bare loop s/step | overhead | target | met | fit peak MiB (+ rise) | loop peak MiB (+ rise) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(fit_rows))
    print("\nShapes (random weights; the LLM as a Llama text config, see README):")
    print("\n".join(sizes))
    print(f"\nidentical: {'no' if any('generated ids' in f for f in failures) else 'yes'}")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
