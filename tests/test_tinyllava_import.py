"""Import of TinyLLaVA_Factory checkpoints (lmm.model.tinyllava) on tiny folders laid out as theirs:
config.json with diff-serialised text/vision configs, fp16 safetensors under their prefixes (the whole
tower stored, its unused last layer, final norm and SigLIP head included), the LLM's tokenizer. The
reference is their forward written with plain transformers modules: tower hidden_states[layer],
their "patch" selection, the connector, the visual rows spliced at each -200 id, the causal LM."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CONFIG_MAPPING, AutoModel, AutoModelForCausalLM

from lmm.data.templates import Message
from lmm.data.tokenize import IMAGE_TOKEN_ID, render_text
from lmm.model.lmm import LMM

TEXT = {  # their three families of the paper, tiny
    "phi": {"model_type": "phi", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "partial_rotary_factor": 0.4},
    "llama": {"model_type": "llama", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2},
    "stablelm": {"model_type": "stablelm", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "partial_rotary_factor": 0.5},
}
TOKENIZER = {"phi": "gpt2", "llama": "llama", "stablelm": "gpt2"}
VISION = {"siglip": {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2},
          "clip": {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}}


def write_folder(path, family, tokenizer, tower="siglip", connector_type="mlp2x_gelu", extra=None):
    """A TinyLLaVA_Factory checkpoint as their save writes it; returns (tower, connector, llm) modules."""
    torch.manual_seed(0)
    text_config = CONFIG_MAPPING[family](**TEXT[family], vocab_size=len(tokenizer) + 3)
    vision_config = CONFIG_MAPPING[VISION[tower]["model_type"]](**VISION[tower])
    llm = AutoModelForCausalLM.from_config(text_config).eval()
    vision = AutoModel.from_config(vision_config).eval()
    width, hidden = vision_config.hidden_size, text_config.hidden_size
    connector = (nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
                 if connector_type == "mlp2x_gelu" else nn.Linear(width, hidden))
    for module in (llm, vision, connector):  # their weights are fp16: the reference reads what was saved
        module.half().float()
    state = {**{f"language_model.{k}": v for k, v in llm.state_dict().items()},
             **{f"vision_tower._vision_tower.{k}": v for k, v in vision.state_dict().items()},
             **{f"connector._connector.{k}": v for k, v in connector.state_dict().items()}}
    if text_config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)  # written once, as the embeddings
    path.mkdir(parents=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    vision_dict = {**vision_config.to_diff_dict(), "model_name_or_path": "google/siglip-so400m-patch14-384",
                   "model_name_or_path2": ""}
    config = {"architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
              "auto_map": {"AutoConfig": "configuration.TinyLlavaConfig"}, "connector_type": connector_type,
              "text_config": text_config.to_diff_dict(), "vision_config": vision_dict, "vision_feature_layer": -2,
              "vision_feature_select_strategy": "patch", "image_aspect_ratio": "square", "image_token_index": -200,
              "hidden_size": text_config.hidden_size, "vocab_size": text_config.vocab_size,
              "llm_model_name_or_path": f"tiny/{family}", "tokenizer_padding_side": "right",
              "tokenizer_model_max_length": 2048, "torch_dtype": "float16", **(extra or {})}
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(path)
    return vision, connector, llm


def their_logits(vision, connector, llm, ids, pixels, layer=-2):
    """TinyLLaVA_Factory's forward, with transformers modules: features, connector, splice, LLM."""
    feats = vision(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]  # "patch": the first token off
    rows = connector(feats)
    embed = llm.get_input_embeddings()
    pieces, k = [], 0
    for t in ids:
        if t == IMAGE_TOKEN_ID:
            pieces.append(rows[k])
            k += 1
        else:
            pieces.append(embed(torch.tensor([t])))
    return llm(inputs_embeds=torch.cat(pieces)[None]).logits


@pytest.mark.parametrize("family", ["phi", "llama", "stablelm"])
@pytest.mark.parametrize("tower", ["siglip", "clip"])
def test_a_converted_checkpoint_gives_the_logits_of_its_weights(family_tokenizer, tmp_path, family, tower):
    tok = family_tokenizer(TOKENIZER[family])
    vision, connector, llm = write_folder(tmp_path / "ckpt", family, tok, tower)
    ours = LMM.from_tinyllava(tmp_path / "ckpt")
    # their "patch": the first token off, CLIP's CLS or SigLIP's first patch (16 patches, + CLIP's CLS)
    assert ours.vision.feature_select == "drop_first" and ours.num_visual_tokens == 16 + (tower == "clip") - 1
    assert not ours.vision.transform.pad_to_square  # "square": the whole image resized
    ids = ours.prompt_ids("what is in the image?", n_images=1)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = their_logits(vision, connector, llm, ids.tolist(), pixels)
        got = ours(ids[None], pixels).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("family, template, bos, eos", [
    ("phi", "phi2", "none", "<|endoftext|>"), ("llama", "vicuna", "once", "</s>"),
    ("stablelm", "stablelm2", "none", "<|endoftext|>")])
def test_the_template_follows_the_family(family_tokenizer, tmp_path, family, template, bos, eos):
    from lmm.data import templates

    tok = family_tokenizer(TOKENIZER[family])
    write_folder(tmp_path / "ckpt", family, tok)
    ours = LMM.from_tinyllava(tmp_path / "ckpt")
    assert ours.template == getattr(templates, template)() and ours.template.bos == bos
    assert ours.template.system.startswith("A chat between a curious user")  # their system prompt
    # their prompt and answer ending: "{system} USER: <image>\n{q} ASSISTANT: {a}{eos}"
    turns = [Message("user", "<image>\nq?"), Message("assistant", "a")]
    text, _, _ = render_text(ours.template.render(turns), ours.tokenizer)
    assert text == f"{templates.VICUNA_SYSTEM} USER: <image>\nq? ASSISTANT: a{eos}"


def test_a_named_template_of_theirs_is_mapped_and_an_unknown_one_refused(family_tokenizer, tmp_path):
    tok = family_tokenizer("gpt2")
    write_folder(tmp_path / "ckpt", "phi", tok)
    assert LMM.from_tinyllava(tmp_path / "ckpt", template="qwen2_base").template.bos == "none"
    with pytest.raises(ValueError, match=r"template 'pretrain'; importable: \['gemma', 'llama', 'phi'"):
        LMM.from_tinyllava(tmp_path / "ckpt", template="pretrain")


def test_a_linear_connector_and_the_pad_ratio_import(family_tokenizer, tmp_path):
    tok = family_tokenizer("llama")
    vision, connector, llm = write_folder(tmp_path / "ckpt", "llama", tok, "clip", "linear",
                                          {"image_aspect_ratio": "pad"})
    ours = LMM.from_tinyllava(tmp_path / "ckpt")
    assert ours.vision.transform.pad_to_square
    ids = ours.prompt_ids("q?", n_images=1)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(ids[None], pixels).logits, their_logits(vision, connector, llm, ids.tolist(), pixels),
                              atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, message", [
    ({"connector_type": "resampler"}, "connector_type 'resampler' has no lmm counterpart"),
    ({"connector_type": "qformer"}, "connector_type 'qformer'"),
    ({"connector_config": {"model_type": "mlp__tlf_connector"}}, "refactored TinyLLaVA_Factory layout"),
    ({"vision_config": {"model_type": "dinov2"}}, "vision tower 'dinov2'"),
    ({"text_config": {"model_type": "openelm"}}, "'openelm' LLM"),
])
def test_what_lmm_has_no_counterpart_for_is_refused(family_tokenizer, tmp_path, change, message):
    write_folder(tmp_path / "ckpt", "llama", family_tokenizer("llama"))
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    (tmp_path / "ckpt/config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        LMM.from_tinyllava(tmp_path / "ckpt")
