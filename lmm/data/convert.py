"""LLaVA annotation files -> a litdata optimized dataset (shards holding each record with its images).

    python -m lmm.data.convert --annotations A.json [B.jsonl ...] --image-root ROOT [ROOT_B ...] \\
        --output DIR [--chunk-bytes 64MB] [--workers N]

Millions of small image files are slow to open on network storage and cannot be streamed from an
object store; the shards can. Each item of the dataset is one record, in input order (the files in
the order given, then their records), holding:
    index   its position (the reader checks it, so a misaligned dataset fails loudly)
    record  the record as one line of JSON text
    images  JSON list, per distinct image path of the record: [path, size in bytes], or
            [path, null, error] when the image could not be read at conversion time
    data    the images' encoded bytes (JPEG/PNG as on disk, not decoded), concatenated in that order
Beside the shards, `records.jsonl` holds the same records in the same order, one per line, so the
length pass reads text without touching a shard, and `missing_images.jsonl` lists every image that
could not be read (training counts such a sample as `image_missing`, as with the JSON files).
A record that is not a JSON object is written as is: the pipeline counts it as a skip later.

Read the result with `data.loader.source=litdata` (`lmm.data.litdata_source.LitDataSource`).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmm.data.formats import image_paths
from lmm.data.sources import JsonSource, jsonl_spans

RECORDS = "records.jsonl"
MISSING = "missing_images.jsonl"
INFO = "lmm_convert.json"
FORMAT_VERSION = 1
_MISSING_PARTS = ".missing_parts"


def _is_url(path: str) -> bool:
    return "://" in path or path.startswith("local:")


def record_line(raw: bytes) -> bytes:
    """One line of records.jsonl for the raw bytes of a record: compact JSON for anything that
    parses (a pretty-printed record of a .json list spans many lines), else the bytes as they are
    (only a JSONL line can fail to parse, and it holds no newline)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.replace(b"\n", b" ")
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800") cannot be UTF-8: keep it escaped
        return json.dumps(value, separators=(",", ":")).encode()


def write_records(sources: Sequence[JsonSource], path: Path) -> tuple[np.ndarray, int]:
    """records.jsonl in input order; returns the record count per source and the image count."""
    counts, n_images = [], 0
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        for source in sources:
            with source.path.open("rb") as f:
                for start, end in source.spans:
                    f.seek(int(start))
                    line = record_line(f.read(int(end - start)))
                    out.write(line + b"\n")
                    n_images += len(_images_of(line))
            counts.append(len(source))
    tmp.replace(path)
    return np.array(counts, np.int64), n_images


def _images_of(raw: bytes) -> list[str]:
    """Distinct image paths of a record line, in order ([] for anything that is not a usable record)."""
    try:
        record = json.loads(raw)
        paths = image_paths(record) if isinstance(record, dict) else []
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return []
    return list(dict.fromkeys(p for p in paths if isinstance(p, str)))


class ItemWriter:
    """The `fn` given to `litdata.optimize`: a range of record indices -> their items, in order (a
    generator: litdata writes every item it yields). Runs in litdata's worker processes; it holds
    the byte spans of records.jsonl and which image root each record uses."""

    def __init__(self, records: Path, spans: np.ndarray, ends: np.ndarray, roots: Sequence[str], missing_dir: Path):
        self.records, self.spans, self.ends, self.roots = str(records), spans, ends, [str(r) for r in roots]
        self.missing_dir = str(missing_dir)
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.records, os.O_RDONLY), os.getpid()
        return self._fd

    def _note_missing(self, index: int, record_id, path: str, error: str) -> None:
        line = json.dumps({"index": index, "id": record_id, "path": path, "error": error}, ensure_ascii=False)
        with open(os.path.join(self.missing_dir, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def __call__(self, bounds: tuple[int, int]):
        for index in range(*bounds):
            yield self.item(index)

    def item(self, index: int) -> tuple[int, str, str, bytes]:
        start, end = (int(x) for x in self.spans[index])
        raw = os.pread(self._file(), end - start, start)
        root = self.roots[int(np.searchsorted(self.ends, index, side="right"))]
        manifest, blobs = [], []
        paths = _images_of(raw)
        for path in paths:
            try:
                with open(os.path.join(root, path), "rb") as f:
                    data = f.read()
            except OSError as e:  # missing, a folder, no permission, I/O error: keep the record, mark the image
                error = f"{type(e).__name__}: {e.strerror or e}"
                manifest.append([path, None, error])
                self._note_missing(index, json.loads(raw).get("id"), path, error)
                continue
            manifest.append([path, len(data)])
            blobs.append(data)
        # A tuple (ITEM_LAYOUT), not a dict: where pyarrow is importable, litdata (0.2.7x) stores dict
        # items only as an Arrow table after the chunk's offsets, and its byte-range reads (a remote
        # dataset's random access) then return empty items. A tuple is a plain pytree chunk: the same
        # bytes whether or not pyarrow is installed, readable by either.
        return (index, raw.decode("utf-8", errors="replace"), json.dumps(manifest, ensure_ascii=False),
                b"".join(blobs))


def convert(annotations: Sequence[str], image_root: str | Sequence[str], output: str, chunk_bytes: str | int = "64MB",
            workers: int | None = None, overwrite: bool = False, start_method: str | None = None,
            verbose: bool = True) -> dict:
    """Write the optimized dataset to `output` (a local folder: upload it as a whole afterwards).
    Returns the summary (also written to `<output>/lmm_convert.json`).

    `start_method` of litdata's worker processes: default "fork" where the platform has it. The
    workers only read files, and forking skips re-importing torch and litdata in every worker
    (litdata's own default, "spawn", costs seconds per worker before the first record)."""
    import litdata

    t0 = time.perf_counter()
    annotations = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    roots = [image_root] * len(annotations) if isinstance(image_root, (str, Path)) else list(image_root)
    if len(roots) == 1 and len(annotations) > 1:
        roots = roots * len(annotations)
    if len(roots) != len(annotations):
        raise ValueError(f"{len(roots)} image root(s) for {len(annotations)} annotation file(s); give one root for "
                         f"all files or one per file")
    if _is_url(str(output)):
        raise ValueError(f"--output must be a local folder (got {output}); convert locally, then upload the folder")
    out = Path(output).resolve()
    if (out / "index.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an optimized dataset; pass --overwrite or choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / MISSING, out / INFO):
        stale.unlink(missing_ok=True)

    for r in roots:
        if not Path(r).is_dir():
            raise FileNotFoundError(f"image root not found: {r}")
    sources = [JsonSource(a, r) for a, r in zip(annotations, roots)]  # byte spans only: no file is held in memory
    counts, n_images = write_records(sources, out / RECORDS)
    n = int(counts.sum())
    if n == 0:
        raise ValueError(f"no records in {annotations}")
    spans = jsonl_spans(out / RECORDS)
    if len(spans) != n:  # every line written is non-blank, so this holds unless the file changed under us
        raise RuntimeError(f"{out / RECORDS} has {len(spans)} lines for {n} records")
    missing_dir = out / _MISSING_PARTS
    shutil.rmtree(missing_dir, ignore_errors=True)
    missing_dir.mkdir()
    writer = ItemWriter(out / RECORDS, spans, np.cumsum(counts), roots, missing_dir)

    workers = max(1, min(workers or os.cpu_count() or 1, n))
    # litdata's inputs are ranges of records rather than single records: a few thousand inputs
    # instead of millions (litdata queues each input), still about 8 per worker for small sets.
    step = max(1, min(256, -(-n // (8 * workers))))
    inputs = [(s, min(n, s + step)) for s in range(0, n, step)]
    start_method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    previous = mp.get_start_method(allow_none=True)  # litdata sets the start method process-wide
    try:
        # keep_data_ordered: each worker converts one contiguous slice of the inputs in order, and the
        # workers' chunk lists are merged in worker order, so item k is record k (the default shares
        # one work queue between workers, which does not keep the order). reorder_files only applies
        # to inputs that are file paths; ours are record ranges, so it is off to say so.
        litdata.optimize(fn=writer, inputs=inputs, output_dir=str(out), chunk_bytes=chunk_bytes,
                         num_workers=workers, keep_data_ordered=True, reorder_files=False,
                         mode="overwrite" if overwrite else None, start_method=start_method, verbose=verbose)
    finally:
        mp.set_start_method(previous, force=True)

    missing = []
    for part in sorted(missing_dir.glob("*.jsonl")):
        missing += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]
    shutil.rmtree(missing_dir, ignore_errors=True)
    missing.sort(key=lambda m: (m["index"], m["path"]))
    if missing:
        with (out / MISSING).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(m, ensure_ascii=False) + "\n" for m in missing)
    index = json.loads((out / "index.json").read_text())
    stored = sum(int(c["chunk_size"]) for c in index["chunks"])
    if stored != n:
        raise RuntimeError(f"litdata wrote {stored} items for {n} records in {out}")
    summary = {"format_version": FORMAT_VERSION, "output": str(out), "records": n, "images": n_images,
               "images_missing": len(missing), "chunks": len(index["chunks"]),
               "bytes": sum(int(c["chunk_bytes"]) for c in index["chunks"]),
               "seconds": round(time.perf_counter() - t0, 2),
               "inputs": [{"annotations": str(s.path), "image_root": str(s.image_root), "records": len(s)}
                          for s in sources]}
    (out / INFO).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m lmm.data.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", nargs="+", required=True, help="LLaVA .json (list) or .jsonl files, in order")
    parser.add_argument("--image-root", nargs="+", action="extend", required=True,
                        help="folder the image paths are relative to: one for all files, or one per file (in order)")
    parser.add_argument("--output", required=True, help="local folder for the shards, records.jsonl and the report")
    parser.add_argument("--chunk-bytes", default="64MB", help="target shard size (litdata units: 64MB, 256MB, ...)")
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output")
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None,
                        help="how litdata starts its workers (default: fork where available)")
    parser.add_argument("--part", default="<part>", help="the data config part it is for (pretrain, sft), for the "
                                                         "printed override")
    args = parser.parse_args(argv)
    chunk_bytes = int(args.chunk_bytes) if args.chunk_bytes.isdigit() else args.chunk_bytes
    s = convert(args.annotations, args.image_root, args.output, chunk_bytes, args.workers, args.overwrite,
                args.start_method)
    print(f"\nconverted {s['records']} records with {s['images']} images ({s['images_missing']} missing) into "
          f"{s['chunks']} chunks, {s['bytes'] / 2**20:.1f} MiB, in {s['seconds']:.1f} s")
    if s["images_missing"]:
        print(f"missing images (kept as records; training counts them as image_missing): {Path(s['output']) / MISSING}")
    print(f"dataset: {s['output']}")
    print(f"use it with: data.{args.part}.annotations=[{s['output']}] data.loader.source=litdata")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
