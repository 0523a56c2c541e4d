"""MM-Vet: open-ended questions graded 0-1 by an LLM against a ground truth.

Files (the official `mm-vet.zip`, LLaVA's `playground/data/eval/mm-vet/`): `mm-vet.json`, a dict
{"v1_0": {"imagename", "question", "answer", "capability": ["rec", "ocr", ...]}, ...}, and
`images/<imagename>`. The prompt is the question as is (LLaVA-1.5 adds no suffix).

`write_files` always writes `<name>_submission.json`, {"v1_0": "<answer>", ...}: the file the
official evaluator (`mm-vet_evaluator.py`, the notebook, the online grader) reads. With a `judge`
configured, `score` grades every answer itself, as the official evaluator does:

- request: the grader prompt, a newline, then the table row `question | ground truth | prediction | `
  whose last cell the judge fills in; `<AND>`/`<OR>` in the ground truth get spaces around them;
- reply: the first whitespace-separated token must be a number in [0, 1] (see `parse_correctness`);
  otherwise the row is asked again with a reminder and a temperature raised by 0.5 per try, up to
  `parse_retries` times; a sample still unparsed scores 0.0 (as the official evaluator after its
  five tries) and is counted in `n_unparsed`;
- aggregate: total = mean grade over all samples; per capability = mean over the samples tagged
  with it (a sample counts for each of its capabilities); per capability integration = mean over
  the samples with exactly that set. One grading run (the official default; the paper averaged 5).

The grades go to `<name>_grades.json` in the official evaluator's grade-file layout ({id: {"model",
"content", "score"} lists}). Without a judge the metrics say `judged: 0` and only the submission
is written. Our grader prompt is our own wording; `judge_prompt` points to another text file (e.g.
the official prompt), used verbatim.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import Benchmark, Request, require_files, with_suffix
from lmm.eval.files import read_json
from lmm.eval.judge import Judge, complete_parsed, make_judge, read_prompt

CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")  # the paper's order
REMINDER = "\nReply with the correctness score only: a single number from 0.0 to 1.0."


def parse_correctness(reply: str) -> float | None:
    """The grade in a judge reply, or None. Rule (the official evaluator's, a little more lenient):
    the first whitespace-separated token, after a leading table bar `|` and trailing `.,;|` are
    dropped, must be a finite number in [0, 1]. "0.5", "1.0\\n", "| 0.6 |", "1." parse;
    "Correctness: 0.5", "7", "N/A" do not."""
    text = reply.strip().lstrip("|").strip()
    if not text:
        return None
    token = text.split()[0].rstrip(".,;|") or text.split()[0]
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _cap_order(cap: str) -> tuple[int, str]:
    return (CAPABILITIES.index(cap), "") if cap in CAPABILITIES else (len(CAPABILITIES), cap)


def aggregate(samples: list[tuple[list[str], float]]) -> dict[str, Any]:
    """samples: (capabilities, grade in [0, 1]) per sample -> total, per-capability and
    per-integration means (fractions) with their counts."""
    n = len(samples)
    caps: dict[str, list[float]] = {}
    sets: dict[str, list[float]] = {}
    for sample_caps, grade in samples:
        ordered = sorted(set(sample_caps), key=_cap_order)
        for cap in ordered:
            caps.setdefault(cap, []).append(grade)
        sets.setdefault("_".join(ordered), []).append(grade)

    def summary(grades: list[float]) -> dict[str, Any]:
        return {"score": sum(grades) / len(grades), "n": len(grades)}

    return {
        "score": sum(g for _, g in samples) / n if n else 0.0,
        "n": n,
        "capability": {cap: summary(caps[cap]) for cap in sorted(caps, key=_cap_order)},
        # most frequent combinations first, as the official table
        "integration": {name: summary(g) for name, g in sorted(sets.items(), key=lambda kv: -len(kv[1]))},
    }


class MMVet(Benchmark):
    """MM-Vet (name `mmvet`). questions: mm-vet.json; image_root: its images/ folder.

    judge: Judge keyword arguments (url, model, ...) or a Judge; None writes the submission only.
    judge_prompt: grader prompt file (default: ours, lmm/eval/prompts/mmvet_grader.txt).
    judge_max_tokens: 3 as the official evaluator (a grade is at most 3 tokens); raise it for a
    judge that writes more before the number. judge_temperature: 0 as the official one (None: the
    judge's own). max_new_tokens: 512, not LLaVA's 1024: MM-Vet answers (and the ground truths)
    are short to medium length, and our LLMs have 2048-token windows of which 576-729 go to the image.
    """

    name = "mmvet"
    max_new_tokens = 512

    def __init__(self, questions: str, image_root: str, judge: Judge | Mapping | None = None,
                 judge_prompt: str | None = None, judge_max_tokens: int | None = 3,
                 judge_temperature: float | None = 0.0, parse_retries: int = 4, max_new_tokens: int = 512,
                 suffix: str | None = None, limit: int | None = None, name: str = "mmvet"):
        self.questions_file, self.image_root = Path(questions), Path(image_root)
        self.judge = make_judge(judge)
        self.judge_prompt = judge_prompt
        self.judge_max_tokens, self.judge_temperature = judge_max_tokens, judge_temperature
        self.parse_retries, self.max_new_tokens = int(parse_retries), int(max_new_tokens)
        self.suffix, self.limit, self.name = suffix, limit, name
        self._items: list[tuple[str, dict]] | None = None

    # -- data ----------------------------------------------------------------------------------

    def items(self) -> list[tuple[str, dict]]:
        """(id, record) in file order, the first `limit` of them."""
        if self._items is None:
            data = read_json(self.questions_file, self.name)
            if not isinstance(data, dict):
                raise ValueError(f"{self.name}: {self.questions_file}: expected an object {{id: record}}, "
                                 f"got {type(data).__name__}")
            items = list(data.items())[: self.limit] if self.limit else list(data.items())
            for key, record in items:
                self._validate(key, record)
            self._items = items
        return self._items

    def _validate(self, key: str, record: Any) -> None:
        problem = None
        if not isinstance(record, dict):
            problem = f"expected an object, got {type(record).__name__}"
        elif missing := [f for f in ("imagename", "question", "answer", "capability") if f not in record]:
            problem = f"missing field(s) {', '.join(missing)}"
        elif not all(isinstance(record[f], str) for f in ("imagename", "question", "answer")):
            problem = "'imagename', 'question' and 'answer' must be strings"
        elif not (isinstance(record["capability"], list) and record["capability"]
                  and all(isinstance(c, str) for c in record["capability"])):
            problem = "'capability' must be a non-empty list of strings"
        if problem:
            raise ValueError(f"{self.name}: {self.questions_file}, record {key!r}: {problem}")

    def check(self) -> None:
        require_files(self.name, self.questions_file, self.image_root)
        require_files(self.name, *(self.image_root / r["imagename"] for _, r in self.items()))
        if self.judge is not None:
            read_prompt(self.judge_prompt, "mmvet_grader.txt")

    def requests(self) -> list[Request]:
        return [Request(key, with_suffix(r["question"], self.suffix), [self.image_root / r["imagename"]])
                for key, r in self.items()]

    # -- scoring -------------------------------------------------------------------------------

    def _answer(self, answers: Mapping[str, str], key: str) -> str:
        if key not in answers:
            raise KeyError(f"{self.name}: no answer for {key!r}")
        return answers[key]

    def grader_request(self, prompt: str, record: dict, prediction: str) -> str:
        truth = record["answer"].replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
        return prompt + "\n" + " | ".join([record["question"], truth, prediction, ""])

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        items = self.items()
        records = [{"key": key, "question": r["question"], "answer": r["answer"], "capability": r["capability"],
                    "image": r["imagename"], "prediction": self._answer(answers, key)} for key, r in items]
        if self.judge is None:
            return {"judged": 0, "n": len(records)}, records
        prompt = read_prompt(self.judge_prompt, "mmvet_grader.txt")
        chats = [[{"role": "user", "content": self.grader_request(prompt, r, rec["prediction"])}]
                 for (_, r), rec in zip(items, records)]
        results = complete_parsed(self.judge, chats, parse_correctness, REMINDER, self.parse_retries,
                                  temperature=self.judge_temperature, max_tokens=self.judge_max_tokens,
                                  desc=f"{self.name} judge")
        for rec, (grade, replies) in zip(records, results):
            rec.update(grade=0.0 if grade is None else grade, parsed=grade is not None,
                       judge_replies=replies, judge_model=self.judge.model)
        metrics = {"judged": 1, **aggregate([(rec["capability"], rec["grade"]) for rec in records]),
                   "n_unparsed": sum(not rec["parsed"] for rec in records)}
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        submission = out_dir / f"{self.name}_submission.json"
        submission.write_text(json.dumps({key: self._answer(answers, key) for key, _ in self.items()},
                                         indent=2, ensure_ascii=False), encoding="utf-8")
        paths = [submission]
        graded = [rec for rec in records if "grade" in rec]
        if graded:
            grades = out_dir / f"{self.name}_grades.json"
            grades.write_text(json.dumps({rec["key"]: {"model": [rec["judge_model"]],
                                                       "content": [rec["judge_replies"][-1].strip()],
                                                       "score": [rec["grade"]]} for rec in graded},
                                         indent=4, ensure_ascii=False), encoding="utf-8")
            paths.append(grades)
        return paths

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        # the official table prints percent with one decimal
        return {"MM-Vet": round(metrics["score"] * 100, 1)} if metrics.get("judged") else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        if not metrics.get("judged"):
            return "not scored: no judge configured (answers written)"
        unparsed = metrics.get("n_unparsed", 0)
        return f"{unparsed} unreadable judge grades counted as 0" if unparsed else ""
