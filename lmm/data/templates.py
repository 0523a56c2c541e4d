"""Prompt templates: turn a conversation into segments that know whether they are trained.

A template never tokenises; it yields `Segment`s (text, or the BOS/EOS token by name) each marked
`trained` or not. `lmm.data.tokenize.encode_segments` turns them into `input_ids` + `labels`, so
label positions are exact by construction (no re-tokenising the whole string and guessing offsets).

The chat template belongs to the LLM config (`llm.template`); the plain template is what the
pretrain stage uses for every LLM (image followed by the caption, as LLaVA's `plain` version).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from lmm.model.spec import spec_target

IMAGE_PLACEHOLDER = "<image>"

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Segment:
    text: str = ""
    special: Literal["bos", "eos", None] = None  # a special token of the tokenizer, by name
    trained: bool = False


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


def check_alternation(messages: list[Message]) -> None:
    """Conversations alternate user/assistant, starting with the user."""
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            raise ValueError(f"turn {i} is from {m.role!r}, expected {want!r} (turns must alternate, user first)")


@dataclass
class ChatTemplate:
    """A multi-turn chat format described by strings, so a new LLM's format is a config edit.

    Rendered conversation (bos="once"):
        [BOS] system_format(system) first_user_format(q1) answer_format(a1)[EOS] user_format(q2) ...
    Only `answer_format(answer)` and the end-of-answer token are trained.
    """

    user_format: str
    answer_format: str = " {content}"
    system: str = ""
    system_format: str = "{system} "
    first_user_format: str | None = None  # used for the first turn when a system prompt is rendered
    answer_end: Literal["eos", "none"] = "eos"
    bos: Literal["once", "each_turn", "none"] = "once"

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        check_alternation(messages)
        if add_generation_prompt and messages and messages[-1].role != "user":
            raise ValueError("a generation prompt needs the conversation to end with a user turn")
        segs: list[Segment] = []
        if self.bos in ("once", "each_turn"):
            segs.append(Segment(special="bos"))
        if self.system:
            segs.append(Segment(self.system_format.format(system=self.system)))
        for i, m in enumerate(messages):
            if m.role == "user":
                if i > 0 and self.bos == "each_turn":
                    segs.append(Segment(special="bos"))
                fmt = self.first_user_format if (i == 0 and self.system and self.first_user_format) else self.user_format
                segs.append(Segment(fmt.format(content=m.content)))
            else:
                segs.append(Segment(self.answer_format.format(content=m.content), trained=True))
                if self.answer_end == "eos":
                    segs.append(Segment(special="eos", trained=True))
        return segs

    def spec(self) -> dict:
        return {"_target_": spec_target(self), **asdict(self)}


@dataclass
class PlainTemplate:
    """LLaVA's pretrain format: BOS, the image(s), then the caption (trained) and EOS.

    The user text apart from its image placeholders is dropped, as in LLaVA-1.5's `plain` prompt:
    the stage learns to align visual tokens with the caption, not to follow instructions.
    """

    separator: str = "\n"

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        check_alternation(messages)
        if add_generation_prompt:
            raise ValueError("the plain (pretrain) template has no generation prompt; use a chat template")
        if len(messages) != 2:
            raise ValueError(f"a plain (caption) sample has exactly one user and one assistant turn, got {len(messages)} turns")
        n_images = messages[0].content.count(IMAGE_PLACEHOLDER)
        return [
            Segment(special="bos"),
            Segment(IMAGE_PLACEHOLDER * n_images),
            Segment(messages[1].content.strip() + self.separator, trained=True),
            Segment(special="eos", trained=True),
        ]

    def spec(self) -> dict:
        return {"_target_": spec_target(self), **asdict(self)}


# Named formats. Each is a factory so an LLM config can say `_target_: lmm.data.templates.vicuna`
# and still override a field (e.g. `system: ""`).

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna(system: str = VICUNA_SYSTEM, bos: str = "once") -> ChatTemplate:
    """`USER: ... ASSISTANT: ...</s>`: the Phi-2 / TinyLLaVA / LLaVA-1.5 conversation style."""
    return ChatTemplate(user_format="USER: {content} ASSISTANT:", answer_format=" {content}", system=system,
                        system_format="{system} ", bos=bos)


def phi2(system: str = VICUNA_SYSTEM) -> ChatTemplate:
    """Phi-2 has no BOS token in its tokenizer; otherwise the vicuna style."""
    return vicuna(system=system, bos="none")


def llama2(system: str = "") -> ChatTemplate:
    """Llama-2 chat: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] ...`."""
    return ChatTemplate(
        user_format="[INST] {content} [/INST]",
        first_user_format="{content} [/INST]",
        answer_format=" {content} ",
        system=system,
        system_format="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n",
        bos="each_turn",
    )
