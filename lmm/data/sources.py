"""Record sources: random access to LLaVA records without holding the annotation file in memory.

A 665k-conversation JSON file parses into several GB of Python objects; with one copy per
DataLoader worker per rank that is tens of GB per node. A `JsonSource` instead keeps the byte span
of every record (16 bytes each, built once and cached as .npy) and parses a record when it is read.

Every source offers the same small interface, which the batching plan and the datasets use:
    len(source)                 number of records
    source.read(i) -> dict      record i (a `SampleError` if it is not a usable JSON object)
    source.open_image(i, path)  what PIL can open for an image path of record i (a filesystem path
                                or a binary file object); FileNotFoundError when it is missing
    source.block_size           records that are cheap to read together (1: true random access;
                                a streaming shard's item count), so shuffling can keep locality
    source.fingerprint          changes when the records change (keys the length cache)
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmm.data.tokenize import SampleError

INDEX_VERSION = 1
CHUNK = 1 << 26  # 64 MB read at a time while indexing
MAX_RECORD_BYTES = 1 << 28  # a "record" larger than this means the JSON structure is broken


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{INDEX_VERSION}".encode()).hexdigest()[:16]


def _line_of(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        return f.read(offset).count(b"\n") + 1


def jsonl_spans(path: Path) -> np.ndarray:
    """(N, 2) byte [start, end) of every non-blank line."""
    starts, ends, base = [], [], 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + base
            ends.append(newlines)
            base += len(chunk)
    ends = np.concatenate(ends + [np.array([base])]) if ends else np.array([0])
    starts = np.concatenate([[0], ends[:-1] + 1])
    spans = np.stack([starts, ends], 1).astype(np.int64)
    short = np.flatnonzero(spans[:, 1] - spans[:, 0] < 64)  # no LLaVA record is this short: look for blank lines
    if len(short):
        with path.open("rb") as f:
            blank = [i for i in short if not _read(f, *spans[i]).strip()]
        spans = np.delete(spans, blank, axis=0)
    return spans


def _read(f, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(end - start)


def json_array_spans(path: Path) -> np.ndarray:
    """(N, 2) byte spans of the elements of a top-level JSON array, found with the C JSON scanner.

    The bytes are decoded as latin-1, which maps every byte to one character, so character offsets
    are byte offsets; JSON's structural characters are all ASCII, so UTF-8 text inside strings does
    not disturb the scan (the decoded values are thrown away)."""
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    with path.open("rb") as f:
        buf, base, eof = "", 0, False

        def refill(keep_from: int):
            nonlocal buf, base, eof
            chunk = f.read(CHUNK)
            eof = len(chunk) < CHUNK
            base += keep_from
            buf = buf[keep_from:] + chunk.decode("latin-1")

        refill(0)
        i, expect_item, opened = 0, False, False
        while True:
            while i < len(buf) and buf[i] in " \t\r\n":
                i += 1
            if i >= len(buf):
                if eof:
                    raise ValueError(f"{path}: the JSON array is not closed (file ends at byte {base + i})")
                refill(i)
                i = 0
                continue
            c = buf[i]
            if not opened:
                if c != "[":
                    raise ValueError(f"{path}: expected a JSON list of records (LLaVA format), found {c!r} at byte {base + i}")
                opened, expect_item, i = True, True, i + 1
                continue
            if c == "]":
                return np.array(spans, dtype=np.int64).reshape(-1, 2)
            if c == ",":
                if expect_item:
                    raise ValueError(f"{path}: stray ',' at byte {base + i} (line {_line_of(path, base + i)})")
                expect_item, i = True, i + 1
                continue
            if not expect_item:
                raise ValueError(f"{path}: expected ',' or ']' at byte {base + i} (line {_line_of(path, base + i)})")
            try:
                _, end = decoder.raw_decode(buf, i)
            except json.JSONDecodeError as e:
                if not eof and len(buf) - i < MAX_RECORD_BYTES:  # the record may continue in the next chunk
                    refill(i)
                    i = 0
                    continue
                raise ValueError(f"{path}: invalid JSON at byte {base + e.pos} (line {_line_of(path, base + e.pos)}): "
                                 f"{e.msg}") from e
            if end == len(buf) and not eof:  # a bare number/literal may be cut at the chunk edge
                refill(i)
                i = 0
                continue
            spans.append((base + i, base + end))
            i, expect_item = end, False


def record_spans(path: Path, index_dir: str | None = None) -> np.ndarray:
    """Spans of the records of a `.json` (list) or `.jsonl` file, cached in `index_dir` when given."""
    cache = None
    if index_dir:
        cache = Path(index_dir) / f"{path.stem}-{file_fingerprint(path)}.spans.npy"
        if cache.is_file():
            return np.load(cache)
    spans = jsonl_spans(path) if path.suffix == ".jsonl" else json_array_spans(path)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, spans)
        tmp.replace(cache)  # atomic: ranks building concurrently never read half a file
    return spans


class JsonSource:
    """One LLaVA annotation file (`.json` list or `.jsonl`) with its image root, read lazily."""

    block_size = 1

    def __init__(self, annotations: str | Path, image_root: str | Path, index_dir: str | None = None):
        self.path, self.image_root = Path(annotations), Path(image_root)
        if not self.path.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.path}")
        self.spans = record_spans(self.path, index_dir)
        self.fingerprint = file_fingerprint(self.path)
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.spans)

    def __getstate__(self):  # a worker process opens its own file descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, i: int) -> dict:
        start, end = (int(x) for x in self.spans[i])
        raw = os.pread(self._file(), end - start, start)
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SampleError("invalid_json", f"{self.path} record {i} (byte {start}): {e}") from e
        if not isinstance(record, dict):
            raise SampleError("not_a_record", f"{self.path} record {i} is a {type(record).__name__}, not an object")
        return record

    def open_image(self, i: int, path: str) -> Path:
        full = self.image_root / path
        if not full.is_file():
            raise FileNotFoundError(str(full))
        return full

    def describe(self) -> str:
        return f"{self.path} ({len(self)} records, images under {self.image_root})"


class ConcatSource:
    """Several sources as one index space (e.g. one annotation file per image root)."""

    def __init__(self, sources: Sequence):
        if not sources:
            raise ValueError("no annotation files given")
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.block_size = max(s.block_size for s in self.sources)
        self.fingerprint = hashlib.sha1("|".join(s.fingerprint for s in self.sources).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.sources[k], i - int(self.offsets[k])

    def read(self, i: int) -> dict:
        source, j = self._locate(i)
        return source.read(j)

    def open_image(self, i: int, path: str):
        source, j = self._locate(i)
        return source.open_image(j, path)

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sources)


def open_sources(annotations: Sequence[str], image_root: str | Sequence[str], index_dir: str | None = None,
                 kind: str = "json") -> ConcatSource:
    """The data config's files as one source. `image_root` is one folder for every file, or one per
    file (LLaVA-1.5 and ShareGPT4V give paths relative to one root; other mixes may not)."""
    if isinstance(annotations, str):
        annotations = [annotations]
    roots = [image_root] * len(annotations) if isinstance(image_root, (str, Path)) else list(image_root)
    if len(roots) != len(annotations):
        raise ValueError(f"image_root lists {len(roots)} folder(s) for {len(annotations)} annotation file(s); "
                         f"give one root for all files or one per file")
    if kind == "json":
        return ConcatSource([JsonSource(a, r, index_dir) for a, r in zip(annotations, roots)])
    if kind == "litdata":
        from lmm.data.litdata_source import LitDataSource
        return ConcatSource([LitDataSource(a, index_dir=index_dir) for a in annotations])
    raise ValueError(f"unknown data source kind {kind!r}; valid: ['json', 'litdata']")
