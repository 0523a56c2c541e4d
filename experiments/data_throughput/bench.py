"""Data-pipeline throughput per CPU core: decode + pad/resize/normalise + template + tokenise + mask.

Generates COCO-size photo-like JPEGs and LLaVA-1.5-style conversations (see README.md), trains a
32k byte-level BPE tokenizer on them (no download), then measures samples/s per core for
  (a) image decode + transform only          single process, one thread
  (b) text only: template + tokenise + mask   single process (`SampleProcessor.encode`)
  (c) the full sample                         single process (`SampleProcessor.__call__`)
  (d) the full pipeline: `LlavaDataModule`'s DataLoader with k workers, samples/s / k
and prints a Markdown table.

    python experiments/data_throughput/bench.py --images 500 --size 384 --workers 1,2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer is used

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFilter

from lmm.data.dataset import SampleProcessor
from lmm.data.tokenize import SampleError
from lmm.data.tokenizer_build import train_bpe_tokenizer
from lmm.data.transforms import ImageTransform
from lmm.model.spec import build

DATA_VERSION = 2  # bump when the generated data changes, so a --dir made by an older script is rebuilt

# Sizes of COCO train2017 photos (the bulk of LLaVA-1.5's images), roughly by frequency.
COCO_SIZES = [((640, 480), 0.30), ((640, 427), 0.20), ((480, 640), 0.12), ((427, 640), 0.10), ((500, 375), 0.10),
              ((375, 500), 0.05), ((640, 360), 0.06), ((612, 612), 0.04), ((640, 512), 0.03)]

# Tower presets: SigLIP so400m-384 (patch 14 -> 27x27 tokens) and CLIP-L/14-336 (24x24).
TOWERS = {384: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
          336: ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


# -- images ----------------------------------------------------------------------------------------

def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Photo-like content, so the JPEG decodes like a photo (a flat colour decodes far faster):
    a gradient, smooth colour noise at two scales, random shapes, a slight blur and fine grain."""
    def smooth(cell: int, amp: float) -> np.ndarray:
        low = rng.normal(0, amp, (max(2, h // cell), max(2, w // cell), 3)).astype(np.float32)
        return np.stack([np.asarray(Image.fromarray(low[..., c], mode="F").resize((w, h), Image.Resampling.BICUBIC))
                         for c in range(3)], -1)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None]
    x = rng.uniform(40, 200, 3) + ramp * rng.uniform(-80, 80, 3) + smooth(48, 40) + smooth(12, 15)
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 12)):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        box = [x0, y0, x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([tuple(rng.uniform(0, 1, 2) * (w, h)) for _ in range(rng.integers(3, 7))], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    grain = smooth(2, 16) + rng.normal(0, 6, (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def make_images(root: Path, n: int, rng: np.random.Generator) -> list[str]:
    sizes, weights = zip(*COCO_SIZES)
    names = []
    for i in range(n):
        w, h = sizes[rng.choice(len(sizes), p=np.array(weights) / sum(weights))]
        name = f"coco/train2017/{i:012d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        photo(rng, w, h).save(root / name, "JPEG", quality=90)
        names.append(name)
    return names


# -- conversations ---------------------------------------------------------------------------------

_COMMON_TEXT = ("the a of and to in is on with at it that this there are image picture two man woman person people "
          "table street car bus train dog cat bird horse sign building room kitchen food plate pizza street "
          "sitting standing holding wearing looking near next behind front left right top bottom white black red "
          "blue green yellow brown large small several group background foreground appears seems likely may "
          "could would also which while their his her its one three four many some other area scene view "
          "water grass tree sky field road window door wall floor light shirt hat bag phone computer laptop "
          "player ball game tennis baseball frisbee skateboard surfboard snow beach ocean boat plane clock "
          "bench umbrella chair couch bed tv book vase bowl cup bottle banana apple orange sandwich cake "
          "because however suggests indicates overall setting atmosphere possibly enjoying together")
COMMON = list(dict.fromkeys(_COMMON_TEXT.split()))
Q_VQA = ["What color is the {n}?", "How many {n}s are there?", "Is there a {n} in the image?", "What is the {n} doing?",
         "Where is the {n}?", "What is on the {n}?", "Is the {n} {a}?", "What kind of {n} is this?",
         "Which side of the picture is the {n} on?", "What is the {n} made of?"]
A_VQA = ["Yes", "No", "2", "3", "1", "white", "black", "red", "blue", "left", "right", "wood", "metal", "tennis",
         "sitting", "standing", "eating", "kitchen", "street", "cloudy"]
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
DETAIL = ["Describe the image in detail.", "What do you see happening in this image?",
          "Can you elaborate on the elements of the picture provided?", "Explain the visual content of the image in great detail.",
          "What do you think is going on in this snapshot?"]


def vocabulary(rng: np.random.Generator, n: int = 30000) -> list[str]:
    """Common English words first, then pronounceable made-up words: a Zipf draw over them gives
    a word-frequency profile like English text with a long tail."""
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "cr",
              "dr", "fr", "gr", "pl", "pr", "st", "tr", "sh", "ch", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck"]
    words, seen = list(COMMON), set(COMMON)
    while len(words) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.integers(1, 4))) + rng.choice(codas)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class Text:
    def __init__(self, rng: np.random.Generator, words: list[str]):
        self.rng, self.words = rng, words
        p = 1.0 / np.arange(1, len(words) + 1) ** 1.05
        self.p = p / p.sum()

    def word(self) -> str:
        return self.words[self.rng.choice(len(self.words), p=self.p)]

    def sentence(self, n: int, end: str = ".") -> str:
        ws = [self.words[i] for i in self.rng.choice(len(self.words), size=n, p=self.p)]
        return " ".join(ws).capitalize() + end

    def passage(self, n_words: int) -> str:
        out, left = [], n_words
        while left > 0:
            k = int(min(left, self.rng.integers(6, 22)))
            out.append(self.sentence(k, "," if k < 4 and left > k else "."))
            left -= k
        return " ".join(out)


def conversation(t: Text, image: str, rid: int) -> dict:
    """A LLaVA-1.5 mix665k-like record: short-answer VQA (VQAv2/GQA/OCR-VQA, several questions of
    one image), multiple choice (A-OKVQA), multi-turn instruction chat and one-turn detailed
    descriptions / reasoning (LLaVA-Instruct), region/caption prompts (RefCOCO, VG, TextCaps)."""
    rng = t.rng
    kind = rng.choice(["vqa", "mc", "chat", "detail", "region"], p=[0.35, 0.10, 0.25, 0.20, 0.10])
    turns: list[tuple[str, str]] = []
    if kind == "vqa":
        for _ in range(rng.integers(1, 6)):
            q = Q_VQA[rng.integers(len(Q_VQA))].format(n=t.word(), a=t.word())
            turns.append((q + VQA_SUFFIX, A_VQA[rng.integers(len(A_VQA))] if rng.random() < 0.7 else t.sentence(2, "")))
    elif kind == "mc":
        for _ in range(rng.integers(1, 3)):
            opts = "\n".join(f"{c}. {t.sentence(int(rng.integers(1, 4)), '')}" for c in "ABCD")
            turns.append((t.sentence(int(rng.integers(6, 14)), "?") + "\n" + opts + MC_SUFFIX, "ABCD"[rng.integers(4)]))
    elif kind == "chat":
        for _ in range(rng.integers(1, 6)):
            n = int(np.clip(rng.lognormal(np.log(35), 0.7), 3, 180))
            turns.append((t.sentence(int(rng.integers(5, 16)), "?"), t.passage(n)))
    elif kind == "detail":
        q = DETAIL[rng.integers(len(DETAIL))] if rng.random() < 0.5 else t.sentence(int(rng.integers(8, 20)), "?")
        turns.append((q, t.passage(int(rng.integers(70, 230)))))
    else:
        for _ in range(rng.integers(1, 6)):
            if rng.random() < 0.5:
                box = ", ".join(f"{v:.2f}" for v in np.sort(rng.uniform(0, 1, 4)))
                turns.append(("Please provide a short description for this region: [" + box + "]",
                              t.sentence(int(rng.integers(2, 10)))))
            else:
                turns.append(("Please provide the bounding box coordinate of the region this sentence describes: "
                              + t.sentence(int(rng.integers(2, 8)), ""),
                              "[" + ", ".join(f"{v:.2f}" for v in np.sort(rng.uniform(0, 1, 4))) + "]"))
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": f"{rid:09d}", "image": image, "conversations": conv}


def plain_transform(size: int, mean, std):
    """The straightforward recipe `ImageTransform` replaced (its code before this benchmark): the
    baseline row of (a). Same output as `backend="pillow"` to float rounding."""
    fill = tuple(round(255 * m) for m in mean)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        if w != h:
            side = max(w, h)
            canvas = Image.new(image.mode, (side, side), fill)
            canvas.paste(image, ((side - w) // 2, (side - h) // 2))
            image = canvas
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
        return (x - mean_t) / std_t
    return transform


# -- setup -----------------------------------------------------------------------------------------

def prepare(root: Path, n_images: int, seed: int, vocab_size: int):
    """Images, `llava.json` and the tokenizer under `root`; reused when already made with the same settings."""
    stamp = {"version": DATA_VERSION, "images": n_images, "seed": seed, "vocab_size": vocab_size}
    stamp_file = root / "bench_data.json"
    tok_dir = root / "tokenizer"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        from transformers import AutoTokenizer
        return root / "llava.json", AutoTokenizer.from_pretrained(str(tok_dir)), None
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    names = make_images(root, n_images, rng)
    t_img = time.perf_counter() - t0
    words = vocabulary(rng)
    text = Text(rng, words)
    records = [conversation(text, name, i) for i, name in enumerate(names)]
    (root / "llava.json").write_text(json.dumps(records))
    # The tokenizer learns from the conversations plus the word list itself, so its merges reach a
    # real LLM's vocabulary size (a small corpus alone stops merging early).
    corpus = [turn["value"] for r in records for turn in r["conversations"]] + [" ".join(words[i:i + 50])
                                                                                for i in range(0, len(words), 50)]
    t1 = time.perf_counter()
    tokenizer = train_bpe_tokenizer(corpus, tok_dir, vocab_size=vocab_size)
    stamp_file.write_text(json.dumps(stamp))
    return root / "llava.json", tokenizer, (t_img, time.perf_counter() - t1)


def machine_info(cpus: set[int]) -> list[str]:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name", "unknown CPU")
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    import tokenizers
    return [(f"CPU: {cpu}; {os.cpu_count()} logical cores, {len(cpus)} usable by this process; "
             f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"),
            (f"Python {platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}, "
             f"numpy {np.__version__}, tokenizers {tokenizers.__version__}")]


# -- measurements ----------------------------------------------------------------------------------

def timed(fn, items, repeats: int):
    """Best of `repeats` passes over `items`: (samples/s by wall clock, samples/s by this process' CPU time)."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for it in items:
            fn(it)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return len(items) / min(walls), len(items) / min(cpus)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loader(cfg: dict) -> dict:
    """(d), run in a fresh process (`bench.py --loader-run CFG`) so the workers fork from a small
    parent, as a training process' would, not from one holding the other stages' leftovers.
    Samples/s through `LlavaDataModule.train_dataloader()`, timed from the first batch on (worker
    start-up left out) over whole epochs until `min_samples`; also the CPU seconds the workers (all
    their threads: the result queue's feeder thread pickles batches into shared memory) and the
    main process used over that time, and the length pass' time (`setup`)."""
    from transformers import AutoTokenizer

    from lmm.data.datamodule import LlavaDataModule
    torch.set_num_threads(1)
    root, k = Path(cfg["root"]), cfg["workers"]
    mean, std = TOWERS[cfg["size"]]
    transform = ImageTransform(cfg["size"], mean, std, backend=cfg["backend"])
    model = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(root / "tokenizer")), image_transform=transform,
                            num_visual_tokens=(cfg["size"] // 14) ** 2)
    dm = LlavaDataModule([str(root / "llava.json")], str(root), micro_batch_size=cfg["micro_batch"], num_workers=k,
                         max_length=cfg["max_length"], seed=0)
    dm.attach(model, build({"_target_": "lmm.data.templates.vicuna"}))
    t0 = time.perf_counter()
    dm.setup("fit", rank=0, world=1)
    t_len = time.perf_counter() - t0
    loader = dm.train_dataloader()
    done, epoch = 0, 0
    it = iter(loader)
    next(it)  # the first batch pays for starting the workers
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = [_cpu_seconds(p) for p in pids]
    main0, start = time.process_time(), time.perf_counter()
    while True:
        for batch in it:
            done += batch["num_samples"]
        if done >= cfg["min_samples"]:
            break
        epoch += 1
        loader.sampler.set_epoch(epoch)
        it = iter(loader)  # persistent workers: the same processes
    wall = time.perf_counter() - start
    worker_cpu = sum(_cpu_seconds(p) - c for p, c in zip(pids, cpu0))
    main_cpu = time.process_time() - main0
    return {"rate": done / wall, "samples": done, "worker_cpu": worker_cpu, "main_cpu": main_cpu, "length_pass": t_len}


def loader_in_subprocess(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--loader-run", json.dumps(cfg)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500, help="JPEGs (and records: one conversation per image)")
    ap.add_argument("--size", type=int, default=384, choices=sorted(TOWERS), help="tower input size")
    ap.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts for (d); '' skips (d)")
    ap.add_argument("--backends", default="pillow,torch", help="ImageTransform backends to measure")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="leave out the plain (pre-optimisation) transform row of (a)")
    ap.add_argument("--dir", default=None, help="where to generate (and reuse) the data; default a temporary folder")
    ap.add_argument("--repeats", type=int, default=3, help="passes per single-process measurement (best is kept)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pin", type=int, default=None,
                    help="run the single-process stages (a)-(c) on this CPU only (the DataLoader gets all again)")
    ap.add_argument("--loader-run", default=None, help=argparse.SUPPRESS)  # internal: one (d) measurement
    args = ap.parse_args(argv)
    if args.loader_run:
        print(json.dumps(run_loader(json.loads(args.loader_run))))
        return

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    all_cpus = os.sched_getaffinity(0)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    tmp = None
    if args.dir:
        root = Path(args.dir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="lmm_data_bench_")
        root = Path(tmp.name)
    ann, tokenizer, made = prepare(root, args.images, args.seed, args.vocab_size)

    records = json.loads(ann.read_text())
    template = build({"_target_": "lmm.data.templates.vicuna"})  # the TinyLLaVA/LLaVA-1.5 conversation format
    n_visual = (args.size // 14) ** 2
    mean, std = TOWERS[args.size]
    paths = [root / r["image"] for r in records]
    sizes = [Image.open(p).size for p in paths]
    mb = np.mean([p.stat().st_size for p in paths]) / 1024

    base = SampleProcessor(tokenizer, template, ImageTransform(args.size, mean, std), n_visual, args.max_length)
    encoded, skipped = [], 0
    for r in records:
        try:
            encoded.append(base.encode(r))
        except SampleError:
            skipped += 1
    text_tokens = np.array([len(e.input_ids) for e in encoded])
    trained = np.array([int((e.labels != -100).sum()) for e in encoded])
    turns = np.array([len(r["conversations"]) // 2 for r in records])

    print("# Data pipeline throughput\n")
    for line in machine_info(all_cpus):
        print(f"- {line}")
    print(f"- data: {len(records)} records / JPEGs (quality 90, mean {mb:.0f} KiB, "
          f"{sum(w > h for w, h in sizes)} wide / {sum(w < h for w, h in sizes)} tall / {sum(w == h for w, h in sizes)} square) in {root}"
          + (f"; generated in {made[0]:.0f} s, tokenizer trained in {made[1]:.0f} s" if made else "; reused"))
    print(f"- tokenizer: byte-level BPE, {len(tokenizer)} tokens; template vicuna (LLaVA-1.5 system prompt)")
    print(f"- conversations: {turns.mean():.2f} QA rounds on average (1-5); text tokens per sample mean {text_tokens.mean():.0f}, "
          f"median {np.median(text_tokens):.0f}, max {text_tokens.max()}; trained tokens mean {trained.mean():.0f}; "
          f"{skipped} skipped")
    print(f"- image {args.size} px ({n_visual} visual tokens), mean {tuple(mean)} std {tuple(std)}, bicubic, pad to square")
    print(f"- (a)-(c): one process, one thread{f', pinned to CPU {args.pin}' if args.pin is not None else ''}, "
          f"best of {args.repeats} passes over the records; (d): micro-batch {args.micro_batch}, random batching, "
          f"timed from the first batch over whole epochs (>= max(records, 400 x workers) samples), per core = "
          f"samples/s / workers")
    print("- 'per CPU-second': samples per second of CPU time actually used (this process for (a)-(c); for (d) the "
          "workers, all their threads, plus the main process): the per-core rate without other jobs' interference "
          "and counting every core the pipeline keeps busy\n")

    rows = []

    def row(stage, backend, rate, cpu_rate=None, note=""):
        rows.append((stage, backend, rate, cpu_rate, note))
        print(f"  {stage:32s} {backend:7s} {rate:8.1f}/s/core  {1000 / rate:6.2f} ms"
              + (f"  (CPU {cpu_rate:.1f}/s)" if cpu_rate else "") + (f"  {note}" if note else ""), file=sys.stderr, flush=True)

    def decode(path, tf):
        with Image.open(path) as im:
            return tf(im)

    rate, cpu = timed(lambda r: base.encode(r), records, args.repeats)
    row("(b) text: template+tokenise+mask", "-", rate, cpu)
    backends = [b for b in args.backends.split(",") if b]
    if args.baseline:
        tf = plain_transform(args.size, mean, std)
        rate, cpu = timed(lambda p: decode(p, tf), paths, args.repeats)
        row("(a) decode + transform", "plain", rate, cpu, note="the transform's code before this benchmark")
    for backend in backends:
        tf = ImageTransform(args.size, mean, std, backend=backend)
        rate, cpu = timed(lambda p, tf=tf: decode(p, tf), paths, args.repeats)
        row("(a) decode + transform", backend, rate, cpu)
    rate, cpu = timed(lambda p: Image.open(p).load(), paths, args.repeats)
    row("(a') JPEG decode alone", "-", rate, cpu)
    for backend in backends:
        proc = SampleProcessor(tokenizer, template, ImageTransform(args.size, mean, std, backend=backend), n_visual,
                               args.max_length)

        def full(r, proc=proc):
            try:
                return proc(r, lambda p: root / p)
            except SampleError:
                return None
        rate, cpu = timed(full, records, args.repeats)
        row("(c) full sample, 1 process", backend, rate, cpu)
    if args.pin is not None:
        os.sched_setaffinity(0, all_cpus)  # the DataLoader's workers inherit it: give them every core again
    for backend in backends:
        for k in [int(w) for w in args.workers.split(",") if w.strip()]:
            r = loader_in_subprocess({"root": str(root), "size": args.size, "backend": backend, "workers": k,
                                      "micro_batch": args.micro_batch, "max_length": args.max_length,
                                      "min_samples": max(len(records), 400 * k)})
            row(f"(d) DataLoader, {k} worker{'s' * (k > 1)}", backend, r["rate"] / k,
                r["samples"] / (r["worker_cpu"] + r["main_cpu"]),
                note=f"{r['rate']:.1f} samples/s in all over {r['samples']} samples; CPU per sample: workers "
                     f"{1000 * r['worker_cpu'] / r['samples']:.2f} ms, main process {1000 * r['main_cpu'] / r['samples']:.2f} ms")

    print("| stage | resize backend | samples/s per core | ms per sample | samples per CPU-second | note |")
    print("|---|---|---:|---:|---:|---|")
    for stage, backend, rate, cpu, note in rows:
        print(f"| {stage} | {backend} | {rate:.1f} | {1000 / rate:.2f} | {f'{cpu:.1f}' if cpu else ''} | {note} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
