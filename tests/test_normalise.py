"""Record normalisation as the references do it (placeholder to the front, a leading assistant turn
dropped), its switches, and its accounting in the length pass; the label rule at token boundaries."""
import json

import pytest

from lmm.data import reference as tf
from lmm.data import templates
from lmm.data.dataset import SampleProcessor
from lmm.data.formats import image_first, to_messages
from lmm.data.lengths import measure
from lmm.data.sources import JsonSource
from lmm.data.tokenize import IGNORE_INDEX, SampleError, encode_text

L = pytest.importorskip("tests.reference_llava")


def record(first: str, leading_gpt: bool = False) -> dict:
    turns = [{"from": "human", "value": first}, {"from": "gpt", "value": "blue"}]
    if leading_gpt:
        turns.insert(0, {"from": "gpt", "value": "Hi there."})
    return {"id": "r", "image": "a.png", "conversations": turns}


@pytest.mark.parametrize("text", ["What color?\n<image>", "<image>\nWhat color?", "What <image> color?",
                                  "  <image>  What color?  ", "<image>", "What color?<image>\n\n"])
def test_image_first_is_llavas_preprocess_multimodal(text):
    sources = L.train.preprocess_multimodal([[{"from": "human", "value": text}]], L.DATA_ARGS)
    assert image_first(text) == sources[0][0]["value"]
    assert image_first(text) == ("<image>\n" + text.replace("<image>", "").strip()).strip()  # TinyLLaVA_Factory


def test_placeholder_moved_and_counted():
    notes = []
    messages = to_messages(record("What color?\n<image>"), notes=notes)
    assert messages[0].content == "<image>\nWhat color?" and notes == ["image_placeholder_moved"]
    notes = []
    assert to_messages(record("<image>\nWhat color?"), notes=notes)[0].content == "<image>\nWhat color?"
    assert notes == []  # already in the references' place: nothing to count
    kept = to_messages(record("What color?\n<image>"), image_placeholder="keep", notes=notes)
    assert kept[0].content == "What color?\n<image>" and notes == []


def test_two_placeholders_in_one_turn_keep_both():
    rec = {"id": "r", "image": ["a.png", "b.png"],
           "conversations": [{"from": "human", "value": "compare <image> and <image>"}, {"from": "gpt", "value": "same"}]}
    assert to_messages(rec)[0].content == "<image>\n<image>\ncompare  and"


def test_leading_assistant_turn_dropped_as_the_references(word_tokenizer_factory):
    notes = []
    messages = to_messages(record("<image>\nWhat color?", leading_gpt=True), notes=notes)
    assert [m.role for m in messages] == ["user", "assistant"] and notes == ["leading_assistant_dropped"]
    assert tf.qa_lists(record("<image>\nWhat color?", leading_gpt=True)["conversations"]) == (
        ["<image>\nWhat color?"], ["blue"])
    with pytest.raises(SampleError) as e:
        to_messages(record("<image>\nWhat color?", leading_gpt=True), leading_assistant="skip")
    assert e.value.reason == "unanswered_turn"
    with pytest.raises(SampleError, match="single assistant turn"):
        to_messages({"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]})


def test_unknown_modes_list_the_valid_ones(word_tokenizer_factory):
    tok = word_tokenizer_factory()
    with pytest.raises(ValueError, match=r"unknown image_placeholder 'first'; valid: \['front', 'keep'\]"):
        SampleProcessor(tok, templates.vicuna(), None, 4, image_placeholder="first")
    with pytest.raises(ValueError, match=r"unknown leading_assistant 'keep'; valid: \['drop', 'skip'\]"):
        SampleProcessor(tok, templates.vicuna(), None, 4, leading_assistant="keep")


def test_length_pass_counts_what_normalisation_changed(tmp_path, word_tokenizer_factory):
    recs = [record("What color?\n<image>"), record("<image>\nWhat color?", leading_gpt=True),
            record("<image>\nWhat color?"), record("What color? <image>", leading_gpt=True),
            {"id": "bad", "conversations": []}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(recs))
    proc = SampleProcessor(word_tokenizer_factory(), templates.vicuna(system=""), None, 4)
    table = measure(JsonSource(path, tmp_path), proc)
    usable = table.status == 0
    assert usable.tolist() == [True, True, True, True, False]
    assert table.note_counts(usable) == {"image_placeholder_moved": 2, "leading_assistant_dropped": 2}
    proc_keep = SampleProcessor(word_tokenizer_factory(), templates.vicuna(system=""), None, 4,
                                image_placeholder="keep", leading_assistant="skip")
    kept = measure(JsonSource(path, tmp_path), proc_keep)
    assert kept.note_counts(kept.status == 0) == {} and (kept.status == 0).tolist() == [True, False, True, False, False]


def greedy_tokenizer(vocab: dict):
    """Greedy longest match over the whole string (no pre-tokenizer), so merges cross any boundary."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(vocab, unk_token="</s>", continuing_subword_prefix="", max_input_chars_per_word=100))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def trained_tokens(tok, text, spans):
    ids, labels = encode_text(text, spans, False, tok)
    return [(t, lab != IGNORE_INDEX) for t, lab in zip(tok.convert_ids_to_tokens(ids), labels)]


def test_a_token_straddling_either_edge_of_a_trained_span_is_trained():
    """The rule: a token holding at least one trained character is trained."""
    tok = greedy_tokenizer({"<s>": 0, "</s>": 1, "A": 2, ":b": 3, "lue": 4, ":": 5, "b": 6, "e!": 7, "blu": 8, "!": 9})
    # ':b' holds the template's colon and the answer's first letter
    assert trained_tokens(tok, "A:blue", [(2, 6)]) == [("A", False), (":b", True), ("lue", True)]
    # 'e!' holds the answer's last letter and the untrained '!' after it
    assert trained_tokens(tok, "blue!", [(0, 4)]) == [("blu", True), ("e!", True)]
    # a token wholly outside is not, even when it touches the span
    assert trained_tokens(tok, "A:b!", [(2, 3)]) == [("A", False), (":b", True), ("!", False)]
    assert trained_tokens(tok, "A:b!", [(3, 4)]) == [("A", False), (":b", False), ("!", True)]


def test_characters_split_into_several_byte_tokens_are_trained_whole(family_tokenizer):
    """Llama's byte fallback: an emoji at either edge of an answer is 4 tokens, all trained."""
    tok = family_tokenizer("llama")
    text = "USER: hi ASSISTANT: 😀 ok 😀</s>"
    start = text.index(" 😀")
    pairs = trained_tokens(tok, text, [(start, len(text))])
    emoji = ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    first = [t for t, _ in pairs].index("▁", [t for t, _ in pairs].index("▁ASSISTANT"))
    assert pairs[first - 1] == (":", False) and all(not on for _, on in pairs[:first])
    assert [t for t, _ in pairs[first:first + 5]] == ["▁", *emoji] and all(on for _, on in pairs[first:])
    assert [t for t, _ in pairs[-5:]] == [*emoji, "</s>"]


@pytest.fixture
def word_tokenizer_factory():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "USER", "ASSISTANT", ":", "<", ">", "image", "What", "color", "?", "blue", "Hi",
             "there", "."]

    def make():
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")

    return make


def test_slow_tokenizer_is_a_clear_error():
    class Slow:  # a Python tokenizer: no Rust backend, no character-to-token map
        bos_token_id = eos_token_id = bos_token = eos_token = None

    with pytest.raises(ValueError, match="fast"):
        encode_text("a", [(0, 1)], False, Slow())


def test_a_backend_left_truncating_is_not_used_directly(family_tokenizer):
    """LLaVA's own preprocess calls the tokenizer with truncation, which stays set on the backend;
    the encoding must still be the full one."""
    tok = family_tokenizer("llama")
    text = "USER: " + "red blue " * 40 + "ASSISTANT: green</s>"
    full, _ = encode_text(text, [(len(text) - 10, len(text))], True, tok)
    tok("x", truncation=True, max_length=8)
    try:
        assert encode_text(text, [(len(text) - 10, len(text))], True, tok)[0] == full
        assert len(full) > 80
    finally:
        tok.backend_tokenizer.no_truncation()
