"""The language model: any transformers causal LM with its tokenizer and chat template.

The LLM owns its facts: the tokenizer, the chat template (a wrong template silently ruins scores,
so it is configured here and never guessed from a model name) and its decoder-layer class.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lmm.data.templates import ChatTemplate
from lmm.model.hf import hf_config_from_dict
from lmm.model.meta import weights_deferred
from lmm.model.spec import build, spec_target


class LanguageModel(nn.Module):
    def __init__(
        self,
        tokenizer: str,
        template: ChatTemplate | dict,  # a template object or its spec
        pretrained: str | None = None,
        hf_config: dict | None = None,
        decoder_layer: str | None = None,
    ):
        super().__init__()
        if (pretrained is None) == (hf_config is None):
            raise ValueError("give exactly one of `pretrained` (path or hub id) and `hf_config` (architecture dict)")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if self.tokenizer.pad_token_id is None:
            # Padding is masked out of attention and loss, so any existing token serves.
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        self.weights_from = None  # set when the weights are read later (lmm.model.weights)
        if pretrained is not None and weights_deferred():
            # the architecture only (parameters on meta); the weights are read once, later
            config = AutoConfig.from_pretrained(pretrained)
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            self.weights_from = pretrained
        elif pretrained is not None:
            # float32 master weights whatever the checkpoint's dtype (transformers' default "auto"
            # would give fp16/bf16 parameters to the optimiser); mixed precision casts for compute.
            self.model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)
        else:
            self.model = AutoModelForCausalLM.from_config(hf_config_from_dict(self._derive(hf_config)))
        if self.model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the LLM embeds only "
                             f"{self.model.get_input_embeddings().num_embeddings}")
        self.template = template if hasattr(template, "render") else build(template)
        if decoder_layer is not None and self.decoder_layer_class.__name__ != decoder_layer:
            # the config names the architecture it expects; a weights path of another family fails here
            raise ValueError(f"the LLM config expects {decoder_layer} layers but {pretrained or 'hf_config'} "
                             f"builds {self.decoder_layer_class.__name__}")

    defers_pretrained = True  # a meta build can read its pretrained safetensors later (lmm.model.weights)

    def weight_sources(self, at: str) -> dict:
        """Sources of the deferred weights (`at`: this module's key prefix in the LMM)."""
        from lmm.model.weights import hf_sources

        return hf_sources(self.model, self.weights_from, f"{at}model.") if self.weights_from else {}

    def _derive(self, hf_config: dict) -> dict:
        """Vocabulary size and special ids come from the tokenizer, not from the config file."""
        cfg = dict(hf_config)
        cfg.setdefault("vocab_size", len(self.tokenizer))  # a given, too small one fails the check in __init__
        for name in ("bos", "eos", "pad"):
            cfg[f"{name}_token_id"] = getattr(self.tokenizer, f"{name}_token_id")
        return cfg

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers (input side first): partial tuning, FSDP and checkpointing wrap these."""
        return self.model.base_model.layers

    def output_modules(self) -> list[nn.Module]:
        """What sits after the decoder layers (final norm, LM head): trained by `partial` tuning."""
        base = self.model.base_model
        norm = getattr(base, "norm", None) or getattr(base, "final_layernorm", None)
        return [m for m in (norm, self.model.get_output_embeddings()) if m is not None]

    def lora_root(self) -> nn.Module:
        return self.model

    @property
    def decoder_layer_class(self) -> type:
        """The layers' own class, also once FSDP2 has sharded them (it swaps in an `FSDP<Name>`
        subclass): the spec written at export must name the architecture, not the wrapper."""
        from torch.distributed.fsdp import FSDPModule

        return next(c for c in type(self.layers[0]).__mro__ if not issubclass(c, FSDPModule))

    def embed(self, input_ids):
        return self.model.get_input_embeddings()(input_ids)

    def spec(self) -> dict:
        """Rebuilds the architecture with no download; the tokenizer is saved beside the weights."""
        return {
            "_target_": spec_target(self),
            "hf_config": self.model.config.to_dict(),
            "decoder_layer": self.decoder_layer_class.__name__,
            "template": self.template.spec(),
            "tokenizer": "tokenizer",
        }
