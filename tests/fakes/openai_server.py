"""A real local HTTP server speaking the OpenAI chat-completions API, scriptable per request.

    with fake_openai(Reply.json(0.9, "right")) as server:           # the same reply every time
    with fake_openai([Reply.http(429, retry_after=0.2), Reply.json(1)]) as server:  # a script
    with fake_openai(lambda request, attempt: ...) as server:        # a function per request

``server.base_url`` is the ``.../v1`` URL to hand the client; ``server.requests``
records every request body, ``server.max_in_flight`` the most requests it served at
once. A scripted queue is consumed in order and its last reply repeats. A function
gets the request JSON and the attempt number (1 for the first request with these
messages, 2 for its retry, ...). A ``Reply`` can delay (latency, or a hang longer than
the client's timeout), fail with any status and headers, or carry garbage content;
successful replies report token usage (whitespace-separated words). A reply with
``content_length=False`` sends no Content-Length: its body ends when the connection
closes, so only the client's own cap can stop a flood.

Connections are kept alive (HTTP/1.1), as a real provider's are: a connection per
request would make the client pay a connect, and this server a thread, per call, a
cost no real provider puts on the client's CPU.

``fake_openai_process`` runs the server in a process of its own (benchmarks): a real
provider's request handling does not compete with the judge's event loop for the GIL,
as this in-process server's threads do.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted response."""

    content: str | None = None  # the assistant message content (status 200)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    body: str | None = None  # a raw body, instead of a chat completion or an error object
    content_length: bool = True  # False: no Content-Length header, the body ends at close

    @classmethod
    def json(cls, score: Any, rationale: str = "ok", delay: float = 0.0, fenced: bool = False) -> Reply:
        text = json.dumps({"score": score, "rationale": rationale})
        return cls(content=f"Here is my grade:\n```json\n{text}\n```" if fenced else text, delay=delay)

    @classmethod
    def text(cls, content: str, delay: float = 0.0, content_length: bool = True) -> Reply:
        return cls(content=content, delay=delay, content_length=content_length)

    @classmethod
    def http(cls, status: int, retry_after: float | str | None = None, delay: float = 0.0) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(status=status, headers=headers, delay=delay)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Answer (a valid grade) only after ``seconds``: longer than the client's timeout."""
        return cls.json(1.0, "late", delay=seconds)


Handler = Callable[[dict[str, Any], int], Reply]
STATS_PATH = "/_fake/stats"  # GET: the counters of a server in its own process


class FakeOpenAI:
    """The running server's state, shared with its request threads."""

    def __init__(self, handler: Handler | Reply | Sequence[Reply] | None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # open client connections
        self.connections = 0  # client connections accepted so far
        self._read_up_to = 0  # arrivals already reported by the stats endpoint
        if handler is None:
            handler = Reply.json(1.0, "fine")
        if isinstance(handler, Reply):
            self._handler: Handler = lambda request, attempt, reply=handler: reply
        elif callable(handler):
            self._handler = handler
        else:
            script = list(handler)
            if not script:
                raise ValueError("an empty script")

            def next_reply(request: dict[str, Any], attempt: int) -> Reply:
                with self._lock:
                    return script.pop(0) if len(script) > 1 else script[0]

            self._handler = next_reply

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _handle(self, request: dict[str, Any],
                headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        key = json.dumps(request.get("messages"), sort_keys=True)
        with self._lock:
            self.requests.append(request)
            self.headers.append(headers)
            self.arrivals.append(time.monotonic())
            self._attempts[key] = attempt = self._attempts.get(key, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self._handler(request, attempt)
            if reply.delay:
                self._stopping.wait(reply.delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        if reply.body is not None:
            return reply.status, reply.headers, reply.body.encode(), reply.content_length
        if reply.status != 200:
            error = {"error": {"message": f"scripted HTTP {reply.status}", "type": "fake"}}
            return reply.status, reply.headers, json.dumps(error).encode(), reply.content_length
        content = reply.content or ""
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        completion = {
            "id": f"chatcmpl-fake-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": request.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_tokens + len(content.split())},
        }
        return 200, reply.headers, json.dumps(completion).encode(), reply.content_length


def _request_handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests
        # Nagle off: on a kept-alive connection the body, written after the headers,
        # would otherwise wait for the client's delayed ACK (40 ms a reply).
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with state._lock:
                state._connections.add(self.connection)
                state.connections += 1

        def finish(self) -> None:
            with state._lock:
                state._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            # A client going through a proxy (this server) sends the absolute URL.
            if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {}, b'{"error": {"message": "not found"}}')
            try:
                request = json.loads(raw)
            except ValueError:
                return self._send(400, {}, b'{"error": {"message": "body is not JSON"}}')
            self._send(*state._handle(request, {k.lower(): v for k, v in self.headers.items()}))

        def do_GET(self) -> None:  # noqa: N802
            if self.path != STATS_PATH:
                return self._send(404, {}, b'{"error": {"message": "not found"}}')
            with state._lock:  # each read starts a new peak and a new span of arrivals
                fresh = state.arrivals[state._read_up_to:]
                stats = {"calls": state.calls, "max_in_flight": state.max_in_flight,
                         "connections": state.connections,
                         "first_arrival": min(fresh, default=None)}
                state.max_in_flight = state.in_flight
                state._read_up_to = len(state.arrivals)
            self._send(200, {}, json.dumps(stats).encode())

        def _send(self, status: int, headers: dict[str, str], body: bytes,
                  content_length: bool = True) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if content_length:
                    self.send_header("Content-Length", str(len(body)))
                else:  # the body ends when the connection closes
                    self.send_header("Connection", "close")
                    self.close_connection = True
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return RequestHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent connects must not hit the listen backlog


@contextmanager
def fake_openai(handler: Handler | Reply | Sequence[Reply] | None = None) -> Iterator[FakeOpenAI]:
    """Run a fake OpenAI server on a free loopback port for the duration of the block."""
    state = FakeOpenAI(handler)
    server = _Server(("127.0.0.1", 0), _request_handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fake-openai", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state._stopping.set()  # cut scripted delays short
        server.shutdown()
        server.server_close()
        with state._lock:  # end idle keep-alive connections, whose threads wait to read
            for connection in state._connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=5)


@dataclass
class FakeOpenAIProcess:
    """A fake server in a child process: its URL, and its counters read over HTTP."""

    base_url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        """``calls`` and ``connections`` so far; since the previous read, ``max_in_flight``
        and ``first_arrival`` (``time.monotonic()``, one clock for all processes here)."""
        import httpx

        return httpx.get(self.base_url.removesuffix("/v1") + STATS_PATH, timeout=30).json()


@contextmanager
def fake_openai_process(score: float = 1.0, rationale: str = "fine",
                        delay: float = 0.0) -> Iterator[FakeOpenAIProcess]:
    """Run a fake server that answers every request with one grade after ``delay``,
    in a child process, for the duration of the block."""
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--score", str(score),
         "--rationale", rationale, "--delay", str(delay)],
        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url:
            raise RuntimeError(f"the fake OpenAI server did not start (exit {process.wait()})")
        yield FakeOpenAIProcess(base_url, process)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the server stops at end of input
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one grade after a delay; print the base URL, stop when stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", type=float, default=1.0)
    parser.add_argument("--rationale", default="fine")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    with fake_openai(Reply.json(args.score, args.rationale, delay=args.delay)) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
