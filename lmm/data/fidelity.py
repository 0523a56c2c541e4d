"""Encode records both ways, lmm's and the reference procedure's (`lmm.data.reference`), and count
where they differ: a check a researcher runs on their own tokenizer and data before a long run
(`python -m lmm.fidelity`).

Kinds counted per record:
    ids_equal / ids_differ            input_ids, lmm vs the reference
    labels_equal / labels_differ      trained positions, where the reference's own length check passes
    labels_ambiguous                  the record's text holds " ASSISTANT:" (the reference's split lands
                                      in the user's text there; lmm trains only the answers)
    reference_check_failed            the reference's arithmetic missed the sequence length (it would
                                      train nothing on this record)
    lmm_skipped/<reason>              lmm skips the record (counted by training too)
    reference_error                   the reference procedure cannot process the record
Templates TinyLLaVA_Factory has no format for (llama2, ChatML, Gemma turns) are compared with the
tokenizer's own chat template when it has one (rendered text and input_ids; labels are not).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lmm.data import reference
from lmm.data.dataset import SampleProcessor
from lmm.data.formats import to_messages
from lmm.data.tokenize import IGNORE_INDEX, SampleError, render_text

REFERENCES = ("auto", "pretrain", "phi", "llama", "gemma", "chat_template")


@dataclass
class Report:
    reference: str
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return self.counts["ids_differ"] + self.counts["labels_differ"] + self.counts["text_differ"]

    def table(self) -> str:
        rows = [f"| {k} | {v} |" for k, v in sorted(self.counts.items())]
        return "\n".join([f"reference: {self.reference}", "| kind | records |", "|---|---|", *rows])


def _first_difference(a: list[int], b: list[int], tokenizer) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    def show(ids):
        return [tokenizer.convert_ids_to_tokens(i) if i >= 0 else i for i in ids[max(0, k - 3):k + 3]]
    return f"at token {k}: lmm {show(a)} vs reference {show(b)}"


def _chat_template_ids(messages, tokenizer, template) -> tuple[str, list[int]]:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    bos = tokenizer.bos_token
    if getattr(template, "bos", "none") != "none" and bos and text.startswith(bos):
        text = text[len(bos):]  # lmm adds BOS as a token, as the tokenizer does by itself
    return text, reference.tokenizer_image_token(text, tokenizer)


def compare(records, tokenizer, template, which: str = "auto", max_examples: int = 3, **normalise) -> Report:
    """Encode every record of `records` (dicts, or the `SampleError` of one the source could not
    read) with lmm and with the reference (`which`: see REFERENCES; auto picks from the template)."""
    if which not in REFERENCES:
        raise ValueError(f"unknown reference {which!r}; valid: {list(REFERENCES)}")
    if which == "auto":
        which = reference.family_of(template) or "chat_template"
    if which == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this template has no TinyLLaVA_Factory format and the tokenizer has no chat template "
                         "to compare with; choose reference=phi|llama|gemma|pretrain")
    processor = SampleProcessor(tokenizer, template, None, num_visual_tokens=1, max_length=1 << 40, **normalise)
    system = getattr(template, "system", "")
    report = Report(which)
    counts = report.counts
    for record in records:
        if isinstance(record, SampleError):  # a record the source could not read (invalid JSON, ...)
            counts[f"lmm_skipped/{record.reason}"] += 1
            continue
        try:
            enc = processor.encode(record)
        except SampleError as e:
            counts[f"lmm_skipped/{e.reason}"] += 1
            continue
        ids, labels = enc.input_ids.tolist(), enc.labels.tolist()
        try:
            if which == "chat_template":
                messages = to_messages(record, **normalise)
                text, ref_ids = _chat_template_ids(messages, tokenizer, template)
                ours = render_text(template.render(messages), tokenizer)[0]
                counts["text_equal" if ours == text else "text_differ"] += 1
                ref = {"input_ids": ref_ids, "ok": None}
            else:
                ref = reference.encode(record["conversations"], tokenizer, which, system)
        except (AssertionError, KeyError, TypeError, ValueError) as e:
            counts["reference_error"] += 1
            if len(report.examples) < max_examples:
                report.examples.append(f"record {record.get('id')!r}: the reference fails: {e}")
            continue
        same = ids == ref["input_ids"]
        counts["ids_equal" if same else "ids_differ"] += 1
        if not same and len(report.examples) < max_examples:
            report.examples.append(f"record {record.get('id')!r}: {_first_difference(ids, ref['input_ids'], tokenizer)}")
        if ref["ok"] is None or not same:
            continue
        if not ref["ok"]:
            counts["reference_check_failed"] += 1
        elif labels == ref["labels"]:
            counts["labels_equal"] += 1
        elif reference.holds_separator(record["conversations"]):
            counts["labels_ambiguous"] += 1
        else:
            counts["labels_differ"] += 1
            if len(report.examples) < max_examples:
                trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
                theirs = [i for i, lab in zip(ids, ref["labels"]) if lab != IGNORE_INDEX]
                report.examples.append(f"record {record.get('id')!r}: labels: lmm trains {tokenizer.decode(trained)!r}, "
                                       f"the reference {tokenizer.decode(theirs)!r}")
    return report
