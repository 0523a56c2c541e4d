"""What every benchmark provides to the evaluation runner.

A benchmark turns its files into `Request`s (a prompt and its images, one generation each), and
turns the generated answers back into metrics and prediction records. The runner owns the model,
the batching, the split over ranks and the gathering; a benchmark never sees a model, so every
scorer can be tested on hand-made answers.

Metrics are plain (possibly nested) dicts of numbers: rates are fractions in [0, 1], scores keep the
unit of their reference scorer (MME points, LLaVA-W relative score in %); counts are ints. The
`columns` of a benchmark are what the paper's table prints for it.
"""
from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

# LLaVA-1.5's prompt suffixes (its evaluation files and its SFT mix use the same wording).
SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."

# How answers are read and scored. `llava`: LLaVA-1.5's evaluation scripts, which the TinyLLaVA paper's
# numbers come from. `lmms_eval`: lmms-eval 0.7.3's task logic (its `process_results` and aggregations),
# which its leaderboards report; the two differ in how they read an answer (POPE by exact "yes"/"no",
# MME through its own parse, ScienceQA without "The answer is X", GQA ignoring punctuation).
CONVENTIONS = ("llava", "lmms_eval")

ImageRef = str | Path | bytes | Image.Image  # a file, encoded bytes (MMBench's base64 TSV) or a PIL image


def with_suffix(question: str, suffix: str | None) -> str:
    """`question` + newline + `suffix`, unless the question already ends with it (LLaVA's eval
    files carry the suffix in their text; appending it again would change the prompt). Without a
    suffix the question is asked as the file has it, as LLaVA's `model_vqa.py` does."""
    if not suffix:
        return question
    question = question.rstrip()
    if question.endswith(suffix):
        return question
    return f"{question}\n{suffix}"


def open_image(ref: ImageRef) -> Image.Image:
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, bytes):
        return Image.open(io.BytesIO(ref))
    return Image.open(ref)


def require_files(benchmark: str, *paths: str | Path) -> None:
    """A clear error naming every missing file, before a model is loaded."""
    missing = [str(p) for p in paths if p is not None and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{benchmark}: missing {', '.join(missing)} (set the benchmark's paths, "
                                f"e.g. eval_root=... or benchmark.{benchmark}.<key>=...)")


@dataclass
class Request:
    """One generation. `key` is unique within the benchmark (the runner checks it)."""

    key: str
    prompt: str                       # the user turn, suffix included; images are prepended as <image>
    images: list[ImageRef] = field(default_factory=list)


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"evaluation.convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return convention


class Benchmark(ABC):
    """Subclasses set `name` (default; the config key overrides it) and `max_new_tokens`, and list in
    `conventions` the scoring conventions their `score` implements (see CONVENTIONS)."""

    name: str = "benchmark"
    max_new_tokens: int = 16
    conventions: tuple[str, ...] = ("llava",)
    convention: str = "llava"

    def use_convention(self, convention: str) -> str:
        """Score by `convention` when this benchmark implements it, else by LLaVA-1.5's scripts (the
        runner says so in the table's notes). Returns the convention `score` will use."""
        check_convention(convention)
        self.convention = convention if convention in self.conventions else "llava"
        return self.convention

    def check(self) -> None:
        """Raise FileNotFoundError (via `require_files`) when the benchmark's files are missing."""

    @abstractmethod
    def requests(self) -> list[Request]:
        """Every generation the benchmark needs, in a fixed order."""

    @abstractmethod
    def score(self, answers: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
        """answers: request key -> generated text (stripped). Returns (metrics, prediction records);
        the records are written one JSON object per line and should carry what a reader needs to
        check a score by eye (question, gold, raw prediction, parsed prediction, correctness)."""

    def write_files(self, answers: Mapping[str, str], records: list[dict], out_dir: Path) -> list[Path]:
        """Files in the formats the official servers or scorers read (submissions, reviews)."""
        return []

    def columns(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The paper table's columns for this benchmark: label -> value as the paper prints it."""
        return {}

    def notes(self, metrics: Mapping[str, Any]) -> str:
        """What a reader of the table must know to trust its number: answers the scorer could not
        read, a score left out because no judge was configured. Empty when there is nothing to say."""
        return ""
