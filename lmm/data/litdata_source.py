"""A record source over a litdata optimized dataset written by `python -m lmm.data.convert`.

Text and images are read apart: `read(i)` parses line i of the dataset's `records.jsonl` (a
`JsonSource`: byte spans, no shard is touched, so the length pass over every record is as cheap as
with the JSON files), and `open_image(i, path)` takes the image's encoded bytes from item i of the
shards (`litdata.StreamingDataset` random access; the chunk holding it is read, or downloaded for a
remote dataset, on demand). The DataLoader workers get the source by pickling, so the
StreamingDataset is created lazily in each process that reads an image.

`input_dir` is a local folder, or a URL litdata can stream from (s3://, gs://, azure://, r2://,
`local:/path`). For a URL, `index.json` and `records.jsonl` are downloaded once into `index_dir`
(default: litdata's cache folder) with litdata's downloaders, keyed by the content of the remote
`index.json`, so a re-converted dataset is fetched again; chunks go to `<that folder>/chunks`.
Only local folders and `local:` URLs are tested here; cloud URLs go through the same litdata calls
but need litdata's credentials set up as for any litdata stream.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from lmm.data.sources import JsonSource

RECORDS = "records.jsonl"
INDEX = "index.json"
# The item layout of lmm.data.convert: a tuple of these, in this order, with these litdata formats.
ITEM_LAYOUT = ("index", "record", "images", "data")
ITEM_FORMATS = ["int", "str", "str", "bytes"]


def item_layout(config: dict) -> str:
    """'tuple' (lmm.data.convert now), 'dict' (its items before 2026-12, still read), or a ValueError
    naming what the dataset holds instead."""
    spec = config.get("data_spec")
    spec = json.loads(spec) if isinstance(spec, str) else spec
    root = spec[1] if isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], dict) else {}
    kind, n = root.get("type"), len(root.get("children_spec") or [])
    if config.get("data_format") == ITEM_FORMATS and n == len(ITEM_LAYOUT):
        if kind == "builtins.tuple":
            return "tuple"
        types = config.get("types")
        if kind == "builtins.dict" and isinstance(types, dict) and set(types) == set(ITEM_LAYOUT):
            return "dict"
    raise ValueError(f"items of type {kind} with formats {config.get('data_format')}, not the "
                     f"({', '.join(ITEM_LAYOUT)}) of `python -m lmm.data.convert`")


def is_remote(path: str) -> bool:
    return "://" in path or path.startswith("local:")


def _download(url: str, name: str, dest: Path) -> None:
    """`<url>/<name>` -> `dest` (atomically) with litdata's downloader for the URL's scheme."""
    from litdata.streaming.downloader import get_downloader

    dest.parent.mkdir(parents=True, exist_ok=True)
    get_downloader(url, str(dest.parent), []).download_file(f"{url.rstrip('/')}/{name}", str(dest))
    if not dest.is_file():
        raise FileNotFoundError(f"could not download {url.rstrip('/')}/{name} to {dest}")


def fetch_remote(url: str, index_dir: str | None) -> Path:
    """A local folder holding the remote dataset's index.json and records.jsonl (downloaded once per
    version of the dataset; concurrent ranks wait on a file lock)."""
    from filelock import FileLock

    if index_dir is None:
        from litdata.utilities.dataset_utilities import get_default_cache_dir

        index_dir = get_default_cache_dir()
    base = Path(index_dir) / "litdata" / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / ".lock")):
        tmp = base / f"index.{os.getpid()}.tmp.json"
        tmp.unlink(missing_ok=True)
        _download(url, INDEX, tmp)  # the current version, small: fetched every time
        local = base / hashlib.sha1(tmp.read_bytes()).hexdigest()[:16]
        local.mkdir(exist_ok=True)
        if not (local / RECORDS).is_file():
            _download(url, RECORDS, local / RECORDS)
        tmp.replace(local / INDEX)
    return local


class LitDataSource:
    """Records and images of one dataset written by `lmm.data.convert` (see the module docstring)."""

    def __init__(self, input_dir: str | Path, index_dir: str | None = None):
        self.input_dir = str(input_dir)
        self.remote = is_remote(self.input_dir)
        if self.remote:
            self.local = fetch_remote(self.input_dir, index_dir)
            self.cache_dir: str | None = str(self.local / "chunks")
        else:
            self.local, self.cache_dir = Path(self.input_dir), None
            if not (self.local / INDEX).is_file():
                raise FileNotFoundError(f"{self.local} is not a litdata optimized dataset (no {INDEX}); "
                                        f"write one with `python -m lmm.data.convert`")
        if not (self.local / RECORDS).is_file():
            raise FileNotFoundError(f"{self.input_dir} has no {RECORDS}: was it written by "
                                    f"`python -m lmm.data.convert`?")
        index_bytes = (self.local / INDEX).read_bytes()
        index = json.loads(index_bytes)
        try:
            self.layout = item_layout(index.get("config") or {})
        except ValueError as e:
            raise ValueError(f"{self.input_dir}: {e}") from None
        self.records = JsonSource(self.local / RECORDS, self.local, index_dir)
        sizes = np.array([int(c["chunk_size"]) for c in index["chunks"]], np.int64)
        if int(sizes.sum()) != len(self.records):
            raise ValueError(f"{self.input_dir}: the shards hold {int(sizes.sum())} items but {RECORDS} "
                             f"{len(self.records)} records (an interrupted or mixed conversion?)")
        self.num_chunks = len(sizes)
        # Chunks are cut by bytes, so their item counts differ a little, and each conversion worker's
        # last chunk is short. The median is the typical chunk: the plan's blocks of `block_size`
        # consecutive records then each fall within one or two chunks (the mean would be pulled down
        # by the short tails, the mode is noise when counts vary by one or two).
        self.block_size = max(1, int(np.median(sizes))) if len(sizes) else 1
        # index.json carries the conversion time ("updated_at"), so a re-conversion changes it.
        records_size = (self.local / RECORDS).stat().st_size
        self.fingerprint = hashlib.sha1(index_bytes + f"|{records_size}".encode()).hexdigest()[:16]
        self._dataset = None
        self._pid: int | None = None
        self._last: tuple[int, dict, bytes] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self):  # each process opens its own StreamingDataset
        return {**self.__dict__, "_dataset": None, "_pid": None, "_last": None}

    def read(self, i: int) -> dict:
        return self.records.read(i)

    def _streaming(self):
        if self._dataset is None or self._pid != os.getpid():
            from litdata import StreamingDataset

            self._dataset = StreamingDataset(self.input_dir, cache_dir=self.cache_dir)
            if self.remote and self.layout == "dict":
                # Dict items written where pyarrow was importable live only in an Arrow table after the
                # chunk's offsets, which litdata's per-item byte-range reads do not see (they return empty
                # items); whole chunks go through its footer-aware loader. Its public setter needs the
                # cache, which is built on first access from this attribute.
                self._dataset._on_demand_bytes = False
            self._pid = os.getpid()
        return self._dataset

    def _item(self, i: int) -> tuple[dict, bytes]:
        """Item i's images {path: (offset, size, error)} and data; checked against records.jsonl."""
        if self._last is not None and self._last[0] == i:
            return self._last[1], self._last[2]
        item = self._streaming()[i]
        if self.layout == "dict":
            item = tuple(item[k] for k in ITEM_LAYOUT)
        index, record, manifest, data = item
        expected = self.read(i).get("id")
        try:
            found = json.loads(record).get("id")
        except (json.JSONDecodeError, AttributeError):
            found = None
        if int(index) != i or found != expected:
            raise RuntimeError(f"{self.input_dir} is misaligned: item {i} holds record {index} (id {found!r}) "
                               f"but {RECORDS} line {i} has id {expected!r}; convert the data set again")
        images, offset = {}, 0
        for entry in json.loads(manifest):
            path, size = entry[0], entry[1]
            images.setdefault(path, (offset, size, entry[2] if len(entry) > 2 else None))
            offset += size or 0
        data = bytes(data)  # a copy: the item's buffer may point into the chunk's memory map
        self._last = (i, images, data)
        return images, data

    def open_image(self, i: int, path: str) -> io.BytesIO:
        images, data = self._item(i)
        if path not in images:
            raise FileNotFoundError(f"{path} is not stored with record {i} of {self.input_dir}")
        offset, size, error = images[path]
        if size is None:
            raise FileNotFoundError(f"{path} (record {i} of {self.input_dir}): unreadable when converted: {error}")
        return io.BytesIO(data[offset:offset + size])

    def describe(self) -> str:
        return (f"{self.input_dir} (litdata: {len(self)} records in {self.num_chunks} chunks of ~{self.block_size}"
                f"{f', index in {self.local}' if self.remote else ''})")
