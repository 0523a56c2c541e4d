"""A fake OpenAI-compatible chat-completions server for judge tests (no network, no model).

`FakeJudgeServer` listens on 127.0.0.1 (a free port) in a background thread and answers POST
`/v1/chat/completions` in the OpenAI response shape. Its reply text comes from `reply(request_json)`,
a function the test provides; every request is recorded (path, headers, JSON body) so tests can check
the auth header, the model and the prompts. `fail(*statuses)` makes the next calls fail with those
HTTP statuses (429/500 for retries, 400/401 for immediate errors); `stall(seconds, k)` makes the
next k calls wait before answering (client timeouts). A test module gets the `judge_server`
fixture with:

    pytest_plugins = ["tests.judge_server"]
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeJudgeServer:
    def __init__(self, reply: Callable[[dict], str] | None = None):
        self.reply = reply or (lambda request: "ok")
        self.requests: list[dict] = []
        self._failures: list[tuple[int, str]] = []
        self._stalls: list[float] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    payload = None
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
                    failure = server._failures.pop(0) if server._failures else None
                    stall = server._stalls.pop(0) if server._stalls else 0.0
                if stall:
                    time.sleep(stall)
                if self.path != "/v1/chat/completions":
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                if failure:
                    return self._send(*failure)
                content = server.reply(payload)
                return self._send(200, json.dumps({
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": payload.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))

            def _send(self, status: int, body: str):
                data = body.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, *statuses: int, body: str = '{"error": {"message": "scripted failure"}}') -> None:
        """The next len(statuses) calls answer with these HTTP statuses."""
        with self._lock:
            self._failures += [(s, body) for s in statuses]

    def stall(self, seconds: float, calls: int = 1) -> None:
        """The next `calls` calls wait `seconds` before answering."""
        with self._lock:
            self._stalls += [seconds] * calls

    def prompts(self) -> list[str]:
        """The last message's content of every request received, in arrival order."""
        return [r["json"]["messages"][-1]["content"] for r in self.requests]


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not catch it
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = FakeJudgeServer().start()
    yield server
    server.stop()
