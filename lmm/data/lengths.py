"""One pass over the text of every record: its token count, image count and whether it is usable.

Length-aware batching needs every sample's length before the epoch starts, and a bad record is
better reported once, up front, than found on hour 9. The pass tokenises text only (no image is
opened), runs in parallel processes, and is cached on disk keyed by the records, the tokenizer and
the chat template, so the grid cells that share an LLM share it. The table does not depend on the
vision tower: a sample's length is `text + images * (visual tokens - 1)`, computed when planning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmm.data.dataset import SKIP_REASONS, SampleProcessor
from lmm.data.formats import NOTES
from lmm.data.tokenize import IMAGE_TOKEN_ID, SampleError

log = logging.getLogger(__name__)
LENGTHS_VERSION = 2  # 2: whole-string tokenisation as the references, normalisation notes
EXAMPLES = 3  # details kept per skip reason
PARALLEL_FROM = 20_000  # records; below this a process pool costs more than it saves


@dataclass
class LengthTable:
    text: np.ndarray  # (N,) int32 token count incl. one sentinel per image; 0 when unusable
    images: np.ndarray  # (N,) int32 number of images
    status: np.ndarray  # (N,) int8: 0 usable, else 1 + index in SKIP_REASONS
    notes: np.ndarray  # (N,) int8: bit k set when normalisation NOTES[k] changed the (usable) record
    examples: dict[str, list[str]] = field(default_factory=dict)

    def lengths(self, num_visual_tokens: int) -> np.ndarray:
        return self.text.astype(np.int64) + self.images.astype(np.int64) * (num_visual_tokens - 1)

    def skip_counts(self, mask: np.ndarray | None = None) -> Counter:
        status = self.status if mask is None else self.status[mask]
        codes, counts = np.unique(status[status > 0], return_counts=True)
        return Counter({SKIP_REASONS[c - 1]: int(n) for c, n in zip(codes, counts)})

    def note_counts(self, mask: np.ndarray | None = None) -> Counter:
        """Usable records changed by each normalisation (placeholder moved, leading turn dropped)."""
        notes = self.notes if mask is None else self.notes[mask]
        return Counter({name: n for k, name in enumerate(NOTES) if (n := int(((notes >> k) & 1).sum()))})


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha1(f"{body}|{special}".encode()).hexdigest()[:16]


def table_key(source, processor: SampleProcessor) -> str:
    template = json.dumps(processor.template.spec(), sort_keys=True, default=str)
    normalise = f"{processor.image_placeholder}|{processor.leading_assistant}"
    parts = [source.fingerprint, tokenizer_fingerprint(processor.tokenizer), template, normalise, str(LENGTHS_VERSION)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


_WORK: tuple | None = None  # (source, processor, strict), inherited by forked pool workers


def _measure(bounds: tuple[int, int]):
    source, processor, strict = _WORK
    start, end = bounds
    text = np.zeros(end - start, np.int32)
    images = np.zeros(end - start, np.int32)
    status = np.zeros(end - start, np.int8)
    notes = np.zeros(end - start, np.int8)
    examples: dict[str, list[str]] = {}
    for k, i in enumerate(range(start, end)):
        try:
            enc = processor.encode(source.read(i))
        except SampleError as e:
            if strict:
                raise SampleError(e.reason, f"{e} (data.loader.strict is on: the first bad record stops the run)") from e
            status[k] = 1 + SKIP_REASONS.index(e.reason)
            if len(examples.setdefault(e.reason, [])) < EXAMPLES:
                examples[e.reason].append(str(e))
            continue
        text[k] = len(enc.input_ids)
        images[k] = int((enc.input_ids == IMAGE_TOKEN_ID).sum())
        notes[k] = enc.notes
    return text, images, status, notes, examples


def measure(source, processor: SampleProcessor, workers: int = 0, strict: bool = False) -> LengthTable:
    """The table for `source`, computed with `workers` processes (0: in this process)."""
    global _WORK
    n = len(source)
    # No length limit here: truncation and dropping depend on the tower's visual-token count.
    _WORK = (source, dataclasses.replace(processor, max_length=1 << 62), strict)
    step = max(1, min(10_000, -(-n // max(1, 4 * workers))))
    chunks = [(s, min(n, s + step)) for s in range(0, n, step)]
    t0 = time.perf_counter()
    try:
        if workers > 0 and n >= PARALLEL_FROM and "fork" in mp.get_all_start_methods():
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked children re-enter the Rust pool
            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_measure, chunks)
        else:
            parts = [_measure(c) for c in chunks]
    finally:
        _WORK = None
    examples: dict[str, list[str]] = {}
    for part in parts:
        for reason, details in part[4].items():
            examples.setdefault(reason, []).extend(details[: EXAMPLES - len(examples.get(reason, []))])
    empty = np.zeros(0, np.int32)
    table = LengthTable(*(np.concatenate([p[k] for p in parts] or [empty.astype(dtype)])
                          for k, dtype in enumerate((np.int32, np.int32, np.int8, np.int8))), examples)
    log.info("measured %d records in %.1f s (%d workers)", n, time.perf_counter() - t0, workers)
    return table


def length_table(source, processor: SampleProcessor, index_dir: str | None = None, workers: int = 0,
                 strict: bool = False) -> LengthTable:
    """`measure`, cached as `<index_dir>/lengths-<key>.npz` (written atomically; strict mode always
    re-reads, so that it raises on the first bad record)."""
    path = Path(index_dir) / f"lengths-{table_key(source, processor)}.npz" if index_dir else None
    if path is not None and path.is_file() and not strict:
        with np.load(path) as z:
            return LengthTable(z["text"], z["images"], z["status"], z["notes"], json.loads(str(z["examples"])))
    table = measure(source, processor, workers, strict)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, text=table.text, images=table.images, status=table.status, notes=table.notes,
                 examples=np.array(json.dumps(table.examples)))
        tmp.replace(path)
    return table
