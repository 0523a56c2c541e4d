"""The loss computed only where it is trained (lmm/model/loss.py) is the full-logits loss: the same value
and the same gradients for every tiny LLM family, for padded and packed batches, in one chunk or
several, and when nothing is trained; the LM head sees only the trained positions."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import lmm.model.loss as loss_module
from lmm.data.tokenize import IGNORE_INDEX as X
from lmm.data.tokenize import IMAGE_TOKEN_ID as IMG
from lmm.model.lmm import LMM
from lmm.model.loss import PostHead, post_head
from tests.conftest import MLP2X_GELU, llm_spec, vision_spec
from tests.test_llm_families import family_spec
from tests.test_packing_model import packed_batch

# tiny family config -> the local tokenizer that behaves like the family's (tests/tokenizer_families.py):
# SentencePiece-style for Llama and Gemma, GPT-2 byte-level BPE for Phi-2 and StableLM-2, Qwen2's own
FAMILY_TOKENIZER = {"tiny_llama": "llama", "tiny_phi": "gpt2", "tiny_stablelm": "gpt2", "tiny_qwen2": "qwen2",
                    "tiny_gemma": "gemma"}
TOL = {"atol": 1e-6, "rtol": 1e-6}


def reference_loss(logits, labels, segment_ids=None):
    """The loss as LMM.forward computed it before (from full logits, upcast whole to float32)."""
    shift_logits = logits[:, :-1].flatten(0, 1).float()
    shift_labels = labels[:, 1:]
    if segment_ids is not None:
        shift_labels = shift_labels.masked_fill(segment_ids[:, 1:] != segment_ids[:, :-1], X)
    shift_labels = shift_labels.flatten()
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=X, reduction="sum")
    return total / (shift_labels != X).sum().clamp(min=1)


def trained_targets(labels, segment_ids=None) -> int:
    targets = labels[:, 1:]
    if segment_ids is not None:
        targets = targets.masked_fill(segment_ids[:, 1:] != segment_ids[:, :-1], X)
    return int((targets != X).sum())


@pytest.fixture(scope="module")
def family_tokenizer_dir(family_tokenizer, tmp_path_factory):
    saved = {}

    def get(kind):
        if kind not in saved:
            path = tmp_path_factory.mktemp(f"saved_tokenizer_{kind}")
            family_tokenizer(kind).save_pretrained(path)
            saved[kind] = str(path)
        return saved[kind]

    return get


def family_model(name, tokenizer_dir):
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=family_spec(name, tokenizer_dir))
    return model.float().eval()  # eval: no dropout, so the two passes see the same function


def padded_batch(pad):
    """Right-padded, with images: one image, two images, text only; prompts and padding unlabelled."""
    rows = [([5, IMG, 6, 7, 8, 9, 10], [X, X, X, 7, 8, 9, 10]),
            ([11, IMG, 12, IMG, 13, 14], [X, X, X, X, 13, 14]),
            ([15, 16, 17, 18], [X, 16, 17, 18])]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [X] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    torch.manual_seed(2)
    return {"input_ids": ids, "pixel_values": torch.randn(3, 3, 32, 32), "attention_mask": mask, "labels": labels}


def packed(pad):
    ids, labels, segments, mask, pixels = packed_batch(pad)
    return {"input_ids": ids, "pixel_values": pixels, "attention_mask": mask, "labels": labels, "segment_ids": segments}


def loss_and_grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    out = model(**batch, **kw)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def old_loss_and_grads(model, batch):
    """Full logits (return_logits=True) and the reference loss on them."""
    model.zero_grad(set_to_none=True)
    out = model(**batch, return_logits=True)
    loss = reference_loss(out.logits, out.labels, out_segments(model, batch) if "segment_ids" in batch else None)
    torch.testing.assert_close(out.loss, loss, atol=0, rtol=0)  # the full-logits path keeps today's loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads


def out_segments(model, batch):
    """The expanded segment ids (visual tokens take their placeholder's segment)."""
    return model._splice(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"],
                         "right", batch["segment_ids"]).segment_ids


def assert_same(model, batch, chunk_tokens=None):
    if chunk_tokens is not None:
        model.loss_chunk_tokens = chunk_tokens
    old, old_grads = old_loss_and_grads(model, batch)
    new, new_grads = loss_and_grads(model, batch)
    assert new.logits is None
    torch.testing.assert_close(new.loss, old, **TOL)
    assert new_grads.keys() == old_grads.keys() == {n for n, _ in model.named_parameters()}
    for name in old_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
    return old


@pytest.mark.parametrize("name", FAMILY_TOKENIZER)
def test_padded_batch_with_images_same_loss_and_gradients(family_tokenizer_dir, name):
    model = family_model(name, family_tokenizer_dir(FAMILY_TOKENIZER[name]))
    loss = assert_same(model, padded_batch(model.tokenizer.pad_token_id))
    assert loss > 0


@pytest.mark.parametrize("name", FAMILY_TOKENIZER)
def test_packed_rows_same_loss_and_gradients(family_tokenizer_dir, name):
    model = family_model(name, family_tokenizer_dir(FAMILY_TOKENIZER[name]))
    assert_same(model, packed(model.tokenizer.pad_token_id))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_phi"])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_several_chunks_same_loss_and_gradients(family_tokenizer_dir, name, chunk):
    model = family_model(name, family_tokenizer_dir(FAMILY_TOKENIZER[name]))
    for batch in (padded_batch(model.tokenizer.pad_token_id), packed(model.tokenizer.pad_token_id)):
        calls = []
        handle = model.llm.model.get_output_embeddings().register_forward_hook(
            lambda mod, args, out, calls=calls: calls.append(args[0].shape[0]))
        assert_same(model, batch, chunk_tokens=chunk)
        handle.remove()
        with torch.no_grad():
            labels = model(**batch).labels
        n = trained_targets(labels, out_segments(model, batch) if "segment_ids" in batch else None)
        assert n > chunk
        # the full-logits pass (B * L rows), then ceil(n / chunk) chunks, then their recompute in the backward
        assert len(calls) == 1 + 2 * -(-n // chunk) and max(calls[1:]) <= chunk and sum(calls[1:]) == 2 * n


def test_without_gradients_chunks_need_no_recompute(tokenizer_dir):
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=llm_spec(tokenizer_dir)).eval()
    batch = padded_batch(model.tokenizer.pad_token_id)
    with torch.no_grad():
        ref = model(**batch, return_logits=True)
        model.loss_chunk_tokens = 2
        torch.testing.assert_close(model(**batch).loss, reference_loss(ref.logits, ref.labels), **TOL)


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_nothing_trained_gives_zero_loss_and_zero_gradients(family_tokenizer_dir, kind):
    model = family_model("tiny_phi", family_tokenizer_dir("gpt2"))  # Phi-2's LM head has a bias
    batch = padded_batch(model.tokenizer.pad_token_id) if kind == "padded" else packed(model.tokenizer.pad_token_id)
    batch["labels"] = torch.full_like(batch["labels"], X)
    if kind == "packed":  # only the first token of each sample labelled: each a cross-boundary target
        first = torch.ones_like(batch["segment_ids"], dtype=torch.bool)
        first[:, 1:] = batch["segment_ids"][:, 1:] != batch["segment_ids"][:, :-1]
        batch["labels"] = batch["input_ids"].masked_fill(~first | (batch["segment_ids"] == 0), X)
        assert (batch["labels"][:, 1:] != X).any()
    assert_same(model, batch)
    out, grads = loss_and_grads(model, batch)
    assert out.loss.item() == 0.0
    # every parameter is still in the graph (a sharded job's ranks all reduce the same gradients), at 0
    assert len(grads) == len(list(model.parameters())) and all(not g.any() for g in grads.values())


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_the_head_runs_on_the_trained_positions_only(family_tokenizer_dir, kind):
    model = family_model("tiny_qwen2", family_tokenizer_dir("qwen2"))
    batch = padded_batch(model.tokenizer.pad_token_id) if kind == "padded" else packed(model.tokenizer.pad_token_id)
    rows = []
    head = model.llm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, args, out: rows.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model(**batch)
    handle.remove()
    assert out.logits is None and torch.isfinite(out.loss)
    segments = out_segments(model, batch) if kind == "packed" else None
    n = trained_targets(out.labels, segments)
    assert 0 < n < out.labels.numel() / 4  # visual tokens, prompts and padding are most of the sequence
    assert rows == [(n, model.llm.hidden_size)]


def test_logits_by_default_only_without_labels(tiny_lmm):
    batch = padded_batch(tiny_lmm.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = tiny_lmm(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
        assert plain.logits is not None and plain.loss is None
        assert plain.logits.shape == (*plain.attention_mask.shape, tiny_lmm.llm.model.config.vocab_size)
        assert tiny_lmm(**batch).logits is None
        full = tiny_lmm(**batch, return_logits=True)
        torch.testing.assert_close(full.logits, plain.logits)
        torch.testing.assert_close(full.loss, tiny_lmm(**batch).loss, **TOL)


def test_chunks_keep_one_chunk_of_logits_for_the_backward(tiny_lmm):
    """Outside the checkpointed chunks nothing vocabulary-wide is saved for the backward."""
    batch = padded_batch(tiny_lmm.tokenizer.pad_token_id)
    vocab = tiny_lmm.llm.model.config.vocab_size
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    def run(**kw):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = tiny_lmm(**batch, **kw)
        out.loss.backward()
        return sum(torch.Size(s).numel() for s in saved if s and s[-1] == vocab)

    tiny_lmm.loss_chunk_tokens = 2
    assert run() == 0
    assert run(return_logits=True) >= out_numel(tiny_lmm, batch) * vocab  # the full-logits path keeps them all


def out_numel(model, batch) -> int:
    with torch.no_grad():
        return model(**batch).labels.numel()


# --- families whose head output is transformed, and families not known -------------------------------

@pytest.mark.parametrize("hf", [
    {"model_type": "gemma2", "final_logit_softcapping": 0.5, "head_dim": 12},
    {"model_type": "cohere", "logit_scale": 0.37},
    {"model_type": "granite", "logits_scaling": 3.0},
    {"model_type": "mistral"},
], ids=lambda hf: hf["model_type"])
def test_post_head_transforms_are_applied(tokenizer_dir, hf):
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=llm_spec(tokenizer_dir, **hf)).float().eval()
    transform = post_head(model.llm.model.config)
    assert transform is not None
    batch = padded_batch(model.tokenizer.pad_token_id)
    rows = []
    handle = model.llm.model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[:-1].numel()))
    assert_same(model, batch)
    handle.remove()
    assert rows[1] < rows[0]  # the new path did run on the selected rows (the first call is the full one)


def test_unknown_family_falls_back_to_full_logits(tiny_lmm, monkeypatch):
    monkeypatch.setattr(loss_module, "PLAIN_HEAD", frozenset())
    assert post_head(tiny_lmm.llm.model.config) is None
    batch = padded_batch(tiny_lmm.tokenizer.pad_token_id)
    rows = []
    tiny_lmm.llm.model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[:2]))
    with torch.no_grad():
        out = tiny_lmm(**batch)
        ref = tiny_lmm(**batch, return_logits=True)
    assert out.logits is None and rows[0] == tuple(out.labels.shape)  # the whole sequence went through the head
    torch.testing.assert_close(out.loss, reference_loss(ref.logits, ref.labels), atol=0, rtol=0)
    tiny_lmm.loss_impl = "liger"
    with pytest.raises(ValueError, match="liger.*not available"):
        tiny_lmm(**batch)


def test_a_plain_family_with_a_transform_key_is_not_plain():
    from types import SimpleNamespace

    assert post_head(SimpleNamespace(model_type="llama")) is not None
    assert post_head(SimpleNamespace(model_type="llama", final_logit_softcapping=30.0)) is None
    assert post_head(SimpleNamespace(model_type="gpt_neox")) is None
    capped = post_head(SimpleNamespace(model_type="gemma2", final_logit_softcapping=2.0))
    torch.testing.assert_close(capped(torch.tensor([100.0])), torch.tensor([2.0]))
    assert PostHead(divisor=4.0).input_scale == 0.25 and PostHead(scale=3.0).input_scale == 3.0


# what each family's *ForCausalLM.forward does after its LM head, up to the loss (comments dropped)
EXPECTED_AFTER_HEAD = {
    **{t: [] for t in loss_module.PLAIN_HEAD},
    **{t: ["if self.config.final_logit_softcapping is not None:",
           "logits = logits / self.config.final_logit_softcapping", "logits = torch.tanh(logits)",
           "logits = logits * self.config.final_logit_softcapping"] for t in loss_module.SOFTCAP_HEAD},
    **{t: ["logits = logits * self.logit_scale"] for t in loss_module.MULTIPLY_HEAD},
    **{t: ["logits = logits / self.config.logits_scaling"] for t in loss_module.DIVIDE_HEAD},
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED_AFTER_HEAD))
def test_the_known_heads_are_what_transformers_runs(model_type):
    """Guards lmm/model/loss.py's family table against a transformers release that changes a head."""
    import transformers

    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    lines = [line.split("#")[0].strip() for line in inspect.getsource(cls.forward).splitlines()]
    lines = [line for line in lines if line]
    head = [i for i, line in enumerate(lines) if "self.lm_head(" in line]
    assert len(head) == 1 and lines[head[0]].startswith("logits = self.lm_head(hidden_states")
    # the head's input is the decoder's last hidden state, at most sliced to the kept positions
    between = lines[lines.index("hidden_states = outputs.last_hidden_state") + 1:head[0]]
    assert all("logits_to_keep" in line or "slice_indices" in line for line in between), between
    after = lines[head[0] + 1:lines.index("loss = None")]
    assert after == EXPECTED_AFTER_HEAD[model_type]
    if model_type == "cohere":
        init = inspect.getsource(cls.__init__)
        assert "self.logit_scale = config.logit_scale" in init


# --- loss_impl ----------------------------------------------------------------------------------------

def test_unknown_loss_impl_lists_the_valid_ones(tiny_lmm):
    tiny_lmm.loss_impl = "fused"
    with pytest.raises(ValueError, match=r"unknown loss_impl 'fused'; valid: \['chunked', 'liger'\]"):
        tiny_lmm(**padded_batch(tiny_lmm.tokenizer.pad_token_id))


def test_liger_needs_the_package_and_cuda(tiny_lmm):
    tiny_lmm.loss_impl = "liger"
    with pytest.raises(RuntimeError, match="loss_impl='liger'"):
        tiny_lmm(**padded_batch(tiny_lmm.tokenizer.pad_token_id))
    with torch.no_grad():  # the logits path does not use it
        assert tiny_lmm(**padded_batch(tiny_lmm.tokenizer.pad_token_id), return_logits=True).loss > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny_phi", "tiny_qwen2"])
def test_liger_matches_chunked_on_cuda(family_tokenizer_dir, name):
    pytest.importorskip("liger_kernel")
    model = family_model(name, family_tokenizer_dir(FAMILY_TOKENIZER[name])).cuda()
    batch = {k: v.cuda() for k, v in padded_batch(model.tokenizer.pad_token_id).items()}
    chunked, chunked_grads = loss_and_grads(model, batch)
    model.loss_impl = "liger"
    liger, liger_grads = loss_and_grads(model, batch)
    torch.testing.assert_close(liger.loss, chunked.loss, atol=1e-4, rtol=1e-4)
    for name_ in chunked_grads:
        torch.testing.assert_close(liger_grads[name_], chunked_grads[name_], atol=1e-4, rtol=1e-3)
