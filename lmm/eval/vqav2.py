"""VQAv2 open-ended questions on COCO images, as LLaVA-1.5 evaluates them.

Questions come from the official `v2_OpenEnded_mscoco_<subtype>_questions.json` or from LLaVA's
`llava_vqav2_mscoco_test-dev2015.jsonl`. LLaVA reports test-dev, which only the EvalAI server can score:
`write_files` writes the submission (answers cleaned by the EvalAI processor, as LLaVA does, and every
test2015 question that was not asked filled with ""). With the official annotations (val2014) the
benchmark scores itself exactly as the official scorer would score that submission: overall and per
answer type.

Convention `lmms_eval` (lmms-eval 0.7.3's vqav2 tasks): the prediction gets the official scorer's
processing only (`normalize_answer`, not the EvalAI tokenising step), every human answer gets the same
processing whether or not they agree, then the same leave-one-out soft accuracy. The submission file is
LLaVA's either way (the server scores it).
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import SHORT_ANSWER, Benchmark, Request, require_files, with_suffix
from lmm.eval.files import check_images, field, read_json, read_jsonl, read_question_jsonl, unique_key
from lmm.eval.metrics import evalai_answer, leave_one_out, normalize_answer, vqa_accuracy

log = logging.getLogger(__name__)


@dataclass
class _Question:
    key: str
    question_id: Any          # as in the file (an int for VQAv2): the submission needs it unchanged
    question: str
    prompt: str
    image: Path


def _question_ids(path: str, benchmark: str) -> list:
    """Question ids of a questions file in either format, in file order."""
    if str(path).endswith(".jsonl"):
        return [field(row, "question_id", f"{benchmark}: {path} line {n}") for n, row in read_jsonl(path, benchmark)]
    data = read_json(path, benchmark)
    questions = field(data, "questions", f"{benchmark}: {path}")
    return [field(q, "question_id", f"{benchmark}: {path} question #{i}") for i, q in enumerate(questions)]


def lmms_eval_vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """lmms-eval 0.7.3's VQAv2 accuracy of a raw prediction."""
    return leave_one_out(normalize_answer(prediction), [normalize_answer(a) for a in human_answers])


class VQAv2(Benchmark):
    name = "vqav2"
    # LLaVA's scripts allow 128 new tokens; answers are a word or two and a batch decodes until its longest
    # answer stops, so a small cap saves time without cutting answers.
    max_new_tokens = 16

    def __init__(self, questions: str, image_root: str, annotations: str | None = None,
                 submission_questions: str | None = None,
                 image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg", image_subtype: str | None = None,
                 suffix: str | None = SHORT_ANSWER, limit: int | None = None, name: str = "vqav2",
                 max_new_tokens: int | None = None):
        """questions: official questions JSON or LLaVA's jsonl (question_id, image, text);
        image_pattern/image_subtype: file name of an image of the official JSON under image_root
        (subtype defaults to the file's data_subtype, test-dev2015 -> test2015 where its images live);
        annotations: official answers (val) to score locally; submission_questions: the full test2015
        questions (either format) whose ids the submission must all carry."""
        self.questions, self.image_root = questions, Path(image_root)
        self.annotations, self.submission_questions = annotations, submission_questions
        self.image_pattern, self.image_subtype = image_pattern, image_subtype
        self.suffix, self.limit, self.name = suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._items: list[_Question] | None = None
        self._gold: dict[str, dict] | None = None

    # loading

    def check(self) -> None:
        require_files(self.name, self.questions, self.annotations, self.submission_questions)
        check_images(self.name, (q.image for q in self.items()), self.image_root)
        self.gold()

    def items(self) -> list[_Question]:
        if self._items is None:
            self._items = self._load_jsonl() if str(self.questions).endswith(".jsonl") else self._load_json()
        return self._items

    def _load_jsonl(self) -> list[_Question]:
        return [_Question(str(qid), qid, question, prompt, self.image_root / image)
                for qid, image, question, prompt in read_question_jsonl(self.questions, self.name, self.suffix,
                                                                        self.limit)]

    def _load_json(self) -> list[_Question]:
        data = read_json(self.questions, self.name)
        where = f"{self.name}: {self.questions}"
        questions = field(data, "questions", where)
        if not isinstance(questions, list):
            raise TypeError(f"{where}: 'questions' should be a list")
        subtype = self.image_subtype
        if subtype is None and "{subtype" in self.image_pattern:
            subtype = str(field(data, "data_subtype", where)).replace("test-dev", "test")
        questions = questions[: self.limit] if self.limit is not None else questions
        items, seen = [], {}
        for i, q in enumerate(questions):
            w = f"{where} question #{i}"
            qid, image_id, text = (field(q, k, w) for k in ("question_id", "image_id", "question"))
            unique_key(seen, str(qid), w)
            try:
                image = self.image_pattern.format(subtype=subtype, image_id=image_id)
            except (KeyError, ValueError, IndexError) as e:
                raise ValueError(f"{w}: image_pattern {self.image_pattern!r} does not fit ({e})") from None
            items.append(_Question(str(qid), qid, text, with_suffix(text, self.suffix), self.image_root / image))
        return items

    def gold(self) -> dict[str, dict] | None:
        """question key -> official annotation, for the questions asked (None without annotations)."""
        if self.annotations is None:
            return None
        if self._gold is None:
            data = read_json(self.annotations, self.name)
            by_id = {}
            for i, ann in enumerate(field(data, "annotations", f"{self.name}: {self.annotations}")):
                by_id[str(field(ann, "question_id", f"{self.name}: {self.annotations} annotation #{i}"))] = ann
            gold = {}
            for q in self.items():
                where = f"{self.name}: {self.annotations} (question {q.key})"
                if q.key not in by_id:
                    raise ValueError(f"{where}: no annotation for this question")
                ann = by_id[q.key]
                answers = [field(a, "answer", where) for a in field(ann, "answers", where)]
                if not answers:
                    raise ValueError(f"{where}: no human answers")
                gold[q.key] = {"answers": answers, "answer_type": field(ann, "answer_type", where)}
            self._gold = gold
        return self._gold

    # the benchmark interface

    def requests(self) -> list[Request]:
        return [Request(q.key, q.prompt, [q.image]) for q in self.items()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        gold = self.gold()
        records, scores, by_type = [], [], defaultdict(list)
        missing = 0
        for q in self.items():
            raw = answers.get(q.key)
            missing += raw is None
            raw = raw or ""
            # Scored as submitted: LLaVA cleans answers with the EvalAI processor, the server then applies
            # the official scorer on top.
            processed = evalai_answer(raw)
            record = {"question_id": q.question_id, "question": q.question, "prompt": q.prompt,
                      "image": str(q.image), "answer": raw, "processed": processed}
            if gold is not None:
                g = gold[q.key]
                score = (lmms_eval_vqa_accuracy(raw, g["answers"]) if self.convention == "lmms_eval"
                         else vqa_accuracy(processed, g["answers"]))
                scores.append(score)
                by_type[g["answer_type"]].append(score)
                record.update(gold=g["answers"], answer_type=g["answer_type"], score=score)
            else:
                record.update(gold=None, score=None)
            records.append(record)
        metrics: dict[str, Any] = {"n": len(records), "n_missing": missing}
        if gold is not None and scores:
            metrics["accuracy"] = sum(scores) / len(scores)
            metrics["per_answer_type"] = {t: {"accuracy": sum(v) / len(v), "n": len(v)}
                                          for t, v in sorted(by_type.items())}
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """The EvalAI submission: [{"question_id", "answer"}], answers cleaned as LLaVA cleans them."""
        ours = {q.key: (q.question_id, evalai_answer(answers.get(q.key) or "")) for q in self.items()}
        if self.submission_questions is None:
            submission = [{"question_id": qid, "answer": a} for qid, a in ours.values()]
        else:
            ids = _question_ids(self.submission_questions, self.name)
            wanted = {str(i) for i in ids}
            submission, filled = [], 0
            for qid in ids:
                if str(qid) in ours:
                    submission.append({"question_id": qid, "answer": ours[str(qid)][1]})
                else:
                    submission.append({"question_id": qid, "answer": ""})
                    filled += 1
            extra = sum(k not in wanted for k in ours)
            report = (f"{self.name}: submission has {len(ids)} questions, {filled} filled with an empty answer"
                      + (f"; {extra} answered questions are not in {self.submission_questions}" if extra else ""))
            (log.warning if filled or extra else log.info)(report)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}_submission.json"
        path.write_text(json.dumps(submission))
        return [path]

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"VQAv2": 100 * metrics["accuracy"]} if "accuracy" in metrics else {}
