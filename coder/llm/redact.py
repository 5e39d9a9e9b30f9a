"""Credentials out of anything a person or a file may see: log lines, errors, the summary, the manifest.

An endpoint URL can carry a user and password (``http://user:pw@host/v1``) or a key in its query
(``?api_key=...``), and a header a token (``Authorization: Bearer ...``); ``redact`` masks them all.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_HEADER = re.compile(r"\b((?:proxy-)?authorization|x-api-key|api-key)([\"']?\s*[:=]\s*[\"']?)((?:bearer|basic)\s+)?[^\s\"',;}]+",
                     re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer)\s+[^\s\"',;}]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL's user, password, query values and fragment masked, and the value of
    every authorization or API-key header and ``Bearer`` token; scheme, host, port and path stay readable."""
    text = _URL.sub(lambda match: _public_url(match.group()), text)
    return _BEARER.sub(rf"\1 {MASK}", _HEADER.sub(rf"\1\2\3{MASK}", text))


def _public_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it can be trusted to be public
        return f"{url.partition('://')[0]}://{MASK}"
    _, at, hostport = parts.netloc.rpartition("@")
    # Every query value is masked, not only those named like keys: Azure's ``?code=`` is a key too.
    pairs = parts.query.split("&") if parts.query else []
    query = "&".join(f"{pair.partition('=')[0]}={MASK}" if "=" in pair else MASK for pair in pairs)
    return urlunsplit(parts._replace(netloc=f"{MASK}@{hostport}" if at else hostport, query=query,
                                     fragment=MASK if parts.fragment else ""))
