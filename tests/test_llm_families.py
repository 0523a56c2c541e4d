"""The LLM families of the paper's grid: tiny configs build, train and match the plain HF model;
the full-size configs name the right checkpoint and template; the family templates render exactly."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lmm.data.templates import VICUNA_SYSTEM, Message, Segment, chatml, gemma, gemma_turns, qwen2, stablelm2
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, encode_segments
from lmm.model.llm import LanguageModel
from lmm.model.lmm import LMM
from lmm.model.spec import build
from tests.conftest import MLP2X_GELU, vision_spec

CONF_LLM = Path(__file__).resolve().parents[1] / "conf" / "llm"

# family config -> (model_type, decoder layer class, tied embeddings as in the real checkpoint, template)
FAMILIES = {
    "tiny_llama": ("llama", "LlamaDecoderLayer", False, "vicuna"),
    "tiny_stablelm": ("stablelm", "StableLmDecoderLayer", False, "stablelm2"),
    "tiny_phi": ("phi", "PhiDecoderLayer", False, "phi2"),
    "tiny_qwen2": ("qwen2", "Qwen2DecoderLayer", True, "qwen2"),
    "tiny_gemma": ("gemma", "GemmaDecoderLayer", True, "gemma"),
}


def family_spec(name: str, tokenizer_dir: str) -> dict:
    cfg = OmegaConf.load(CONF_LLM / f"{name}.yaml")
    cfg.tokenizer = tokenizer_dir
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_family_builds_with_its_facts(tokenizer_dir, name):
    model_type, layer_class, tied, template = FAMILIES[name]
    spec = family_spec(name, tokenizer_dir)
    assert spec["hf_config"]["model_type"] == model_type
    assert spec["template"]["_target_"] == f"lmm.data.templates.{template}"
    assert spec["hf_config"]["hidden_size"] <= 128 and spec["hf_config"]["num_hidden_layers"] <= 2
    llm = build(spec)
    assert isinstance(llm, LanguageModel)
    assert isinstance(llm.layers, torch.nn.ModuleList) and len(llm.layers) == spec["hf_config"]["num_hidden_layers"]
    assert llm.decoder_layer_class.__name__ == layer_class
    assert all(type(layer) is llm.decoder_layer_class for layer in llm.layers)
    assert llm.model.config.vocab_size == len(llm.tokenizer) == llm.model.get_input_embeddings().num_embeddings
    assert llm.model.config.eos_token_id == llm.tokenizer.eos_token_id
    assert llm.hidden_size == spec["hf_config"]["hidden_size"]
    shared = llm.model.get_output_embeddings().weight is llm.model.get_input_embeddings().weight
    assert shared == tied == llm.model.config.tie_word_embeddings
    # the family quirks the config promises reach the model
    rope = llm.model.config.rope_parameters
    if model_type == "phi":
        assert rope["partial_rotary_factor"] == 0.4
    if model_type == "stablelm":
        assert rope["partial_rotary_factor"] == 0.25 and llm.layers[0].self_attn.q_proj.bias is not None
    if model_type == "gemma":
        assert llm.layers[0].self_attn.k_proj.out_features == 32  # one key/value head of head_dim 32


@pytest.mark.parametrize("name", FAMILIES)
def test_lmm_with_each_family(tokenizer_dir, name):
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=family_spec(name, tokenizer_dir))
    pad = model.tokenizer.pad_token_id

    # Outside reference: on a text-only, right-padded batch the LMM's logits are the HF model's own.
    text = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, pad, pad, pad]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        ours = model(text, attention_mask=mask).logits
        ref = model.llm.model(input_ids=text, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], rtol=1e-5, atol=1e-5)
    # and greedy generation from a text prompt gives the HF model's tokens
    prompt = text[:1]
    new = model.generate(prompt, max_new_tokens=4)
    hf = model.llm.model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False,
                                  eos_token_id=model.tokenizer.eos_token_id, pad_token_id=pad)
    assert new.tolist() == hf[:, prompt.shape[1]:].tolist()

    # With an image: the expanded sequence, a finite loss, gradients into the connector and the LLM.
    ids = torch.tensor([[5, IMAGE_TOKEN_ID, 6, 7, 8, 9]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]])
    out = model(ids, torch.randn(1, 3, 32, 32), labels=labels)
    assert out.attention_mask.shape == (1, 5 + model.num_visual_tokens)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.connector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.llm.layers[-1].parameters())


@pytest.mark.parametrize("name, env, hub_id, template, bos", [
    ("tinyllama_1_1b", "LMM_TINYLLAMA", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "vicuna", "once"),
    ("phi2", "LMM_PHI2", "microsoft/phi-2", "phi2", "none"),
    ("stablelm2_1_6b", "LMM_STABLELM2_1_6B", "stabilityai/stablelm-2-1_6b", "stablelm2", "none"),
    ("qwen2_0_5b", "LMM_QWEN2_0_5B", "Qwen/Qwen2-0.5B", "qwen2", "none"),
    ("gemma_2b", "LMM_GEMMA_2B", "google/gemma-2b", "gemma", "once"),
])
def test_full_size_configs_name_checkpoint_and_template(monkeypatch, name, env, hub_id, template, bos):
    monkeypatch.delenv(env, raising=False)
    cfg = OmegaConf.load(CONF_LLM / f"{name}.yaml")
    assert cfg._target_ == "lmm.model.llm.LanguageModel"
    assert cfg.pretrained == cfg.tokenizer == hub_id
    assert cfg.template._target_ == f"lmm.data.templates.{template}"
    built = build(cfg.template)
    assert built.bos == bos and built.answer_end == "eos" and built.system == VICUNA_SYSTEM
    monkeypatch.setenv(env, "/models/local")
    assert OmegaConf.load(CONF_LLM / f"{name}.yaml").tokenizer == "/models/local"


# --- templates ---------------------------------------------------------------------------------------

CONVERSATION = [Message("user", "<image>\nwhat color ?"), Message("assistant", "blue"),
                Message("user", "what shape ?"), Message("assistant", "circle"),
                Message("user", "thanks"), Message("assistant", "welcome")]


def as_text(segments: list[Segment]) -> tuple[str, list[str]]:
    """The rendered string (special tokens as <BOS>/<EOS>) and the trained pieces in order."""
    def text(s):
        return f"<{s.special.upper()}>" if s.special else s.text
    return "".join(map(text, segments)), [text(s) for s in segments if s.trained]


VICUNA_STYLE = ("be brief USER: <image>\nwhat color ? ASSISTANT: blue<EOS>USER: what shape ? ASSISTANT: circle<EOS>"
                "USER: thanks ASSISTANT: welcome<EOS>")
TRAINED_VICUNA = [" blue", "<EOS>", " circle", "<EOS>", " welcome", "<EOS>"]


@pytest.mark.parametrize("factory, expected", [
    (stablelm2, VICUNA_STYLE),
    (qwen2, VICUNA_STYLE),
    (gemma, "<BOS>" + VICUNA_STYLE),
])
def test_vicuna_style_family_strings(factory, expected):
    assert as_text(factory(system="be brief").render(CONVERSATION)) == (expected, TRAINED_VICUNA)
    assert factory().system == VICUNA_SYSTEM  # TinyLLaVA's system prompt by default


CHATML = ("<|im_start|>system\nbe brief<|im_end|>\n"
          "<|im_start|>user\n<image>\nwhat color ?<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n"
          "<|im_start|>user\nwhat shape ?<|im_end|>\n<|im_start|>assistant\ncircle<|im_end|>\n"
          "<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\nwelcome<|im_end|>\n")
GEMMA_TURNS = ("<BOS><start_of_turn>user\nbe brief\n\n<image>\nwhat color ?<end_of_turn>\n<start_of_turn>model\n"
               "blue<end_of_turn>\n<start_of_turn>user\nwhat shape ?<end_of_turn>\n<start_of_turn>model\n"
               "circle<end_of_turn>\n<start_of_turn>user\nthanks<end_of_turn>\n<start_of_turn>model\n"
               "welcome<end_of_turn>\n")


def test_chatml_string():
    assert as_text(chatml(system="be brief").render(CONVERSATION)) == (
        CHATML, ["blue<|im_end|>", "circle<|im_end|>", "welcome<|im_end|>"])
    assert chatml().system == "You are a helpful assistant."
    prompt, _ = as_text(chatml().render([Message("user", "hi")], add_generation_prompt=True))
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_gemma_turns_string():
    assert as_text(gemma_turns(system="be brief").render(CONVERSATION)) == (
        GEMMA_TURNS, ["blue<end_of_turn>", "circle<end_of_turn>", "welcome<end_of_turn>"])
    text, _ = as_text(gemma_turns().render(CONVERSATION[:2]))
    assert text == "<BOS><start_of_turn>user\n<image>\nwhat color ?<end_of_turn>\n<start_of_turn>model\nblue<end_of_turn>\n"
    prompt, _ = as_text(gemma_turns().render([Message("user", "hi")], add_generation_prompt=True))
    assert prompt == "<BOS><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


def test_turn_template_spec_round_trip():
    for t in (chatml(system="x"), gemma_turns(system="y")):
        assert build(t.spec()).render(CONVERSATION) == t.render(CONVERSATION)


WORDS = ["<unk>", "USER", "ASSISTANT", ":", "be", "brief", "what", "color", "?", "blue", "shape", "circle",
         "thanks", "welcome", "system", "user", "assistant", "model"]
MARKERS = ["<|endoftext|>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]


def word_tokenizer(**special) -> PreTrainedTokenizerFast:
    """One token per word; each family's markers are special tokens (one id each), as in the real ones."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS + MARKERS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(MARKERS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


# What each family's tokenizer has: Qwen2 base no BOS at all; StableLM-2 <|endoftext|> as both;
# Gemma <bos>/<eos>; Qwen2-Instruct ends turns with its EOS <|im_end|>.
QWEN2_BASE = {"eos_token": "<|endoftext|>"}
STABLELM2 = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>"}
QWEN2_INSTRUCT = {"eos_token": "<|im_end|>"}


def tokens_and_positions(template, special):
    tokenizer = word_tokenizer(**special)
    ids, labels = encode_segments(template.render(CONVERSATION), tokenizer)
    tokens = ["<image>" if i == IMAGE_TOKEN_ID else tokenizer.convert_ids_to_tokens(i) for i in ids.tolist()]
    trained = [i for i, lab in enumerate(labels.tolist()) if lab != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in trained)
    return tokens, trained, tokenizer, ids


VICUNA_TOKENS = ["be", "brief", "USER", ":", "<image>", "what", "color", "?", "ASSISTANT", ":", "blue", "{eos}",
                 "USER", ":", "what", "shape", "?", "ASSISTANT", ":", "circle", "{eos}",
                 "USER", ":", "thanks", "ASSISTANT", ":", "welcome", "{eos}"]


@pytest.mark.parametrize("factory, special, first", [
    (qwen2, QWEN2_BASE, []), (stablelm2, STABLELM2, []), (gemma, GEMMA, ["<bos>"]),
])
def test_vicuna_style_family_positions(factory, special, first):
    tokens, trained, tokenizer, ids = tokens_and_positions(factory(system="be brief"), special)
    eos = special["eos_token"]
    assert tokens == first + [eos if t == "{eos}" else t for t in VICUNA_TOKENS]
    offset = len(first)
    assert trained == [offset + i for i in (10, 11, 19, 20, 26, 27)]
    assert ids[trained[1]] == tokenizer.eos_token_id  # each answer ends in what generation stops on


def test_gemma_needs_a_bos_and_qwen2_asks_for_none():
    with pytest.raises(ValueError, match="BOS"):
        tokens_and_positions(gemma(), QWEN2_BASE)
    tokens, _, _, _ = tokens_and_positions(qwen2(system=""), QWEN2_BASE)  # a BOS-less tokenizer is fine
    assert tokens[:2] == ["USER", ":"]


def test_chatml_positions():
    tokens, trained, tokenizer, ids = tokens_and_positions(chatml(system="be brief"), QWEN2_INSTRUCT)
    assert tokens == ["<|im_start|>", "system", "be", "brief", "<|im_end|>",
                      "<|im_start|>", "user", "<image>", "what", "color", "?", "<|im_end|>",
                      "<|im_start|>", "assistant", "blue", "<|im_end|>",
                      "<|im_start|>", "user", "what", "shape", "?", "<|im_end|>",
                      "<|im_start|>", "assistant", "circle", "<|im_end|>",
                      "<|im_start|>", "user", "thanks", "<|im_end|>",
                      "<|im_start|>", "assistant", "welcome", "<|im_end|>"]
    assert trained == [14, 15, 24, 25, 32, 33]
    assert ids[15] == tokenizer.eos_token_id


def test_gemma_turns_positions():
    tokens, trained, _, _ = tokens_and_positions(gemma_turns(), GEMMA)
    assert tokens == ["<bos>", "<start_of_turn>", "user", "<image>", "what", "color", "?", "<end_of_turn>",
                      "<start_of_turn>", "model", "blue", "<end_of_turn>",
                      "<start_of_turn>", "user", "what", "shape", "?", "<end_of_turn>",
                      "<start_of_turn>", "model", "circle", "<end_of_turn>",
                      "<start_of_turn>", "user", "thanks", "<end_of_turn>",
                      "<start_of_turn>", "model", "welcome", "<end_of_turn>"]
    assert trained == [10, 11, 20, 21, 28, 29]
