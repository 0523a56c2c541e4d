"""save_pretrained / lmm.load: a self-describing round trip with identical outputs."""
import json

import pytest
import torch

import lmm
from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.model.checkpoint import write_manifest


def batch(model):
    torch.manual_seed(1)
    ids = torch.tensor([[model.tokenizer.bos_token_id, IMAGE_TOKEN_ID, 10, 11, 12]])
    return ids, torch.randn(1, 3, 32, 32)


def test_round_trip_gives_identical_logits(tiny_lmm, tmp_path):
    path = tiny_lmm.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "tokenizer", "manifest.json"}
    loaded = lmm.load(path)
    ids, pixels = batch(tiny_lmm)
    assert torch.equal(tiny_lmm(ids, pixels).logits, loaded(ids, pixels).logits)
    assert loaded.template == tiny_lmm.template
    assert loaded.image_transform == tiny_lmm.image_transform
    assert loaded.tokenizer.get_vocab() == tiny_lmm.tokenizer.get_vocab()


def test_tied_embeddings_survive_the_round_trip(tokenizer_dir, tmp_path):
    from lmm.model.lmm import LMM
    from tests.conftest import MLP2X_GELU, llm_spec, vision_spec

    model = LMM(vision_spec(), MLP2X_GELU, llm_spec(tokenizer_dir, tie_word_embeddings=True))
    loaded = lmm.load(model.save_pretrained(tmp_path))
    head, emb = loaded.llm.model.lm_head.weight, loaded.llm.model.get_input_embeddings().weight
    assert head.data_ptr() == emb.data_ptr()
    assert torch.equal(emb, model.llm.model.get_input_embeddings().weight)


def test_load_refuses_code_outside_lmm(tiny_lmm, tmp_path):
    path = tiny_lmm.save_pretrained(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["connector"]["_target_"] = "os.system"
    (path / "config.json").write_text(json.dumps(config))
    write_manifest(path)  # a consistent folder: the refusal must come from the spec check itself
    with pytest.raises(ValueError, match="inside the lmm package"):
        lmm.load(path)


def test_load_of_a_non_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an lmm checkpoint"):
        lmm.load(tmp_path)


def test_mismatched_weights_are_an_error(tiny_lmm, tmp_path, tokenizer_dir):
    from lmm.model.checkpoint import load_weights
    from lmm.model.lmm import LMM
    from tests.conftest import MLP2X_GELU, llm_spec, vision_spec

    path = tiny_lmm.save_pretrained(tmp_path)
    other = LMM(vision_spec(), MLP2X_GELU, llm_spec(tokenizer_dir, num_hidden_layers=3))
    with pytest.raises(Exception, match="layers.2|does not fit|size mismatch|Missing"):
        load_weights(other, path)
