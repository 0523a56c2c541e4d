"""Start-up cost of a LLaVA-1.5-SFT-sized annotation file: the byte-span index, the length pass, the
batching plan, and what one DataLoader worker holds in memory. Prints a Markdown table.

    python experiments/data_throughput/index_bench.py --records 665000 --workers 2

The annotation file is generated (LLaVA-format records shaped like llava_v1_5_mix665k: ~6% long
text-only conversations, the rest one image and 1-8 question/answer rounds; random words, so the
token counts are realistic but the text is not). The tokenizer is a byte-level BPE trained here.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [w.strip() for w in ["the", "a", "of", "and", "to", "in", "is", "on", "with", "what", "color", "shape", "how", "many", "people", "image", "picture", "left", "right", "there", "are", "this", "that", "which", "where", "does", "do", "man", "woman", "car", "street", "table", "dog", "cat", "red", "blue", "green", "white", "black", "sitting", "standing", "holding", "wearing", "looking", "front", "behind", "next", "near", "two", "three", "several", "large", "small", "bright", "dark", "answer", "question", "describe", "detail", "background", "foreground", "scene", "object", "building", "sky", "tree", "water", "food", "plate"]]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_records(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        if rng.random() < 0.06:  # ShareGPT-style text-only, long
            turns = []
            for _ in range(rng.randint(1, 4)):
                turns += [sentence(rng, rng.randint(10, 60)), sentence(rng, rng.randint(50, 400))]
            yield {"id": f"t{i}", "conversations": [{"from": "human" if k % 2 == 0 else "gpt", "value": v}
                                                     for k, v in enumerate(turns)]}
            continue
        rounds = rng.choice([1, 1, 2, 3, 4, 6, 8])
        short = rng.random() < 0.6  # VQA-style single-word answers vs. free-form answers
        turns = []
        for r in range(rounds):
            q = sentence(rng, rng.randint(5, 15)) + "?"
            turns += [("<image>\n" + q) if r == 0 else q,
                      sentence(rng, 1 if short else rng.randint(15, 120))]
        yield {"id": f"i{i}", "image": f"coco/train2017/{i:012d}.jpg",
               "conversations": [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(turns)]}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=665_000)
    ap.add_argument("--workers", type=int, default=2, help="processes of the length pass")
    ap.add_argument("--visual-tokens", type=int, default=576)
    ap.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory comparison, on the file in --dir")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from lmm.data.dataset import SampleProcessor
    from lmm.data.lengths import measure
    from lmm.data.plan import BatchingConfig, make_plan
    from lmm.data.sources import JsonSource
    from lmm.data.templates import vicuna
    from lmm.data.tokenizer_build import train_bpe_tokenizer

    root = Path(args.dir or tempfile.mkdtemp(prefix="lmm-index-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "mix.json"
    if args.memory_only:
        return memory(path, root / "index")
    t = time.perf_counter()
    with path.open("w") as f:
        f.write("[\n")
        for k, r in enumerate(make_records(args.records)):
            f.write((",\n" if k else "") + json.dumps(r))
        f.write("\n]\n")
    gen_s = time.perf_counter() - t
    corpus = [json.dumps(r) for r in make_records(2000, seed=1)]
    train_bpe_tokenizer(corpus, root / "tokenizer", vocab_size=4000)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")

    rows = []
    t = time.perf_counter()
    source = JsonSource(path, root, index_dir=str(root / "index"))
    rows.append(("byte-span index (once, cached)", time.perf_counter() - t, f"{source.spans.nbytes / 2**20:.1f} MB of spans"))
    t = time.perf_counter()
    full = json.loads(path.read_text())
    load_s = time.perf_counter() - t
    del full
    processor = SampleProcessor(tokenizer, vicuna(), None, args.visual_tokens, max_length=2048)
    t = time.perf_counter()
    table = measure(source, processor, workers=args.workers)
    rows.append((f"length pass, {args.workers} processes (once, cached)", time.perf_counter() - t,
                 f"{int((table.status == 0).sum())} usable"))
    lengths = table.lengths(args.visual_tokens)
    for batching in ("random", "length_grouped", "token_budget", "packed"):
        t = time.perf_counter()
        plan = make_plan(np.flatnonzero(table.status == 0), lengths, table.images,
                         BatchingConfig(batching, micro_batch_size=16), world=8, epoch=0, max_length=2048)
        rows.append((f"plan `{batching}` (8 ranks, every epoch)", time.perf_counter() - t,
                     f"token efficiency {plan.efficiency:.3f}"))

    size_mb = path.stat().st_size / 2**20
    print(f"\n{args.records} records, {size_mb:.0f} MB JSON (generated in {gen_s:.0f} s); "
          f"json.load of the whole file: {load_s:.1f} s\n")
    print("| step | seconds | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} | {note} |")

    memory(path, root / "index")


def memory(path: Path, index_dir: Path) -> None:
    """Peak memory of a fresh process that opens the source (spans cached, as in a DataLoader
    worker) and reads 1000 random records, vs. one that json.loads the file, vs. the bare imports."""
    import subprocess
    import sys

    from lmm.data.sources import JsonSource

    JsonSource(path, "/", index_dir=str(index_dir))  # the cached spans a worker finds
    peak = "print(int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) // 1024)"
    lazy = (f"import random, sys; from lmm.data.sources import JsonSource; s = JsonSource(sys.argv[1], '/', "
            f"index_dir={str(index_dir)!r}); [s.read(random.randrange(len(s))) for _ in range(1000)]; {peak}")
    eager = f"import json, sys; import lmm.data.sources; d = json.load(open(sys.argv[1])); {peak}"
    bare = f"import json, sys; import lmm.data.sources; {peak}"
    mb = {name: subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout.strip()
          for name, code in (("lazy", lazy), ("eager", eager), ("bare", bare))}
    print(f"\npeak memory of one process (MB): after importing lmm's data modules {mb['bare']}; lazy source "
          f"(cached spans) + 1000 random reads {mb['lazy']}; json.load of the whole file {mb['eager']}")


if __name__ == "__main__":
    main()
