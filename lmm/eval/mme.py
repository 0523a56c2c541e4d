"""MME: 14 yes/no subtasks, two questions per image, scored as the official `eval_tool/calculation.py`.

Files: the official `MME_Benchmark_release_version/` folder (LLaVA's `playground/data/eval/MME/`), one
folder per subtask, laid out either as `<task>/images/<name>.<ext>` + `<task>/questions_answers_YN/<name>.txt`
or with the image and its .txt side by side in `<task>/`. Each .txt holds two lines `question<TAB>Yes|No`.

Prompt: LLaVA-1.5 (`llava_mme.jsonl`) drops the question's trailing "Please answer yes or no." and adds the
short-answer suffix; with `suffix: null` the official question is asked unchanged.

Scoring, as the official tool: the answer is lower-cased; "yes"/"no" exactly, else "yes" within its first
4 characters, else "no" within them, else "other" (always wrong). Per subtask, acc = questions right,
acc+ = images with both questions right, score = 100 * (acc + acc+) (out of 200). Perception is the sum
of the 10 perception scores (out of 2000), cognition of the 4 cognition scores (out of 800).

Convention `lmms_eval` (lmms-eval 0.7.3's mme task) reads answers its own way (`parse_yes_no_lmms_eval`:
stripped and without periods, "y"/"n" alone count) and scores them by the same formula.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import SHORT_ANSWER, Benchmark, Request, require_files, with_suffix

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
TASKS = PERCEPTION + COGNITION
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
YES_NO_PROMPT = "Please answer yes or no."
_SUMMARY_KEYS = {"perception", "cognition", "total", "n", "convention"}


def parse_yes_no(text: str) -> str:
    """'yes', 'no' or 'other', as the official calculation tool reads an answer."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def parse_yes_no_lmms_eval(text: str) -> str:
    """'yes', 'no' or 'other', as lmms-eval 0.7.3 reads an MME answer: lower-cased, stripped, periods
    deleted; "yes"/"no" exactly, a lone "y"/"n", else "yes" then "no" within the first 4 characters."""
    text = text.lower().strip().replace(".", "")
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    return parse_yes_no(text)   # then the official tool's rule


class MME(Benchmark):
    name = "mme"
    max_new_tokens = 16
    conventions = ("llava", "lmms_eval")

    def __init__(self, root: str, tasks: Sequence[str] = TASKS, suffix: str | None = SHORT_ANSWER,
                 limit: int | None = None, name: str = "mme", max_new_tokens: int | None = None):
        """root: the MME_Benchmark_release_version folder; limit: the first N images (2 questions each),
        in task order then file name order."""
        self.root, self.tasks = Path(root), [str(t) for t in tasks]
        if _SUMMARY_KEYS & set(self.tasks) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"{name}: task names must be unique and not {sorted(_SUMMARY_KEYS)}: {self.tasks}")
        self.suffix, self.limit, self.name = suffix, limit, name
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens
        self._questions: list[dict] | None = None

    def check(self) -> None:
        require_files(self.name, self.root, *(self.root / t for t in self.tasks))
        self._load()   # a .txt without its image, or a malformed line, is an error now rather than mid-run

    def _task_dirs(self, task: str) -> tuple[Path, Path]:
        folder = self.root / task
        if (folder / "images").is_dir():
            return folder / "images", folder / "questions_answers_YN"
        return folder, folder

    def _load(self) -> list[dict]:
        if self._questions is not None:
            return self._questions
        questions, n_images = [], 0
        for task in self.tasks:
            image_dir, qa_dir = self._task_dirs(task)
            require_files(self.name, image_dir, qa_dir)
            images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
            for txt in sorted(qa_dir.glob("*.txt")):
                if self.limit and n_images >= self.limit:
                    break
                image = images.get(txt.stem)
                if image is None:
                    raise FileNotFoundError(f"{self.name}: no image named {txt.stem}.* in {image_dir} for {txt}")
                lines = [(i, line.strip()) for i, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), 1)
                         if line.strip()]
                if len(lines) != 2:
                    raise ValueError(f"{self.name}: {txt} must hold 2 question lines (one image, two questions), "
                                     f"has {len(lines)}")
                for j, (line_no, line) in enumerate(lines):
                    question, _, answer = line.rpartition("\t")
                    if not question or answer.strip().lower() not in ("yes", "no"):
                        raise ValueError(f"{self.name}: {txt}, line {line_no}: expected 'question<TAB>Yes|No', "
                                         f"got {line!r}")
                    questions.append({"key": f"{task}/{txt.stem}/{j}", "task": task, "image": image.name,
                                      "image_path": image, "question": question, "gold": answer.strip()})
                n_images += 1
        self._questions = questions
        return questions

    def prompt(self, question: str) -> str:
        if self.suffix:
            stripped = question.rstrip()
            if stripped.endswith(YES_NO_PROMPT):
                question = stripped[: -len(YES_NO_PROMPT)].rstrip()
        return with_suffix(question, self.suffix)

    def requests(self) -> list[Request]:
        return [Request(q["key"], self.prompt(q["question"]), [q["image_path"]]) for q in self._load()]

    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        records = []
        parse = parse_yes_no_lmms_eval if self.convention == "lmms_eval" else parse_yes_no
        for q in self._load():
            text = answers.get(q["key"], "")
            parsed = parse(text)
            records.append({"key": q["key"], "task": q["task"], "image": q["image"], "question": q["question"],
                            "gold": q["gold"], "prediction": text, "parsed": parsed,
                            "correct": parsed == q["gold"].lower()})
        metrics: dict[str, Any] = {}
        for task in self.tasks:
            rows = [r for r in records if r["task"] == task]
            if not rows:   # cut off by `limit`
                continue
            by_image: dict[str, list[bool]] = defaultdict(list)
            for r in rows:
                by_image[r["image"]].append(r["correct"])
            acc = sum(r["correct"] for r in rows) / len(rows)
            acc_plus = sum(all(v) for v in by_image.values()) / len(by_image)
            metrics[task] = {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus), "n": len(rows),
                             "n_images": len(by_image), "n_other": sum(r["parsed"] == "other" for r in rows)}
        metrics["perception"] = sum(metrics[t]["score"] for t in PERCEPTION if t in metrics)
        metrics["cognition"] = sum(metrics[t]["score"] for t in COGNITION if t in metrics)
        metrics["total"] = metrics["perception"] + metrics["cognition"]
        metrics["n"] = len(records)
        return metrics, records

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """The official calculation tool's input, one `<task>.txt` per subtask in `<out_dir>/<name>_results/`
        (`python calculation.py --results_dir <that folder>`): image, question, gold, prediction, tab-separated,
        an image's two questions on consecutive lines. Tabs and newlines in a prediction become spaces so that
        the tool's line format holds."""
        folder = Path(out_dir) / f"{self.name}_results"
        folder.mkdir(parents=True, exist_ok=True)
        by_task: dict[str, list[str]] = defaultdict(list)
        for r in records:
            prediction = " ".join(r["prediction"].replace("\t", " ").splitlines())
            by_task[r["task"]].append("\t".join((r["image"], r["question"], r["gold"], prediction)) + "\n")
        paths = []
        for task, lines in by_task.items():
            path = folder / f"{task}.txt"
            path.write_text("".join(lines), encoding="utf-8")
            paths.append(path)
        return paths

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """LLaVA-1.5's MME column is the perception score (points)."""
        return {"MME": metrics["perception"]} if "perception" in metrics else {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        other = sum(m["n_other"] for m in metrics.values() if isinstance(m, Mapping) and "n_other" in m)
        return f"{other} of {metrics['n']} answers neither yes nor no (wrong)" if other else ""
