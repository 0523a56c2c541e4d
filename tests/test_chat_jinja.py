"""lmm's chat templates as Jinja (lmm.data.chat_jinja): transformers' `apply_chat_template` renders
the string lmm's template renders and, tokenised as a processor does, gives lmm's token ids; on
tokenizers that behave like the real families' (byte-level BPE, SentencePiece/Metaspace)."""
import pytest

from lmm.data import templates
from lmm.data.chat_jinja import chat_template_jinja
from lmm.data.templates import Message
from lmm.data.tokenize import encode_segments, render_text

CASES = [  # (template factory, tokenizer family)
    ("vicuna", "llama"), ("vicuna", "llama_metaspace"), ("vicuna", "gpt2"), ("phi2", "gpt2"),
    ("stablelm2", "gpt2"), ("qwen2", "qwen2"), ("gemma", "gemma"), ("llama2", "llama"),
    ("chatml", "qwen2"), ("gemma_turns", "gemma"),
]
CONVERSATIONS = [
    [Message("user", "what color is the shape?")],
    [Message("user", "what color is the shape?"), Message("assistant", "blue"),
     Message("user", "is there a circle?"), Message("assistant", "no"), Message("user", "  and a square?  ")],
]


def as_hf(messages, system=None):
    out = [{"role": "system", "content": system}] if system is not None else []
    return out + [{"role": m.role, "content": m.content} for m in messages]


def adds_bos(tok) -> bool:
    ids = tok("a")["input_ids"]
    return tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]


@pytest.mark.parametrize("factory, family", CASES)
@pytest.mark.parametrize("turns", [0, 1])
@pytest.mark.parametrize("system", [None, "Answer briefly."])
def test_jinja_renders_what_the_template_renders(family_tokenizer, factory, family, turns, system):
    tok = family_tokenizer(family)
    template = getattr(templates, factory)()
    if system is not None:
        template.system = system
    messages = CONVERSATIONS[turns]
    text, _, bos = render_text(template.render(messages, add_generation_prompt=True), tok)
    jinja = chat_template_jinja(getattr(templates, factory)(), adds_bos(tok))
    got = tok.apply_chat_template(as_hf(messages, system), chat_template=jinja, tokenize=False)
    expected = (tok.bos_token if bos and not adds_bos(tok) else "") + text
    assert got == expected
    # tokenised as processor(text=...) does it: lmm's ids
    ids, _ = encode_segments(template.render(messages, add_generation_prompt=True), tok)
    assert tok(got, add_special_tokens=True)["input_ids"] == ids.tolist()


@pytest.mark.parametrize("factory, family", [("vicuna", "llama"), ("chatml", "qwen2"), ("gemma_turns", "gemma")])
def test_image_parts_become_the_placeholder_before_the_text(family_tokenizer, factory, family):
    tok = family_tokenizer(family)
    template = getattr(templates, factory)()
    jinja = chat_template_jinja(template, adds_bos(tok))
    hf = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, {"type": "image"}]}]
    got = tok.apply_chat_template(hf, chat_template=jinja, tokenize=False)
    text, _, _ = render_text(template.render([Message("user", "<image>\nwhat is it?")]), tok)
    assert got.endswith(text) and got.count("<image>\n") == 1


def test_the_plain_caption_format_has_no_chat_form():
    with pytest.raises(ValueError, match="no Jinja form for PlainTemplate"):
        chat_template_jinja(templates.PlainTemplate(), False)
