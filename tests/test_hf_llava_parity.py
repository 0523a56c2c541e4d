"""Our forward pass against transformers' LlavaForConditionalGeneration, same weights and input."""
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.model.lmm import LMM


@pytest.fixture
def hf_llava(tokenizer_dir):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=vocab + 1),
        image_token_id=vocab, image_seq_length=16, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config).eval()


def test_logits_match_transformers_llava(hf_llava, tokenizer_dir):
    ours = LMM.from_hf_llava(hf_llava, tokenizer=tokenizer_dir)
    image_id, n_visual = hf_llava.config.image_token_id, 16
    assert ours.num_visual_tokens == n_visual
    text_before, text_after = [1, 40, 41], [42, 43, 44, 45]
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    # Two samples, one image each; the second's text is longer.
    hf_ids = torch.tensor([text_before + [image_id] * n_visual + text_after + [46],
                           text_before + [image_id] * n_visual + text_after + [47]])
    our_ids = torch.tensor([text_before + [IMAGE_TOKEN_ID] + text_after + [46],
                            text_before + [IMAGE_TOKEN_ID] + text_after + [47]])
    with torch.no_grad():
        expected = hf_llava(input_ids=hf_ids, pixel_values=pixels).logits
        got = ours(our_ids, pixels).logits
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_siglip_llava_that_drops_the_first_token_imports_with_drop_first(tokenizer_dir):
    """'default' on a tower without CLS drops a real patch (as TinyLLaVA_Factory's SigLIP models do):
    imported faithfully, with the same logits."""
    from transformers import AutoTokenizer, SiglipVisionConfig

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32,
                                                          intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2),
                         text_config=LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                                 num_attention_heads=4, vocab_size=vocab + 1),
                         image_token_id=vocab, vision_feature_select_strategy="default", vision_feature_layer=-1)
    hf = LlavaForConditionalGeneration(config).eval()
    ours = LMM.from_hf_llava(hf, tokenizer=tokenizer_dir)
    assert ours.vision.feature_select == "drop_first" and ours.num_visual_tokens == 15
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor([[1, 40] + [vocab] * 15 + [41]]), pixel_values=pixels).logits
        got = ours(torch.tensor([[1, 40, IMAGE_TOKEN_ID, 41]]), pixels).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
