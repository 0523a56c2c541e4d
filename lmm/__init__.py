"""lmm: small large-multimodal models (TinyLLaVA family) with Lightning + Hydra."""
from lmm.model.checkpoint import load
from lmm.model.lmm import LMM

__all__ = ["LMM", "load"]
