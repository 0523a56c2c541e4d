"""LLaVA-Bench (in-the-wild): open questions on 24 images, our answers rated against GPT-4's by an LLM.

Files (the `liuhaotian/llava-bench-in-the-wild` dataset, LLaVA's
`playground/data/eval/llava-bench-in-the-wild/`): `questions.jsonl` (question_id, image, text,
category: conv | detail | complex), `context.jsonl` (image, caption: the image described in words,
for a judge that cannot see it), `answers_gpt4.jsonl` (question_id, text: the reference answer) and
`images/`. The prompt is the question as is.

Review, as LLaVA's `eval_gpt_review_bench.py` + `summarize_gpt_review.py` do it: the judge reads the
caption, the question, the reference answer (assistant 1) and ours (assistant 2) plus a per-category
rule, and answers with the two 1-10 scores on its first line. Per category and overall, the
relative score is mean(ours) / mean(reference) * 100 with the means rounded to 3 decimals and the
result to 1 decimal, which is exactly what the reference summary prints: the metric `score` is that
overall relative score IN PERCENT (not a fraction), the unit in which LLaVA papers report LLaVA-W.
`mean_reference` / `mean_model` are the raw means on the 1-10 scale.

Where we differ from LLaVA's scripts, on purpose:
- an unreadable first line is asked again (with a reminder, temperature +0.5 per try) up to
  `parse_retries` times; if it stays unreadable the question is left out of the means and counted in
  `n_unparsed` (LLaVA averages in [-1, -1], which drags both means down);
- questions, references and reviews are matched by question_id (LLaVA zips the files line by line);
- the caption string is passed as is (LLaVA's script joins it with newlines as if it were a list,
  putting one character per line); a list of captions is joined with newlines;
- the system message and the rule prompts are our own wording; `judge_rules` takes a JSON file in
  the layout of LLaVA's `rule.json` ({"llava_bench_<category>": {"role", "prompt"}}), so LLaVA's own
  rules can be used.
Files: `<name>_answers.jsonl` (LLaVA's answer format) and `<name>_reviews.jsonl` (LLaVA's review
format, readable by `summarize_gpt_review.py`; unreadable reviews carry the tuple [-1, -1] as there).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import Benchmark, Request, require_files, with_suffix
from lmm.eval.files import parse_json, read_jsonl
from lmm.eval.judge import Judge, complete_parsed, make_judge, read_prompt

CATEGORIES = ("conv", "detail", "complex")
SYSTEM = "You are a careful and impartial reviewer who checks the quality of answers written by AI assistants."
REMINDER = ("\n\nImportant: the first line of your reply must hold only the two scores, numbers from 1 to 10, "
            "separated by a space.")
TEMPLATE = ("### Image description\n{context}\n\n### Question\n{question}\n\n"
            "### {role} 1\n{answer1}\n### End of {role} 1\n\n### {role} 2\n{answer2}\n### End of {role} 2\n\n"
            "### Task\n{rule}\n")


def parse_review(reply: str) -> tuple[float, float] | None:
    """The (reference, ours) scores from a review, or None. Rule: the first non-blank line, with
    commas, parentheses, brackets and markdown emphasis (`*`, `_`, backticks) turned into spaces, must
    be exactly two finite numbers in [0, 10]. "8 6", "8, 6", "(8, 6)", "**8 6**" parse;
    "Assistant 1: 8" or "8 6 7" do not."""
    lines = [line for line in reply.split("\n") if line.strip()]
    if not lines:
        return None
    first = lines[0]
    for mark in ",()[]*_`":
        first = first.replace(mark, " ")
    tokens = first.split()
    if len(tokens) != 2:
        return None
    try:
        scores = float(tokens[0]), float(tokens[1])
    except ValueError:
        return None
    return scores if all(math.isfinite(s) and 0 <= s <= 10 for s in scores) else None


def relative_score(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Means of (reference, ours) pairs and the relative score in %, rounded as LLaVA's summary."""
    if not pairs:
        return {"n": 0}
    mean_ref = sum(p[0] for p in pairs) / len(pairs)
    mean_model = sum(p[1] for p in pairs) / len(pairs)
    out = {"mean_reference": mean_ref, "mean_model": mean_model, "n": len(pairs)}
    if round(mean_ref, 3) > 0:
        out["score"] = round(round(mean_model, 3) / round(mean_ref, 3) * 100, 1)
    return out


def _read_records(benchmark: str, path: Path, required: tuple[str, ...]) -> list[dict]:
    """The file's records, each with the `required` fields and its `_line` number."""
    rows = []
    for number, row in read_jsonl(path, benchmark):
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{benchmark}: {path} line {number}: missing field(s) {', '.join(missing)}")
        rows.append({**row, "_line": number})
    return rows


class LLaVABench(Benchmark):
    """LLaVA-Bench in-the-wild (name `llavaw`).

    judge: Judge keyword arguments (url, model, ...) or a Judge; None writes the answers only.
    judge_rules: rule file (default: ours, lmm/eval/prompts/llavaw_rules.json). judge_temperature:
    0.2 and judge_max_tokens: 1024, as LLaVA's review script (None: the judge's own settings).
    max_new_tokens: 512, not LLaVA's 1024: the reference answers are mostly well under 400 tokens,
    and our LLMs have 2048-token windows of which 576-729 go to the image.
    """

    name = "llavaw"
    max_new_tokens = 512

    def __init__(self, questions: str, context: str, reference_answers: str, image_root: str,
                 judge: Judge | Mapping | None = None, judge_rules: str | None = None,
                 judge_system: str | None = None, judge_temperature: float | None = 0.2,
                 judge_max_tokens: int | None = 1024, parse_retries: int = 2, max_new_tokens: int = 512,
                 suffix: str | None = None, limit: int | None = None, name: str = "llavaw"):
        self.questions_file, self.context_file = Path(questions), Path(context)
        self.reference_file, self.image_root = Path(reference_answers), Path(image_root)
        self.judge = make_judge(judge)
        self.judge_rules, self.judge_system = judge_rules, judge_system or SYSTEM
        self.judge_temperature, self.judge_max_tokens = judge_temperature, judge_max_tokens
        self.parse_retries, self.max_new_tokens = int(parse_retries), int(max_new_tokens)
        self.suffix, self.limit, self.name = suffix, limit, name
        self._questions: list[dict] | None = None

    # -- data ----------------------------------------------------------------------------------

    def questions(self) -> list[dict]:
        """Questions in file order (the first `limit`), each with its `context` and `reference`."""
        if self._questions is not None:
            return self._questions
        rows = _read_records(self.name, self.questions_file, ("question_id", "image", "text", "category"))
        rows = rows[: self.limit] if self.limit else rows
        contexts = {}
        for row in _read_records(self.name, self.context_file, ("image", "caption")):
            caption = row["caption"]
            contexts[row["image"]] = "\n".join(caption) if isinstance(caption, list) else str(caption)
        references = {r["question_id"]: r for r in _read_records(self.name, self.reference_file, ("question_id", "text"))}
        seen = set()
        for row in rows:
            where = f"{self.name}: {self.questions_file} line {row['_line']}"
            if row["question_id"] in seen:
                raise ValueError(f"{where}: duplicate question_id {row['question_id']!r}")
            seen.add(row["question_id"])
            if row["category"] not in CATEGORIES:
                raise ValueError(f"{where}: category {row['category']!r} is not one of {', '.join(CATEGORIES)}")
            if row["image"] not in contexts:
                raise ValueError(f"{where}: image {row['image']!r} has no caption in {self.context_file}")
            if row["question_id"] not in references:
                raise ValueError(f"{where}: question_id {row['question_id']!r} has no reference answer "
                                 f"in {self.reference_file}")
            reference = references[row["question_id"]]
            row["context"], row["reference"] = contexts[row["image"]], reference["text"]
            row["reference_id"] = reference.get("answer_id", row["question_id"])
        self._questions = rows
        return rows

    def check(self) -> None:
        require_files(self.name, self.questions_file, self.context_file, self.reference_file, self.image_root)
        require_files(self.name, *(self.image_root / q["image"] for q in self.questions()))
        if self.judge is not None:
            self.rules()

    def rules(self) -> dict[str, dict]:
        if self.judge_rules is None:
            text, where = read_prompt(None, "llavaw_rules.json"), "lmm/eval/prompts/llavaw_rules.json"
        else:
            text, where = read_prompt(self.judge_rules, ""), self.judge_rules
        rules = parse_json(text, f"{self.name}: {where}")
        for category in {q["category"] for q in self.questions()}:
            rule = rules.get(f"llava_bench_{category}") if isinstance(rules, dict) else None
            if not isinstance(rule, dict) or not {"role", "prompt"} <= rule.keys():
                raise ValueError(f"{self.name}: {where} has no rule 'llava_bench_{category}' "
                                 "with 'role' and 'prompt'")
        return rules

    @staticmethod
    def key(question: dict) -> str:
        return str(question["question_id"])

    def requests(self) -> list[Request]:
        return [Request(self.key(q), with_suffix(q["text"], self.suffix), [self.image_root / q["image"]])
                for q in self.questions()]

    # -- scoring -------------------------------------------------------------------------------

    def _answer(self, answers: Mapping[str, str], key: str) -> str:
        if key not in answers:
            raise KeyError(f"{self.name}: no answer for question_id {key}")
        return answers[key]

    def review_request(self, rule: dict, question: dict, answer: str) -> list[dict[str, str]]:
        content = TEMPLATE.format(context=question["context"], question=question["text"], role=rule["role"],
                                  answer1=question["reference"], answer2=answer, rule=rule["prompt"])
        return [{"role": "system", "content": self.judge_system}, {"role": "user", "content": content}]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        questions = self.questions()
        records = [{"key": self.key(q), "question_id": q["question_id"], "category": q["category"],
                    "image": q["image"], "question": q["text"],
                    "reference": q["reference"], "reference_id": q["reference_id"],
                    "prediction": self._answer(answers, self.key(q))} for q in questions]
        if self.judge is None:
            return {"judged": 0, "n": len(records)}, records
        rules = self.rules()
        chats = [self.review_request(rules[f"llava_bench_{q['category']}"], q, rec["prediction"])
                 for q, rec in zip(questions, records)]
        results = complete_parsed(self.judge, chats, parse_review, REMINDER, self.parse_retries,
                                  temperature=self.judge_temperature, max_tokens=self.judge_max_tokens,
                                  desc=f"{self.name} judge")
        for rec, (scores, replies) in zip(records, results):
            rec.update(scores=list(scores) if scores else None, review=replies[-1], judge_replies=replies,
                       judge_model=self.judge.model)
        overall = relative_score([tuple(r["scores"]) for r in records if r["scores"]])
        metrics: dict[str, Any] = {"judged": 1, **overall,
                                   "n_unparsed": sum(r["scores"] is None for r in records)}
        for category in CATEGORIES:
            in_category = [r for r in records if r["category"] == category]
            if in_category:
                metrics[category] = {**relative_score([tuple(r["scores"]) for r in in_category if r["scores"]]),
                                     "n_unparsed": sum(r["scores"] is None for r in in_category)}
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        answer_file = out_dir / f"{self.name}_answers.jsonl"
        with answer_file.open("w", encoding="utf-8") as f:
            for q in self.questions():
                key = self.key(q)
                f.write(json.dumps({"question_id": q["question_id"], "prompt": q["text"],
                                    "text": self._answer(answers, key), "answer_id": f"{self.name}-{key}",
                                    "model_id": "lmm", "metadata": {}}, ensure_ascii=False) + "\n")
        paths = [answer_file]
        reviewed = [r for r in records if "review" in r]
        if reviewed:
            review_file = out_dir / f"{self.name}_reviews.jsonl"
            with review_file.open("w", encoding="utf-8") as f:
                for i, r in enumerate(reviewed, 1):
                    f.write(json.dumps({"id": i, "question_id": r["question_id"],
                                        "answer1_id": r["reference_id"], "answer2_id": f"{self.name}-{r['key']}",
                                        "category": f"llava_bench_{r['category']}", "content": r["review"],
                                        "tuple": r["scores"] or [-1, -1]}, ensure_ascii=False) + "\n")
            paths.append(review_file)
        return paths

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"LLaVA-W": metrics["score"]} if metrics.get("judged") and "score" in metrics else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        if not metrics.get("judged"):
            return "not scored: no judge configured (answers written)"
        unparsed = metrics.get("n_unparsed", 0)
        return f"{unparsed} unreadable judge reviews left out" if unparsed else ""
