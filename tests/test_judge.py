"""The LLM judge client against a fake OpenAI-compatible server: request shape, auth, retries,
immediate errors, timeouts, the reply cache, ordering under concurrency and parse-retries."""
from __future__ import annotations

import json
import socket
import time

import pytest

from lmm.eval.judge import Judge, JudgeError, _retry_after, complete_parsed, make_judge

pytest_plugins = ["tests.judge_server"]  # the `judge_server` fixture

HI = [{"role": "user", "content": "hi"}]


def make(server, **kw) -> Judge:
    return Judge(server.url, kw.pop("model", "judge-x"), backoff=kw.pop("backoff", 0.01), **kw)


def test_request_shape_and_auth_header(judge_server):
    judge_server.reply = lambda req: "reply to " + req["messages"][-1]["content"]
    judge = make(judge_server, api_key="sk-secret-1")
    assert judge.complete(HI) == "reply to hi"
    (req,) = judge_server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-secret-1"
    assert req["json"] == {"model": "judge-x", "messages": HI, "temperature": 0.0, "max_tokens": 1024}
    # per-call overrides
    judge.complete(HI, temperature=0.7, max_tokens=3)
    assert (judge_server.requests[1]["json"]["temperature"], judge_server.requests[1]["json"]["max_tokens"]) == (0.7, 3)
    assert "sk-secret-1" not in repr(judge) and "sk-secret-1" not in str(vars(judge).get("endpoint"))


def test_key_from_env_config_wins_and_no_key(judge_server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-env")
    make(judge_server, api_key_env="MY_JUDGE_KEY").complete(HI)
    make(judge_server, api_key="sk-config", api_key_env="MY_JUDGE_KEY").complete(HI)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    make(judge_server).complete(HI)  # a local server: no key, no header, no error
    headers = [r["headers"].get("Authorization") for r in judge_server.requests]
    assert headers == ["Bearer sk-env", "Bearer sk-config", None]


def test_url_may_name_the_endpoint(judge_server):
    Judge(judge_server.url + "/chat/completions/", "m").complete(HI)
    assert judge_server.requests[0]["path"] == "/v1/chat/completions"


def test_retries_429_and_5xx_then_succeeds(judge_server):
    judge_server.fail(429, 500, 503)
    assert make(judge_server, retries=5).complete(HI) == "ok"
    assert len(judge_server.requests) == 4  # 3 failures + the success


def test_gives_up_after_retries_naming_the_last_error(judge_server):
    judge_server.fail(500, 500, 502, 500, body='{"error": "overloaded"}')
    with pytest.raises(JudgeError, match=r"after 3 attempts.*HTTP 502.*overloaded"):
        make(judge_server, retries=2).complete(HI)
    assert len(judge_server.requests) == 3  # first try + 2 retries, the 4th failure never asked


@pytest.mark.parametrize("status", [400, 401, 404])
def test_other_4xx_fail_at_once_with_status_and_body(judge_server, status):
    judge_server.fail(status, body='{"error": {"message": "unknown model judge-x"}}')
    with pytest.raises(JudgeError, match=rf"HTTP {status}: .*unknown model judge-x") as info:
        make(judge_server, api_key="sk-secret-2", retries=5).complete(HI)
    assert len(judge_server.requests) == 1  # no retry
    assert "sk-secret-2" not in str(info.value)


def test_wrong_path_is_a_clear_404(judge_server):
    with pytest.raises(JudgeError, match="HTTP 404.*no route /v1/wrong/chat/completions"):
        Judge(judge_server.url + "/wrong", "m").complete(HI)


def test_timeout_is_retried(judge_server):
    judge_server.stall(1.5, calls=1)
    start = time.monotonic()
    assert make(judge_server, timeout=0.3, retries=2).complete(HI) == "ok"
    assert len(judge_server.requests) == 2
    assert time.monotonic() - start < 1.4  # it gave up on the stalled call, did not wait it out


def test_refused_connection_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(JudgeError, match="after 2 attempts"):
        Judge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01).complete(HI)


def test_not_a_chat_completion_is_a_clear_error(judge_server):
    judge = make(judge_server)
    with pytest.raises(JudgeError, match="not a chat-completions response"):
        judge._content('{"object": "error"}')
    with pytest.raises(JudgeError, match="no text content"):
        judge._content('{"choices": [{"message": {"content": null}}]}')


def test_cache_never_pays_twice(judge_server, tmp_path):
    calls = []
    judge_server.reply = lambda req: calls.append(1) or f"reply {len(calls)}"
    cache = tmp_path / "judge_cache.jsonl"
    judge = make(judge_server, cache=str(cache), api_key="sk-secret-3")
    assert judge.complete(HI) == "reply 1"
    assert judge.complete(HI) == "reply 1"  # same instance: from memory
    assert len(judge_server.requests) == 1
    again = make(judge_server, cache=str(cache))
    assert again.complete(HI) == "reply 1"  # a rerun: from the file
    assert len(judge_server.requests) == 1
    assert again.complete(HI, temperature=0.5) == "reply 2"  # a different request is paid for
    assert make(judge_server, cache=str(cache), model="other").complete(HI) == "reply 3"  # the model is in the key
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert [x["response"] for x in lines] == ["reply 1", "reply 2", "reply 3"]
    assert "sk-secret-3" not in cache.read_text()


def test_cache_survives_a_cut_off_last_line_but_not_a_broken_one(judge_server, tmp_path):
    cache = tmp_path / "c.jsonl"
    make(judge_server, cache=cache).complete(HI)
    with cache.open("a") as f:
        f.write('{"key": "abc", "resp')  # a run killed mid-write
    judge = make(judge_server, cache=cache)
    assert judge.complete(HI) == "ok" and len(judge_server.requests) == 1
    judge.complete([{"role": "user", "content": "new"}])
    # the new entry starts on its own line, so the file reloads with both good entries
    assert len(make(judge_server, cache=cache)._cache) == 2
    cache.write_text('not json\n{"key": "k", "response": "r"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl, line 1"):
        make(judge_server, cache=cache)


def test_complete_many_keeps_order(judge_server):
    def reply(req):  # later prompts answer sooner, so completion order is reversed
        i = int(req["messages"][0]["content"])
        time.sleep((6 - i) * 0.03)
        return f"answer {i}"

    judge_server.reply = reply
    chats = [[{"role": "user", "content": str(i)}] for i in range(6)]
    start = time.monotonic()
    assert make(judge_server, concurrency=6).complete_many(chats) == [f"answer {i}" for i in range(6)]
    assert time.monotonic() - start < 0.5  # concurrent: 0.18 s at worst, 0.63 s if serial
    assert make(judge_server).complete_many([]) == []


def test_complete_parsed_re_asks_with_reminder_and_warmer_temperature(judge_server):
    def reply(req):
        text = req["messages"][-1]["content"]
        if text.startswith("good"):
            return "7"
        if text.startswith("late"):
            return "8" if req["temperature"] >= 1.0 else "what?"  # readable only on the 2nd re-ask
        return "never a number"

    judge_server.reply = reply
    parse = lambda s: int(s) if s.isdigit() else None
    chats = [[{"role": "system", "content": "sys"}, {"role": "user", "content": p}] for p in ("good", "late", "bad")]
    results = complete_parsed(make(judge_server, temperature=0.0), chats, parse, " [digits only]", retries=2)
    assert results == [(7, ["7"]), (8, ["what?", "what?", "8"]), (None, ["never a number"] * 3)]
    # round 1: 3 requests at 0.0; round 2: "late", "bad" at 0.5; round 3: the same at 1.0
    assert len(judge_server.requests) == 7
    retried = [r["json"] for r in judge_server.requests[3:]]
    assert sorted(r["temperature"] for r in retried) == [0.5, 0.5, 1.0, 1.0]
    assert all(r["messages"][-1]["content"].endswith(" [digits only]") for r in retried)
    assert all(r["messages"][0] == {"role": "system", "content": "sys"} for r in retried)  # only the last changes


def test_make_judge_and_retry_after():
    judge = make_judge({"_target_": "lmm.eval.judge.Judge", "url": "http://x/v1", "model": "m", "retries": 1})
    assert isinstance(judge, Judge) and judge.endpoint == "http://x/v1/chat/completions" and judge.retries == 1
    assert make_judge(None) is None and make_judge(judge) is judge
    with pytest.raises(TypeError):
        make_judge("gpt-4")
    with pytest.raises(ValueError, match="url"):
        Judge("", "m")
    assert (_retry_after("2"), _retry_after("1000"), _retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            _retry_after(None)) == (2.0, 60.0, None, None)
