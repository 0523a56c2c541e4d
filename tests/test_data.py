"""LLaVA-format records -> samples -> batches, with bad records skipped and counted."""
import json

import pytest
import torch
from PIL import Image

from lmm.data.collate import Collator
from lmm.data.datamodule import LlavaDataModule
from lmm.data.dataset import LlavaDataset, SampleProcessor, Skip
from lmm.data.formats import read_records
from lmm.data.templates import PlainTemplate
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


GOOD = {"id": "a", "image": "img/a.png", "conversations": conv("<image>\nwhat color?", "blue", "shape?", "circle")}
TEXT_ONLY = {"id": "t", "conversations": conv("describe the picture", "a red circle")}
TWO_IMAGES = {"id": "two", "image": ["img/a.png", "img/b.jpg"], "conversations": conv("<image> <image> same?", "yes")}
BAD = {
    "image_missing": {"id": "m", "image": "img/nope.png", "conversations": conv("<image>\nq", "a")},
    "image_corrupt": {"id": "c", "image": "img/corrupt.png", "conversations": conv("<image>\nq", "a")},
    "image_placeholder_mismatch": {"id": "p", "image": "img/a.png", "conversations": conv("no placeholder", "a")},
    "unknown_role": {"id": "r", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
    "turn_order": {"id": "o", "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]},
    "empty_turn": {"id": "e", "conversations": conv("q", "  ")},
    "unanswered_turn": {"id": "u", "conversations": conv("q")},
    "no_conversations": {"id": "n"},
}


@pytest.fixture
def image_root(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "img/a.png")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "img/b.jpg")
    (tmp_path / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp_path


@pytest.fixture
def processor(tiny_lmm, image_root):
    return SampleProcessor(tiny_lmm.tokenizer, tiny_lmm.template, tiny_lmm.image_transform,
                           tiny_lmm.num_visual_tokens, str(image_root), max_length=256)


def test_read_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GOOD, TEXT_ONLY]))
    (tmp_path / "b.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps(TEXT_ONLY) + "\n")
    assert read_records(tmp_path / "a.json") == read_records(tmp_path / "b.jsonl") == [GOOD, TEXT_ONLY]
    (tmp_path / "bad.jsonl").write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_records(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.json")


def test_sample_has_one_placeholder_and_assistant_labels(processor, tiny_lmm):
    s = processor(GOOD)
    assert s["pixel_values"].shape == (1, 3, 32, 32)
    assert int((s["input_ids"] == IMAGE_TOKEN_ID).sum()) == 1
    trained = s["labels"][s["labels"] != IGNORE_INDEX].tolist()
    tok = tiny_lmm.tokenizer
    assert tok.decode(trained) == " blue</s> circle</s>"


def test_text_only_and_several_images(processor):
    assert processor(TEXT_ONLY)["pixel_values"] is None
    two = processor(TWO_IMAGES)
    assert two["pixel_values"].shape == (2, 3, 32, 32)
    assert int((two["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_bad_record_is_skipped_with_its_reason(processor, reason):
    item = LlavaDataset([BAD[reason]], processor)[0]
    assert isinstance(item, Skip) and item.reason == reason


def test_too_long_counts_visual_tokens(processor):
    processor.max_length = 20  # the image alone is 16 visual tokens
    assert LlavaDataset([GOOD], processor)[0].reason == "too_long"


def test_plain_template_sample(processor):
    processor.template = PlainTemplate()
    s = processor({"id": "cap", "image": "img/a.png", "conversations": conv("<image>\ndescribe", "A blue box.")})
    assert s["input_ids"][1] == IMAGE_TOKEN_ID
    assert processor.tokenizer.decode(s["labels"][s["labels"] != IGNORE_INDEX]) == "A blue box.\n</s>"


def test_collate_mixes_text_only_and_images_and_reports_skips(processor):
    items = [processor(GOOD), processor(TEXT_ONLY), Skip("image_missing", "x"), processor(TWO_IMAGES)]
    batch = Collator(pad_token_id=processor.tokenizer.pad_token_id)(items)
    assert batch["num_samples"] == 3 and batch["skipped"] == [("image_missing", "x")]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    lengths = [len(i["input_ids"]) for i in items if not isinstance(i, Skip)]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    width = max(lengths)
    short = lengths.index(min(lengths))
    assert batch["labels"][short, min(lengths):].eq(IGNORE_INDEX).all()
    assert batch["input_ids"].shape == (3, width)
    empty = Collator(0)([Skip("empty_turn", "")])
    assert empty["num_samples"] == 0 and "input_ids" not in empty


def test_datamodule_batches(tiny_lmm, image_root):
    ann = image_root / "train.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in [GOOD, TEXT_ONLY, TWO_IMAGES, BAD["image_missing"]]))
    dm = LlavaDataModule([str(ann)], str(image_root), micro_batch_size=2, num_workers=0).attach(tiny_lmm, tiny_lmm.template)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["num_samples"] for b in batches) == 3
    assert sum(len(b["skipped"]) for b in batches) == 1
    out = tiny_lmm(batches[0]["input_ids"], batches[0]["pixel_values"], batches[0]["attention_mask"],
                   batches[0]["labels"])
    assert torch.isfinite(out.loss)


def test_datamodule_needs_the_model_facts(image_root):
    with pytest.raises(RuntimeError, match="attach"):
        LlavaDataModule(["x.json"], str(image_root)).setup("fit")


def test_skip_monitor_stops_past_the_limit_and_counts_reasons():
    from unittest.mock import MagicMock

    from lmm.train.callbacks import SkipMonitor

    monitor = SkipMonitor(max_fraction=0.25, min_records=8)
    module = MagicMock()
    ok = {"num_samples": 3, "skipped": [("image_missing", "a.png")]}
    monitor.on_train_batch_end(None, module, None, ok, 0)  # 1 of 4 skipped, below min_records
    monitor.on_train_batch_end(None, module, None, ok, 1)  # 2 of 8: 25%, at the limit
    monitor.on_train_epoch_end(None, module)
    logged = {c.args[0]: c.args[1] for c in module.log.call_args_list}
    assert logged["data/skipped"] == 2 and logged["data/skipped_image_missing"] == 2
    assert logged["data/skipped_fraction"] == 0.25
    bad = {"num_samples": 1, "skipped": [("too_long", "x")] * 3}
    with pytest.raises(RuntimeError, match=r"too_long.*max_fraction"):
        monitor.on_train_batch_end(None, module, None, bad, 2)


def test_cached_dataset_processes_each_record_once(processor):
    calls = []

    def counting(record):
        calls.append(record["id"])
        return processor(record)

    ds = LlavaDataset([GOOD, BAD["image_missing"]], counting, cache=True)
    first = [ds[0], ds[1], ds[0], ds[1]]
    assert calls == ["a", "m"]
    assert first[0] is first[2] and isinstance(first[3], Skip)
