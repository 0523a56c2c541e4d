"""`LMMForLmmsEval`: an lmm checkpoint behind lmms-eval's "simple" model interface.

`generate_until` answers a task's requests with lmm's own batched generation (the prompt is the
task's context as the user turn of the LLM's chat template, each image of `doc_to_visual` before
it as lmm's placeholder), cut at the task's `until` strings. Requests are grouped by their
generation settings, each group batched by prompt length. `loglikelihood` scores a continuation as
the sum of its tokens' log-probabilities after the context, and whether greedy decoding would give
it token for token.
"""
from __future__ import annotations

import sys
import types

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from lmm.eval.benchmark import Request
from lmm.eval.generate import generate_answers, image_pixels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _filelock_api_alias() -> None:
    """lmms-eval 0.7.3's evaluator imports `filelock._api` after building the model (to make dataset
    locks reentrant); filelock 4 moved that module's names to `filelock._core`, so every run would
    fail (and exit 0). lmms-eval does not pin filelock<4, and pip resolves filelock 4 for
    `lmm[lmms-eval]`, so the old module name is given the new module's objects, before the evaluator
    asks for them."""
    try:
        import filelock._api  # noqa: F401  (filelock 3: nothing to do)
    except ModuleNotFoundError:
        import filelock._core as core

        api = types.ModuleType("filelock._api")
        api.FileLockMeta, api.BaseFileLock = core.FileLockMeta, core.BaseFileLock
        api._UNSET_FILE_MODE = core.UNSET_FILE_MODE
        sys.modules["filelock._api"] = api


_filelock_api_alias()


class LMMForLmmsEval(lmms):
    def __init__(self, pretrained: str, batch_size: int | str = 1, device: str | None = None,
                 dtype: str = "float32", max_new_tokens: int = 64, **kwargs):
        super().__init__()
        from lmm.model.checkpoint import load

        if kwargs:
            raise ValueError(f"unknown lmm model_args {sorted(kwargs)}; valid: pretrained, batch_size, device, "
                             f"dtype, max_new_tokens")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {list(DTYPES)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load(pretrained, device=device, dtype=DTYPES[dtype])
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    def _images(self, instance: Instance) -> list:
        _, _, doc_to_visual, doc_id, task, split = instance.args[:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else None
        return [v.convert("RGB") if isinstance(v, Image.Image) else v for v in (visuals or [])]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, instance in enumerate(requests):
            groups.setdefault(self._settings(instance.args[1]), []).append(i)
        for settings, positions in groups.items():
            max_new, sampling, until = settings
            reqs = [Request(key=str(i), prompt=requests[i].args[0], images=self._images(requests[i])) for i in positions]
            texts = generate_answers(self.model, reqs, batch_size=self.batch_size, max_new_tokens=max_new,
                                     progress=False, **dict(sampling))
            for i, text in zip(positions, texts):
                answers[i] = _cut(text, until)
        return answers

    def _settings(self, gen_kwargs: dict) -> tuple:
        """(max_new_tokens, sampling options, until strings): the generation a request asks for."""
        gen = dict(gen_kwargs or {})
        until = gen.pop("until", None) or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_new = int(gen.pop("max_new_tokens", self.max_new_tokens))
        temperature = float(gen.pop("temperature", 0) or 0)
        sample = bool(gen.pop("do_sample", False)) and temperature > 0
        sampling = (("do_sample", True), ("temperature", temperature), ("top_p", float(gen.pop("top_p", 1.0) or 1.0))) \
            if sample else ()
        return max_new, sampling, until

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for instance in requests:
            context, continuation = instance.args[0], instance.args[1]
            if callable(continuation):  # doc_to_target given as a function of the doc
                continuation = continuation(self.task_dict[instance.args[4]][instance.args[5]][instance.args[3]])
            out.append(self._score(context, str(continuation), self._images(instance)))
        return out

    @torch.no_grad()
    def _score(self, context: str, continuation: str, images: list) -> tuple[float, bool]:
        model = self.model
        device = next(model.parameters()).device
        prompt = model.prompt_ids(context, len(images))
        cont = torch.tensor(model.tokenizer(continuation, add_special_tokens=False)["input_ids"], dtype=torch.long)
        ids = torch.cat([prompt, cont])[None].to(device)
        pixels = torch.stack([image_pixels(model.image_transform, im) for im in images]).to(device) \
            if images else None
        logits = model(ids, pixels, return_logits=True).logits[0].float()
        n = len(cont)
        if n == 0:
            return 0.0, True
        scores = torch.log_softmax(logits[-n - 1:-1], dim=-1)
        targets = cont.to(device)
        return float(scores.gather(1, targets[:, None]).sum()), bool((scores.argmax(-1) == targets).all())

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("lmm's lmms-eval model answers generate_until and loglikelihood tasks")


def _cut(text: str, until: tuple[str, ...]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text
