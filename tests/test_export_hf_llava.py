"""Export to transformers' Llava (lmm.model.hf_llava_export): transformers loads the folder and gives
lmm's logits and greedy tokens, its processor and chat template give lmm's prompt, the pipeline
answers, the import maps it back to the same weights, and what Llava cannot hold is refused."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.model.hf_llava_export import NotExportable, export_hf_llava
from lmm.model.lmm import LMM
from tests.conftest import MLP2X_GELU, llm_spec, vision_spec

ROOT = Path(__file__).resolve().parents[1]


def build(tokenizer_dir, kind="siglip", connector=None, **llm):
    torch.manual_seed(0)
    return LMM(vision=vision_spec(kind), connector=connector or dict(MLP2X_GELU),
               llm=llm_spec(tokenizer_dir, **llm)).eval()


def image(size=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def hf_ids(ours: torch.Tensor, image_id: int, n: int) -> torch.Tensor:
    """lmm's prompt ids (one IMAGE_TOKEN_ID per image) as Llava's (the image token n times)."""
    out = []
    for t in ours.tolist():
        out += [image_id] * n if t == IMAGE_TOKEN_ID else [t]
    return torch.tensor(out)


@pytest.mark.parametrize("kind, strategy", [("siglip", "full"), ("clip", "default")])
def test_transformers_loads_the_folder_and_gives_our_logits(tokenizer_dir, tmp_path, kind, strategy):
    from transformers import LlavaForConditionalGeneration

    ours = build(tokenizer_dir, kind)
    out = export_hf_llava(ours, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert hf.config.vision_feature_select_strategy == strategy
    ids = ours.prompt_ids("what color is the shape?", n_images=1)
    pixels = ours.image_transform(image())[None]
    with torch.no_grad():
        expected = ours(ids[None], pixels).logits
        got = hf(input_ids=hf_ids(ids, hf.config.image_token_id, ours.num_visual_tokens)[None],
                 pixel_values=pixels).logits
    vocab = expected.shape[-1]
    assert got.shape[:2] == expected.shape[:2] and got.shape[-1] == vocab + 1  # + the <image> row
    assert torch.allclose(got[..., :vocab], expected, atol=1e-5, rtol=0), (got[..., :vocab] - expected).abs().max()
    # the added <image> row's logit is the mean of the others: never the greedy choice
    assert torch.allclose(got[..., vocab], expected.mean(-1), atol=1e-5)


def test_processor_and_chat_template_give_our_prompt_and_greedy_tokens(tokenizer_dir, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    ours = build(tokenizer_dir)
    out = export_hf_llava(ours, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out)
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    picture = image(48, seed=1).crop((0, 0, 48, 30))  # not square: padded, then resized
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=picture, text=prompt, return_tensors="pt")
    ids = ours.prompt_ids("what shape is it?", n_images=1)
    assert inputs["input_ids"][0].tolist() == hf_ids(ids, hf.config.image_token_id, ours.num_visual_tokens).tolist()
    # the same pad colour, size and normalisation; transformers' resize arithmetic can land one
    # grey level away from Pillow's uint8 resize (lmm's) on a few values
    pixels = ours.image_transform(picture)
    assert inputs["pixel_values"].shape == (1, *pixels.shape)
    one_level = 1 / 255 / min(ours.image_transform.std) + 1e-5
    diff = (inputs["pixel_values"][0] - pixels).abs()
    assert diff.max() <= one_level and (diff < 1e-5).float().mean() > 0.95
    ours_new = ours.generate(ids[None], inputs["pixel_values"], max_new_tokens=8)
    theirs = hf.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert ours_new[0].tolist() == theirs.tolist()[:len(ours_new[0])] and len(ours_new[0]) > 0


def test_the_image_text_to_text_pipeline_answers(tokenizer_dir, tmp_path):
    from transformers import pipeline

    out = export_hf_llava(build(tokenizer_dir), tmp_path / "hf")
    pipe = pipeline("image-text-to-text", model=str(out))
    messages = [{"role": "user", "content": [{"type": "image", "image": image()},
                                             {"type": "text", "text": "what color is the shape?"}]}]
    answer = pipe(text=messages, max_new_tokens=4, return_full_text=False)
    assert isinstance(answer[0]["generated_text"], str)


def test_export_then_import_gives_the_same_weights(tokenizer_dir, tmp_path):
    ours = build(tokenizer_dir, "clip")
    back = LMM.from_hf_llava(export_hf_llava(ours, tmp_path / "hf"))
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        rows = a[key].shape[0] if a[key].dim() else None
        got = b[key][:rows] if key.endswith(("embed_tokens.weight", "lm_head.weight")) else b[key]
        assert torch.equal(a[key], got), key  # the vocabulary rows gain only the <image> row
    assert back.num_visual_tokens == ours.num_visual_tokens


TIMM = {"_target_": "lmm.model.vision_timm.TimmVisionEncoder", "model_name": "vit_so400m_patch14_siglip_384",
        "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4}}
PHI = {"model_type": "phi", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
       "num_attention_heads": 4}
GEMMA2 = {"model_type": "gemma2", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "final_logit_softcapping": 30.0}


@pytest.mark.parametrize("vision, connector, llm_hf, message", [
    (TIMM, MLP2X_GELU, {}, "vision tower TimmVisionEncoder"),
    (None, {"_target_": "lmm.model.connector.LinearConnector"}, {}, "connector linear"),
    (None, {"_target_": "lmm.model.resampler.ResamplerConnector", "num_queries": 4, "depth": 1, "num_heads": 2},
     {}, "connector ResamplerConnector"),
    (None, {"_target_": "lmm.model.pixel_shuffle.PixelShuffleConnector", "factor": 2}, {},
     "connector PixelShuffleConnector"),
    (None, MLP2X_GELU, PHI, "LLM 'phi': its LM head has a bias"),
    (None, MLP2X_GELU, GEMMA2, "LLM 'gemma2': its logits are transformed after the LM head"),
])
def test_what_llava_cannot_hold_is_refused_naming_the_part(tokenizer_dir, tmp_path, vision, connector, llm_hf,
                                                           message):
    llm = llm_spec(tokenizer_dir)
    if llm_hf:
        llm["hf_config"] = dict(llm_hf)
    torch.manual_seed(0)
    ours = LMM(vision=vision or vision_spec("siglip"), connector=dict(connector), llm=llm)
    with pytest.raises(NotExportable, match=message):
        export_hf_llava(ours, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow  # a `python -m lmm.export` process
def test_the_command_writes_the_folder(tokenizer_dir, tmp_path):
    ckpt = build(tokenizer_dir).save_pretrained(tmp_path / "ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lmm.export", f"checkpoint={ckpt}", "format=hf_llava",
                           f"out={tmp_path / 'hf'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}


def test_the_command_names_the_valid_formats(tokenizer_dir, tmp_path):
    ckpt = build(tokenizer_dir).save_pretrained(tmp_path / "ckpt")
    bad = subprocess.run([sys.executable, "-m", "lmm.export", f"checkpoint={ckpt}", "format=gguf",
                          f"out={tmp_path / 'x'}"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "valid: ['hf_llava']" in bad.stderr


@pytest.mark.parametrize("family, template", [("gpt2", "vicuna"), ("llama", "vicuna"), ("llama_metaspace", "vicuna"),
                                              ("qwen2", "qwen2"), ("gemma", "gemma"), ("qwen2", "chatml")])
def test_the_processor_prompt_is_ours_on_every_tokenizer_family(family_tokenizer, tmp_path, family, template):
    from transformers import AutoProcessor

    ours = build(family_tokenizer(family).name_or_path, template=template)
    processor = AutoProcessor.from_pretrained(export_hf_llava(ours, tmp_path / "hf"))
    for question in ("what shape is it?", "Is there a dog? Answer yes or no."):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        got = processor(images=image(), text=prompt)["input_ids"][0]
        want = hf_ids(ours.prompt_ids(question, n_images=1), processor.image_token_id, ours.num_visual_tokens)
        assert list(got) == want.tolist()
