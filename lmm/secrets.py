"""Keep keys and tokens out of everything a run writes.

A run saves its configuration in several places: Hydra's `.hydra/config.yaml`, `overrides.yaml` and
`hydra.yaml` (written before any of our code runs), `run.json`, the logger's hyper-parameters
(W&B config, CSV `hparams.yaml`). So a secret given on the command line is refused before Hydra
starts, pointing to the `*_env` variant that names an environment variable instead; and a secret
that reaches the config another way (a YAML file) is replaced by REDACTED in every copy we write,
Hydra's files included.

What counts as a secret: a config key named like one (`api_key`, `token`, `password`, `*_api_key`,
`*_secret`, ...; never `*_env`, which holds a variable's name), or a value shaped like a known
provider's key (OpenAI `sk-...`, Hugging Face `hf_...`), under whatever key.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REDACTED = "REDACTED"
NAMES = {"api_key", "apikey", "token", "access_token", "auth_token", "hf_token", "secret", "secret_key", "password",
         "passwd"}
SUFFIXES = ("_api_key", "_apikey", "_secret", "_secret_key", "_password", "_access_token", "_auth_token", "_hf_token")
VALUE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,})")


class InlineSecretError(SystemExit):
    pass


def is_secret_name(key: str) -> bool:
    last = key.lstrip("+~").split(".")[-1].lower()
    return last in NAMES or last.endswith(SUFFIXES)


def looks_like_key(value: Any) -> bool:
    return isinstance(value, str) and VALUE.search(value) is not None


def check_overrides(argv: list[str]) -> None:
    """Refuse a command line that carries a secret (Hydra would save it in the run folder)."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key.startswith("-"):
            continue
        if (is_secret_name(key) and value.strip() not in ("", "null")) or looks_like_key(value):
            name = key.lstrip("+~")
            hint = (f"set {name}_env=<VARIABLE> and export the key in that variable"
                    if is_secret_name(key) else "pass it through an environment variable (a *_env option)")
            raise InlineSecretError(f"refusing {name}=...: a key on the command line would be saved in the run's "
                                    f".hydra/overrides.yaml, config.yaml, run.json and W&B config; {hint}")


def redact(data: Any) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with every secret value replaced."""
    if isinstance(data, Mapping):
        return {k: (REDACTED if is_secret_name(str(k)) and v not in (None, "") else redact(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    if looks_like_key(data):
        return VALUE.sub(REDACTED, data)
    return data


def has_secret(data: Any) -> bool:
    return redact(data) != data


def scrub_hydra_dir(output_dir: str | Path) -> list[Path]:
    """Rewrite Hydra's saved config files in `<output_dir>/.hydra` with secrets redacted (a key that
    came from a YAML file; command-line ones are refused before Hydra runs)."""
    import yaml

    from lmm.files import write_text

    changed = []
    for path in sorted((Path(output_dir) / ".hydra").glob("*.yaml")):
        text = path.read_text()
        data = yaml.safe_load(text)
        if path.name == "overrides.yaml" and isinstance(data, list):
            clean = [_redact_override(o) for o in data]
        else:
            clean = redact(data)
        if clean != data:
            write_text(path, yaml.safe_dump(clean, sort_keys=False))
            changed.append(path)
    return changed


def scrub_hydra_config() -> None:
    """Inside a Hydra job: redact a secret from a YAML file that reached Hydra's saved config."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().runtime.get("output_dir"):
        for path in scrub_hydra_dir(HydraConfig.get().runtime.output_dir):
            log.warning("redacted a secret in %s (use the *_env options for keys)", path)


def _redact_override(arg: Any) -> Any:
    if not isinstance(arg, str):
        return arg
    key, eq, _ = arg.partition("=")
    if eq and is_secret_name(key):
        return f"{key}={REDACTED}"
    return VALUE.sub(REDACTED, arg)
