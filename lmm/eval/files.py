"""File readers shared by the benchmarks (clear errors naming the benchmark, the file and the line or record),
and the submission-table writer."""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lmm.eval.benchmark import with_suffix

log = logging.getLogger(__name__)


def parse_json(text: str, where: str, first_line: int = 1) -> Any:
    """json.loads, or a ValueError naming `where` (benchmark and file) and the line (`text` starting at
    the file's line `first_line`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} line {first_line + e.lineno - 1}: not valid JSON ({e.msg})") from None


def read_json(path: str | Path, benchmark: str) -> Any:
    return parse_json(Path(path).read_text(encoding="utf-8"), f"{benchmark}: {path}")


def iter_jsonl(path: str | Path, benchmark: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line, read as it goes (a caller may stop early)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = parse_json(line, f"{benchmark}: {path}", lineno)
            if isinstance(row, dict):
                yield lineno, row
            else:
                raise TypeError(f"{benchmark}: {path} line {lineno}: not a JSON object")


def read_jsonl(path: str | Path, benchmark: str) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line."""
    return list(iter_jsonl(path, benchmark))


def field(record: Mapping, key: str, where: str) -> Any:
    """record[key], or an error saying which file/record lacks it."""
    if not isinstance(record, Mapping) or key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    return record[key]


def check_images(benchmark: str, paths, root: str | Path) -> None:
    """One error for all missing images (a count and a few names, not 100k lines)."""
    paths = list(dict.fromkeys(paths))
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{benchmark}: {len(missing)} of {len(paths)} images missing under {root}, "
                                f"e.g. {', '.join(missing[:3])}")


def unique_key(keys: dict, key: str, where: str) -> None:
    if key in keys:
        raise ValueError(f"{where}: question id {key} appears twice (first at {keys[key]})")
    keys[key] = where


def read_question_jsonl(path: str | Path, benchmark: str, suffix: str | None,
                        limit: int | None) -> list[tuple[Any, str, str, str]]:
    """LLaVA's question jsonl (question_id, image, text), the first `limit` lines: (question id as in the
    file, image, question, prompt) per line. The text carries the suffix already: the prompt keeps it
    (or gets it), the question is shown bare. A repeated question id is an error."""
    rows = read_jsonl(path, benchmark)
    rows = rows[:limit] if limit is not None else rows
    questions, seen = [], {}
    for lineno, row in rows:
        where = f"{benchmark}: {path} line {lineno}"
        qid, image, text = (field(row, k, where) for k in ("question_id", "image", "text"))
        unique_key(seen, str(qid), where)
        question = text.rstrip()
        if suffix and question.endswith(suffix):
            question = question[: -len(suffix)].rstrip()
        questions.append((qid, image, question, with_suffix(text, suffix)))
    return questions


def write_table(table: list[list], stem: Path) -> list[Path]:
    """`<stem>.tsv`, and `<stem>.xlsx` when openpyxl (the `eval` extra) is installed. XML cannot hold most
    control characters, which a generated answer may contain: they become U+FFFD in the .xlsx (counted in
    a warning) and stay as generated in the TSV."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tsv = stem.with_name(stem.name + ".tsv")
    with tsv.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(table)
    try:
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        return [tsv]
    book, replaced = Workbook(), 0
    for cells in table:
        clean = []
        for cell in cells:
            if isinstance(cell, str):
                cell, n = ILLEGAL_CHARACTERS_RE.subn("\ufffd", cell)
                replaced += n
            clean.append(cell)
        book.active.append(clean)
    xlsx = stem.with_name(stem.name + ".xlsx")
    book.save(xlsx)
    if replaced:
        log.warning("%s: %d control characters written as U+FFFD (the .tsv beside it keeps them)", xlsx, replaced)
    return [tsv, xlsx]
