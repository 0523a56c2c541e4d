"""`strategy.model.compile` (torch.compile of each decoder layer) and the fused-AdamW choice."""
import pytest
import torch
import torch._dynamo.exc
import torch._inductor.exc

from lmm.model.lmm import LMM
from lmm.train.optim import build_optimizer, use_fused
from lmm.train.parallel import compile_llm_layers

# What torch.compile raises when its backend cannot build (no C++ compiler, missing headers).
COMPILER_ERRORS = (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError,
                   torch._inductor.exc.CppCompileError)


def test_fused_adamw_only_where_every_parameter_is_on_cuda():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert use_fused(cpu, None) is False  # CPU: torch's default (foreach) implementation
    assert use_fused(cpu, True) is True and use_fused(cpu, False) is False  # an explicit choice wins
    meta_cuda = torch.empty(2, device="meta")
    assert use_fused([meta_cuda], None) is False
    optimizer, _ = build_optimizer(cpu, total_steps=10, lr=1e-3)
    assert not optimizer.defaults.get("fused")


@pytest.mark.slow
def test_compiled_decoder_layers_give_the_same_loss_and_gradients(tiny_specs):
    torch.manual_seed(0)
    plain = LMM(**tiny_specs)
    compiled = LMM(**tiny_specs)
    compiled.load_state_dict(plain.state_dict())
    try:
        compile_llm_layers(compiled)
        ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
        labels = ids.clone()
        labels[:, :3] = -100
        out = compiled(ids, labels=labels)
        out.loss.backward()
    except COMPILER_ERRORS as error:  # no working compiler toolchain on this machine; our own errors still fail
        pytest.skip(f"torch.compile does not run here: {type(error).__name__}: {str(error)[:200]}")
    ref = plain(ids, labels=labels)
    ref.loss.backward()
    assert compiled.llm.layers[0]._compiled_call_impl is not None  # Module.compile took effect
    assert type(compiled.llm.layers[0]) is type(plain.llm.layers[0])  # compiled in place: keys unchanged
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(compiled.named_parameters(), plain.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
