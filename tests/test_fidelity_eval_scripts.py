"""ScienceQA, MMBench, MM-Vet and LLaVA-W prompts against LLaVA-1.5's own evaluation scripts, run as they are.

`llava/eval/model_vqa_science.py`, `model_vqa_mmbench.py` and `model_vqa.py` (MM-Vet, LLaVA-W) load a model, build each prompt, tokenise
it and generate. Here their `eval_model` runs unchanged on a question file, with a stand-in model that
records the `input_ids` and the image tensor it is given (their model loader, `.cuda()` and
`disable_torch_init` are replaced for the run: nothing else). lmm's benchmark requests for the same
questions, rendered and tokenised by `LMM.prompt_ids`, must give the same ids, in the same order, and
its image transform the same pixels.

ScienceQA's question file is LLaVA-1.5's `llava_test_CQM-A.json`, which is not in the wheel: its human
turns are rebuilt with lmms-eval's `sqa_doc_to_text` (lmms-eval reproduces LLaVA-1.5's prompt; its
code, not ours), so the chain checks lmm against two references at once.
"""
from __future__ import annotations

import base64
import io
import json
import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lmm.data.templates import phi2, vicuna
from lmm.data.transforms import ImageTransform
from lmm.eval.llava_bench import LLaVABench
from lmm.eval.mmbench import MMBench
from lmm.eval.mmvet import MMVet
from lmm.eval.scienceqa import ScienceQA
from lmm.model.lmm import LMM
from tests.test_fidelity_image import CLIP_MEAN, CLIP_STD, photo

pytest.importorskip("tests.reference_llava")
pytest.importorskip("pandas", reason="LLaVA's MMBench script reads the TSV with pandas")
science = pytest.importorskip("llava.eval.model_vqa_science")
mmbench_script = pytest.importorskip("llava.eval.model_vqa_mmbench")
vqa_script = pytest.importorskip("llava.eval.model_vqa")
lmms = pytest.importorskip("tests.reference_lmms_eval")

WORDS = ["cat", "the", "Which", "of", "these", "magnets", "north", "pole", "é", "東京", "😀", "(x)", "3.5",
         "isn't", "USER:", "ASSISTANT", "</s>", "A.", "answer", "  ", "\t"]


def text(rng: random.Random, lo: int = 1, hi: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).strip() or "x"


class StandIn:
    """What LLaVA's scripts use of a model: `config` and `generate`; records every call."""

    def __init__(self, tokenizer):
        self.config = SimpleNamespace(mm_use_im_start_end=False, image_aspect_ratio="pad")
        self.calls, self.answer = [], tokenizer("A", add_special_tokens=False, return_tensors="pt").input_ids

    def generate(self, input_ids, images=None, **_):
        self.calls.append({"ids": input_ids[0].tolist(), "images": images})
        return self.answer


def run_script(module, monkeypatch, tokenizer, args) -> StandIn:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    model = StandIn(tokenizer)
    pixels = []

    def process_images(images, image_processor, config):   # records the fp32 tensor before their .half()
        out = module_process_images(images, image_processor, config)
        pixels.append(out[0].clone())
        return out

    module_process_images = module.process_images
    monkeypatch.setattr(module, "load_pretrained_model", lambda *a, **k: (tokenizer, model, processor, 4096))
    monkeypatch.setattr(module, "disable_torch_init", lambda: None)   # it would patch torch.nn for every test
    monkeypatch.setattr(module, "process_images", process_images)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    module.eval_model(SimpleNamespace(model_path="/models/llava-v1.5-stand-in", model_base=None,
                                      conv_mode="vicuna_v1", num_chunks=1, chunk_idx=0, temperature=0,
                                      top_p=None, num_beams=1, single_pred_prompt=True, all_rounds=True,
                                      lang="en", answer_prompter=False, **args))
    with_images = [c for c in model.calls if c["images"] is not None]
    assert len(with_images) == len(pixels)
    for call, p in zip(with_images, pixels):
        call["pixels"] = p
    return model


# The conf/llm template of each tokenizer family: TinyLlama's (BOS) and Phi-2's (the same text, no BOS).
TEMPLATES = {"llama": vicuna, "gpt2": phi2}


def assert_same(requests, calls, tokenizer, family):
    model = SimpleNamespace(template=TEMPLATES[family](), tokenizer=tokenizer)   # what LMM.prompt_ids uses of the model
    transform = ImageTransform(336, CLIP_MEAN, CLIP_STD)
    assert len(requests) == len(calls)
    for request, call in zip(requests, calls):
        ours = LMM.prompt_ids(model, request.prompt, len(request.images))
        assert ours.tolist() == call["ids"], request.prompt
        assert bool(request.images) == (call["images"] is not None)
        if request.images:
            ref = request.images[0]
            with Image.open(io.BytesIO(ref)) if isinstance(ref, bytes) else Image.open(ref) as im:
                pixels = transform(im)
            assert (pixels - call["pixels"]).abs().max() * max(CLIP_STD) * 255 < 0.01


def science_problems(tmp_path, n: int = 60) -> dict:
    rng = random.Random(21)
    problems = {}
    for k in range(n):
        pid = str(1000 + k)
        image = None
        if k % 3:
            image = "image.png"
            (tmp_path / "images" / pid).mkdir(parents=True)
            photo(120 + 13 * k, 90 + 7 * (k % 9), k).save(tmp_path / "images" / pid / image)
        hint = "" if k % 4 == 0 else text(rng, 1, 12)
        problems[pid] = {"question": text(rng) + "?", "choices": [text(rng, 1, 4) for _ in range(rng.randint(2, 5))],
                         "answer": 0, "hint": hint, "image": image, "split": "test"}
    return problems


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scienceqa_equals_model_vqa_science(tmp_path, family_tokenizer, monkeypatch, family):
    tokenizer = family_tokenizer(family)
    problems = science_problems(tmp_path)
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    # LLaVA-1.5's llava_test_CQM-A.json: the human turn as lmms-eval rebuilds it, the placeholder after it
    # (LLaVA's converter writes it there; its eval script moves it to the front).
    llava_file = []
    for pid, p in problems.items():
        human = lmms.sqa.sqa_doc_to_text(p, {"format": "default", "pre_prompt": "", "post_prompt": ""})
        row = {"id": pid, "conversations": [{"from": "human", "value": human + ("\n<image>" if p["image"] else "")},
                                            {"from": "gpt", "value": "A"}]}
        if p["image"]:
            row["image"] = f"{pid}/{p['image']}"
        llava_file.append(row)
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(llava_file))
    model = run_script(science, monkeypatch, tokenizer, {
        "question_file": str(tmp_path / "llava_test_CQM-A.json"), "image_folder": str(tmp_path / "images"),
        "answers_file": str(tmp_path / "out" / "answers.jsonl")})
    bench = ScienceQA(problems=str(tmp_path / "problems.json"), pid_splits=str(tmp_path / "pid_splits.json"),
                      image_root=str(tmp_path / "images"), image_only=False)
    assert_same(bench.requests(), model.calls, tokenizer, family)
    image_only = ScienceQA(problems=str(tmp_path / "problems.json"), pid_splits=str(tmp_path / "pid_splits.json"),
                           image_root=str(tmp_path / "images"))
    assert [r.key for r in image_only.requests()] == [p for p, v in problems.items() if v["image"]]


def mmbench_tsv(tmp_path, n: int = 25) -> tuple:
    rng = random.Random(22)
    buf = io.BytesIO()
    lines = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tsplit\timage"]
    for k in range(n):
        buf.seek(0)
        buf.truncate()
        photo(100 + 17 * k, 80 + 9 * (k % 7), 100 + k).save(buf, format="JPEG", quality=90)
        n_options = rng.randint(2, 4)
        options = [text(rng, 1, 4).replace("\t", " ") for _ in range(n_options)] + [""] * (4 - n_options)
        if k == 3:
            options[2] = "None"   # a cell pandas reads as missing: LLaVA stops the options there, as lmm does
        hint = "" if k % 3 == 0 else text(rng, 1, 10).replace("\t", " ")
        lines.append("\t".join([str(k), text(rng).replace("\t", " ") + "?", hint, *options, "A", "cat", "l2", "dev",
                                base64.b64encode(buf.getvalue()).decode()]))
    path = tmp_path / "mmbench.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mmbench_equals_model_vqa_mmbench(tmp_path, family_tokenizer, monkeypatch, family):
    """Every rotation, in LLaVA's `--all-rounds` order."""
    tokenizer = family_tokenizer(family)
    path = mmbench_tsv(tmp_path)
    model = run_script(mmbench_script, monkeypatch, tokenizer, {
        "question_file": str(path), "image_folder": "", "answers_file": str(tmp_path / "out" / "answers.jsonl")})
    requests = MMBench(questions=str(path)).requests()
    assert len(requests) > 25   # rotations asked
    assert_same(requests, model.calls, tokenizer, family)


# Open-ended questions as the files have them, trailing whitespace and newlines included (asked unchanged).
OPEN_QUESTIONS = ["Describe this photo in detail.", "What is unusual about this image? ", "Write a poem 😀\n",
                  "What is x in the equation?", "Explain the meme «ASSISTANT: hi».", "USER: what?"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mmvet_and_llavaw_equal_model_vqa(tmp_path, family_tokenizer, monkeypatch, family):
    """LLaVA-1.5 runs both through model_vqa.py on a jsonl of (question_id, image, text)."""
    tokenizer = family_tokenizer(family)
    rows = []
    for k, q in enumerate(OPEN_QUESTIONS):
        photo(150 + 23 * k, 110 + 5 * k, 200 + k).save(tmp_path / f"v1_{k}.png")
        rows.append({"question_id": f"v1_{k}", "image": f"v1_{k}.png", "text": q})
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps({**r, "category": "conv"}) + "\n" for r in rows))
    (tmp_path / "context.jsonl").write_text("".join(json.dumps({"image": r["image"], "caption": "c"}) + "\n"
                                                    for r in rows))
    (tmp_path / "answers_gpt4.jsonl").write_text("".join(json.dumps({"question_id": r["question_id"], "text": "a"})
                                                         + "\n" for r in rows))
    (tmp_path / "mm-vet.json").write_text(json.dumps({r["question_id"]: {"imagename": r["image"], "question": r["text"],
                                                                         "answer": "a", "capability": ["rec"]}
                                                      for r in rows}))
    model = run_script(vqa_script, monkeypatch, tokenizer, {
        "question_file": str(tmp_path / "questions.jsonl"), "image_folder": str(tmp_path),
        "answers_file": str(tmp_path / "out" / "answers.jsonl")})
    llavaw = LLaVABench(questions=str(tmp_path / "questions.jsonl"), context=str(tmp_path / "context.jsonl"),
                        reference_answers=str(tmp_path / "answers_gpt4.jsonl"), image_root=str(tmp_path))
    assert_same(llavaw.requests(), model.calls, tokenizer, family)
    mmvet = MMVet(questions=str(tmp_path / "mm-vet.json"), image_root=str(tmp_path))
    assert_same(mmvet.requests(), model.calls, tokenizer, family)
