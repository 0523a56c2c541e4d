"""python -m lmm.export checkpoint=PATH format=hf_llava out=DIR: write an lmm checkpoint in another
tool's format.

Formats:
  hf_llava   transformers' LlavaForConditionalGeneration folder (config, safetensors, tokenizer with
             lmm's chat template, processor): loads with `from_pretrained`, `pipeline("image-text-to-text")`
             and the tools that read that class. Covers HF CLIP/SigLIP towers + mlp2x_gelu + an HF
             causal LM whose logits are its LM head's output; anything else is refused, naming the part.
"""
import sys

import hydra
from omegaconf import DictConfig

FORMATS = ("hf_llava",)


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {list(FORMATS)}")


def export(checkpoint: str, format: str, out: str) -> str:
    check_format(format)
    from lmm.model.checkpoint import load
    from lmm.model.hf_llava_export import export_hf_llava

    return str(export_hf_llava(load(checkpoint), out))


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_format(cfg.format)  # before the model stack loads (about 10 s): a typo is reported at once
    from lmm.model.hf_llava_export import NotExportable

    try:
        print(f"wrote {export(cfg.checkpoint, cfg.format, cfg.out)}")
    except NotExportable as err:  # a model this format cannot hold: one line, no traceback
        sys.exit(f"cannot export {cfg.checkpoint} as {cfg.format}: {err}")


if __name__ == "__main__":
    from lmm.secrets import check_overrides

    check_overrides(sys.argv[1:])
    main()
