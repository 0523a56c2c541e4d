"""Writes small data sets in the published LLaVA formats: JPEG/PNG images under several roots,
JSON (list) and JSONL annotations, usable records and one record per bad-record kind."""
from __future__ import annotations

import io
import json
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def photo(seed: int, size=(48, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_images(root: Path, names: list[str]) -> None:
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(k, size=(40 + 4 * (k % 5), 30 + 3 * (k % 4))).save(path, quality=90) if path.suffix == ".jpg" \
            else photo(k).save(path)


def truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    photo(99, size=(64, 64)).save(buf, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def good_records(n: int, prefix: str = "r", image_dir: str = "coco") -> list[dict]:
    """n usable records: mostly one image (JPEG or PNG), every 5th text-only, every 7th two images,
    answers of varying length so lengths differ."""
    records = []
    for i in range(n):
        answer = " ".join(["blue"] * (1 + i % 6))
        rid = f"{prefix}{i}"
        if i % 5 == 4:
            records.append({"id": rid, "conversations": conv("describe a circle", answer)})
        elif i % 7 == 6:
            records.append({"id": rid, "image": [f"{image_dir}/{rid}a.jpg", f"{image_dir}/{rid}b.png"],
                            "conversations": conv("<image> and <image>: same colour?", answer)})
        else:
            ext = "jpg" if i % 2 else "png"
            records.append({"id": rid, "image": f"{image_dir}/{rid}.{ext}",
                            "conversations": conv("<image>\nwhat colour?", answer, "and the shape?", "circle")})
    return records


def bad_records(image_dir: str = "coco") -> dict[str, dict]:
    """One record per bad-record kind, keyed by the skip reason it must be counted under."""
    return {
        "image_missing": {"id": "b-missing", "image": f"{image_dir}/nope.jpg", "conversations": conv("<image>\nq", "a")},
        "image_corrupt": {"id": "b-corrupt", "image": f"{image_dir}/corrupt.jpg", "conversations": conv("<image>\nq", "a")},
        "image_truncated": {"id": "b-truncated", "image": f"{image_dir}/truncated.jpg", "conversations": conv("<image>\nq", "a")},
        "image_placeholder_mismatch": {"id": "b-noplaceholder", "image": f"{image_dir}/r0.png",
                                       "conversations": conv("no placeholder here", "a")},
        "image_placeholder_mismatch/no_image": {"id": "b-noimage", "conversations": conv("<image>\nq", "a")},
        "image_placeholder_mismatch/several": {"id": "b-two-placeholders", "image": f"{image_dir}/r0.png",
                                               "conversations": conv("<image> <image>\nq", "a")},
        "turn_order": {"id": "b-two-human", "conversations": [{"from": "human", "value": "x"},
                                                              {"from": "human", "value": "y"}]},
        "empty_turn": {"id": "b-empty", "conversations": conv("q", "  ")},
        "unknown_role": {"id": "b-role", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
        "too_long": {"id": "b-long", "image": f"{image_dir}/r0.png",
                     "conversations": conv("<image>\n" + "what colour is it? " * 200, "blue " * 200)},
    }


def write_dataset(root: Path, records: list[dict], name: str = "train.json", image_dir: str = "coco") -> Path:
    """Images every record names (except the deliberately broken ones) and the annotation file."""
    names = sorted({p for r in records for p in ([r["image"]] if isinstance(r.get("image"), str) else r.get("image") or [])})
    write_images(root, [n for n in names if Path(n).stem not in ("nope", "corrupt", "truncated")])
    if any(Path(n).stem == "corrupt" for n in names):
        (root / image_dir / "corrupt.jpg").write_bytes(b"this is not a JPEG at all")
    if any(Path(n).stem == "truncated" for n in names):
        truncated_jpeg(root / image_dir / "truncated.jpg")
    path = root / name
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


class IdsRecorder(L.Callback):
    """For subprocess runs: keeps `<path>.rank<N>.json` listing the record ids this rank trained on
    (rewritten after every batch, so a killed run leaves what it saw)."""

    def __init__(self, path: str):
        self.path, self.ids = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ids += list(batch.get("ids", []))
        Path(f"{self.path}.rank{trainer.global_rank}.json").write_text(json.dumps(self.ids))
