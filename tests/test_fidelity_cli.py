"""`python -m lmm.fidelity` and the comparison behind it (lmm.data.fidelity)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmm.data import templates
from lmm.data.fidelity import compare
from lmm.data.tokenize import SampleError
from tests.conversations import captions, records
from tests.test_fidelity_text import CHATML_JINJA

ROOT = Path(__file__).resolve().parents[1]


def test_lmm_equals_the_reference_procedure(family_tokenizer):
    tok = family_tokenizer("llama")
    report = compare(records(300, seed=7), tok, templates.vicuna())
    assert report.reference == "llama" and report.differences == 0
    assert report.counts["ids_equal"] == 300 and report.counts["labels_equal"] > 100, report.counts
    plain = compare(captions(100), tok, templates.PlainTemplate())
    assert plain.reference == "pretrain" and plain.counts == {"ids_equal": 100, "labels_equal": 100}


def test_a_difference_is_counted_and_shown(family_tokenizer):
    """Keeping the placeholder where the record has it is not what the references do."""
    tok = family_tokenizer("gpt2")
    report = compare(records(200, seed=8), tok, templates.phi2(), image_placeholder="keep")
    assert report.reference == "phi" and report.counts["ids_differ"] > 20
    assert report.examples and "at token" in report.examples[0] and "vs reference" in report.examples[0]
    unreadable = compare([SampleError("invalid_json", "x"), {"id": "e", "conversations": []}], tok, templates.phi2())
    assert unreadable.counts == {"lmm_skipped/invalid_json": 1, "lmm_skipped/no_conversations": 1}


def test_turn_formats_compare_with_the_tokenizers_chat_template(family_tokenizer):
    tok = family_tokenizer("qwen2")
    with pytest.raises(ValueError, match="no chat template"):
        compare(records(5), tok, templates.chatml())
    tok.chat_template = CHATML_JINJA
    try:
        report = compare(records(100, seed=9), tok, templates.chatml())
    finally:
        tok.chat_template = None
    assert report.reference == "chat_template" and report.differences == 0
    assert report.counts["text_equal"] == report.counts["ids_equal"] == 100
    with pytest.raises(ValueError, match="valid"):
        compare([], tok, templates.chatml(), which="tinyllava")


def run_cli(tmp_path, tokenizer_dir, *overrides):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(records(120, seed=10)))
    cmd = [sys.executable, "-m", "lmm.fidelity", "data=llava15", f"data.root={tmp_path}",
           f"data.sft.annotations=[{data}]", f"data.sft.image_root={tmp_path}", f"llm.tokenizer={tokenizer_dir}",
           f"paths.data_dir={tmp_path}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow  # three processes, each importing the stack (about 30 s on 2 cores)
def test_the_command_reports_and_fails_on_differences(tmp_path, family_tokenizer):
    tok = family_tokenizer("llama")
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    done = run_cli(tmp_path, tok_dir, "n=100")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reference: llama" in done.stdout and "| ids_equal | 100 |" in done.stdout and "no difference" in done.stdout
    differ = run_cli(tmp_path, tok_dir, "n=100", "data.loader.image_placeholder=keep")
    assert differ.returncode == 1 and "records differ" in differ.stdout, differ.stdout[-2000:]
    bad = run_cli(tmp_path, tok_dir, "part=valid")
    assert bad.returncode != 0 and "valid: ['sft', 'pretrain']" in bad.stderr + bad.stdout
