"""`data=llava15` and `data=sharegpt4v` pointed at folders in the published layouts (file names,
image folders, record shapes of LLaVA-Pretrain, llava_v1_5_mix665k, ShareGPT4V-PT and -SFT) train
both stages of the base recipe."""
import json

import pytest

from lmm.train.run import train
from tests.conftest import compose_config
from tests.llava_fixture import conv, write_images


def caption(rid, image, text):  # LLaVA-Pretrain puts the placeholder after the instruction
    return {"id": rid, "image": image, "conversations": conv("Render a clear and concise summary of the photo.\n<image>", text)}


def sft_mix(prefix=""):
    """mix665k's sources: COCO (LLaVA-Instruct), GQA, OCR-VQA, TextVQA, VG, and text-only ShareGPT."""
    images = ["coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg", "ocr_vqa/images/140031996.jpg",
              "textvqa/train_images/0a0bc91825468c45.jpg", "vg/VG_100K/2.jpg", "vg/VG_100K_2/1.jpg"]
    records = [{"id": f"{prefix}{i}", "image": img, "model": "",
                "conversations": conv("<image>\nWhat is on the table?\nAnswer the question using a single word or phrase.",
                                      "Cup", "What colour is it?", "White")} for i, img in enumerate(images)]
    records += [{"id": f"{prefix}text{i}", "model": "", "conversations": conv("Tell me a short story.", "Once upon a time.")}
                for i in range(3)]
    return records


def llava15_root(root):
    pre = [caption(f"00453{i}", f"00453/00453{i}.jpg", "a red circle on a table") for i in range(8)]
    write_images(root / "LLaVA-Pretrain/images", [r["image"] for r in pre])
    (root / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json").write_text(json.dumps(pre))
    sft = sft_mix()
    write_images(root, [r["image"] for r in sft if "image" in r])
    (root / "llava_v1_5_mix665k.json").write_text(json.dumps(sft))


def sharegpt4v_root(root):
    images = ["coco/train2017/000000000009.jpg", "llava/llava_pretrain/images/00453/004539375.jpg",
              "sam/images/sa_545504.jpg", "coco/train2017/000000000025.jpg"]
    pre = [{"id": f"cap{i}", "image": img, "conversations": conv("What do you see happening in this image?\n<image>",
                                                                     "A long detailed caption of the scene.")}
           for i, img in enumerate(images * 2)]
    sft = sft_mix("s") + [{"id": "share0", "image": "wikiart/images/a.jpg",
                           "conversations": conv("<image>\nDescribe this painting in detail.", "An old painting.")},
                          {"id": "share1", "image": "web-celebrity/images/b.jpg",
                           "conversations": conv("<image>\nWho is this?", "A person.")}]
    write_images(root, sorted({r["image"] for r in pre + sft if "image" in r}))
    (root / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(pre))
    (root / "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json").write_text(json.dumps(sft))


@pytest.mark.parametrize("data, build", [("llava15", llava15_root), ("sharegpt4v", sharegpt4v_root)])
def test_published_layouts_train_both_stages(data, build, data_dir, tmp_path):
    root = tmp_path / data
    build(root)
    cfg = compose_config("train", runs_dir=tmp_path / "runs", overrides=[
        f"paths.data_dir={data_dir}", f"data={data}", f"data.root={root}", "recipe=base", "vision=tiny_clip",
        "data.loader.micro_batch_size=2", "data.loader.num_workers=0", "data.loader.max_length=1024",
        "recipe.stages.pretrain.global_batch_size=4", "recipe.stages.sft.global_batch_size=4",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks.samples.num_samples=1",
        "evaluate=false"])
    out = train(cfg)
    run = tmp_path / "runs" / data / "tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base"
    assert out["checkpoint"] == str(run / "sft/checkpoint") and (run / "pretrain/checkpoint/model.safetensors").is_file()
    assert out["results"] is None  # evaluate=false: this test is about the data layouts
    import csv

    for stage in ("pretrain", "sft"):
        with open(run / stage / "version_0/metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("data/skipped")]
        assert float(rows[-1]["data/skipped"]) == 0, (stage, rows[-1])  # every record of the layouts is usable
        sample = json.loads((run / stage / "samples.jsonl").read_text().splitlines()[0])
        assert sample["images"][0].startswith(str(root))  # the image was found under the configured root
