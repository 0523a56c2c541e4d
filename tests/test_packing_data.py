"""Packed batches from the datamodule train the same thing as unpacked ones: every sample's summed
next-token loss is the same whether it shares a row with others or has a row of its own."""
import pytest
import torch
import torch.nn.functional as F

from lmm.data.datamodule import LlavaDataModule
from lmm.data.tokenize import IGNORE_INDEX
from tests.llava_fixture import good_records, write_dataset


def per_sample_losses(model, batch) -> dict:
    """sample id -> (summed token loss, labelled tokens), read back from the expanded sequence."""
    kw = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}
    out = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"],
                return_logits=True, **kw)
    spliced = model._splice(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"],
                            "right", batch.get("segment_ids"))
    segments = spliced.segment_ids if spliced.segment_ids is not None else spliced.attention_mask
    targets = out.labels[:, 1:].masked_fill(segments[:, 1:] != segments[:, :-1], IGNORE_INDEX)
    loss = F.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX,
                           reduction="none")
    result, ids = {}, iter(batch["ids"])
    for row in range(segments.shape[0]):
        for seg in [int(s) for s in segments[row].unique() if s > 0]:
            where = (segments[row, :-1] == seg) & (targets[row] != IGNORE_INDEX)
            result[next(ids)] = (float(loss[row][where].sum()), int(where.sum()))
    return result


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_batches_give_each_sample_its_unpacked_loss(tmp_path, tiny_specs, family):
    from lmm.model.lmm import LMM
    from tests.conftest import llm_spec

    specs = dict(tiny_specs)
    if family == "qwen2":
        specs["llm"] = llm_spec(tiny_specs["llm"]["tokenizer"], "chatml", model_type="qwen2")
    torch.manual_seed(0)
    model = LMM(**specs).eval()
    path = write_dataset(tmp_path, good_records(30), "a.json")

    def epoch(**kw):
        dm = LlavaDataModule([str(path)], str(tmp_path), num_workers=0, max_length=512, shuffle=True, seed=1,
                             **kw).attach(model, model.template)
        dm.setup("fit")
        losses, rows = {}, 0
        with torch.no_grad():
            for batch in dm.train_dataloader():
                losses.update(per_sample_losses(model, batch))
                rows += batch["input_ids"].shape[0]
        return losses, rows, dm

    alone, rows_alone, _ = epoch(micro_batch_size=1)
    packed, rows_packed, dm = epoch(batching="packed", max_tokens=1024)
    assert rows_packed <= rows_alone / 2  # rows really hold several samples
    assert dm.plan_stats["token_efficiency"] > 0.9
    assert alone.keys() == packed.keys() and len(alone) == 30
    for rid, (total, count) in alone.items():
        assert packed[rid][1] == count
        assert packed[rid][0] == pytest.approx(total, rel=1e-4, abs=1e-4), rid
