"""Packed rows (several samples end to end, then padding, told apart by segment_ids): the model gives
every sample the logits and loss it gets alone, for each tiny LLM family."""
import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import find_packed_sequence_indices

from lmm.data.tokenize import IGNORE_INDEX as X
from lmm.data.tokenize import IMAGE_TOKEN_ID as IMG
from lmm.model.lmm import LMM
from lmm.model.splice import splice_images
from tests.conftest import MLP2X_GELU, vision_spec
from tests.test_llm_families import FAMILIES, family_spec

# (input ids, labels, images). Every sample's first token is labelled on purpose: packed, it would
# be predicted from the previous sample's last token unless the loss ignores targets across a boundary.
SAMPLES = [
    ([5, IMG, 6, 7, 8], [5, X, X, 7, 8], 1),
    ([9, 10, 11, 12, 13, 14], [9, 10, 11, 12, 13, 14], 0),  # text only, between two image samples
    ([15, IMG, 16, 17], [15, X, 16, 17], 1),
    ([18, IMG, 19, IMG, 20, 21, 22], [18, X, 19, X, 20, 21, 22], 2),  # several images, alone in row 2
]
ROWS = [[0, 1, 2], [3]]


def packed_batch(pad: int):
    """input_ids, labels, segment_ids, attention mask (B, T) and the images in reading order."""
    rows = [[SAMPLES[k] for k in row] for row in ROWS]
    width = max(sum(len(ids) for ids, _, _ in row) for row in rows)
    ids, labels, segments = (torch.full((len(rows), width), v) for v in (pad, X, 0))
    for r, row in enumerate(rows):
        col = 0
        for seg, (sample_ids, sample_labels, _) in enumerate(row, start=1):
            span = slice(col, col + len(sample_ids))
            ids[r, span], labels[r, span] = torch.tensor(sample_ids), torch.tensor(sample_labels)
            segments[r, span] = seg
            col += len(sample_ids)
    torch.manual_seed(1)
    pixels = torch.randn(sum(n for _, _, n in SAMPLES), 3, 32, 32)
    return ids, labels, segments, (segments > 0).long(), pixels


def sample_images(pixels):
    """Each sample's own images, slicing the reading-order stack."""
    out, at = [], 0
    for _, _, n in SAMPLES:
        out.append(pixels[at:at + n] if n else None)
        at += n
    return out


def token_ce(logits, labels):
    """Sum of next-token cross-entropy and the number of labelled targets, within one sample."""
    targets = labels[1:]
    return F.cross_entropy(logits[:-1].float(), targets, ignore_index=X, reduction="sum"), int((targets != X).sum())


def packed_spans(model):
    """(row, first slot, length) of each sample in the expanded packed rows."""
    spans = []
    for r, row in enumerate(ROWS):
        at = 0
        for k in row:
            ids, _, n = SAMPLES[k]
            length = len(ids) + n * (model.num_visual_tokens - 1)
            spans.append((r, at, length))
            at += length
    return spans


def per_sample(model, logits, labels):
    return [(logits[r, at:at + n], labels[r, at:at + n]) for r, at, n in packed_spans(model)]


def alone(model, pixels):
    """Each sample unpacked, in a batch of its own: logits and expanded labels."""
    refs = []
    for (ids, labels, _), images in zip(SAMPLES, sample_images(pixels)):
        out = model(torch.tensor([ids]), images, labels=torch.tensor([labels]), return_logits=True)
        refs.append((out.logits[0], out.labels[0]))
    return refs


def tiny_model(tokenizer_dir, name):
    torch.manual_seed(0)
    return LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=family_spec(name, tokenizer_dir)).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_packed_rows_match_each_sample_alone(tokenizer_dir, name, attn):
    model = tiny_model(tokenizer_dir, name)
    model.llm.model.set_attn_implementation(attn)  # both build the block-diagonal mask from the position ids
    ids, labels, segments, mask, pixels = packed_batch(model.tokenizer.pad_token_id)
    out = model(ids, pixels, mask, labels, segment_ids=segments, return_logits=True)
    refs = alone(model, pixels)

    total, count = 0.0, 0
    for (logits, lab), (ref_logits, ref_lab) in zip(per_sample(model, out.logits, out.labels), refs):
        assert torch.equal(lab, ref_lab)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        (ce, n), (ref_ce, ref_n) = token_ce(logits, lab), token_ce(ref_logits, ref_lab)
        assert n == ref_n
        torch.testing.assert_close(ce / n, ref_ce / ref_n, rtol=1e-5, atol=1e-5)
        total, count = total + ref_ce, count + ref_n
    # The model's own loss ignores the targets across sample boundaries: the mean over exactly the
    # tokens the samples train alone (each sample's labelled first token would otherwise count).
    torch.testing.assert_close(out.loss, total / count, rtol=1e-5, atol=1e-5)
    # and so does the loss that never builds the full logits (the head on the trained positions only)
    trained_only = model(ids, pixels, mask, labels, segment_ids=segments)
    assert trained_only.logits is None
    torch.testing.assert_close(trained_only.loss, total / count, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_without_segment_ids_the_second_sample_sees_the_first(tokenizer_dir):
    """The plain padding mask over a packed row lets sample 2 attend to sample 1: the check above can fail."""
    model = tiny_model(tokenizer_dir, "tiny_llama")
    ids, labels, segments, mask, pixels = packed_batch(model.tokenizer.pad_token_id)
    out = model(ids, pixels, mask, labels, return_logits=True)
    (logits, lab), (ref_logits, ref_lab) = per_sample(model, out.logits, out.labels)[1], alone(model, pixels)[1]
    (ce, n), (ref_ce, ref_n) = token_ce(logits, lab), token_ce(ref_logits, ref_lab)
    assert abs(ce / n - ref_ce / ref_n) > 1e-3
    # and its loss also predicts sample 2's first token from sample 1's last one
    with_segments = model(ids, pixels, mask, labels, segment_ids=segments)
    assert not torch.allclose(out.loss, with_segments.loss)


@torch.no_grad()
def test_rows_end_to_end_as_for_flash_attention(tokenizer_dir, monkeypatch):
    """The layout used under flash attention (all rows as one, batch 1) gives the same logits."""
    model = tiny_model(tokenizer_dir, "tiny_qwen2")
    ids, labels, segments, mask, pixels = packed_batch(model.tokenizer.pad_token_id)
    per_row = model(ids, pixels, mask, labels, segment_ids=segments, return_logits=True)
    monkeypatch.setattr(LMM, "_packed_rows", lambda self, batch: 1)
    flat = model(ids, pixels, mask, labels, segment_ids=segments, return_logits=True)
    real = per_row.attention_mask.bool()
    torch.testing.assert_close(flat.logits[real], per_row.logits[real])
    torch.testing.assert_close(flat.loss, per_row.loss)
    # the trained-positions loss reads the hidden states back from the end-to-end layout too
    torch.testing.assert_close(model(ids, pixels, mask, labels, segment_ids=segments).loss, per_row.loss)


def embed(ids):
    return ids.clamp(min=0).float()[..., None].expand(*ids.shape, 2).clone()


def test_splice_restarts_positions_per_segment():
    ids = torch.tensor([[5, IMG, 6, 7, 8, IMG, 9], [4, IMG, 0, 0, 0, 0, 0]])
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 3], [1, 1, 0, 0, 0, 0, 0]])
    labels = torch.tensor([[X, X, 6, 7, 8, X, 9], [X, X, X, X, X, X, X]])
    images = torch.stack([torch.full((2, 2), 100.0 + k) for k in range(3)])  # 2 visual tokens each
    s = splice_images(ids, embed(ids), images, None, labels, "right", segments)
    assert s.inputs_embeds[0, :, 0].tolist() == [5, 100, 100, 6, 7, 8, 101, 101, 9]
    assert s.inputs_embeds[1, :, 0].tolist() == [4, 102, 102] + [0] * 6
    assert s.attention_mask.tolist() == [[1] * 9, [1] * 3 + [0] * 6]  # taken from segment_ids > 0
    assert s.labels[0].tolist() == [X, X, X, 6, 7, 8, X, X, 9]
    assert s.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 3, 3, 3], [1, 1, 1, 0, 0, 0, 0, 0, 0]]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4, 5]]
    # what transformers makes of them: one block per sample, and the padding tail a block of its own
    assert find_packed_sequence_indices(s.position_ids).tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2],
                                                                     [0, 0, 0, 1, 1, 1, 1, 1, 1]]
    unpacked = splice_images(ids, embed(ids), images, segments > 0, labels, "right")
    assert unpacked.segment_ids is None and unpacked.position_ids[0].tolist() == list(range(9))


def test_splice_packing_errors():
    ids = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="right padding"):
        splice_images(ids, embed(ids), None, None, None, "left", torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="segment_ids must be 0"):
        splice_images(ids, embed(ids), None, torch.tensor([[1, 1, 1]]), None, "right", torch.tensor([[1, 1, 0]]))


def test_a_sharded_model_runs_the_tower_on_text_only_batches(tiny_lmm):
    """Under FSDP all ranks must gather the same blocks: a text-only batch still runs the tower
    (blank image, weight 0), so the loss is unchanged and the tower receives (zero) gradients."""
    ids = torch.tensor([[5, 6, 7, 8]])
    labels = torch.tensor([[-100, 6, 7, 8]])
    calls = []
    hook = tiny_lmm.vision.register_forward_hook(lambda *a: calls.append(1))
    plain = tiny_lmm(ids, None, None, labels).loss
    assert calls == []  # unsharded: text-only batches skip the tower
    tiny_lmm.always_run_vision = True
    tiny_lmm.vision.requires_grad_(True)
    synced = tiny_lmm(ids, None, None, labels).loss
    hook.remove()
    assert calls == [1] and torch.allclose(plain, synced)
    synced.backward()
    grads = [p.grad for p in tiny_lmm.vision.parameters()]
    assert all(g is not None and not g.any() for g in grads)
