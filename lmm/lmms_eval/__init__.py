"""lmm as an lmms-eval model: `python -m lmms_eval --model lmm --model_args pretrained=<checkpoint> ...`.

Registered through the `lmms_eval.models` entry point (setup.cfg) by `manifest`, which lmms-eval
imports at start-up: it imports nothing heavy. The model class (`model.LMMForLmmsEval`) is imported
only when `--model lmm` picks it. Installed with the `[lmms-eval]` extra.
"""
