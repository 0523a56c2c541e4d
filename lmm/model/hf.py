"""Small helpers around transformers configs shared by the vision tower and the LLM."""
from __future__ import annotations

from transformers.models.auto.configuration_auto import CONFIG_MAPPING


def hf_config_from_dict(config: dict, strict: bool = True):
    """A transformers config object from a plain dict that names its `model_type`.

    transformers accepts unknown keys silently (a typo such as `hidden_sizee` would build a model
    of the default size); with `strict` an unknown key is an error listing the valid ones.
    """
    config = dict(config)
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"hf_config needs a known `model_type`, got {model_type!r}; valid: {sorted(CONFIG_MAPPING.keys())}")
    config_class = CONFIG_MAPPING[model_type]
    if strict:
        known = set(config_class().to_dict())
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {config_class.__name__} key(s) {unknown}; valid: {sorted(known)}")
    return config_class.from_dict(config)
