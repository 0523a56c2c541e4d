"""Evaluation prompts against LLaVA-1.5's own evaluation code: `llava/eval/model_vqa_loader.py`'s
`CustomDataset` (what its VQAv2, GQA, TextVQA, POPE and MME scripts run) builds `input_ids` and the
image tensor from a question jsonl; lmm's benchmark requests, rendered and tokenised by
`LMM.prompt_ids`, must give the same ids, and its image transform the same pixels (to 0.001 grey
level, as tests/test_fidelity_image.py), on the same files.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from lmm.data.templates import vicuna
from lmm.data.transforms import ImageTransform
from lmm.eval.gqa import GQA
from lmm.eval.vqav2 import VQAv2
from lmm.model.lmm import LMM
from tests.test_fidelity_image import CLIP_MEAN, CLIP_STD, photo

L = pytest.importorskip("tests.reference_llava")
loader = pytest.importorskip("llava.eval.model_vqa_loader")

SUFFIX = "Answer the question using a single word or phrase."
QUESTIONS = ["What color is the bus?", "How many people are there?", "Is the dog 😀 sleeping on the left?",
             "What is written on the sign «STOP»?", "Which room is this?\n", "  Where is it?  "]


def write_questions(tmp_path, with_suffix: bool) -> tuple:
    rows = []
    for k, q in enumerate(QUESTIONS):
        name = f"img{k}.jpg"
        photo(200 + 37 * k, 150 + 11 * k, k).save(tmp_path / name, quality=92)
        rows.append({"question_id": k, "image": name, "text": f"{q}\n{SUFFIX}" if with_suffix else q})
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def llava_items(rows, image_dir, tokenizer):
    """LLaVA's CustomDataset items (its module reads the script's global `args` for the conv mode)."""
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    config = SimpleNamespace(mm_use_im_start_end=False, image_aspect_ratio="pad")
    loader.args = SimpleNamespace(conv_mode="vicuna_v1")
    data = loader.CustomDataset(rows, str(image_dir), tokenizer, processor, config)
    return [data[i] for i in range(len(data))]


@pytest.mark.parametrize("benchmark", ["vqav2", "gqa"])
def test_requests_equal_llava_model_vqa_loader(tmp_path, family_tokenizer, benchmark):
    tokenizer = family_tokenizer("llama")
    path, rows = write_questions(tmp_path, with_suffix=True)
    bench = (VQAv2 if benchmark == "vqav2" else GQA)(questions=str(path), image_root=str(tmp_path))
    requests = bench.requests()
    reference = llava_items(rows, tmp_path, tokenizer)
    model = SimpleNamespace(template=vicuna(), tokenizer=tokenizer)  # what LMM.prompt_ids uses of the model
    transform = ImageTransform(336, CLIP_MEAN, CLIP_STD)
    assert len(requests) == len(reference)
    for request, (ids, image, _) in zip(requests, reference):
        ours = LMM.prompt_ids(model, request.prompt, len(request.images))
        assert ours.tolist() == ids.tolist(), request.prompt
        with Image.open(request.images[0]) as im:
            pixels = transform(im)
        assert (pixels - image).abs().max() * max(CLIP_STD) * 255 < 0.01


def test_the_suffix_is_added_when_the_file_lacks_it(tmp_path):
    """Questions without the suffix get LLaVA's, giving the text its jsonl files hold."""
    bare, _ = write_questions(tmp_path, with_suffix=False)
    ours = [r.prompt for r in VQAv2(questions=str(bare), image_root=str(tmp_path)).requests()]
    assert ours == [f"{q.rstrip()}\n{SUFFIX}" for q in QUESTIONS]
