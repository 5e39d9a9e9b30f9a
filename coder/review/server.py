"""The review page's app (FastAPI) and its server (uvicorn), guarded so that patient data stays on the machine.

- bound to 127.0.0.1 unless told otherwise; every request needs the random token printed with the address
  (``?token=`` once, which becomes a strict same-site cookie, or the ``X-Coder-Token`` header);
- every response says: no script but the page's own file, nothing from another origin, no referrer, not cached;
- the page builds its DOM with ``textContent`` only (``page/review.js``), and the JSON it reads is never HTML;
- no access log; errors name files and queue positions, never note text.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel

from coder.errors import CoderError
from coder.review.session import Review

log = logging.getLogger(__name__)

COOKIE, HEADER = "coder_review_token", "x-coder-token"
PAGE_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Decision(BaseModel):
    system: str
    code: str
    decision: Literal["accepted", "rejected", "added"] | None


class Comment(BaseModel):
    comment: str


def create_app(review: Review, *, token: str) -> FastAPI:
    """The page and its JSON API over ``review``; every request without ``token`` is refused (403)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no API docs: they load scripts from a CDN
    page = resources.files(__package__) / "page"

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        given = request.query_params.get("token")
        if given is not None and request.url.path == "/" and secrets.compare_digest(given, token):
            response: Response = RedirectResponse("/", status_code=303)  # the token leaves the address bar and history
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        elif secrets.compare_digest(request.cookies.get(COOKIE, "") or request.headers.get(HEADER, ""), token):
            response = await call_next(request)
        else:
            response = PlainTextResponse("forbidden: open the address `coder review` printed, token included", 403)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(CoderError)
    async def refused(request: Request, error: CoderError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(IndexError)
    async def outside(request: Request, error: IndexError) -> JSONResponse:
        return JSONResponse({"error": f"no note at position {error} of the queue"}, status_code=404)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(page / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def icon() -> Response:
        return Response(status_code=204)  # no icon, and no 404 in the browser's console

    @app.get("/page/{name}")
    def page_file(name: str) -> Response:
        if name not in PAGE_FILES:
            return PlainTextResponse("not found", 404)
        return FileResponse(page / name, media_type=PAGE_FILES[name])

    @app.get("/api/progress")
    def progress() -> dict:
        return review.progress()

    @app.get("/api/notes/{position}")
    def note(position: int) -> dict:
        return review.note(position)

    @app.post("/api/notes/{position}/decisions")
    def decide(position: int, decision: Decision) -> dict:
        review.decide(position, system=decision.system, code=decision.code, decision=decision.decision)
        return review.note(position)

    @app.put("/api/notes/{position}/comment")
    def comment(position: int, comment: Comment) -> dict:
        review.comment(position, comment.comment)
        return review.progress()

    @app.post("/api/notes/{position}/complete")
    def complete(position: int) -> dict:
        review.complete(position)
        return review.progress()

    @app.get("/api/codes")
    def codes(q: str = "", system: str | None = None) -> list[dict]:
        return review.search.find(q, system=system)

    return app


@dataclass(frozen=True)
class Served:
    """The app on a bound socket: ``run`` serves until Ctrl-C (or ``stop`` from another thread)."""

    server: uvicorn.Server
    socket: socket.socket
    url: str

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    def stop(self) -> None:
        self.server.should_exit = True


def bind(review: Review, *, host: str = "127.0.0.1", port: int = 0) -> Served:
    """The review's app bound to ``host:port`` (0: a free port) with a fresh token; ``url`` opens the page."""
    token = secrets.token_urlsafe(32)
    listening = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    bound = listening.getsockname()[1]
    # No access log: request lines would carry queue positions and searches; warnings and errors only.
    config = uvicorn.Config(create_app(review, token=token), access_log=False, log_level="warning",
                            server_header=False, date_header=False)
    shown = f"[{host}]" if ":" in host else host
    return Served(server=uvicorn.Server(config), socket=listening, url=f"http://{shown}:{bound}/?token={token}")
