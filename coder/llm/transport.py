"""One HTTP request to an LLM server, bounded: a deadline for the whole response and a cap on its size.

A socket timeout bounds each read, not the response: a server that sends a byte a second never trips
it. Here a timer shuts the request's connections when its time is up, whatever they are waiting for
(connecting, the headers, the body), and the body is read in pieces and refused past ``max_bytes``.
urllib's other handlers (proxies from the environment, HTTPS, redirects) work as they always do.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import socket
import threading
import time
import urllib.request
from typing import Any

from coder.errors import LLMBackendError

_PIECE = 65536


def fetch_json(request: urllib.request.Request, *, timeout: float, max_bytes: int) -> Any:
    """The JSON body of the response to ``request``, received whole within ``timeout`` seconds.

    Raises ``TimeoutError`` past the deadline, ``LLMBackendError`` for a body over ``max_bytes`` or not
    JSON (messages never quote the body: it can echo note text), and what ``urllib`` raises otherwise
    (``HTTPError`` for a status >= 400, ``OSError``, ``http.client.HTTPException``).
    """
    deadline = _Deadline(timeout)
    late = TimeoutError(f"no whole reply within {timeout:g} s")
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
    try:
        with deadline, opener.open(request, timeout=timeout) as response:
            body = _read(response, max_bytes=max_bytes)
    except (OSError, http.client.HTTPException) as error:
        if deadline.passed():
            raise late from error
        raise
    if deadline.passed():  # the shut connection may read as a short body rather than an error
        raise late
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        raise LLMBackendError(f"a reply of {len(body)} bytes that is not JSON") from None


def _read(response: http.client.HTTPResponse, *, max_bytes: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise LLMBackendError(f"a reply of {length} bytes, over max_response_bytes={max_bytes}")
    body = bytearray()
    while piece := response.read1(_PIECE):  # read1: what has arrived, not a fixed count
        body += piece
        if len(body) > max_bytes:
            raise LLMBackendError(f"a reply of more than max_response_bytes={max_bytes} bytes")
    return bytes(body)


class _Deadline:
    """Shuts the sockets of one request ``seconds`` after it is entered (``with``)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def passed(self) -> bool:
        """Whether the time is up (the socket timeout of the last read may end it a moment before the timer)."""
        return self.expired.is_set() or time.monotonic() >= self._end

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def track(self, sock: socket.socket) -> socket.socket:
        """Shut ``sock`` at the deadline, or now if it has passed."""
        with self._lock:
            self._sockets.append(sock)
            late = self.expired.is_set()
        if late:
            _shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # shutdown, not close: it wakes a read blocked in another thread (the response holds the socket open)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Tracked:
    """A connection whose sockets its deadline shuts: the TCP socket (the TLS handshake reads on it), then
    the socket the response is read from (under TLS, another object on the same connection)."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        create = self._create_connection
        self._create_connection = lambda *args, **kwargs: deadline.track(create(*args, **kwargs))

    def connect(self) -> None:
        super().connect()
        self.deadline.track(self.sock)


class _HTTPConnection(_Tracked, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, http.client.HTTPSConnection):
    pass


class _Handler:
    """urllib's handler, its connections tracked by ``deadline``."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: type[http.client.HTTPConnection], req: urllib.request.Request, **kwargs: Any):
        tracked = _HTTPSConnection if issubclass(http_class, http.client.HTTPSConnection) else _HTTPConnection
        return super().do_open(functools.partial(tracked, deadline=self.deadline), req, **kwargs)


class _HTTPHandler(_Handler, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_Handler, urllib.request.HTTPSHandler):
    pass
