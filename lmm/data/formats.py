"""The LLaVA annotation schema (LLaVA-1.5, ShareGPT4V): reading files and validating records.

A record: {"id": ..., "image": "coco/train2017/x.jpg" (or a list, or absent for text-only),
           "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}
"""
from __future__ import annotations

from lmm.data.templates import IMAGE_PLACEHOLDER, Message, check_alternation
from lmm.data.tokenize import SampleError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# How a record's text is normalised before the template sees it. The defaults are what LLaVA-1.5
# (`preprocess_multimodal`, `preprocess_v1`) and TinyLLaVA_Factory (`Template._prompt`,
# `_get_list_from_message`) do; the other choices keep the record as written.
IMAGE_PLACEHOLDER_MODES = ("front", "keep")  # front: "<image>\n" + the turn's text without it, stripped
LEADING_ASSISTANT_MODES = ("drop", "skip")   # drop: a conversation opening with an assistant turn loses that turn
# What normalisation changed in a record (counted by the length pass and logged, never silent).
NOTES = ("leading_assistant_dropped", "image_placeholder_moved")


def image_first(content: str) -> str:
    """The references' placement: every placeholder of the turn moved to its front, each followed by
    a newline, and the rest of the text stripped (for one image exactly LLaVA's
    `("<image>\n" + text.replace("<image>", "").strip()).strip()`)."""
    n = content.count(IMAGE_PLACEHOLDER)
    return ((IMAGE_PLACEHOLDER + "\n") * n + content.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


def check_mode(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")
    return value


def image_paths(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def to_messages(record: dict, image_placeholder: str = "front", leading_assistant: str = "drop",
                notes: list[str] | None = None) -> list[Message]:
    """Validated, normalised chat messages of a record; raises `SampleError` with the reason it is
    unusable. What normalisation changed is appended to `notes` (names from `NOTES`)."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError("no_conversations", f"record {record.get('id')!r}")
    if leading_assistant == "drop" and isinstance(turns[0], dict) and ROLES.get(turns[0].get("from")) == "assistant":
        turns = turns[1:]
        if notes is not None:
            notes.append("leading_assistant_dropped")
        if not turns:
            raise SampleError("no_conversations", f"record {record.get('id')!r} holds a single assistant turn")
    messages = []
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None:
            raise SampleError("unknown_role", f"record {record.get('id')!r} turn {i}: {turn!r:.80}")
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise SampleError("empty_turn", f"record {record.get('id')!r} turn {i}")
        if role == "user" and image_placeholder == "front" and IMAGE_PLACEHOLDER in value:
            moved = image_first(value)
            if moved != value and notes is not None and "image_placeholder_moved" not in notes:
                notes.append("image_placeholder_moved")
            value = moved
        messages.append(Message(role, value))
    if len(messages) % 2:
        raise SampleError("unanswered_turn", f"record {record.get('id')!r} ends with a user turn")
    try:
        check_alternation(messages)
    except ValueError as e:
        raise SampleError("turn_order", f"record {record.get('id')!r}: {e}") from e
    n_placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    n_images = len(image_paths(record))
    if n_placeholders != n_images:
        raise SampleError("image_placeholder_mismatch",
                          f"record {record.get('id')!r}: {n_images} image(s) but {n_placeholders} <image> placeholder(s)")
    return messages
