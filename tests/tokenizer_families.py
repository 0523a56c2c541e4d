"""Local tokenizers that behave like the real LLM families' (no hub access).

Each is trained with `tokenizers` on a small corpus and then given the family's own pipeline, so
that tokenisation differences a tiny word-level vocabulary hides show up in tests:

- `gpt2`: byte-level BPE as Phi-2 / StableLM-2 (`<|endoftext|>` is BOS, EOS and UNK, never added by
  the tokenizer); its merges make `" USER"` and `" ASSISTANT"` single tokens, as real vocabularies do.
- `qwen2`: byte-level BPE behind Qwen2's split pattern (digits one by one, no BOS token at all),
  EOS `<|endoftext|>`, and the ChatML markers as special tokens.
- `llama`: SentencePiece-style BPE as Llama-2 / TinyLlama (the legacy pipeline: a `▁` prepended to
  every text section, spaces as `▁`, byte fallback `<0x..>` for characters outside the vocabulary,
  `<s>` added in front).
- `llama_metaspace`: the newer Llama pipeline (a Metaspace pre-tokenizer that prepends `▁` only at
  the start of the text, not after special tokens).
- `gemma`: SentencePiece-style without the prepended space, `<bos>` added in front, `<eos>` and the
  turn markers `<start_of_turn>` / `<end_of_turn>`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

FAMILIES = ("gpt2", "qwen2", "llama", "llama_metaspace", "gemma")

WORDS = ("what is the color of shape image picture there a an in on red blue green circle square triangle rectangle "  # noqa: SIM905 (a word list is easier to edit as one string)
         "describe detail left right top bottom many how does do yes no answer question with single word phrase "
         "photo person man woman dog cat car street table chair people standing sitting holding number two three "
         "A chat between curious user and artificial intelligence assistant gives helpful detailed polite answers "
         "to the user's questions USER ASSISTANT system model Answer The this that they it is are was were").split()


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Sentences with the chat templates' markers in their usual places, so the BPE learns them."""
    rng = random.Random(seed)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    lines = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "?"
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) + "."
        lines.append(f"{system} USER: {q} ASSISTANT: {a}" if i % 2 else f"USER: {q} ASSISTANT: {a} USER: {a}")
        lines.append(f"[INST] {q} [/INST] {a} {rng.randint(0, 2000)}, {rng.random():.3f}")
    return lines


def _bpe_vocab(tok: Tokenizer) -> tuple[dict, list]:
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _byte_level(texts, special: list[str], pattern: str | None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# Qwen2's split: contractions, letters with at most one leading non-letter, single digits,
# punctuation runs, newlines, other whitespace.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def _sentencepiece(texts, special: list[str], bos: str, legacy_prefix: bool, metaspace: bool) -> Tokenizer:
    """BPE over `▁`-joined words with byte fallback, trained on words split from punctuation and
    digits (merges never cross those boundaries, as SentencePiece's with split_by_unicode_script and
    split_digits), then given the family's normaliser / pre-tokenizer. Newlines and non-ASCII
    characters stay out of the vocabulary: they go through byte fallback, as in Llama's."""
    train = Tokenizer(models.BPE())
    train.normalizer = normalizers.Replace(" ", "▁")
    train.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Punctuation(behavior="isolated"), pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False)
    train.train_from_iterator([t.replace("\n", " ") for t in texts], trainer=trainer)
    learnt, merges = _bpe_vocab(train)
    vocab = {t: i for i, t in enumerate(special)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(learnt, key=learnt.get):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        steps = [normalizers.Prepend("▁")] if legacy_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     *[decoders.Strip(" ", 1, 0)] * (legacy_prefix or metaspace)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, vocab[bos])])
    return tok


def build(family: str, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train the family's tokenizer, save it as a transformers folder and load it back with AutoTokenizer."""
    texts = corpus()
    if family == "gpt2":
        tok = _byte_level(texts, ["<|endoftext|>"], None)
        names = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    elif family == "qwen2":
        tok = _byte_level(texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN2_SPLIT)
        names = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    elif family in ("llama", "llama_metaspace"):
        tok = _sentencepiece(texts, ["<unk>", "<s>", "</s>"], "<s>", True, family == "llama_metaspace")
        names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif family == "gemma":
        tok = _sentencepiece(texts, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                             "<bos>", False, False)
        names = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                 "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    else:
        raise ValueError(f"unknown tokenizer family {family!r}; valid: {list(FAMILIES)}")
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))
