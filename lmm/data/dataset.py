"""Records -> model-ready samples. A record that cannot be used becomes a `Skip` with its reason,
which is counted and reported by `lmm.train.callbacks.SkipMonitor` (which stops the run past a limit).

Processing is split in two: `SampleProcessor.encode` does the text (cheap; the batching plan runs it
over the whole data set once to learn every sample's length) and `__call__` adds the images.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from lmm.data.formats import (
    IMAGE_PLACEHOLDER_MODES,
    LEADING_ASSISTANT_MODES,
    NOTES,
    check_mode,
    image_paths,
    to_messages,
)
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, SampleError, encode_segments

OVER_LENGTH = ("drop", "truncate")
# Every reason a record can be skipped for; counts are summed over ranks as one vector in this order.
SKIP_REASONS = ("invalid_json", "not_a_record", "no_conversations", "unknown_role", "empty_turn", "unanswered_turn",
                "turn_order", "template_mismatch", "image_placeholder_mismatch", "image_in_answer", "no_trained_tokens", "too_long",
                "image_missing", "image_corrupt", "image_truncated")


@dataclass(frozen=True)
class Skip:
    reason: str
    detail: str


@dataclass
class Encoded:
    input_ids: torch.Tensor
    labels: torch.Tensor
    images: list[str]  # image paths in placeholder order (those past a truncation are dropped)
    length: int  # sequence length the model sees: text tokens + visual tokens
    truncated: bool = False
    notes: int = 0  # bit k set: normalisation NOTES[k] changed the record


def expanded_length(input_ids: torch.Tensor, num_visual_tokens: int) -> int:
    n_images = int((input_ids == IMAGE_TOKEN_ID).sum())
    return len(input_ids) + n_images * (num_visual_tokens - 1)


def truncate(input_ids: torch.Tensor, labels: torch.Tensor, num_visual_tokens: int, max_length: int):
    """The longest prefix whose expanded length fits in `max_length`, never cutting through an
    image's visual tokens: an image that does not fit whole is dropped with everything after it."""
    width = torch.where(input_ids == IMAGE_TOKEN_ID, num_visual_tokens, 1)
    keep = int((width.cumsum(0) <= max_length).sum())  # cumsum is increasing: the fitting tokens are a prefix
    return input_ids[:keep], labels[:keep]


@dataclass
class SampleProcessor:
    """Everything needed to turn a LLaVA record into tensors; the model supplies its parts.
    `over_length`: what to do with a sample longer than `max_length` (visual tokens included):
    "drop" it (a counted skip) or "truncate" it at the end without cutting into an image.
    `image_placeholder` / `leading_assistant`: the record normalisation of `lmm.data.formats`
    (defaults: the references')."""

    tokenizer: object
    template: object
    image_transform: object
    num_visual_tokens: int
    max_length: int = 2048
    over_length: str = "drop"
    image_placeholder: str = "front"
    leading_assistant: str = "drop"

    def __post_init__(self):
        check_mode("over_length", self.over_length, OVER_LENGTH)
        check_mode("image_placeholder", self.image_placeholder, IMAGE_PLACEHOLDER_MODES)
        check_mode("leading_assistant", self.leading_assistant, LEADING_ASSISTANT_MODES)
        if self.max_length < self.num_visual_tokens + 2:
            raise ValueError(f"max_length {self.max_length} cannot hold one image ({self.num_visual_tokens} visual "
                             f"tokens) and an answer")

    def encode(self, record: dict) -> Encoded:
        """Text only: token ids, labels and the image paths; raises `SampleError` with the reason."""
        notes: list[str] = []
        messages = to_messages(record, self.image_placeholder, self.leading_assistant, notes)
        flags = sum(1 << NOTES.index(n) for n in notes)
        try:
            segments = self.template.render(messages)
        except ValueError as e:  # e.g. a multi-turn record given to the one-caption pretrain format
            raise SampleError("template_mismatch", f"record {record.get('id')!r}: {e}") from e
        input_ids, labels = encode_segments(segments, self.tokenizer)
        if not (labels != IGNORE_INDEX).any():
            raise SampleError("no_trained_tokens", f"record {record.get('id')!r}")
        images = image_paths(record)
        length = expanded_length(input_ids, self.num_visual_tokens)
        if length <= self.max_length:
            return Encoded(input_ids, labels, images, length, notes=flags)
        if self.over_length == "drop":
            raise SampleError("too_long", f"record {record.get('id')!r}: {length} > max_length {self.max_length}")
        input_ids, labels = truncate(input_ids, labels, self.num_visual_tokens, self.max_length)
        if not (labels != IGNORE_INDEX).any():
            raise SampleError("too_long", f"record {record.get('id')!r}: {length} tokens, and no trained token "
                                          f"is left within max_length {self.max_length}")
        n_images = int((input_ids == IMAGE_TOKEN_ID).sum())
        return Encoded(input_ids, labels, images[:n_images], expanded_length(input_ids, self.num_visual_tokens), True,
                       flags)

    def load_image(self, open_image: Callable, path: str) -> torch.Tensor:
        try:
            source = open_image(path)
        except FileNotFoundError as e:
            raise SampleError("image_missing", str(e)) from e
        try:
            with Image.open(source) as im:
                return self.image_transform.pixels(im)  # uint8: the model normalises on its device
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            reason = "image_truncated" if "truncated" in str(e).lower() else "image_corrupt"
            raise SampleError(reason, f"{path}: {e}") from e

    def __call__(self, record: dict, open_image: Callable) -> dict:
        """`open_image(path)` gives what PIL can open for one of the record's image paths."""
        enc = self.encode(record)
        pixels = [self.load_image(open_image, p) for p in enc.images]
        return {"id": record.get("id"), "input_ids": enc.input_ids, "labels": enc.labels, "length": enc.length,
                "truncated": enc.truncated,
                "pixel_values": pixels[0][None] if len(pixels) == 1 else torch.stack(pixels) if pixels else None}


def process(source, processor: SampleProcessor, index: int, strict: bool = False) -> dict | Skip:
    """Record `index` of `source` as a sample, or a `Skip` (strict: the error is raised)."""
    try:
        return processor(source.read(index), lambda path: source.open_image(index, path))
    except SampleError as e:
        if strict:
            raise SampleError(e.reason, f"{e} (data.loader.strict is on: the first bad record stops the run)") from e
        return Skip(e.reason, str(e))
