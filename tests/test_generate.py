"""Generation: KV-cached greedy equals a no-cache argmax loop; batching with left padding changes
nothing; sampling and chat work end to end."""
import pytest
import torch
from PIL import Image

from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.eval.benchmark import Request
from lmm.eval.generate import generate_answers, length_batches


def greedy_without_cache(model, ids, pixels, steps):
    out = []
    for _ in range(steps):
        logits = model(ids, pixels).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt], dim=1)
    return out


def test_cached_greedy_equals_full_recompute(tiny_lmm):
    torch.manual_seed(0)
    ids = tiny_lmm.prompt_ids("what color is the shape?", n_images=1)[None]
    pixels = torch.randn(1, 3, 32, 32)
    new = tiny_lmm.generate(ids, pixels, max_new_tokens=6, eos_token_id=-1)
    assert new.shape == (1, 6)
    assert new[0].tolist() == greedy_without_cache(tiny_lmm, ids, pixels, 6)


def test_batched_left_padded_generation_equals_one_by_one(tiny_lmm, tmp_path):
    rng = torch.Generator().manual_seed(0)
    paths = []
    for k in range(3):
        arr = (torch.rand(20 + 10 * k, 32, 3, generator=rng) * 255).byte().numpy()
        Image.fromarray(arr).save(tmp_path / f"{k}.png")
        paths.append(tmp_path / f"{k}.png")
    queries = [Request("0", "what color is the shape?", [paths[0]]), Request("1", "is there a triangle?", [paths[1]]),
               Request("2", "describe the picture in detail", []),  # text-only in the same batch
               Request("3", "what shape is in the image? a red circle", [paths[2].read_bytes()]),  # encoded bytes
               Request("4", "what color?", [Image.open(paths[1])])]  # a PIL image
    batched = generate_answers(tiny_lmm, queries, batch_size=5, max_new_tokens=5, progress=False)
    single = [generate_answers(tiny_lmm, [q], batch_size=1, max_new_tokens=5, progress=False)[0] for q in queries]
    assert batched == single
    # batches of 2, grouped by length, in one worker process: same answers, back in request order
    assert generate_answers(tiny_lmm, queries, batch_size=2, max_new_tokens=5, num_workers=1, progress=False) == single
    assert tiny_lmm.chat(Image.open(paths[0]), "what color is the shape?", max_new_tokens=5) == single[0]


def test_sampling_respects_length_and_seed(tiny_lmm):
    ids = tiny_lmm.prompt_ids("what color?")[None]
    torch.manual_seed(3)
    a = tiny_lmm.generate(ids, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=4)
    torch.manual_seed(3)
    b = tiny_lmm.generate(ids, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=4)
    assert a.shape[1] <= 4 and torch.equal(a, b)


def test_prompt_has_one_placeholder_per_image(tiny_lmm):
    ids = tiny_lmm.prompt_ids("compare", n_images=2)
    assert int((ids == IMAGE_TOKEN_ID).sum()) == 2


def test_length_batches_group_by_images_then_length():
    # prompts with images first, longest first; every position exactly once
    batches = length_batches([5, 9, 7, 3, 8], [1, 0, 1, 1, 0], batch_size=2)
    assert batches == [[2, 0], [3, 1], [4]]


def test_unreadable_image_names_the_request(tiny_lmm, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="request 'q7'.*bad.png"):
        generate_answers(tiny_lmm, [Request("q7", "what?", [bad])], progress=False)
