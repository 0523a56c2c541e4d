"""POPE: yes/no questions on object presence, per negative-sampling split, scored as LLaVA-1.5 does.

Files (LLaVA's `playground/data/eval/pope/` layout): one label file per split, `coco/coco_pope_<split>.json`,
one JSON object a line ({"question_id", "image", "text", "label": "yes"|"no"}), and the COCO val2014
images in `val2014/`. Any file in that format works (the split names are a config list), e.g. easy-vqa's
yes/no questions.

Prompt: the question and the short-answer suffix (LLaVA-1.5's `llava_pope_test.jsonl`).

Parsing follows LLaVA's `eval_pope.py`: keep the text before the first '.', drop commas, split on spaces;
the answer is "no" when one of the words is exactly "No", "no" or "not", and "yes" otherwise (so an empty
or unrelated answer counts as yes). "yes" is the positive class.

Zero divisions, which LLaVA's script does not guard: precision is 0 when nothing is predicted yes,
recall is 0 when no label is yes, F1 is 0 when precision + recall is 0 (sklearn's and torchmetrics'
convention).

Convention `lmms_eval` (lmms-eval 0.7.3's pope task): the answer, lower-cased and stripped, must be exactly
"yes" or "no". Accuracy counts exact matches; precision's false positives are "yes" on a "no" label and
recall's false negatives are exactly "no" on a "yes" label, so an answer that is neither only costs
accuracy; its `yes_ratio` is the share of "yes" *labels*. lmms-eval's `pope` task pools the three
splits, so the summary F1 and accuracy are over all questions there (LLaVA averages the splits' F1).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import SHORT_ANSWER, Benchmark, Request, require_files, with_suffix
from lmm.eval.files import iter_jsonl

SPLITS = ("random", "popular", "adversarial")
# Top-level metric names that a split's name must not shadow.
_SUMMARY_KEYS = {"f1", "accuracy", "n", "n_other", "convention"}


def parse_yes_no(text: str) -> str:
    """'yes' or 'no' under LLaVA's POPE rule (case-sensitive words of the first sentence)."""
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def binary_metrics(predictions: Sequence[bool], labels: Sequence[bool]) -> dict[str, Any]:
    """Confusion counts and rates with 'yes' (True) as the positive class; zero divisions give 0."""
    tp = sum(p and t for p, t in zip(predictions, labels))
    fp = sum(p and not t for p, t in zip(predictions, labels))
    tn = sum(not p and not t for p, t in zip(predictions, labels))
    fn = sum(not p and t for p, t in zip(predictions, labels))
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}


def lmms_eval_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """lmms-eval 0.7.3's POPE metrics of raw answers against "yes"/"no" labels (zero divisions give 0)."""
    preds = [a.lower().strip() for a in answers]
    pairs = list(zip(preds, labels))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    n, n_yes = len(pairs), sum(t == "yes" for t in labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": sum(p == t for p, t in pairs) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": n_yes / n if n else 0.0, "tp": tp, "fp": fp, "fn": fn,
            "n_other": sum(p not in ("yes", "no") for p in preds), "n": n}


class POPE(Benchmark):
    name = "pope"
    max_new_tokens = 16
    conventions = ("llava", "lmms_eval")

    def __init__(self, annotation_pattern: str, image_root: str, splits: Sequence[str] = SPLITS,
                 suffix: str | None = SHORT_ANSWER, limit: int | None = None, name: str = "pope",
                 max_new_tokens: int | None = None):
        """annotation_pattern: a path with `{split}` in it; limit: the first N questions of each split."""
        if "{split}" not in annotation_pattern:
            raise ValueError(f"{name}: annotation_pattern must contain '{{split}}', got {annotation_pattern!r}")
        self.splits = [str(s) for s in splits]
        if not self.splits:
            raise ValueError(f"{name}: no splits")
        clash = _SUMMARY_KEYS & set(self.splits)
        if clash or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"{name}: split names must be unique and not {sorted(_SUMMARY_KEYS)}: {self.splits}")
        self.annotation_pattern, self.image_root = annotation_pattern, Path(image_root)
        self.suffix, self.limit, self.name = suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._questions: list[dict] | None = None

    def annotation_file(self, split: str) -> Path:
        return Path(self.annotation_pattern.format(split=split))

    def check(self) -> None:
        require_files(self.name, *(self.annotation_file(s) for s in self.splits), self.image_root)
        require_files(self.name, *sorted({q["image_path"] for q in self._load()}))

    def _load(self) -> list[dict]:
        if self._questions is None:
            self._questions = [q for split in self.splits for q in self._load_split(split)]
        return self._questions

    def _load_split(self, split: str) -> list[dict]:
        path, questions, seen = self.annotation_file(split), [], set()
        for line_no, row in iter_jsonl(path, self.name):
            where = f"{self.name}: {path} line {line_no}"
            missing = [k for k in ("question_id", "image", "text", "label") if k not in row]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{where}: label must be yes or no, got {row['label']!r}")
            key = f"{split}/{row['question_id']}"
            if key in seen:
                raise ValueError(f"{where}: question_id {row['question_id']!r} repeats")
            seen.add(key)
            questions.append({"key": key, "split": split, "question_id": row["question_id"],
                              "image": row["image"], "image_path": self.image_root / row["image"],
                              "text": row["text"], "label": label})
            if self.limit and len(questions) >= self.limit:
                break
        return questions

    def requests(self) -> list[Request]:
        return [Request(q["key"], with_suffix(q["text"], self.suffix), [q["image_path"]]) for q in self._load()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        records = []
        lmms = self.convention == "lmms_eval"
        for q in self._load():
            text = answers.get(q["key"], "")
            parsed = text.lower().strip() if lmms else parse_yes_no(text)
            records.append({"key": q["key"], "split": q["split"], "question_id": q["question_id"],
                            "image": q["image"], "question": q["text"], "label": q["label"], "prediction": text,
                            "parsed": parsed, "correct": parsed == q["label"]})
        metrics: dict[str, Any] = {}
        for split in self.splits:
            rows = [r for r in records if r["split"] == split]
            if lmms:
                metrics[split] = lmms_eval_metrics([r["prediction"] for r in rows], [r["label"] for r in rows])
            else:
                metrics[split] = binary_metrics([r["parsed"] == "yes" for r in rows],
                                                [r["label"] == "yes" for r in rows])
        if lmms:   # the pooled `pope` task
            pooled = lmms_eval_metrics([r["prediction"] for r in records], [r["label"] for r in records])
            metrics.update(f1=pooled["f1"], accuracy=pooled["accuracy"], n_other=pooled["n_other"])
        else:
            metrics["f1"] = sum(metrics[s]["f1"] for s in self.splits) / len(self.splits)
            metrics["accuracy"] = sum(metrics[s]["accuracy"] for s in self.splits) / len(self.splits)
        metrics["n"] = len(records)
        return metrics, records

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """LLaVA-1.5's POPE column is the F1 averaged over the splits (lmms-eval's: pooled over them)."""
        return {"POPE": 100 * metrics["f1"]} if "f1" in metrics else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        other = metrics.get("n_other")
        return f"{other} of {metrics['n']} answers neither yes nor no (wrong)" if other else ""
