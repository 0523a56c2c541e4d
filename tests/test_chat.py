"""`python -m lmm.chat`: multi-turn history, /image and /reset, streamed answers, greedy or sampled
decoding from the command line, one-line errors; driven through stdin."""
import io
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from lmm.chat import _Streamer, open_chat
from lmm.data.templates import IMAGE_PLACEHOLDER, Message
from lmm.data.tokenize import encode_segments
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    from lmm.model.lmm import LMM
    from tests.conftest import MLP2X_GELU, llm_spec, vision_spec

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("chat")
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=llm_spec(tokenizer_dir))
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "red.png")
    Image.new("RGB", (30, 30), (30, 30, 200)).save(root / "blue.png")
    (root / "notes.txt").write_text("not an image")
    return model.save_pretrained(root / "checkpoint"), root


def chat_config(checkpoint, *overrides):
    return compose_config("chat", [f"checkpoint={checkpoint}", "max_new_tokens=6", *overrides])


def drive(chat, lines):
    out, err = io.StringIO(), io.StringIO()
    chat.repl(io.StringIO("".join(f"{line}\n" for line in lines)), out, err)
    return out.getvalue(), err.getvalue()


def test_turns_keep_the_history_and_images_and_reset_starts_over(checkpoint):
    ckpt, root = checkpoint
    chat = open_chat(chat_config(ckpt, f"image={root / 'red.png'}"))
    model = chat.model
    first = chat.prompt("what color is it?")
    out, err = drive(chat, ["what color is it?", f"/image {root / 'blue.png'}", "and this one?"])
    assert err == ""
    (_, q1), (_, a1), (_, q2), (_, a2) = [(m.role, m.content) for m in chat.messages]
    assert q1 == f"{IMAGE_PLACEHOLDER}\nwhat color is it?" and q2 == f"{IMAGE_PLACEHOLDER}\nand this one?"
    assert len(chat.pixels) == 2 and chat.pending == 0
    # turn 1 is LMM.chat's single-turn answer (the library's own path, not the REPL's)
    assert a1 == model.chat(root / "red.png", "what color is it?", max_new_tokens=6)
    # turn 2's prompt: turn 1's prompt, the answer and its end, then the new turn, both images
    segments = model.template.render([Message("user", q1), Message("assistant", a1), Message("user", q2)],
                                     add_generation_prompt=True)
    second = encode_segments(segments, model.tokenizer)[0]
    assert torch.equal(second[:len(first)], first) and len(second) > len(first)
    pixels = torch.stack([model.image_transform(Image.open(root / name)) for name in ("red.png", "blue.png")])
    expected = model.tokenizer.decode(model.generate(second[None], pixels, max_new_tokens=6)[0],
                                      skip_special_tokens=True).strip()
    assert a2 == expected
    assert out.count("ASSISTANT: ") == 2 and "(image 2 added" in out
    drive(chat, ["/reset", "hello"])
    assert [m.content for m in chat.messages] == ["hello", chat.messages[1].content] and chat.pixels == []


def test_answers_stream_token_by_token(checkpoint, monkeypatch):
    ckpt, root = checkpoint
    chat = open_chat(chat_config(ckpt, f"image={root / 'red.png'}", "max_new_tokens=8"))
    puts, streamers = [], []
    original = _Streamer.put

    def put(self, value):
        puts.append(value.numel())
        streamers.append(self)
        original(self, value)

    monkeypatch.setattr(_Streamer, "put", put)
    out = io.StringIO()
    answer = chat.send("describe it", out)
    new_tokens = len(chat.model.tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    assert len(puts) >= 2 and puts[1:] == [1] * (len(puts) - 1)  # the prompt once, then each new token
    assert len(puts) - 1 >= min(new_tokens, 8)
    assert "".join(streamers[0].chunks).strip() == answer and out.getvalue().strip() == answer


def test_greedy_is_repeatable_and_sampling_is_set_from_the_command_line(checkpoint):
    ckpt, root = checkpoint
    greedy = [open_chat(chat_config(ckpt, f"image={root / 'red.png'}", "max_new_tokens=12")).send("what?")
              for _ in range(2)]
    assert greedy[0] == greedy[1]
    cfg = chat_config(ckpt, f"image={root / 'red.png'}", "max_new_tokens=12", "do_sample=true",
                      "temperature=1.5", "top_p=1.0")
    chat = open_chat(cfg)
    assert chat.generation == {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "top_p": 1.0}
    samples = set()
    for seed in range(4):
        torch.manual_seed(seed)
        chat.reset()
        chat.add_image(root / "red.png")
        samples.add(chat.send("what?"))
    assert len(samples) > 1  # a random model's flat distribution at temperature 1.5: sampled answers differ


def test_bad_input_is_one_line_and_the_conversation_goes_on(checkpoint, tmp_path):
    ckpt, root = checkpoint
    chat = open_chat(chat_config(ckpt))
    _, err = drive(chat, [f"/image {root / 'nope.png'}", f"/image {root / 'notes.txt'}", "/frobnicate", "hi"])
    lines = err.splitlines()
    assert len(lines) == 3 and "no image file at" in lines[0] and "not a readable image" in lines[1]
    assert "unknown command '/frobnicate'" in lines[2] and "/image PATH" in lines[2]
    assert len(chat.messages) == 2 and chat.pixels == []  # "hi" was answered, without an image
    with pytest.raises(SystemExit, match="^error: no checkpoint at"):
        open_chat(chat_config(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="^error: cannot load the checkpoint"):
        open_chat(chat_config(root))  # a folder, but no checkpoint in it
    with pytest.raises(SystemExit, match="^error: no image file at"):
        open_chat(chat_config(ckpt, f"image={root / 'nope.png'}"))
    with pytest.raises(SystemExit, match="unknown dtype 'float8'; valid:"):
        open_chat(chat_config(ckpt, "dtype=float8"))


@pytest.mark.slow  # two `python -m lmm.chat` processes
def test_the_command_through_stdin(checkpoint):
    ckpt, root = checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lmm.chat", f"checkpoint={ckpt}", f"image={root / 'red.png'}",
                           "max_new_tokens=5"], input="what color is it?\n/reset\nhello\n/quit\nnever read\n",
                          capture_output=True, text=True, env=env, cwd=root, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("ASSISTANT: ") == 2 and "(new conversation)" in done.stdout
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["blue.png", "checkpoint", "notes.txt", "red.png"]  # wrote nothing
    missing = subprocess.run([sys.executable, "-m", "lmm.chat", f"checkpoint={root / 'nope'}"], input="",
                             capture_output=True, text=True, env=env, cwd=root, timeout=300, check=False)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [f"error: no checkpoint at {root / 'nope'}"]
