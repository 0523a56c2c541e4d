"""LLaVA files -> litdata shards (`python -m lmm.data.convert`) -> `LitDataSource` -> the same batches
as the JSON path: records in input order, image bytes as on disk, missing images counted as skips."""
import contextlib
import io
import json
import multiprocessing as mp
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from lmm.data.convert import MISSING, RECORDS, main
from lmm.data.datamodule import LlavaDataModule
from lmm.data.litdata_source import LitDataSource
from lmm.data.tokenize import SampleError


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


JSON_RECORDS = [
    {"id": "j0", "image": "photos/red.jpg", "conversations": conv("<image>\nwhat color?", "red")},
    {"id": "j1", "conversations": conv("describe a circle", "round")},  # text only
    {"id": "j2", "image": ["photos/red.jpg", "shapes/blue.png"], "conversations": conv("<image> <image> same?", "no")},
    {"id": "j3", "image": "photos/nope.jpg", "conversations": conv("<image>\nq", "a")},  # image missing
    ["not", "a", "record"],
    {"id": "j5", "image": "shapes/blue.png", "conversations": conv("<image>\nwhat is it — é?", "a blue square")},
]
JSONL_RECORDS = [{"id": f"l{k}", "image": "green.jpg" if k % 3 else "dots.png",
                  "conversations": conv("<image>\nwhat is shown?", f"answer {k}")} for k in range(14)]
JSONL_RECORDS.insert(5, {"id": "l_text", "conversations": conv("hello", "hi there")})
BROKEN_LINE = '{"id": "broken", "conversations": ['  # invalid JSON: kept, counted as invalid_json
USABLE = {"j0", "j1", "j2", "j5", "l_text"} | {f"l{k}" for k in range(14)}
MISSING_ID = "j3"


def n_images(record) -> int:
    image = record.get("image")
    return 0 if image is None else 1 if isinstance(image, str) else len(image)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("litdata")
    (root / "images/photos").mkdir(parents=True)
    (root / "images/shapes").mkdir()
    (root / "more").mkdir()
    Image.new("RGB", (40, 30), (220, 20, 20)).save(root / "images/photos/red.jpg", quality=90)
    Image.new("RGB", (24, 24), (20, 20, 220)).save(root / "images/shapes/blue.png")
    Image.effect_noise((48, 36), 60).convert("RGB").save(root / "more/green.jpg")  # noisy: a few KB
    Image.effect_noise((30, 30), 40).save(root / "more/dots.png")
    (root / "a.json").write_text(json.dumps(JSON_RECORDS, indent=2, ensure_ascii=False))  # records span lines
    lines = [json.dumps(r) for r in JSONL_RECORDS]
    lines.insert(9, BROKEN_LINE)
    (root / "b.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "shards"
    import litdata  # noqa: F401  (importing it fixes the start method at the platform default)

    stdout, start_method = io.StringIO(), mp.get_start_method(allow_none=True)
    with contextlib.redirect_stdout(stdout):  # the CLI, with 2 workers and small chunks: several per worker
        summary = main(["--annotations", str(root / "a.json"), str(root / "b.jsonl"), "--image-root",
                        str(root / "images"), "--image-root", str(root / "more"), "--output", str(out),
                        "--chunk-bytes", "6000", "--workers", "2", "--part", "sft"])
    assert mp.get_start_method(allow_none=True) == start_method  # litdata sets it process-wide; restored
    originals = JSON_RECORDS + JSONL_RECORDS[:9] + [None] + JSONL_RECORDS[9:]  # None: the broken line
    assert len(originals) == summary["records"]
    roots = [root / "images"] * len(JSON_RECORDS) + [root / "more"] * (len(originals) - len(JSON_RECORDS))
    return {"root": root, "out": out, "summary": summary, "stdout": stdout.getvalue(), "originals": originals,
            "roots": roots}


def check_records_and_images(source, data):
    originals = data["originals"]
    assert len(source) == len(originals)
    for i, (original, root) in enumerate(zip(originals, data["roots"])):
        if not isinstance(original, dict):
            with pytest.raises(SampleError, match="not_a_record" if original else "invalid_json"):
                source.read(i)
            continue
        assert source.read(i) == original
        image = original.get("image")
        for path in [image] if isinstance(image, str) else image or []:
            if original["id"] == MISSING_ID:
                with pytest.raises(FileNotFoundError, match="nope.jpg"):
                    source.open_image(i, path)
            else:
                assert source.open_image(i, path).read() == (root / path).read_bytes()


def test_convert_keeps_order_records_and_bytes(data):
    out, summary = data["out"], data["summary"]
    assert summary["records"] == 22 and summary["images"] == 19 and summary["images_missing"] == 1
    assert summary["bytes"] > 0 and summary["chunks"] >= 4
    assert f"data.sft.annotations=[{out}] data.loader.source=litdata" in data["stdout"]
    assert "1 missing" in data["stdout"]
    missing = [json.loads(line) for line in (out / MISSING).read_text().splitlines()]
    assert missing == [{"index": 3, "id": "j3", "path": "photos/nope.jpg",
                        "error": "FileNotFoundError: No such file or directory"}]
    # Both conversion workers wrote chunks, and litdata's item k is input record k throughout.
    index = json.loads((out / "index.json").read_text())
    assert {c["filename"].split("-")[1] for c in index["chunks"]} == {"0", "1"}
    from litdata import StreamingDataset

    ds = StreamingDataset(str(out))
    lines = (out / RECORDS).read_text(encoding="utf-8").splitlines()
    assert len(ds) == len(lines) == len(data["originals"])
    for k, original in enumerate(data["originals"]):
        item = ds[k]
        assert item[0] == k and item[1] == lines[k]
        assert (json.loads(lines[k]) == original) if original is not None else (lines[k] == BROKEN_LINE)
    source = LitDataSource(str(out))
    check_records_and_images(source, data)
    assert 1 < source.block_size < len(source)
    assert len(source.fingerprint) == 16 and "22 records" in source.describe()


def test_local_url_goes_through_the_download_path(data, tmp_path):
    source = LitDataSource(f"local:{data['out']}", index_dir=str(tmp_path))
    assert source.remote and source.local.is_relative_to(tmp_path)
    check_records_and_images(source, data)
    again = LitDataSource(f"local:{data['out']}", index_dir=str(tmp_path))
    assert again.local == source.local
    assert again.fingerprint == source.fingerprint == LitDataSource(str(data["out"])).fingerprint


def test_misaligned_records_are_caught(data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data["out"], bad)
    lines = (bad / RECORDS).read_text(encoding="utf-8").splitlines()
    lines[0], lines[2] = lines[2], lines[0]
    (bad / RECORDS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = LitDataSource(str(bad))
    with pytest.raises(RuntimeError, match="misaligned"):
        source.open_image(0, "photos/red.jpg")


class _Rewrite:
    """litdata.optimize fn: item k of `src` as `shape` ("dict": lmm.data.convert's items before 2026-12;
    "other": a data set some other tool wrote)."""

    def __init__(self, src, shape):
        self.src, self.shape = str(src), shape

    def __call__(self, k):
        from litdata import StreamingDataset

        index, record, images, blob = StreamingDataset(self.src)[k]
        blob = bytes(blob)  # litdata hands out a view into the chunk
        if self.shape == "dict":
            yield {"index": index, "record": record, "images": images, "data": blob}
        else:
            yield {"text": record, "n": index}


def rewrite(data, tmp_path, shape):
    import litdata

    out = tmp_path / shape
    previous = mp.get_start_method(allow_none=True)
    try:
        litdata.optimize(fn=_Rewrite(data["out"], shape), inputs=list(range(len(data["originals"]))),
                         output_dir=str(out), chunk_bytes=6000, num_workers=1, start_method="fork", verbose=False)
    finally:
        mp.set_start_method(previous, force=True)
    shutil.copy(data["out"] / RECORDS, out / RECORDS)
    return out


def test_chunks_are_plain_pytree_items(data):
    """Tuple items: no chunk carries the Arrow table litdata appends to dict items where pyarrow is
    importable (its byte-range reads, the remote path, miss that table: see the next test)."""
    from litdata.streaming.item_loader import _ARROW_FOOTER_MAGIC  # the mark that table ends with

    for chunk in json.loads((data["out"] / "index.json").read_text())["chunks"]:
        assert not (data["out"] / chunk["filename"]).read_bytes().endswith(_ARROW_FOOTER_MAGIC)


def test_dict_items_of_earlier_conversions_still_read(data, tmp_path):
    """Datasets converted before items became tuples: read locally and through the download path (there
    with whole chunks: with pyarrow installed at conversion, litdata's byte-range reads of dict items
    return empty bytes)."""
    old = rewrite(data, tmp_path, "dict")
    check_records_and_images(LitDataSource(str(old)), data)
    remote = LitDataSource(f"local:{old}", index_dir=str(tmp_path / "index"))
    assert remote.layout == "dict"
    check_records_and_images(remote, data)


def test_another_tools_dataset_is_refused(data, tmp_path):
    other = rewrite(data, tmp_path, "other")
    with pytest.raises(ValueError, match=r"not the \(index, record, images, data\) of `python -m lmm.data.convert`"):
        LitDataSource(str(other))


def test_not_a_converted_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="lmm.data.convert"):
        LitDataSource(str(tmp_path))


def per_sample_pixels(batches, records_by_id):
    """id -> that sample's pixel values (None for text only), from collated batches."""
    out = {}
    for b in batches:
        if "ids" not in b:
            continue
        pixels, k = b["pixel_values"], 0
        for sample_id in b["ids"]:
            n = n_images(records_by_id[sample_id])
            assert sample_id not in out, f"{sample_id} seen twice"
            out[sample_id] = pixels[k:k + n] if n else None
            k += n
        assert pixels is None or k == len(pixels)
    return out


def test_datamodule_matches_the_json_path(data, tiny_lmm, tmp_path):
    root = data["root"]
    records_by_id = {r["id"]: r for r in data["originals"] if isinstance(r, dict)}
    kw = {"micro_batch_size": 3, "max_length": 256}
    lit = LlavaDataModule([str(data["out"])], "unused", source="litdata", num_workers=2, index_dir=str(tmp_path), **kw)
    ref = LlavaDataModule([str(root / "a.json"), str(root / "b.jsonl")], [str(root / "images"), str(root / "more")],
                          num_workers=0, **kw)
    results = {}
    for name, dm in (("litdata", lit), ("json", ref)):
        dm.attach(tiny_lmm, tiny_lmm.template).setup("fit")
        assert dict(dm.skip_counts) == {"not_a_record": 1, "invalid_json": 1}
        batches = list(dm.train_dataloader())
        assert Counter(reason for b in batches for reason, _ in b["skipped"]) == {"image_missing": 1}
        results[name] = per_sample_pixels(batches, records_by_id)
        assert set(results[name]) == USABLE
    assert lit.source.block_size > 1  # the plan shuffled whole chunks
    for sample_id, pixels in results["json"].items():
        got = results["litdata"][sample_id]
        assert (got is None) == (pixels is None)
        if pixels is not None:
            assert torch.equal(got, pixels), sample_id


def test_two_ranks_split_the_records(data, tiny_lmm):
    seen, skipped = Counter(), Counter()
    for rank in range(2):
        dm = LlavaDataModule([str(data["out"])], "unused", source="litdata", num_workers=0, micro_batch_size=2,
                             max_length=256).attach(tiny_lmm, tiny_lmm.template)
        dm.setup("fit", rank=rank, world=2)
        for b in dm.train_dataloader():
            seen.update(b.get("ids", []))
            skipped.update(reason for reason, _ in b["skipped"])
    assert set(seen) == USABLE and all(n == 1 for n in seen.values())
    assert skipped == {"image_missing": 1}
