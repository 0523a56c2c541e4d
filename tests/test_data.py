"""LLaVA-format records -> samples -> batches, with bad records skipped and counted."""
import json

import pytest
import torch
from PIL import Image

from lmm.data.collate import Collator
from lmm.data.datamodule import LlavaDataModule
from lmm.data.dataset import SampleProcessor, Skip, process
from lmm.data.loader import BatchDataset
from lmm.data.sources import JsonSource
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
    (tmp_path / "img/corrupt.png").write_bytes(b"GIF89a but not really an image")
    return tmp_path


@pytest.fixture
def processor(tiny_lmm, image_root):
    return SampleProcessor(tiny_lmm.tokenizer, tiny_lmm.template, tiny_lmm.image_transform,
                           tiny_lmm.num_visual_tokens, max_length=256)


@pytest.fixture
def load(processor, image_root):
    """record -> sample, images from `image_root` (as a JsonSource opens them)."""
    def opener(path):
        full = image_root / path
        if not full.is_file():
            raise FileNotFoundError(str(full))
        return full
    return lambda record: processor(record, opener)


def one_record_source(tmp_path, image_root, record):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return JsonSource(path, image_root)


def test_sample_has_one_placeholder_and_assistant_labels(load, tiny_lmm):
    s = load(GOOD)
    assert s["pixel_values"].shape == (1, 3, 32, 32)
    assert int((s["input_ids"] == IMAGE_TOKEN_ID).sum()) == 1
    trained = s["labels"][s["labels"] != IGNORE_INDEX].tolist()
    tok = tiny_lmm.tokenizer
    assert tok.decode(trained) == " blue</s> circle</s>"


def test_text_only_and_several_images(load):
    assert load(TEXT_ONLY)["pixel_values"] is None
    two = load(TWO_IMAGES)
    assert two["pixel_values"].shape == (2, 3, 32, 32)
    assert int((two["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_bad_record_is_skipped_with_its_reason(processor, reason, tmp_path, image_root):
    item = process(one_record_source(tmp_path, image_root, BAD[reason]), processor, 0)
    assert isinstance(item, Skip) and item.reason == reason


def test_too_long_counts_visual_tokens(processor, tmp_path, image_root):
    processor.max_length = 20  # the image alone is 16 visual tokens
    assert process(one_record_source(tmp_path, image_root, GOOD), processor, 0).reason == "too_long"


def test_plain_template_sample(processor, load):
    processor.template = PlainTemplate()
    s = load({"id": "cap", "image": "img/a.png", "conversations": conv("<image>\ndescribe", "A blue box.")})
    assert s["input_ids"][1] == IMAGE_TOKEN_ID
    # LLaVA-1.5's preprocess_plain: the caption and "\n" are trained, no EOS follows
    assert processor.tokenizer.decode(s["labels"][s["labels"] != IGNORE_INDEX]) == "A blue box.\n"


def test_collate_mixes_text_only_and_images_and_reports_skips(processor, load):
    items = [load(GOOD), load(TEXT_ONLY), Skip("image_missing", "x"), load(TWO_IMAGES)]
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


def test_cached_dataset_processes_each_record_once(processor, tmp_path, image_root):
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(BAD["image_missing"]) + "\n")
    source = JsonSource(path, image_root)
    reads = []
    read = source.read
    source.read = lambda i: reads.append(i) or read(i)
    ds = BatchDataset(source, processor, Collator(processor.tokenizer.pad_token_id), cache=True)
    first = [ds.sample(0), ds.sample(1), ds.sample(0), ds.sample(1)]
    assert reads == [0, 1]
    assert first[0] is first[2] and isinstance(first[3], Skip)
