"""easy-vqa test questions as a short-answer benchmark: exact match after VQA normalisation,
overall and per question kind (color, shape, yes/no)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lmm.eval.generate import Query, generate_answers
from lmm.eval.metrics import exact_match


class EasyVQA:
    name = "easyvqa"

    def __init__(self, questions: str, image_root: str, limit: int | None = None):
        self.questions_file, self.image_root, self.limit = Path(questions), Path(image_root), limit

    def load(self) -> list[dict]:
        if not self.questions_file.is_file():
            raise FileNotFoundError(f"easy-vqa questions not found: {self.questions_file} (run lmm.data.easyvqa.prepare)")
        with self.questions_file.open() as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return rows[: self.limit] if self.limit else rows

    def run(self, model, batch_size: int = 64, max_new_tokens: int = 8, **gen) -> tuple[dict, list[dict]]:
        rows = self.load()
        queries = [Query(r["text"], [self.image_root / r["image"]]) for r in rows]
        answers = generate_answers(model, queries, batch_size=batch_size, max_new_tokens=max_new_tokens, **gen)
        predictions, by_kind = [], defaultdict(list)
        for row, answer in zip(rows, answers):
            correct = exact_match(answer, row["answer"])
            by_kind[row["kind"]].append(correct)
            predictions.append({**row, "prediction": answer, "correct": correct})
        scores = [p["correct"] for p in predictions]
        metrics = {"accuracy": sum(scores) / len(scores), "n": len(scores)}
        for kind, values in sorted(by_kind.items()):
            metrics[f"accuracy_{kind}"] = sum(values) / len(values)
        return metrics, predictions
