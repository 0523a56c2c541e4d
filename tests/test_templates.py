"""Exact token and label positions of the chat templates on multi-turn conversations."""
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lmm.data.templates import ChatTemplate, Message, PlainTemplate, llama2, phi2, vicuna
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, SampleError, encode_segments

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "USER", "ASSISTANT", ":", "[", "]", "INST", "/", "<", ">", "SYS",
         "be", "brief", "what", "color", "?", "blue", "and", "shape", "circle", "thanks", "welcome"]


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word or punctuation mark, so expected positions can be written by hand."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


CONVERSATION = [Message("user", "<image>\nwhat color ?"), Message("assistant", "blue"),
                Message("user", "what shape ?"), Message("assistant", "circle"),
                Message("user", "thanks"), Message("assistant", "welcome")]


def tokens_and_trained(template, tokenizer, messages=CONVERSATION):
    ids, labels = encode_segments(template.render(messages), tokenizer)
    tokens = ["<image>" if i == IMAGE_TOKEN_ID else tokenizer.convert_ids_to_tokens(i) for i in ids.tolist()]
    trained = [t for t, lab in zip(tokens, labels.tolist()) if lab != IGNORE_INDEX]
    # labels equal ids wherever they are not ignored
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids.tolist(), labels.tolist()))
    return tokens, trained, labels


def test_vicuna_multi_turn_labels(word_tokenizer):
    tokens, trained, labels = tokens_and_trained(vicuna(system="be brief"), word_tokenizer)
    assert tokens == ["<s>", "be", "brief",
                      "USER", ":", "<image>", "what", "color", "?", "ASSISTANT", ":", "blue", "</s>",
                      "USER", ":", "what", "shape", "?", "ASSISTANT", ":", "circle", "</s>",
                      "USER", ":", "thanks", "ASSISTANT", ":", "welcome", "</s>"]
    assert [i for i, lab in enumerate(labels.tolist()) if lab != IGNORE_INDEX] == [11, 12, 20, 21, 27, 28]
    assert trained == ["blue", "</s>", "circle", "</s>", "welcome", "</s>"]


def test_phi2_has_no_bos(word_tokenizer):
    tokens, trained, _ = tokens_and_trained(phi2(system=""), word_tokenizer)
    assert tokens[:3] == ["USER", ":", "<image>"]
    assert trained == ["blue", "</s>", "circle", "</s>", "welcome", "</s>"]


def test_llama2_system_inside_first_instruction(word_tokenizer):
    tokens, trained, labels = tokens_and_trained(llama2(system="be brief"), word_tokenizer)
    assert tokens == ["<s>", "[", "INST", "]", "<", "<", "SYS", ">", ">", "be", "brief", "<", "<", "/", "SYS", ">", ">",
                      "<image>", "what", "color", "?", "[", "/", "INST", "]", "blue", "</s>",
                      "<s>", "[", "INST", "]", "what", "shape", "?", "[", "/", "INST", "]", "circle", "</s>",
                      "<s>", "[", "INST", "]", "thanks", "[", "/", "INST", "]", "welcome", "</s>"]
    assert trained == ["blue", "</s>", "circle", "</s>", "welcome", "</s>"]
    assert labels[:25].eq(IGNORE_INDEX).all() and labels[27:38].eq(IGNORE_INDEX).all()
    assert labels[25:27].ne(IGNORE_INDEX).all()


def test_llama2_without_system(word_tokenizer):
    tokens, _, _ = tokens_and_trained(llama2(), word_tokenizer)
    assert tokens[:5] == ["<s>", "[", "INST", "]", "<image>"]


def test_plain_template_trains_caption_only(word_tokenizer):
    messages = [Message("user", "<image>\nwhat color ?"), Message("assistant", "blue circle")]
    tokens, trained, _ = tokens_and_trained(PlainTemplate(separator=""), word_tokenizer, messages)
    # as LLaVA-1.5's preprocess_plain and TinyLLaVA_Factory's pretrain template: no EOS after the caption
    assert tokens == ["<s>", "<image>", "blue", "circle"]
    assert trained == ["blue", "circle"]
    tokens, trained, _ = tokens_and_trained(PlainTemplate(separator="", eos=True), word_tokenizer, messages)
    assert tokens == ["<s>", "<image>", "blue", "circle", "</s>"] and trained == ["blue", "circle", "</s>"]
    # an LLM without BOS (Qwen2) pretrains without one; the caption prompt is BOS (if any) + image
    tokens, trained, _ = tokens_and_trained(PlainTemplate(separator="", bos=False), word_tokenizer, messages)
    assert tokens == ["<image>", "blue", "circle"] and trained == ["blue", "circle"]
    prompt = PlainTemplate().render(messages[:1], add_generation_prompt=True)
    ids, labels = encode_segments(prompt, word_tokenizer)
    assert ids.tolist() == [word_tokenizer.bos_token_id, IMAGE_TOKEN_ID] and labels.eq(IGNORE_INDEX).all()


def test_generation_prompt_ends_before_answer(word_tokenizer):
    segs = vicuna(system="").render([Message("user", "what color ?")], add_generation_prompt=True)
    ids, labels = encode_segments(segs, word_tokenizer)
    assert word_tokenizer.convert_ids_to_tokens(ids.tolist()) == ["<s>", "USER", ":", "what", "color", "?",
                                                                  "ASSISTANT", ":"]
    assert labels.eq(IGNORE_INDEX).all()


@pytest.mark.parametrize("messages", [
    [Message("assistant", "blue")],
    [Message("user", "a"), Message("user", "b")],
])
def test_bad_turn_order_is_an_error(word_tokenizer, messages):
    with pytest.raises(ValueError, match="turn"):
        vicuna().render(messages)


def test_image_in_answer_is_a_sample_error(word_tokenizer):
    with pytest.raises(SampleError) as e:
        encode_segments(vicuna(system="").render([Message("user", "what"), Message("assistant", "<image>")]),
                        word_tokenizer)
    assert e.value.reason == "image_in_answer"


def test_missing_bos_token_is_a_clear_error():
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(ValueError, match="BOS"):
        encode_segments(ChatTemplate(user_format="{content}").render([Message("user", "a")]), tokenizer)
