"""TextVQA val as LLaVA-1.5 evaluates it: accuracy by LLaVA's reference scorer (MMF's TextVQA evaluator),
which runs the EvalAI processor on the prediction and on each of the ten human answers, then takes the
leave-one-out soft accuracy.

Prompt (LLaVA-1.5's `llava_textvqa_val_v051_ocr.jsonl`): the question with its first letter capitalised,
a line "Reference OCR token: " followed by the image's OCR tokens joined by ", " (the line is kept, empty,
when the image has no token), then the short-answer suffix. With `ocr: false` the OCR line is left out.

Convention `lmms_eval`: lmms-eval 0.7.3's textvqa tasks score exactly as LLaVA's scorer does (the same
processor on both sides, the same leave-one-out accuracy), so both conventions give the same number;
its default prompt has no OCR line (`textvqa_no_ocr` asks that prompt).

Deliberate difference: LLaVA's eval_textvqa.py looks answers up by (image id, lower-cased question), so two
identical questions on one image both get the answers of the last; here each question keeps its own.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import SHORT_ANSWER, Benchmark, Request, require_files, with_suffix
from lmm.eval.files import check_images, field, read_json, unique_key
from lmm.eval.metrics import evalai_answer, textvqa_accuracy

OCR_PREFIX = "Reference OCR token: "


@dataclass
class _Question:
    key: str
    question_id: Any
    question: str
    prompt: str
    image: Path
    answers: list[str] | None


def textvqa_prompt(question: str, ocr_tokens: Sequence[str] | None, suffix: str | None) -> str:
    """LLaVA-1.5's TextVQA prompt; `ocr_tokens=None` leaves the OCR line out."""
    # str.capitalize also lower-cases the rest; the released questions are lower case already, and it is
    # what lmms-eval's reproduction of LLaVA's prompt uses.
    text = question.strip().capitalize()
    if ocr_tokens is None:
        return with_suffix(text, suffix)
    # Built by hand, not with with_suffix: an empty token list leaves "Reference OCR token: " with its
    # trailing space, which LLaVA's file keeps.
    text = f"{text}\n{OCR_PREFIX}{', '.join(str(t) for t in ocr_tokens)}"
    return f"{text}\n{suffix}" if suffix else text


class TextVQA(Benchmark):
    name = "textvqa"
    conventions = ("llava", "lmms_eval")   # one scorer: lmms-eval's gives LLaVA's numbers
    max_new_tokens = 16  # LLaVA's scripts allow 128; short answers never need it (see VQAv2)

    def __init__(self, questions: str, image_root: str, ocr: bool = True, ocr_tokens: str | None = None,
                 suffix: str | None = SHORT_ANSWER, limit: int | None = None, name: str = "textvqa",
                 max_new_tokens: int | None = None):
        """questions: official `TextVQA_0.5.1_val.json` ({"data": [{question_id, question, image_id,
        answers}]}); images `<image_root>/<image_id>.jpg`; ocr: put the OCR tokens in the prompt;
        ocr_tokens: the Rosetta OCR file ({"data": [{image_id, ocr_tokens}]}); null reads an
        `ocr_tokens` list from each question record instead."""
        self.questions, self.image_root, self.ocr, self.ocr_tokens = questions, Path(image_root), ocr, ocr_tokens
        self.suffix, self.limit, self.name = suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._items: list[_Question] | None = None

    def check(self) -> None:
        require_files(self.name, self.questions, self.ocr_tokens if self.ocr else None)
        check_images(self.name, (q.image for q in self.items()), self.image_root)

    def _ocr_table(self) -> dict[str, list[str]] | None:
        if not self.ocr or self.ocr_tokens is None:
            return None
        where = f"{self.name}: {self.ocr_tokens}"
        table = {}
        for i, entry in enumerate(field(read_json(self.ocr_tokens, self.name), "data", where)):
            w = f"{where} entry #{i}"
            table[str(field(entry, "image_id", w))] = field(entry, "ocr_tokens", w)
        return table

    def items(self) -> list[_Question]:
        if self._items is not None:
            return self._items
        where = f"{self.name}: {self.questions}"
        records = field(read_json(self.questions, self.name), "data", where)
        if not isinstance(records, list):
            raise TypeError(f"{where}: 'data' should be a list")
        records = records[: self.limit] if self.limit is not None else records
        ocr = self._ocr_table()
        items, seen = [], {}
        for i, r in enumerate(records):
            w = f"{where} record #{i}"
            qid, question, image_id = (field(r, k, w) for k in ("question_id", "question", "image_id"))
            unique_key(seen, str(qid), w)
            answers = r.get("answers")
            # The reference scorer asserts ten human answers per question.
            if answers is not None and (not isinstance(answers, list) or len(answers) != 10):
                raise ValueError(f"{w} (question {qid}): expected 10 human answers, got {answers!r}")
            tokens = None
            if self.ocr:
                if ocr is None:
                    tokens = field(r, "ocr_tokens", f"{w} (no ocr_tokens file given)")
                elif str(image_id) in ocr:
                    tokens = ocr[str(image_id)]
                else:
                    raise ValueError(f"{self.name}: {self.ocr_tokens} has no OCR entry for image {image_id} "
                                     f"(question {qid})")
            items.append(_Question(str(qid), qid, question, textvqa_prompt(question, tokens, self.suffix),
                                   self.image_root / f"{image_id}.jpg", answers))
        self._items = items
        return items

    def requests(self) -> list[Request]:
        return [Request(q.key, q.prompt, [q.image]) for q in self.items()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        records, scores, missing = [], [], 0
        for q in self.items():
            raw = answers.get(q.key)
            missing += raw is None
            raw = raw or ""
            score = textvqa_accuracy(raw, q.answers) if q.answers is not None else None
            if score is not None:
                scores.append(score)
            records.append({"question_id": q.question_id, "question": q.question, "prompt": q.prompt,
                            "image": str(q.image), "answer": raw, "processed": evalai_answer(raw),
                            "gold": q.answers, "score": score})
        metrics: dict[str, Any] = {"n": len(records), "n_missing": missing}
        if scores:
            metrics.update(accuracy=sum(scores) / len(scores), n_scored=len(scores))
        return metrics, records

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        if "accuracy" not in metrics:
            return {}
        return {"TextVQA" if self.ocr else "TextVQA (no OCR)": 100 * metrics["accuracy"]}
