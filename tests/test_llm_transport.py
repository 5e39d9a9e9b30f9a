"""One bounded HTTP request (coder.llm.transport) against a real loopback server: a deadline for the
whole response, a cap on its size, JSON or a clear error."""

import socket
import threading
import time
import urllib.request

import pytest
from llm_server import completion, drip, llm_server, send

from coder.errors import LLMBackendError
from coder.llm.transport import fetch_json


def _post(server, *, timeout=5.0, max_bytes=1_048_576):
    request = urllib.request.Request(server.url + "/chat/completions", data=b"{}", method="POST")
    return fetch_json(request, timeout=timeout, max_bytes=max_bytes)


def test_a_reply_is_read_whole():
    with llm_server(lambda handler: send(handler, completion("I10"))) as server:
        reply = _post(server)
    assert reply["choices"][0]["message"]["content"] == "I10"


def test_a_slow_drip_ends_at_the_deadline_not_per_read():
    with llm_server(drip) as server:
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="no whole reply within 1 s"):
            _post(server, timeout=1.0)
        assert time.perf_counter() - start < 2.0  # a byte every 0.5 s: no read ever waits 1 s


def test_a_silent_tls_handshake_ends_at_the_deadline():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted = []
        threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
        request = urllib.request.Request(f"https://127.0.0.1:{listener.getsockname()[1]}/v1/models")
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="within 1 s"):
            fetch_json(request, timeout=1.0, max_bytes=100)
        assert time.perf_counter() - start < 2.0


def _chunked(handler):
    """A body with no Content-Length (chunked), larger than the cap."""
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    piece = b"I10\n" * 1024
    for _ in range(64):
        handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda handler: send(handler, completion("I10\n" * 100_000)), "a reply of \\d+ bytes, over max_response_bytes=65536"),
        (_chunked, "a reply of more than max_response_bytes=65536 bytes"),
        (lambda handler: send(handler, b"<html>502 Bad Gateway</html>"), "a reply of 28 bytes that is not JSON"),
        (lambda handler: send(handler, b"\xff\xfe{}"), "that is not JSON"),
    ],
    ids=["over-the-cap", "over-the-cap-chunked", "not-json", "not-utf8"],
)
def test_a_reply_too_big_or_not_json_is_refused_without_quoting_it(reply, message):
    with llm_server(reply) as server, pytest.raises(LLMBackendError, match=message) as raised:
        _post(server, max_bytes=65536)
    assert "I10" not in str(raised.value) and "Gateway" not in str(raised.value)
