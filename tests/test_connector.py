import pytest
import torch

from lmm.model.connector import IdentityConnector, LinearConnector, MLPConnector
from lmm.model.lmm import LMM
from tests.conftest import llm_spec, vision_spec


def test_mlp2x_gelu_structure_and_shapes():
    c = MLPConnector(in_dim=32, out_dim=48)
    assert [type(m).__name__ for m in c] == ["Linear", "GELU", "Linear"]
    assert c(torch.randn(2, 16, 32)).shape == (2, 16, 48)


def test_linear_and_identity():
    assert LinearConnector(8, 4)(torch.randn(3, 8)).shape == (3, 4)
    x = torch.randn(2, 8)
    assert torch.equal(IdentityConnector(8, 8)(x), x)
    with pytest.raises(ValueError, match="equal widths"):
        IdentityConnector(8, 4)


def test_bad_activation_lists_valid_ones():
    with pytest.raises(ValueError, match="valid:.*gelu"):
        MLPConnector(4, 4, act="gleu")


@pytest.mark.parametrize("connector", [
    {"_target_": "lmm.model.connector.MLPConnector"},
    {"_target_": "lmm.model.connector.LinearConnector"},
])
def test_dimensions_are_derived_from_both_ends(tokenizer_dir, connector):
    model = LMM(vision=vision_spec(), connector=connector, llm=llm_spec(tokenizer_dir))
    first, last = model.connector[0], model.connector[-1]
    assert first.in_features == model.vision.hidden_size == 32
    assert last.out_features == model.llm.hidden_size == 48
