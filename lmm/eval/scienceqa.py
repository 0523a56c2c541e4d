"""ScienceQA-IMG: the test questions of ScienceQA that come with an image, scored as LLaVA-1.5 does.

Files (the official release, laid out as LLaVA's `playground/data/eval/scienceqa/`):
  problems.json     {pid: {"question", "choices", "answer": int, "hint", "image": "image.png" | null, ...}}
  pid_splits.json   {"test": [pid, ...], ...}
  images/test/<pid>/image.png

Prompt (LLaVA-1.5's `llava_test_CQM-A.json` with `--single-pred-prompt`): "Context: <hint>" when the hint is
not empty, the question, one "A. <choice>" line per choice, then the multiple-choice suffix.

Parsing follows LLaVA-1.5's `eval_science_qa.py`: the answer is exactly one of A-E; or it starts with
"X. "; or "The answer is X" followed by any character occurs exactly once. Anything else, and a letter
beyond the question's choices, is a failed parse and counts as wrong (LLaVA-1.5 returns -1 there; the
older random-guess fallback is unreachable in its code).

Convention `lmms_eval` (lmms-eval 0.7.3's scienceqa_img task, `parse_choice_lmms_eval`): the stripped
answer is one letter of the question's choices in either case, or starts with an upper-case letter and a
period; "The answer is X" is not read.

The paper's SQA-IMG is the accuracy over the image questions. Every question is generated on its own,
so asking only those (`image_only: true`, the default) gives the same number as LLaVA's run over the
whole test split for half the generations; `image_only: false` also reports the all-question accuracy.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import MULTIPLE_CHOICE, Benchmark, Request, require_files, with_suffix
from lmm.eval.choices import LETTERS, format_options
from lmm.eval.files import read_json

# LLaVA's scorer knows five letters (a tuple: membership is per letter, not per substring, so "AB" or ""
# is no letter); ScienceQA questions have at most five choices.
PARSE_LETTERS = ("A", "B", "C", "D", "E")
# As in LLaVA's scorer, '.' is any character: "The answer is B," matches, "...is B" at the very end does not.
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_choice(text: str, n_choices: int) -> int | None:
    """The chosen choice's index under LLaVA-1.5's rules, or None (a failed parse, scored wrong)."""
    if text in PARSE_LETTERS:
        letter = text
    elif len(text) >= 3 and text[0] in PARSE_LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _ANSWER_IS.findall(text)
        if len(found) != 1:
            return None
        letter = found[0]
    index = LETTERS.index(letter)
    return index if 0 <= index < min(n_choices, len(PARSE_LETTERS)) else None


def parse_choice_lmms_eval(text: str, n_choices: int) -> int | None:
    """The chosen choice's index as lmms-eval 0.7.3 reads a ScienceQA answer, or None (scored wrong)."""
    text = text.strip()
    letters = LETTERS[: min(n_choices, len(PARSE_LETTERS))]
    if text.upper() in letters and len(text) == 1:
        return letters.index(text.upper())
    if len(text) >= 2 and text[1] == "." and text[0] in letters:
        return letters.index(text[0])
    return None


def build_prompt(problem: Mapping[str, Any], suffix: str | None) -> str:
    hint = problem.get("hint") or ""
    context = f"Context: {hint}\n" if hint.strip() else ""
    return with_suffix(f"{context}{problem['question']}\n{format_options(problem['choices'])}", suffix)


class ScienceQA(Benchmark):
    name = "sqa_img"
    conventions = ("llava", "lmms_eval")
    max_new_tokens = 16

    def __init__(self, problems: str, pid_splits: str, image_root: str, split: str = "test",
                 image_only: bool = True, suffix: str | None = MULTIPLE_CHOICE, limit: int | None = None,
                 name: str = "sqa_img", max_new_tokens: int | None = None):
        self.problems_file, self.splits_file, self.image_root = Path(problems), Path(pid_splits), Path(image_root)
        self.split, self.image_only, self.suffix, self.limit, self.name = split, image_only, suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._questions: list[dict] | None = None

    def check(self) -> None:
        require_files(self.name, self.problems_file, self.splits_file, self.image_root)
        images = [q["image_path"] for q in self._load() if q["image_path"] is not None]
        require_files(self.name, *images)

    def _load(self) -> list[dict]:
        if self._questions is not None:
            return self._questions
        problems = read_json(self.problems_file, self.name)
        splits = read_json(self.splits_file, self.name)
        for path, content in ((self.problems_file, problems), (self.splits_file, splits)):
            if not isinstance(content, dict):
                raise TypeError(f"{self.name}: {path} must hold a JSON object, not {type(content).__name__}")
        if self.split not in splits:
            raise ValueError(f"{self.name}: {self.splits_file} has no split {self.split!r} (has {sorted(splits)})")
        questions = []
        for pid in splits[self.split]:
            pid = str(pid)
            problem = problems.get(pid)
            if not problem:
                raise ValueError(f"{self.name}: pid {pid} of split {self.split!r} is not in {self.problems_file}")
            missing = [k for k in ("question", "choices", "answer") if k not in problem]
            if missing:
                raise ValueError(f"{self.name}: {self.problems_file}, problem {pid}: missing {', '.join(missing)}")
            choices, answer = problem["choices"], problem["answer"]
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(PARSE_LETTERS):
                raise ValueError(f"{self.name}: {self.problems_file}, problem {pid}: choices must be a list of "
                                 f"2-{len(PARSE_LETTERS)} items, got {choices!r}")
            if not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise ValueError(f"{self.name}: {self.problems_file}, problem {pid}: answer {answer!r} is not a "
                                 f"choice index")
            image = problem.get("image")
            if self.image_only and not image:
                continue
            questions.append({"pid": pid, "problem": problem,
                              "image_path": self.image_root / pid / image if image else None})
        self._questions = questions[: self.limit] if self.limit else questions
        return self._questions

    def requests(self) -> list[Request]:
        return [Request(q["pid"], build_prompt(q["problem"], self.suffix),
                        [q["image_path"]] if q["image_path"] is not None else [])
                for q in self._load()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        records = []
        parse = parse_choice_lmms_eval if self.convention == "lmms_eval" else parse_choice
        for q in self._load():
            problem, text = q["problem"], answers.get(q["pid"], "")
            parsed = parse(text, len(problem["choices"]))
            records.append({"pid": q["pid"], "question": problem["question"], "choices": problem["choices"],
                            "has_image": q["image_path"] is not None, "gold": LETTERS[problem["answer"]],
                            "prediction": text, "parsed": None if parsed is None else LETTERS[parsed],
                            "correct": parsed == problem["answer"]})
        with_image = [r for r in records if r["has_image"]]
        metrics = _summary(with_image)
        if not self.image_only:
            metrics.update({f"{k}_all": v for k, v in _summary(records).items()})
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """The `--output-result` JSON of LLaVA's scorer: acc (in %), correct, count, pid -> chosen index
        (-1 for a failed parse) and pid -> raw output, over the questions asked."""
        correct = sum(r["correct"] for r in records)
        result = {"acc": 100 * correct / len(records) if records else 0.0, "correct": correct, "count": len(records),
                  "results": {r["pid"]: LETTERS.index(r["parsed"]) if r["parsed"] else -1 for r in records},
                  "outputs": {r["pid"]: r["prediction"] for r in records}}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / f"{self.name}_result.json"
        path.write_text(json.dumps(result, indent=2))
        return [path]

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"SQA-IMG": 100 * metrics["accuracy"]} if "accuracy" in metrics else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        failed = metrics.get("n_failed_parse", 0)
        return f"{failed} of {metrics['n']} answers give no letter (wrong)" if failed else ""


def _summary(records: list[dict]) -> dict[str, Any]:
    n = len(records)
    return {"accuracy": sum(r["correct"] for r in records) / n if n else 0.0, "n": n,
            "n_failed_parse": sum(r["parsed"] is None for r in records)}
