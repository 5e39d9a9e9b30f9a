"""A real OpenAI-compatible HTTP server on loopback (stdlib ``http.server`` in a thread, port 0) whose
answers the LLM tests script: ``GET /models`` lists nothing, each ``POST`` is answered by ``reply``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def send(handler: BaseHTTPRequestHandler, body: bytes, *, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def completion(content: object = "I10", **choice: object) -> bytes:
    """A chat completion whose first choice's message has ``content`` (any JSON value)."""
    reply = {"choices": [{"message": {"content": content}, "finish_reason": "stop", **choice}], "usage": {"completion_tokens": 2}}
    return json.dumps(reply).encode()


def drip(handler: BaseHTTPRequestHandler, *, every_s: float = 0.5, most: int = 60) -> None:
    """Headers promising a body, then one byte every ``every_s`` seconds (until the client hangs up)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(most))
    handler.end_headers()
    for _ in range(most):
        try:
            handler.wfile.write(b" ")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(every_s)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        send(self, b'{"object": "list", "data": []}')

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(self.headers.get("Authorization"))
        self.server.reply(self)

    def log_message(self, *args):
        pass


@contextmanager
def llm_server(reply: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[ThreadingHTTPServer]:
    """The server, running; ``server.url`` is its ``/v1`` root and ``server.seen`` each POST's Authorization header."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.reply, server.seen = reply, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
