"""lmm: small large-multimodal models (TinyLLaVA family) with Lightning + Hydra.

`lmm.load` and `lmm.LMM` import torch and transformers when first used, not when `lmm` is imported:
every `python -m lmm.<command>` imports this package first, and a command that stops on a bad
argument should say so in a second, not after the model stack has loaded.
"""
__all__ = ["LMM", "load"]


def __getattr__(name: str):
    if name == "load":
        from lmm.model.checkpoint import load

        return load
    if name == "LMM":
        from lmm.model.lmm import LMM

        return LMM
    raise AttributeError(f"module 'lmm' has no attribute {name!r}")
