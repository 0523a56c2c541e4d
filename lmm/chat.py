"""python -m lmm.chat checkpoint=PATH [image=PATH] [do_sample=true temperature=0.7 top_p=0.9]:
talk to a checkpoint in the terminal.

Each line you type is a user turn; the answer streams as it is generated, and the whole conversation
is the next prompt (rendered with the checkpoint's chat template, as in SFT). Commands:

    /image PATH   add an image: it goes before the text of your next message
    /reset        start a new conversation (history and images dropped)
    /quit         leave (so does end of input, Ctrl-D)

Settings are in conf/chat.yaml (max_new_tokens, do_sample, temperature, top_p, seed, device,
dtype). A missing file or a checkpoint that does not load is one line on stderr, not a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import hydra
import torch
from omegaconf import DictConfig
from PIL import UnidentifiedImageError
from transformers import TextStreamer

from lmm.data.templates import IMAGE_PLACEHOLDER, Message
from lmm.data.tokenize import encode_segments
from lmm.eval.generate import image_pixels

HELP = "commands: /image PATH (add an image to your next message), /reset (new conversation), /quit"


class _Streamer(TextStreamer):
    """transformers' TextStreamer (word-boundary-safe incremental decoding) writing to `out`."""

    def __init__(self, tokenizer, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.chunks = out, []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.chunks.append(text)
            self.out.write(text)
        if stream_end:
            self.out.write("\n")
        self.out.flush()


class Chat:
    """A conversation with one model: the turns so far, the images so far (in the order their
    placeholders appear) and the images waiting for the next user turn."""

    def __init__(self, model, max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 0.7,
                 top_p: float = 0.9):
        self.model = model
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generation.update(temperature=temperature, top_p=top_p)
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = []
        self.pixels: list[torch.Tensor] = []
        self.pending = 0  # images added since the last user turn

    def add_image(self, path: str | Path) -> None:
        """Raises FileNotFoundError / ValueError with a one-line message for a path that is not an image."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        try:  # uint8, as the data pipeline ships them: the model normalises on its device
            self.pixels.append(image_pixels(self.model.image_transform, path))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path} is not a readable image ({e})") from None
        self.pending += 1

    def _turn(self, text: str) -> Message:
        """`text` as the next user turn, the images added since the last one before it."""
        return Message("user", (IMAGE_PLACEHOLDER + "\n") * self.pending + text)

    def prompt(self, text: str) -> torch.Tensor:
        """The token ids of the conversation with `text` as the next user turn, ending where the answer starts."""
        segments = self.model.template.render([*self.messages, self._turn(text)], add_generation_prompt=True)
        return encode_segments(segments, self.model.tokenizer)[0]

    @torch.no_grad()
    def send(self, text: str, out: TextIO | None = None) -> str:
        """Answer `text` (streamed to `out` as it is generated) and keep both turns in the history."""
        ids = self.prompt(text)[None].to(self.device)
        pixels = torch.stack(self.pixels).to(self.device) if self.pixels else None
        streamer = _Streamer(self.model.tokenizer, out) if out is not None else None
        new = self.model.generate(ids, pixels, streamer=streamer, **self.generation)
        answer = self.model.tokenizer.decode(new[0], skip_special_tokens=True).strip()
        self.messages += [self._turn(text), Message("assistant", answer)]
        self.pending = 0
        return answer

    def repl(self, stdin: TextIO, out: TextIO, err: TextIO, interactive: bool = False) -> None:
        """Read messages and commands line by line until /quit or end of input."""
        while True:
            if interactive:
                out.write("USER: ")
                out.flush()
            line = stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command, _, arg = line.partition(" ")
                if command == "/quit":
                    break
                if command == "/reset":
                    self.reset()
                    out.write("(new conversation)\n")
                elif command == "/image" and arg.strip():
                    try:
                        self.add_image(arg.strip())
                        out.write(f"(image {len(self.pixels)} added: {arg.strip()})\n")
                    except (FileNotFoundError, ValueError) as e:
                        err.write(f"error: {e}\n")
                else:
                    err.write(f"unknown command {line!r}; {HELP}\n")
                out.flush()
                continue
            out.write("ASSISTANT: ")
            self.send(line, out)


def open_chat(cfg: DictConfig) -> Chat:
    """The model and the first image from the config; one-line errors (SystemExit) for bad input."""
    from lmm.model.checkpoint import CheckpointError, load
    from lmm.train.parallel import DTYPES

    if cfg.dtype not in DTYPES or cfg.dtype is None:
        raise SystemExit(f"error: unknown dtype {cfg.dtype!r}; valid: {[k for k in DTYPES if k]}")
    path = Path(cfg.checkpoint).expanduser()
    if not path.exists():
        raise SystemExit(f"error: no checkpoint at {path}")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load(path, device=device, dtype=DTYPES[cfg.dtype])
    except (CheckpointError, FileNotFoundError, ValueError, OSError, KeyError) as e:
        raise SystemExit(f"error: cannot load the checkpoint {path}: {e}") from None
    chat = Chat(model, cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)
    if cfg.image:
        try:
            chat.add_image(cfg.image)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
    return chat


@hydra.main(config_path="../conf", config_name="chat", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    chat = open_chat(cfg)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{cfg.checkpoint}: {HELP}", flush=True)
    chat.repl(sys.stdin, sys.stdout, sys.stderr, interactive)


if __name__ == "__main__":
    from lmm.secrets import check_overrides

    check_overrides(sys.argv[1:])
    main()
