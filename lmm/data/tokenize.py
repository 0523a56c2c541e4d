"""Segments -> `input_ids` + `labels`, tokenised the way LLaVA-1.5 and TinyLLaVA_Factory do it.

The references render a conversation to ONE string and tokenise it whole, split only at `<image>`
(`tokenizer_image_token`): every chunk goes through the tokenizer with its special tokens, a
leading BOS is kept from the first chunk only, and one sentinel id stands between chunks. We do
the same, so `input_ids` are the reference's token for token (tokenising template pieces apart
would change the ids at every piece boundary, e.g. `'Ġ','USER'` instead of `'ĠUSER'`).

Labels come from character spans, not from the references' length arithmetic (which is off by one
on some tokenizers and then masks the whole sample): the template marks which characters are
trained, and the fast tokenizer's character-to-token map says which tokens hold them. The rule for
a token that straddles a trained/untrained boundary: a token is trained when it holds at least one
trained character (so `' a'` = the template's space + the answer's first letter is trained, as in
the references; so is a merge of an answer's last letter with what follows). Tokens the tokenizer
adds by itself (BOS, an appended EOS) hold no character and are never trained.

Every image is a single `IMAGE_TOKEN_ID` (-200, LLaVA's convention) in `input_ids`; the model
replaces it with that image's visual tokens, so a pretrained LLM's embeddings never have to grow.
"""
from __future__ import annotations

import torch

from lmm.data.templates import IMAGE_PLACEHOLDER, Segment

IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100


class SampleError(ValueError):
    """A record that cannot become a training sample; `reason` is a short key used for skip counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def special_tokens(tokenizer) -> dict[str, tuple[str | None, int | None]]:
    """{"bos": (text, id), "eos": (text, id)}, read once per sample (a transformers tokenizer's
    attribute lookups are slow enough to show in the length pass)."""
    return {name: (getattr(tokenizer, f"{name}_token"), getattr(tokenizer, f"{name}_token_id")) for name in ("bos", "eos")}


def _special(specials: dict, name: str) -> tuple[str, int]:
    text, tid = specials[name]
    if tid is None:
        raise ValueError(f"the template asks for a {name.upper()} token but the tokenizer has none; "
                         f"set the template's `bos: none` / `answer_end: none` or use a tokenizer with one")
    return text, tid


def render_text(segments: list[Segment], tokenizer, specials: dict | None = None
                ) -> tuple[str, list[tuple[int, int]], bool]:
    """The prompt string the references tokenise, the character spans of its trained parts (sorted,
    disjoint) and whether the sample opens with a BOS. Special tokens inside the string are written
    as their text (`</s>`, `<|endoftext|>`), as the references' templates do; the tokenizer maps
    them back to their ids. A BOS at the very start is left to `encode_text` (the tokenizer adds
    it by itself, or we do)."""
    specials = specials or special_tokens(tokenizer)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, opens_with_bos = 0, False
    for seg in segments:
        if seg.special == "bos" and pos == 0 and not opens_with_bos:
            _special(specials, "bos")
            opens_with_bos = True
            continue
        text = _special(specials, seg.special)[0] if seg.special else seg.text
        if seg.trained and text:
            if IMAGE_PLACEHOLDER in text:
                raise SampleError("image_in_answer", "an <image> placeholder inside an assistant turn")
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        parts.append(text)
        pos += len(text)
    return "".join(parts), spans, opens_with_bos


def _token_at(encoding, pos: int, length: int, text_end: int) -> int:
    """Index of the first token of a chunk's encoding holding a character at or after `pos`
    (`text_end` if none). A character no token holds (one a normaliser removed) passes to the next."""
    while pos < length:
        t = encoding.char_to_token(pos)
        if t is not None:
            return t
        pos += 1
    return text_end


def _encode_chunks(tokenizer, chunks: list[str]) -> list:
    """The Rust encodings of `tokenizer(chunks, add_special_tokens=True)`. Called on the backend
    directly, one chunk at a time, when no truncation or padding is set on it (what `tokenizer(...)`
    then does too): the transformers wrapper's conversion costs a quarter of the length pass, and a
    batch call of one or two chunks pays for the thread pool."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"lmm needs a fast (Rust `tokenizers`) tokenizer for exact labels; "
                         f"{type(tokenizer).__name__} has no character-to-token map")
    if backend.truncation is None and backend.padding is None:
        return [backend.encode(chunk, add_special_tokens=True) for chunk in chunks]
    return tokenizer(chunks, add_special_tokens=True).encodings


def encode_text(text: str, spans: list[tuple[int, int]], bos: bool, tokenizer, specials: dict | None = None
                ) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a rendered string: chunks between images tokenised in one batch call
    with the tokenizer's own special tokens, assembled as `tokenizer_image_token` does. `bos`: the
    template wants one BOS first (added when the tokenizer does not add it; removed when it does
    and the template wants none).

    A trained span [s, e) trains the run of tokens from the one holding character s to the one
    holding character e-1 (a token straddling either edge is inside the run). The fast tokenizer's
    char-to-token map gives both ends, so no per-token work is done in Python (the length pass
    encodes every record)."""
    chunks = text.split(IMAGE_PLACEHOLDER)
    encodings = _encode_chunks(tokenizer, chunks)
    all_ids = [e.ids for e in encodings]
    specials = specials or special_tokens(tokenizer)
    bos_id = specials["bos"][1]
    first = all_ids[0]
    lead = 1 if first and bos_id is not None and first[0] == bos_id else 0  # the reference's `offset`
    ids: list[int] = []
    labels: list[int] = []
    base, k_span = 0, 0
    for k, (chunk_ids, encoding) in enumerate(zip(all_ids, encodings)):
        if k:
            ids.append(IMAGE_TOKEN_ID)
            labels.append(IGNORE_INDEX)
        text_end = len(chunk_ids)
        while text_end > lead and encoding.token_to_sequence(text_end - 1) is None:
            text_end -= 1  # a token the tokenizer appends by itself (add_eos_token): kept, never trained
        length = len(chunks[k])
        chunk_labels = [IGNORE_INDEX] * (len(chunk_ids) - lead)
        while k_span < len(spans) and spans[k_span][1] <= base + length:  # spans hold no image: one chunk each
            s, e = spans[k_span][0] - base, spans[k_span][1] - base
            i = _token_at(encoding, s, length, text_end)
            j = _token_at(encoding, e, length, text_end)
            if j < text_end and encoding.char_to_token(e - 1) == j:
                j += 1  # the token holding the span's last character also holds the next one
            chunk_labels[i - lead:j - lead] = chunk_ids[i:j]
            k_span += 1
        ids.extend(chunk_ids[lead:])
        labels.extend(chunk_labels)
        base += length + len(IMAGE_PLACEHOLDER)
    if bos:  # the tokenizer's own BOS (stripped from every chunk above), or ours where it adds none
        ids.insert(0, _special(specials, "bos")[1])
        labels.insert(0, IGNORE_INDEX)
    return ids, labels


def encode_segments(segments: list[Segment], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (input_ids, labels) as 1-D long tensors; untrained positions and images are -100."""
    specials = special_tokens(tokenizer)
    text, spans, bos = render_text(segments, tokenizer, specials)
    ids, labels = encode_text(text, spans, bos, tokenizer, specials)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
