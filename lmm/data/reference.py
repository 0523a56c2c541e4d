"""The reference text pipeline (TinyLLaVA_Factory's, which for the vicuna format is LLaVA-1.5's),
written from its documented behaviour: `python -m lmm.fidelity` encodes records with it beside lmm's
encoding, and the tests check it against LLaVA-1.5's own code (llava-torch).

Read from `tinyllava/data/template/{base,phi,llama,gemma,qwen2_base,pretrain}_template.py` of the public
TinyLLaVA/TinyLLaVA_Factory repository; this is our own code following those formats:

- a leading non-human turn is dropped (`first_is_not_question`);
- the prompt: system + " ", then per round `"USER: " + q + " "` and `"ASSISTANT: " + a + EOS`, where a
  question holding `<image>` becomes `("<image>\\n" + q.replace("<image>", "").strip()).strip()`;
  the pretrain template is `"<image>" + caption + "\\n"` (no EOS) per round;
- tokenised as LLaVA's `tokenizer_image_token` (chunks at `<image>`, BOS from the first chunk only);
- labels by length arithmetic per round (split at EOS, then at `" ASSISTANT: "`), with the per-family
  offsets below; when the arithmetic does not reach the sequence length, every label is masked and a
  "tokenization mismatch" is reported (`ok` False here).
"""
from __future__ import annotations

IMAGE = "<image>"
IGNORE = -100
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
SEP = " ASSISTANT: "


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    chunks = [tokenizer(c).input_ids for c in prompt.split(IMAGE)]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(-200)  # the separator [-200] * (offset + 1), cut by the same [offset:]
        ids.extend(chunk[offset:])
    return ids


def qa_lists(turns: list[dict]) -> tuple[list[str], list[str]]:
    skip_first = 1 if turns and turns[0]["from"] != "human" else 0
    rest = turns[skip_first:]
    questions = [t["value"] for i, t in enumerate(rest) if i % 2 == 0]
    answers = [t["value"] for i, t in enumerate(rest) if i % 2 == 1]
    assert len(questions) == len(answers), "qa is not match"
    return questions, answers


def prompt(turns: list[dict], eos: str, system: str = SYSTEM) -> str:
    """An empty `system` is left out with its space (the references always have one; lmm's tiny
    configs use none)."""
    msg = ""
    for i, (q, a) in enumerate(zip(*qa_lists(turns))):
        if i == 0 and system:
            msg += system + " "
        if IMAGE in q:
            q = ("<image>\n" + q.replace(IMAGE, "").strip()).strip()
        msg += "USER: " + q + " " + "ASSISTANT: " + a + eos
    return msg


def pretrain_prompt(turns: list[dict]) -> str:
    return "".join("<image>" + a + "\n" for a in qa_lists(turns)[1])


def holds_separator(turns: list[dict], separator: str = SEP) -> bool:
    """A turn's own text holds the separator the reference splits rounds at: its label arithmetic
    then splits inside that text (lmm's labels, from the template's spans, do not)."""
    return any(separator.strip() in str(t.get("value")) for t in turns)


def family_of(template) -> str | None:
    """The reference procedure for an lmm template: "pretrain" (plain), "phi" (vicuna style, no
    BOS: phi, stablelm, qwen2_base) or "llama" (vicuna style with BOS: llama, gemma); None when
    TinyLLaVA_Factory has no such format (llama2, ChatML, Gemma turns)."""
    from lmm.data.templates import ChatTemplate, PlainTemplate

    if isinstance(template, PlainTemplate):
        return "pretrain"
    if isinstance(template, ChatTemplate) and (template.user_format, template.answer_format, template.answer_end) == (
            "USER: {content} ASSISTANT:", " {content}", "eos") and template.bos in ("once", "none") \
            and template.first_user_format is None and template.system_format == "{system} ":
        return "phi" if template.bos == "none" else "llama"
    return None


def encode(turns: list[dict], tokenizer, family: str, system: str = SYSTEM) -> dict:
    """input_ids, labels and `ok` (the mismatch check passed) for `family`: "phi" (no BOS: phi,
    stablelm, qwen2_base), "llama" or "gemma" (BOS, one token, discounted per round), "pretrain"."""
    if family == "pretrain":
        text = pretrain_prompt(turns)
        ids = tokenizer_image_token(text, tokenizer)
        mask = len(tokenizer_image_token(IMAGE, tokenizer))
        return {"prompt": text, "input_ids": ids, "labels": [IGNORE] * mask + ids[mask:], "ok": True}
    eos = tokenizer.eos_token
    text = prompt(turns, eos, system)
    ids = tokenizer_image_token(text, tokenizer)
    labels = list(ids)
    total = sum(1 for t in ids if t != tokenizer.pad_token_id)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        total += text.count(eos)
    bos = 0 if family == "phi" else 1
    cur = bos
    labels[:cur] = [IGNORE] * cur
    eos_len = len(tokenizer.encode(eos)) if family == "phi" else 1
    for i, rnd in enumerate(text.split(eos)):
        if rnd == "":
            break
        parts = rnd.split(SEP)
        if len(parts) != 2:
            break
        round_len = len(tokenizer_image_token(rnd, tokenizer)) + eos_len - bos
        instruction_len = len(tokenizer_image_token(parts[0] + SEP, tokenizer)) - 1 - bos
        if family == "llama" and i != 0 and not getattr(tokenizer, "legacy", True):
            round_len -= 1
            instruction_len -= 1
        labels[cur:cur + instruction_len] = [IGNORE] * len(labels[cur:cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE] * len(labels[cur:])
    ok = cur == total
    return {"prompt": text, "input_ids": ids, "labels": labels if ok else [IGNORE] * len(ids), "ok": ok}
