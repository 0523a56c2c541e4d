"""An LMM built on the meta device, with the list of files its weights will come from.

Which component goes on meta: every component the init checkpoint covers (its weights come from
there, so the pretrained files are not read at all), and every other component that can read its
pretrained safetensors later (transformers towers and LLMs). The rest is built for real: a
random-init connector, timm and open_clip towers (their libraries convert their own files), and
architecture-only test models.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lmm.model.lmm import LMM
from lmm.model.spec import to_plain
from lmm.model.weights import Source, checkpoint_sources, defers_weights, load_plain

COMPONENTS = ("vision", "connector", "llm")


def build_on_meta(spec: Mapping, checkpoint=None, modules=None) -> tuple[LMM, dict[str, Source]]:
    """(model, sources): `checkpoint` (an lmm checkpoint folder) gives the weights of `modules`
    (all when None); the other deferred components read their pretrained files."""
    spec = {k: to_plain(v) for k, v in spec.items()}
    covered = set() if not checkpoint else set(COMPONENTS) if modules is None else set(modules)
    unknown = sorted(covered - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown module(s) {unknown} to initialise from {checkpoint}; valid: {list(COMPONENTS)}")
    on_meta = covered | {name for name in COMPONENTS if name not in covered and defers_weights(spec[name])}
    model = LMM(**spec, on_meta=on_meta)
    sources = {}
    for name in sorted(on_meta - covered):
        sources.update(getattr(model, name).weight_sources(f"{name}."))
    if covered:
        sources.update(checkpoint_sources(model, Path(checkpoint), sorted(covered)))
    return model, sources


def load_on_meta(spec: Mapping, checkpoint) -> LMM:
    """An LMM holding a checkpoint's weights, with no random init and no copy (lmm.load)."""
    model, sources = build_on_meta(spec, checkpoint)
    load_plain(model, sources)
    return model
