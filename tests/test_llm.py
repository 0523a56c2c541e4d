import pytest

from lmm.model.llm import LanguageModel
from tests.conftest import llm_spec


def build(tokenizer_dir, **hf):
    spec = llm_spec(tokenizer_dir, **hf)
    spec.pop("_target_")
    return LanguageModel(**spec)


def test_vocab_size_and_special_ids_come_from_the_tokenizer(tokenizer_dir):
    llm = build(tokenizer_dir)
    assert llm.model.config.vocab_size == len(llm.tokenizer)
    assert llm.model.config.eos_token_id == llm.tokenizer.eos_token_id
    assert llm.hidden_size == 48
    assert llm.decoder_layer_class.__name__ == "LlamaDecoderLayer"


def test_a_vocabulary_smaller_than_the_tokenizer_is_an_error(tokenizer_dir):
    with pytest.raises(ValueError, match="embeds only 10"):
        build(tokenizer_dir, vocab_size=10)


def test_unknown_architecture_key_lists_valid_ones(tokenizer_dir):
    with pytest.raises(ValueError, match="num_hidden_layer'"):
        build(tokenizer_dir, num_hidden_layer=3)


def test_the_configured_decoder_layer_class_is_checked(tokenizer_dir):
    spec = llm_spec(tokenizer_dir)
    spec.pop("_target_")
    assert LanguageModel(**spec, decoder_layer="LlamaDecoderLayer").spec()["decoder_layer"] == "LlamaDecoderLayer"
    with pytest.raises(ValueError, match="expects PhiDecoderLayer layers but hf_config builds LlamaDecoderLayer"):
        LanguageModel(**spec, decoder_layer="PhiDecoderLayer")
