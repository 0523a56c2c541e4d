"""Sample predictions for the end-of-stage callback: prompt the model with training records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from lmm.data.formats import image_paths, to_messages
from lmm.data.tokenize import SampleError, encode_segments
from lmm.eval.generate import left_pad


def _prompts(datamodule, n: int) -> list[dict]:
    """Up to n usable records as (prompt ids, images, reference); unusable ones are passed over."""
    processor, source, rows = datamodule.processor, datamodule.source, []
    for index in np.flatnonzero(datamodule.table.status == 0)[: 4 * n]:
        if len(rows) == n:
            break
        index = int(index)
        try:
            record = source.read(index)
            messages = to_messages(record, processor.image_placeholder, processor.leading_assistant)
            ids, _ = encode_segments(processor.template.render(messages[:1], add_generation_prompt=True),
                                     processor.tokenizer)
            paths = image_paths(record)
            files = [source.open_image(index, p) for p in paths]
            images = [Image.open(f).convert("RGB") for f in files]  # decoded once: model input and W&B image
            pixels = [processor.image_transform.pixels(im) for im in images]
        except (SampleError, ValueError, OSError):
            continue
        rows.append({"ids": ids, "pixels": pixels, "pil": images,
                     "images": [str(f) if isinstance(f, (str, Path)) else p for f, p in zip(files, paths)],
                     "prompt": messages[0].content, "reference": messages[1].content})
    return rows


@torch.no_grad()
def predict_samples(pl_module, datamodule, n: int, max_new_tokens: int) -> list[dict]:
    """Runs on every rank with the same inputs: under FSDP2 all ranks must take part in each
    forward (`synced_gpus` keeps them stepping together until every rank has finished)."""
    rows = _prompts(datamodule, n)
    if not rows:
        return []
    model, tokenizer = pl_module.model, datamodule.processor.tokenizer
    was_training = model.training
    model.eval()
    if pl_module.sharded:
        model.unshard()  # the root unit's weights (embeddings, connector, head) are used outside its forward
    ids, mask = left_pad([r["ids"] for r in rows], tokenizer.pad_token_id)
    pixels = [p for r in rows for p in r["pixels"]]
    device = pl_module.device
    pixel_values = torch.stack(pixels).to(device) if pixels else None
    new = model.generate(ids.to(device), pixel_values, mask.to(device), max_new_tokens=max_new_tokens,
                         synced_gpus=pl_module.sharded)
    if pl_module.sharded:
        model.reshard()
    model.train(was_training)
    for row, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
        row["prediction"] = text.strip()
    return rows


def log_samples(rows: list[dict], trainer) -> None:
    stage_dir = Path(trainer.default_root_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with (stage_dir / "samples.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("images", "prompt", "reference", "prediction")}) + "\n")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            data = [[wandb.Image(r["pil"][0]) if r["pil"] else None, r["prompt"], r["reference"], r["prediction"]]
                    for r in rows]
            logger.log_table("samples/predictions", columns=["image", "prompt", "reference", "prediction"], data=data)
