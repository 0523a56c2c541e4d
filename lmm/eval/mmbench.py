"""MMBench: multiple-choice questions on one image, with circular evaluation.

File: the official TSV (LLaVA's `playground/data/eval/mmbench/mmbench_dev_20230712.tsv`): index, question,
hint, A, B, C, D (more letters may follow), answer (absent from the test split), category, l2-category,
split, image (base64; in newer releases a short cell may instead name the index of a row holding the image).
Legacy TSVs also carry each question's rotated copies as rows with index + k * 1e6; those rows are not
asked again (the rotations below are the same prompts) but get a prediction in the submission table.

Prompt (LLaVA-1.5's `model_vqa_mmbench.py` with `--single-pred-prompt`): the hint and a newline when there
is a hint, the question, one "A. <option>" line per option until the first empty one, the suffix.

Circular evaluation: a question with N options is asked N times, its options moved one place further to
the left each time (LLaVA's `--all-rounds` order), and is right only if every rotation's answer points
back to the gold option. `accuracy_single` is the first rotation alone (the plain pass).

An answer is mapped to an option by `lmm.eval.choices.match_option`; what it leaves unresolved goes to the
optional judge (an OpenAI-compatible chat model), and what is still unresolved counts as wrong.

Convention `lmms_eval`: lmms-eval 0.7.3's prompt and answer reading (`lmm.eval.mmbench_lmms_eval`, its
judge-free `mmbench_en_dev_static` task); the same rotations, the same circular rule, no judge.
"""
from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.eval import mmbench_lmms_eval
from lmm.eval.benchmark import MULTIPLE_CHOICE, Benchmark, Request, require_files, with_suffix
from lmm.eval.choices import LETTERS, format_options, is_missing, match_option, rotate
from lmm.eval.files import write_table

COPY_OFFSET = 1_000_000   # legacy TSVs: the rotated copies of question i have index i + k * COPY_OFFSET
REQUIRED_COLUMNS = ("index", "question", "A", "B", "image")
JUDGE_SYSTEM = ("You read a multiple-choice question, its options and a student's reply, and say which option "
                "the reply chooses. Answer with that option's letter alone. If the reply chooses no option, "
                "several options, or cannot be understood, answer Z.")


def judge_messages(question: str, options: Sequence[str], answer: str) -> list[dict]:
    """Chat messages asking the judge which option `answer` chooses (letters as shown to the model)."""
    user = f"Question: {question}\nOptions:\n{format_options(options)}\nReply: {answer}\nChosen option letter:"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


class MMBench(Benchmark):
    name = "mmbench"
    max_new_tokens = 16
    conventions = ("llava", "lmms_eval")

    def __init__(self, questions: str, suffix: str | None = MULTIPLE_CHOICE, circular: bool = True,
                 judge: Any = None, limit: int | None = None, name: str = "mmbench",
                 max_new_tokens: int | None = None):
        """questions: the TSV; judge: None, a mapping of `lmm.eval.judge.Judge` arguments (url, model,
        api_key, ...) or any object with `complete_many(list of message lists) -> list of str`;
        limit: the first N questions (with their rotations)."""
        self.questions_file, self.suffix, self.circular = Path(questions), suffix, circular
        self.judge, self.limit, self.name = judge, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._data: tuple[list[dict], list[dict]] | None = None

    def check(self) -> None:
        require_files(self.name, self.questions_file)

    # ---- loading -------------------------------------------------------------------------------------

    def _load(self) -> tuple[list[dict], list[dict]]:
        """(questions asked, every TSV row kept for the submission table) in file order."""
        if self._data is not None:
            return self._data
        rows = self._read_rows()
        indices = {r["index"] for r in rows}
        images = {r["index"]: r["image"] for r in rows}
        questions = []
        for r in rows:
            base = r["index"] % COPY_OFFSET
            if r["index"] >= COPY_OFFSET and base in indices:
                continue   # a legacy rotated copy: asked through its base question's rotations
            if self.limit and len(questions) >= self.limit:
                continue
            r["image"] = self._image(r, images)
            questions.append(r)
        asked = {q["index"] for q in questions}
        kept = [r for r in rows if r["index"] in asked or (r["index"] % COPY_OFFSET in asked
                                                           and r["index"] >= COPY_OFFSET)]
        self._data = questions, kept
        return self._data

    def _read_rows(self) -> list[dict]:
        path = self.questions_file
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))   # a base64 image is far over csv's 128 KiB cell limit
        rows, seen = [], set()
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise ValueError(f"{self.name}: {path} lacks column(s) {', '.join(missing)} (has {columns})")
            self.letter_columns = [c for c in LETTERS if c in columns]
            for row in reader:
                where = f"{self.name}: {path}, line {reader.line_num}"
                try:
                    index = int(float(row["index"]))
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: index {row['index']!r} is not a number") from None
                if index in seen:
                    raise ValueError(f"{where}: index {index} repeats")
                seen.add(index)
                options = []
                for letter in self.letter_columns:   # up to the first empty option, as LLaVA reads them
                    if is_missing(row.get(letter)):
                        break
                    options.append(row[letter])
                if len(options) < 2:
                    raise ValueError(f"{where}: fewer than 2 options")
                answer = row.get("answer")
                gold = None
                if not is_missing(answer):
                    answer = answer.strip().upper()
                    if answer not in LETTERS[: len(options)]:
                        raise ValueError(f"{where}: answer {row['answer']!r} is not one of the options "
                                         f"{LETTERS[:len(options)]}")
                    gold = LETTERS.index(answer)
                if is_missing(row.get("question")) or is_missing(row.get("image")):
                    raise ValueError(f"{where}: empty question or image")
                rows.append({"index": index, "line": reader.line_num, "question": row["question"],
                             "hint": None if is_missing(row.get("hint")) else row["hint"], "options": options,
                             "gold": gold, "category": row.get("category") or "", "l2_category":
                             row.get("l2-category") or row.get("l2_category") or "", "image": row["image"],
                             "split": row.get("split") or ""})
        return rows

    def _image(self, row: dict, images: Mapping[int, str]) -> bytes:
        cell = row["image"].strip()
        if len(cell) <= 64 and cell.isdigit() and int(cell) in images and int(cell) != row["index"]:
            cell = images[int(cell)].strip()   # a reference to the row that holds the image
        try:
            return base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{self.name}: {self.questions_file}, line {row['line']}: image is not base64") from None

    # ---- prompts -------------------------------------------------------------------------------------

    def rotations(self, question: dict) -> int:
        return len(question["options"]) if self.circular else 1

    def prompt(self, question: dict, shift: int) -> str:
        shown = rotate(question["options"], shift)
        if self.convention == "lmms_eval":
            return mmbench_lmms_eval.prompt(question["question"], question["hint"], shown, self.suffix)
        text = question["question"] if question["hint"] is None else f"{question['hint']}\n{question['question']}"
        return with_suffix(f"{text}\n{format_options(shown)}", self.suffix)

    def requests(self) -> list[Request]:
        questions, _ = self._load()
        return [Request(f"{q['index']}/{r}", self.prompt(q, r), [q["image"]])
                for q in questions for r in range(self.rotations(q))]

    # ---- scoring -------------------------------------------------------------------------------------

    def _judge_client(self):
        if self.judge is None or hasattr(self.judge, "complete_many"):
            return self.judge
        if not isinstance(self.judge, Mapping):
            raise TypeError(f"{self.name}: judge must be null, a mapping of Judge arguments or an object with "
                            f"complete_many, got {type(self.judge).__name__}")
        from lmm.eval.judge import make_judge  # imported here: only a run that needs the judge builds one
        self.judge = make_judge(self.judge)
        return self.judge

    def _read_lmms_eval(self, questions: list[dict], prompts: list[dict]) -> dict[int, bool]:
        """Each prompt's shown position as lmms-eval reads it; returns question index -> right (circular)."""
        by_question, hits = defaultdict(list), {}
        for p in prompts:
            by_question[p["question"]["index"]].append(p)
        for q in questions:
            ps, gold = by_question[q["index"]], q["gold"]
            if gold is None:   # no gold: each answer read on its own
                read = [mmbench_lmms_eval.infer(p["answer"], p["shown"])
                        or mmbench_lmms_eval.extract_letter(p["answer"], LETTERS[: min(p["n"], 4)]) for p in ps]
            else:
                rotations = [(p["answer"], p["shown"], LETTERS[(gold - p["shift"]) % p["n"]]) for p in ps]
                hits[q["index"]], read = mmbench_lmms_eval.question_hit(rotations)
            for p, letter in zip(ps, read):
                position = LETTERS.index(letter) if letter is not None else None
                if position is not None and position < p["n"]:
                    p["position"], p["by"] = position, "lmms_eval"
        return hits

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        questions, _ = self._load()
        lmms = self.convention == "lmms_eval"
        prompts = []   # one per request: the shown options, the answer, and the chosen original option
        for q in questions:
            n = len(q["options"])
            for r in range(self.rotations(q)):
                shown = rotate(q["options"], r)
                text = answers.get(f"{q['index']}/{r}", "")
                pos = None if lmms else match_option(text, shown)
                prompts.append({"question": q, "shift": r, "shown": shown, "answer": text, "position": pos,
                                "by": "rule" if pos is not None else None, "n": n})
        hits = self._read_lmms_eval(questions, prompts) if lmms else {}
        unresolved = [p for p in prompts if p["position"] is None]
        n_judged = 0
        client = self._judge_client() if unresolved and not lmms else None
        if client is not None:
            replies = client.complete_many([judge_messages(p["question"]["question"], p["shown"], p["answer"])
                                            for p in unresolved])
            n_judged = len(unresolved)
            for p, reply in zip(unresolved, replies):
                pos = match_option(reply or "", p["shown"])
                if pos is not None:
                    p["position"], p["by"] = pos, "judge"
        for p in prompts:   # shown position -> original option index
            p["choice"] = None if p["position"] is None else (p["position"] + p["shift"]) % p["n"]

        records, by_question = [], defaultdict(list)
        for p in prompts:
            by_question[p["question"]["index"]].append(p)
        for q in questions:
            ps = by_question[q["index"]]
            gold = q["gold"]
            rounds = [{"shift": p["shift"], "answer": p["answer"],
                       "letter": None if p["position"] is None else LETTERS[p["position"]],
                       "chosen": None if p["choice"] is None else LETTERS[p["choice"]], "by": p["by"],
                       "correct": gold is not None and p["choice"] == gold} for p in ps]
            records.append({"index": q["index"], "question": q["question"], "hint": q["hint"],
                            "options": q["options"], "category": q["category"], "l2_category": q["l2_category"],
                            "gold": None if gold is None else LETTERS[gold], "rounds": rounds,
                            "correct_single": rounds[0]["correct"],
                            "correct": hits[q["index"]] if q["index"] in hits else all(r["correct"] for r in rounds)})

        scored = [r for r in records if r["gold"] is not None]
        metrics: dict[str, Any] = {"n": len(scored), "n_questions": len(records), "n_prompts": len(prompts),
                                   "n_unresolved": sum(p["choice"] is None for p in prompts), "n_judged": n_judged}
        if scored:
            metrics["accuracy"] = sum(r["correct"] for r in scored) / len(scored)
            metrics["accuracy_single"] = sum(r["correct_single"] for r in scored) / len(scored)
            for field in ("category", "l2_category"):
                groups = defaultdict(list)
                for r in scored:
                    if r[field]:
                        groups[r[field]].append(r["correct"])
                if groups:
                    metrics[field] = {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}
        return metrics, records

    # ---- submission ----------------------------------------------------------------------------------

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """A submission table, one row per TSV row asked (legacy rotated copies included): index, question,
        the options, prediction (the letter chosen, in that row's own option order; the raw answer when
        unresolved), and answer/split when the TSV has them. Always TSV; also .xlsx, the format the MMBench
        server takes, when openpyxl is installed."""
        questions, kept = self._load()
        by_index = {q["index"]: q for q in questions}
        by_record = {r["index"]: r for r in records}
        has_answer = any(r["gold"] is not None for r in kept)
        has_split = any(r["split"] for r in kept)
        width = len(self.letter_columns)
        table = [["index", "question", *self.letter_columns, "prediction"]
                 + ["answer"] * has_answer + ["split"] * has_split]
        for row in kept:
            base = row["index"] if row["index"] in by_index else row["index"] % COPY_OFFSET
            cells = [row["index"], row["question"], *(row["options"] + [""] * width)[:width],
                     _prediction(by_index[base], by_record[base], row["options"])]
            if has_answer:
                cells.append("" if row["gold"] is None else LETTERS[row["gold"]])
            if has_split:
                cells.append(row["split"])
            table.append(cells)
        return write_table(table, Path(out_dir) / f"{self.name}_submission")

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"MMBench": 100 * metrics["accuracy"]} if "accuracy" in metrics else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        unresolved = metrics.get("n_unresolved", 0)
        return f"{unresolved} of {metrics['n_prompts']} answers name no option (wrong)" if unresolved else ""


def _prediction(question: dict, record: dict, shown: list[str]) -> str:
    """What a row showing the options in the order `shown` gets in the submission: the rotation asked in
    that order (the first one when none was) gives the chosen option, written as its letter in `shown`;
    the raw answer when that rotation was unresolved or the option is not found once in `shown`."""
    options, rounds = question["options"], {r["shift"]: r for r in record["rounds"]}
    shift = next((r for r in rounds if rotate(options, r) == shown), 0)
    chosen = rounds[shift]["chosen"]
    if chosen is None:
        return rounds[shift]["answer"]
    where = [i for i, text in enumerate(shown) if text == options[LETTERS.index(chosen)]]
    return LETTERS[where[0]] if len(where) == 1 else rounds[shift]["answer"]
