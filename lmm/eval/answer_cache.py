"""Answers kept as they are generated, so that a killed evaluation continues where it stopped.

Each rank appends the answers of every finished generation batch to `<benchmark>/cache/rank<N>.jsonl`
(one line per request: key, prompt, answer; flushed and fsynced per batch). The file starts with a
header naming what the answers depend on: the checkpoint's weights (their sha256 from the manifest),
the generation settings, the batch size, the world size (a rank's share and so its batches depend
on it), the dtype and the device type. With `resume`, every rank reads the files whose header
matches and generation skips the batches whose requests are all answered; batches are planned over all requests as before, so the
answers equal an uninterrupted run's. A torn last line (killed mid-write) is dropped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from lmm import faults
from lmm.eval.benchmark import Request
from lmm.files import write_text

log = logging.getLogger(__name__)


def fingerprint(**what) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]


class AnswerCache:
    def __init__(self, folder: Path, rank: int, fingerprint: str, resume: bool):
        self.dir = Path(folder) / "cache"
        self.path = self.dir / f"rank{rank}.jsonl"
        self.fingerprint = fingerprint
        self.rows: dict[str, dict] = {}
        mine: list[dict] = []
        if resume and self.dir.is_dir():
            for path in sorted(self.dir.glob("rank*.jsonl")):
                rows = self._read(path)
                self.rows.update({r["key"]: r for r in rows})
                if path == self.path:
                    mine = rows
        # This rank's file, rewritten with its valid rows (a torn line must not run into the next one).
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in [{"fingerprint": fingerprint}, *mine]))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held while the benchmark runs)

    def _read(self, path: Path) -> list[dict]:
        lines = path.read_text(encoding="utf-8").split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            return []
        if header.get("fingerprint") != self.fingerprint:
            log.info("%s: answers of another checkpoint or settings, not reused", path)
            return []
        rows = []
        for n, line in enumerate(lines[1:], 2):
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if n < len(lines) - 1:  # only the last line may be torn by a kill
                    log.warning("%s line %d: unreadable, ignored", path, n)
        return rows

    def get(self, request: Request) -> str | None:
        row = self.rows.get(request.key)
        return row["answer"] if row is not None and row.get("prompt") == request.prompt else None

    def put(self, answered: list[tuple[Request, str]]) -> None:
        rows = [{"key": r.key, "prompt": r.prompt, "answer": a} for r, a in answered]
        self._file.write("".join(json.dumps(r) + "\n" for r in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows.update({r["key"]: r for r in rows})
        faults.reached("eval_batch")

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
