"""Segments -> `input_ids` + `labels`, tokenised the way LLaVA-1.5 and TinyLLaVA_Factory do it.

The references render a conversation to ONE string and tokenise it whole, split only at `<image>`
(`tokenizer_image_token`): every chunk goes through the tokenizer with its special tokens, a
leading BOS is kept from the first chunk only, and one sentinel id stands between chunks. We do
the same, so `input_ids` are the reference's token for token (tokenising template pieces apart
would change the ids at every piece boundary, e.g. `'Ġ','USER'` instead of `'ĠUSER'`).

Labels come from character spans, not from the references' length arithmetic (which is off by one
on some tokenizers and then masks the whole sample): the template marks which characters are
trained, and the fast tokenizer's offset mapping says which characters each token covers.
The rule for a token that straddles a trained/untrained boundary: a token is trained when it
covers at least one trained character (so `' a'` = template space + the answer's first letter is
trained, as in the references). A token that covers no character (the `▁` a SentencePiece
normaliser prepends to a chunk) is trained when the character it stands before is. Tokens the
tokenizer adds by itself (BOS) are never trained.

Every image is a single `IMAGE_TOKEN_ID` (-200, LLaVA's convention) in `input_ids`; the model
replaces it with that image's visual tokens, so a pretrained LLM's embeddings never have to grow.
"""
from __future__ import annotations

import bisect

import torch

from lmm.data.templates import IMAGE_PLACEHOLDER, Segment

IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100


class SampleError(ValueError):
    """A record that cannot become a training sample; `reason` is a short key used for skip counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _special(tokenizer, name: str) -> tuple[str, int]:
    tid = getattr(tokenizer, f"{name}_token_id")
    if tid is None:
        raise ValueError(f"the template asks for a {name.upper()} token but the tokenizer has none; "
                         f"set the template's `bos: none` / `answer_end: none` or use a tokenizer with one")
    return getattr(tokenizer, f"{name}_token"), tid


def render_text(segments: list[Segment], tokenizer) -> tuple[str, list[tuple[int, int]], bool]:
    """The prompt string the references tokenise, the character spans of its trained parts (sorted,
    disjoint) and whether the sample opens with a BOS. Special tokens inside the string are written
    as their text (`</s>`, `<|endoftext|>`), as the references' templates do; the tokenizer maps
    them back to their ids. A BOS at the very start is left to `encode_text` (the tokenizer adds
    it by itself, or we do)."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, opens_with_bos = 0, False
    for seg in segments:
        if seg.special == "bos" and pos == 0 and not opens_with_bos:
            _special(tokenizer, "bos")
            opens_with_bos = True
            continue
        text = _special(tokenizer, seg.special)[0] if seg.special else seg.text
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


def _trained(start: int, end: int, span_starts: list[int], span_ends: list[int]) -> bool:
    k = bisect.bisect_right(span_ends, start)  # the first span ending after `start`
    if k == len(span_ends):
        return False
    return span_starts[k] < end if end > start else span_starts[k] <= start


def encode_text(text: str, spans: list[tuple[int, int]], bos: bool, tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a rendered string: chunks between images tokenised in one batch call
    with the tokenizer's own special tokens, assembled as `tokenizer_image_token` does. `bos`: the
    template wants one BOS first (added when the tokenizer does not add it; removed when it does
    and the template wants none)."""
    chunks = text.split(IMAGE_PLACEHOLDER)
    try:
        enc = tokenizer(chunks, add_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError as e:  # a Python ("slow") tokenizer has no offset mapping
        raise ValueError(f"lmm needs a fast (Rust `tokenizers`) tokenizer for exact labels; "
                         f"{type(tokenizer).__name__} has no offset mapping") from e
    bos_id = tokenizer.bos_token_id
    first = enc["input_ids"][0]
    lead = 1 if first and bos_id is not None and first[0] == bos_id else 0  # the reference's `offset`
    span_starts, span_ends = [s for s, _ in spans], [e for _, e in spans]
    ids: list[int] = []
    labels: list[int] = []
    base = 0
    for k, (chunk_ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        if k:
            ids.append(IMAGE_TOKEN_ID)
            labels.append(IGNORE_INDEX)
        added = enc.sequence_ids(k)
        for j in range(lead, len(chunk_ids)):
            ids.append(chunk_ids[j])
            s, e = offsets[j]
            train = added[j] is not None and _trained(base + s, base + e, span_starts, span_ends)
            labels.append(chunk_ids[j] if train else IGNORE_INDEX)
        base += len(chunks[k]) + len(IMAGE_PLACEHOLDER)
    if bos:  # the tokenizer's own BOS (stripped from every chunk above), or ours where it adds none
        ids.insert(0, _special(tokenizer, "bos")[1])
        labels.insert(0, IGNORE_INDEX)
    return ids, labels


def encode_segments(segments: list[Segment], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (input_ids, labels) as 1-D long tensors; untrained positions and images are -100."""
    text, spans, bos = render_text(segments, tokenizer)
    ids, labels = encode_text(text, spans, bos, tokenizer)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
