"""Prompt templates: turn a conversation into segments that know whether they are trained.

A template never tokenises; it yields `Segment`s (text, or the BOS/EOS token by name) each marked
`trained` or not. `lmm.data.tokenize.encode_segments` joins them into the one string the reference
pipelines (LLaVA-1.5, TinyLLaVA_Factory) build, tokenises it whole as they do, and trains the tokens
that cover trained characters.

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
    special: Literal["bos", "eos"] | None = None  # a special token of the tokenizer, by name
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
    """LLaVA's pretrain format: the image(s), then the caption and `separator` (trained).

    As LLaVA-1.5's `preprocess_plain` and TinyLLaVA_Factory's `PretrainTemplate`, the user text apart
    from its image placeholders is dropped (the stage aligns visual tokens with the caption, not
    instruction following), the caption is kept as written, and no EOS follows it. `eos: true` adds
    a trained EOS after the separator (a deliberate difference from both references, off by default).
    `bos` follows the LLM's chat template (Qwen2's tokenizer has no BOS token at all).
    """

    separator: str = "\n"
    bos: bool = True
    eos: bool = False

    def _start(self, n_images: int) -> list[Segment]:
        return [Segment(special="bos")] * self.bos + [Segment(IMAGE_PLACEHOLDER * n_images)]

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        check_alternation(messages)
        if add_generation_prompt:  # what the model sees before a caption: BOS and the image(s)
            if len(messages) != 1:
                raise ValueError("a plain (caption) generation prompt is one user turn holding the image(s)")
            return self._start(messages[0].content.count(IMAGE_PLACEHOLDER))
        if len(messages) != 2:
            raise ValueError(f"a plain (caption) sample has exactly one user and one assistant turn, got {len(messages)} turns")
        return self._start(messages[0].content.count(IMAGE_PLACEHOLDER)) + [
            Segment(messages[1].content + self.separator, trained=True),
            *[Segment(special="eos", trained=True)] * self.eos,
        ]

    def spec(self) -> dict:
        return {"_target_": spec_target(self), **asdict(self)}


PROMPTS = ("plain", "chat")  # a recipe stage's `prompt`


def stage_template(prompt: str, chat_template, caption_eos: bool = False):
    """Pretrain uses LLaVA's plain format for every LLM (with a BOS where the LLM's chat template
    has one; `caption_eos`: a trained EOS after each caption, which the references do not have);
    SFT uses the LLM's own chat template."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown stage prompt {prompt!r}; valid: {list(PROMPTS)}")
    if prompt == "plain":
        return PlainTemplate(bos=chat_template.bos != "none", eos=caption_eos)
    return chat_template


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


# The paper grid's other LLM families. TinyLLaVA-style training uses the vicuna-style conversation
# (`USER: ... ASSISTANT: ...<EOS>`) for every family and ends each answer with the tokenizer's own
# EOS (the token generation stops on); what differs is whether a BOS token opens the sequence,
# which follows what each family's tokenizer does by itself (the LLM was pretrained that way).


def stablelm2(system: str = VICUNA_SYSTEM) -> ChatTemplate:
    """StableLM-2: its tokenizer names `<|endoftext|>` as BOS and EOS but never prepends it, so no
    BOS here (as Phi-2, whose format TinyLLaVA trains StableLM with); answers end in `<|endoftext|>`."""
    return vicuna(system=system, bos="none")


def qwen2(system: str = VICUNA_SYSTEM) -> ChatTemplate:
    """Qwen2 base models: the tokenizer has no BOS token at all (asking for one is an error), and its
    EOS `<|endoftext|>` ends each answer. For an -Instruct tokenizer the EOS is `<|im_end|>`, which
    this template then uses instead; `chatml` is the instruct models' own turn format."""
    return vicuna(system=system, bos="none")


def gemma(system: str = VICUNA_SYSTEM) -> ChatTemplate:
    """Gemma: the tokenizer prepends `<bos>` and the model is known to degrade without it, so BOS
    once; answers end in `<eos>`. `gemma_turns` is the instruction-tuned models' own format."""
    return vicuna(system=system, bos="once")


@dataclass
class TurnTemplate:
    """Formats that wrap each turn in markers (ChatML, Gemma's), for instruction-tuned checkpoints:

        [BOS] {start}{system_role}\\n{system}{end}\\n
        {start}{user_role}\\n{q1}{end}\\n{start}{assistant_role}\\n  a1{end}  \\n{start}{user_role}\\n{q2} ...

    as the models' own chat templates render it (a newline after every end marker; `trim`: each
    message stripped, as Gemma's template does). Trained: each answer and its end marker. The markers are written as text, so the tokenizer must
    know them as special tokens (single ids). Generation stops on the tokenizer's EOS: right for
    Qwen2-Instruct (EOS is `<|im_end|>`), not for Gemma-it (EOS `<eos>`, turns end `<end_of_turn>`).
    With `system_role=None` (Gemma has no system turn) a system text opens the first user turn.
    """

    turn_start: str
    turn_end: str
    user_role: str = "user"
    assistant_role: str = "assistant"
    system: str = ""
    system_role: str | None = "system"
    bos: Literal["once", "none"] = "none"
    trim: bool = False

    def _turn(self, role: str, content: str) -> str:
        return f"{self.turn_start}{role}\n{content}{self.turn_end}\n"

    def _text(self, content: str) -> str:
        return content.strip() if self.trim else content

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        check_alternation(messages)
        if add_generation_prompt and messages and messages[-1].role != "user":
            raise ValueError("a generation prompt needs the conversation to end with a user turn")
        segs: list[Segment] = [Segment(special="bos")] if self.bos == "once" else []
        first_prefix = ""
        if self.system and self.system_role is not None:
            segs.append(Segment(self._turn(self.system_role, self._text(self.system))))
        elif self.system:
            first_prefix = self.system + "\n\n"
        for i, m in enumerate(messages):
            if m.role == "user":
                content = (first_prefix if i == 0 else "") + self._text(m.content)
                segs.append(Segment(self._turn(self.user_role, content) + self.turn_start + self.assistant_role + "\n"))
            else:
                segs.append(Segment(self._text(m.content) + self.turn_end, trained=True))
                segs.append(Segment("\n"))
        return segs

    def spec(self) -> dict:
        return {"_target_": spec_target(self), **asdict(self)}


def chatml(system: str = "You are a helpful assistant.") -> TurnTemplate:
    """ChatML (Qwen2-Instruct's format, with its default system prompt); no BOS, as Qwen2 has none."""
    return TurnTemplate(turn_start="<|im_start|>", turn_end="<|im_end|>", system=system, system_role="system")


def gemma_turns(system: str = "") -> TurnTemplate:
    """Gemma-it's format: `<bos><start_of_turn>user ... <end_of_turn>` and a `model` role, no system
    turn, messages stripped. Its tokenizer's EOS is `<eos>`, not `<end_of_turn>`: generation must
    also stop on that."""
    return TurnTemplate(turn_start="<start_of_turn>", turn_end="<end_of_turn>", assistant_role="model",
                        system=system, system_role=None, bos="once", trim=True)
