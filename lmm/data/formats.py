"""The LLaVA annotation schema (LLaVA-1.5, ShareGPT4V): reading files and validating records.

A record: {"id": ..., "image": "coco/train2017/x.jpg" (or a list, or absent for text-only),
           "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}
"""
from __future__ import annotations

from lmm.data.templates import IMAGE_PLACEHOLDER, Message, check_alternation
from lmm.data.tokenize import SampleError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def image_paths(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def to_messages(record: dict) -> list[Message]:
    """Validated chat messages of a record; raises `SampleError` with the reason it is unusable."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError("no_conversations", f"record {record.get('id')!r}")
    messages = []
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None:
            raise SampleError("unknown_role", f"record {record.get('id')!r} turn {i}: {turn!r:.80}")
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise SampleError("empty_turn", f"record {record.get('id')!r} turn {i}")
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
