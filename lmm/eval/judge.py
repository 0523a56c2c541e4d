"""A client for an LLM judge behind any OpenAI-compatible chat-completions endpoint.

Benchmarks graded by a language model (MM-Vet, LLaVA-Bench in-the-wild) send their grading prompts
through `Judge`. It speaks the plain HTTP protocol with the standard library (no SDK dependency), so
OpenAI, Azure-style proxies, vLLM, llama.cpp or Ollama servers all work when they expose
`<url>/chat/completions`.

- Auth: `Authorization: Bearer <key>`, the key from the config or else from an environment variable;
  no key at all is fine for local servers. The key is never logged, printed or cached.
- Retries: 429, 5xx, timeouts and dropped connections are retried with exponential backoff (a
  numeric `Retry-After` is honoured); any other 4xx fails at once, naming the status and the body.
- Cache: an optional JSONL file (request hash -> reply). A rerun, or a second benchmark run over
  the same answers, pays nothing for prompts it has already sent.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
MAX_TEMPERATURE = 2.0  # the OpenAI API's upper bound


class JudgeError(RuntimeError):
    """The judge endpoint refused a request, or kept failing after every retry."""


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Judge:
    """An OpenAI-compatible chat-completions client.

    url: the API base (`https://api.openai.com/v1`, `http://localhost:8000/v1`); `/chat/completions`
    is appended unless the url already ends with it. `retries` counts the extra attempts after the
    first one; the wait before retry k is `backoff * 2**k` seconds (at most 60 s, plus jitter).
    `cache`: a JSONL file path; replies are keyed by a hash of model, messages, temperature and
    max_tokens (not the url, so a proxy in front of the same model reuses the entries).
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 1024, timeout: float = 60, retries: int = 5,
                 concurrency: int = 8, cache: str | Path | None = None, backoff: float = 1.0):
        if not url or not model:
            raise ValueError("judge: both `url` (e.g. https://api.openai.com/v1) and `model` must be set")
        url = url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.temperature, self.max_tokens = model, float(temperature), int(max_tokens)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.__key = api_key or (os.environ.get(api_key_env) if api_key_env else None) or None
        self.cache_path = Path(cache) if cache else None
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.cache_path is not None:
            self._load_cache()

    def __repr__(self) -> str:  # never shows the key
        return (f"Judge(endpoint={self.endpoint!r}, model={self.model!r}, key={'set' if self.__key else 'none'}, "
                f"cache={str(self.cache_path) if self.cache_path else None!r})")

    # -- cache ---------------------------------------------------------------------------------

    def _load_cache(self) -> None:
        if not self.cache_path.exists():
            return
        text = self.cache_path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            # a run killed mid-write leaves a partial last line: drop it so new entries start cleanly
            text = text[: text.rfind("\n") + 1]
            self.cache_path.write_text(text, encoding="utf-8")
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: replies may hold U+2028
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._cache[entry["key"]] = entry["response"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"judge cache {self.cache_path}, line {number}: not a cache entry ({e}); "
                                 "fix or delete the file") from e

    def _cache_key(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        blob = json.dumps({"model": self.model, "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _store(self, key: str, response: str) -> None:
        with self._lock:
            self._cache[key] = response
            if self.cache_path is None:
                return
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "model": self.model, "response": response}, ensure_ascii=False) + "\n")

    # -- requests ------------------------------------------------------------------------------

    def complete(self, messages: Messages, temperature: float | None = None, max_tokens: int | None = None) -> str:
        """The reply text to one chat (a list of {"role", "content"} messages)."""
        temperature = self.temperature if temperature is None else float(temperature)
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        key = self._cache_key(messages, temperature, max_tokens)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        reply = self._post({"model": self.model, "messages": messages, "temperature": temperature,
                            "max_tokens": max_tokens})
        self._store(key, reply)
        return reply

    def complete_many(self, chats: Sequence[Messages], temperature: float | None = None,
                      max_tokens: int | None = None, desc: str | None = None) -> list[str]:
        """`complete` over many chats on `concurrency` threads; replies in the order of `chats`.
        The first failure is raised; replies received before it stay in the cache."""
        if not chats:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chats))) as pool:
            results = pool.map(lambda m: self.complete(m, temperature, max_tokens), chats)
            if desc:
                from tqdm.auto import tqdm
                results = tqdm(results, total=len(chats), desc=desc)
            return list(results)

    def _post(self, payload: dict) -> str:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        last = ""
        for attempt in range(self.retries + 1):
            wait = None
            try:
                request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read().decode("utf-8", errors="replace")
                return self._content(body)
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", errors="replace")
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"judge {self.endpoint} answered HTTP {e.code}: {_short(body)}") from None
                last = f"HTTP {e.code}: {_short(body)}"
                wait = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (OSError, http.client.HTTPException) as e:
                # timeouts, refused or dropped connections, cut-off bodies: the server may be busy or restarting
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                if wait is None:
                    wait = min(60.0, self.backoff * 2 ** attempt) * (1 + 0.25 * random.random())
                time.sleep(wait)
        raise JudgeError(f"judge {self.endpoint} failed after {self.retries + 1} attempts; last error: {last}")

    def _content(self, body: str) -> str:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise JudgeError(f"judge {self.endpoint}: not a chat-completions response: {_short(body)}") from None
        if not isinstance(content, str):
            raise JudgeError(f"judge {self.endpoint}: the reply has no text content: {_short(body)}")
        return content


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff
    return min(60.0, max(0.0, seconds)) if math.isfinite(seconds) else None


def make_judge(judge: Judge | Mapping | None) -> Judge | None:
    """A benchmark's `judge` argument: a Judge, its keyword arguments from the config (a `_target_`
    key is ignored), or None for no judge."""
    if judge is None or isinstance(judge, Judge):
        return judge
    if isinstance(judge, Mapping):
        kwargs = {k: v for k, v in dict(judge).items() if k != "_target_"}
        return Judge(**kwargs)
    raise TypeError(f"judge must be a mapping of Judge arguments or a Judge, got {type(judge).__name__}")


def with_reminder(chat: Messages, reminder: str) -> Messages:
    """The chat with `reminder` appended to its last message (used to re-ask after an unusable reply)."""
    *head, last = chat
    return [*head, {**last, "content": last["content"] + reminder}]


def complete_parsed(judge: Judge, chats: Sequence[Messages], parse: Callable[[str], Any], reminder: str,
                    retries: int, temperature: float | None = None, max_tokens: int | None = None,
                    desc: str | None = None) -> list[tuple[Any, list[str]]]:
    """Ask every chat; replies that `parse` rejects (returns None) are asked again, up to `retries`
    more times, with `reminder` appended and the temperature raised by 0.5 each time (capped at 2):
    an unchanged request would get the same reply back, from the model at temperature 0 or from the
    cache. Returns, per chat, (parsed value or None, every reply received)."""
    base = judge.temperature if temperature is None else float(temperature)
    replies: list[list[str]] = [[] for _ in chats]
    parsed: list[Any] = [None] * len(chats)
    todo = list(range(len(chats)))
    for attempt in range(retries + 1):
        if not todo:
            break
        batch = [chats[i] if attempt == 0 else with_reminder(chats[i], reminder) for i in todo]
        texts = judge.complete_many(batch, temperature=min(MAX_TEMPERATURE, base + 0.5 * attempt),
                                    max_tokens=max_tokens, desc=desc if attempt == 0 else None)
        for i, text in zip(todo, texts):
            replies[i].append(text)
            parsed[i] = parse(text)
        todo = [i for i in todo if parsed[i] is None]
    return list(zip(parsed, replies))


def read_prompt(path: str | Path | None, default: str) -> str:
    """A prompt file's text, verbatim (a user may point at an official prompt); `default` names a
    file packaged in lmm/eval/prompts/."""
    if path is None:
        from importlib.resources import files
        return files("lmm.eval").joinpath("prompts", default).read_text(encoding="utf-8")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge prompt file not found: {path}")
    return path.read_text(encoding="utf-8")
