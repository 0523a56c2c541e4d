"""GQA test-dev (balanced) as LLaVA-1.5 evaluates it.

Predictions are cleaned as LLaVA's convert_gqa_for_eval.py does (trailing periods dropped, lower case) and
scored as the official GQA eval.py scores them: exact string match with the gold answer, averaged over
the balanced questions; "open" questions are those of structural type "query", the others "binary".
Questions come from the official `testdev_balanced_questions.json` or from LLaVA's
`llava_gqa_testdev_balanced.jsonl` (then the answers come from the official file, `annotations`).

Convention `lmms_eval` (lmms-eval 0.7.3's gqa task, its `exact_match` with ignore_case and
ignore_punctuation): prediction and gold are lower-cased and stripped of ASCII punctuation, then compared
exactly (whitespace is kept: " yes" is wrong).
"""
from __future__ import annotations

import json
import string
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import SHORT_ANSWER, Benchmark, Request, require_files, with_suffix
from lmm.eval.files import check_images, field, read_json, read_question_jsonl


@dataclass
class _Question:
    key: str
    question: str
    prompt: str
    image: Path


def gqa_prediction(answer: str) -> str:
    """LLaVA's clean-up before the official eval: trailing periods dropped, lower case."""
    return answer.rstrip(".").lower()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def lmms_eval_match(prediction: str, gold: str) -> bool:
    """lmms-eval 0.7.3's GQA exact match: both lower-cased, ASCII punctuation deleted, then equal."""
    return prediction.lower().translate(_NO_PUNCTUATION) == gold.lower().translate(_NO_PUNCTUATION)


def _rate(values: list[float]) -> dict[str, Any]:
    return {"accuracy": sum(values) / len(values), "n": len(values)}


class GQA(Benchmark):
    name = "gqa"
    conventions = ("llava", "lmms_eval")
    max_new_tokens = 16  # LLaVA's scripts allow 128; single-word answers never need it (see VQAv2)

    def __init__(self, questions: str, image_root: str, annotations: str | None = None,
                 tier: str = "testdev_balanced", suffix: str | None = SHORT_ANSWER, limit: int | None = None,
                 name: str = "gqa", max_new_tokens: int | None = None):
        """questions: official `<tier>_questions.json` ({qid: {imageId, question, answer, types, ...}}) or
        LLaVA's jsonl (question_id, image, text); annotations: the official file holding the answers when
        `questions` is the jsonl (default: `questions` itself when it is the official file);
        tier: names the predictions file the official eval.py reads (`<tier>_predictions.json`)."""
        self.questions, self.image_root, self.annotations = questions, Path(image_root), annotations
        self.tier, self.suffix, self.limit, self.name = tier, suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._items: list[_Question] | None = None
        self._gold: dict[str, dict] | None = None
        self._official: dict[str, dict] = {}  # path -> parsed official file (questions and answers may share one)

    @property
    def _is_jsonl(self) -> bool:
        return str(self.questions).endswith(".jsonl")

    @property
    def _answers_file(self) -> str | None:
        return self.annotations if self.annotations is not None or self._is_jsonl else self.questions

    def _official_data(self, path: str) -> dict:
        if str(path) not in self._official:
            data = read_json(path, self.name)
            if not isinstance(data, dict):
                raise ValueError(f"{self.name}: {path} should map question ids to questions")
            self._official[str(path)] = data
        return self._official[str(path)]

    def check(self) -> None:
        require_files(self.name, self.questions, self.annotations)
        check_images(self.name, (q.image for q in self.items()), self.image_root)
        self.gold()

    def items(self) -> list[_Question]:
        if self._items is None:
            self._items = self._load_jsonl() if self._is_jsonl else self._load_json()
        return self._items

    def _load_jsonl(self) -> list[_Question]:
        return [_Question(str(qid), question, prompt, self.image_root / image)
                for qid, image, question, prompt in read_question_jsonl(self.questions, self.name, self.suffix,
                                                                        self.limit)]

    def _load_json(self) -> list[_Question]:
        items = []
        for qid, q in self._official_data(self.questions).items():
            if self.limit is not None and len(items) >= self.limit:
                break
            where = f"{self.name}: {self.questions} question {qid}"
            if not isinstance(q, Mapping):
                raise TypeError(f"{where}: not a JSON object")
            # The official eval scores balanced questions only; the others need no answer.
            if not q.get("isBalanced", True):
                continue
            image_id, text = field(q, "imageId", where), field(q, "question", where)
            items.append(_Question(str(qid), text, with_suffix(text, self.suffix), self.image_root / f"{image_id}.jpg"))
        return items

    def gold(self) -> dict[str, dict] | None:
        """question key -> {answer, structural, semantic, balanced}; None when there are no answers
        (a jsonl without `annotations`, or a test file without answers)."""
        path = self._answers_file
        if path is None:
            return None
        if self._gold is None:
            data = self._official_data(path)
            records = {}
            for q in self.items():
                if q.key not in data:
                    raise ValueError(f"{self.name}: {path}: question {q.key} is not in this file")
                records[q.key] = data[q.key]
            answered = [k for k, r in records.items() if isinstance(r, Mapping) and "answer" in r]
            if not answered:  # an unanswered split (test / challenge): only the server can score it
                self._gold = {}
                return None
            gold = {}
            for key, record in records.items():
                where = f"{self.name}: {path} question {key}"
                types = field(record, "types", where)
                gold[key] = {"answer": field(record, "answer", where), "structural": field(types, "structural", where),
                             "semantic": field(types, "semantic", where),
                             "balanced": bool(record.get("isBalanced", True))}
            self._gold = gold
        return self._gold or None

    def requests(self) -> list[Request]:
        return [Request(q.key, q.prompt, [q.image]) for q in self.items()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        gold = self.gold()
        records, scores = [], []
        by_kind, by_structural, by_semantic = defaultdict(list), defaultdict(list), defaultdict(list)
        missing = unbalanced = 0
        for q in self.items():
            raw = answers.get(q.key)
            missing += raw is None
            raw = raw or ""
            prediction = gqa_prediction(raw)
            record = {"question_id": q.key, "question": q.question, "prompt": q.prompt, "image": str(q.image),
                      "answer": raw, "processed": prediction, "gold": None, "score": None}
            g = gold.get(q.key) if gold else None
            if g is not None:
                record["gold"] = g["answer"]
                if g["balanced"]:
                    score = float(lmms_eval_match(raw, g["answer"]) if self.convention == "lmms_eval"
                                  else prediction == g["answer"])
                    record["score"] = score
                    scores.append(score)
                    by_kind["open" if g["structural"] == "query" else "binary"].append(score)
                    by_structural[g["structural"]].append(score)
                    by_semantic[g["semantic"]].append(score)
                else:
                    unbalanced += 1
            records.append(record)
        metrics: dict[str, Any] = {"n": len(records), "n_missing": missing}
        if scores:
            metrics.update(accuracy=sum(scores) / len(scores), n_scored=len(scores))
            metrics.update({kind: _rate(v) for kind, v in sorted(by_kind.items())})
            metrics["per_structural_type"] = {t: _rate(v) for t, v in sorted(by_structural.items())}
            metrics["per_semantic_type"] = {t: _rate(v) for t, v in sorted(by_semantic.items())}
        if unbalanced:
            metrics["n_unbalanced"] = unbalanced
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """`<tier>_predictions.json` as the official eval.py reads it: [{"questionId", "prediction"}]."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.tier}_predictions.json"
        path.write_text(json.dumps([{"questionId": q.key, "prediction": gqa_prediction(answers.get(q.key) or "")}
                                    for q in self.items()]))
        return [path]

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"GQA": 100 * metrics["accuracy"]} if "accuracy" in metrics else {}
