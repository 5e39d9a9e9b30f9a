"""Credentials redacted from URLs and headers wherever they can appear (coder.llm.redact)."""

import pytest

from coder.llm.redact import redact


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("http://user:PASSWORD@host/v1/", "http://***@host/v1/"),
        ("http://user:PASSWORD@host/v1", "http://***@host/v1"),
        ("http://user@host/v1", "http://***@host/v1"),
        ("http://user:p%40ss@word@host:8000/v1/", "http://***@host:8000/v1/"),
        ("https://user:PASSWORD@host:8443/v1", "https://***@host:8443/v1"),
        ("http://user:PASSWORD@[::1]:8000/v1/", "http://***@[::1]:8000/v1/"),
        ("http://[2001:db8::7]/v1", "http://[2001:db8::7]/v1"),
        ("https://host/v1?api_key=PASSWORD", "https://host/v1?api_key=***"),
        ("https://host/v1/?api-version=2024-06-01&code=PASSWORD", "https://host/v1/?api-version=***&code=***"),
        ("https://host/v1?PASSWORD", "https://host/v1?***"),
        ("https://host/v1#PASSWORD", "https://host/v1#***"),
        ("http://user:PASSWORD@[::1/v1", "http://***"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
    ids=["user-password-slash", "user-password", "user-only", "at-in-password", "https-port", "ipv6-port",
         "ipv6-plain", "query-key", "query-keys", "query-bare", "fragment", "malformed-ipv6", "plain"],
)
def test_urls_keep_only_scheme_host_port_and_path(text, public):
    assert redact(text) == public


@pytest.mark.parametrize(
    "text",
    [
        "OpenAI-compatible endpoint http://user:PASSWORD@127.0.0.1:8000/v1 is not answering (URLError: refused)",
        "1 of 3 prompts failed, first: HTTP 401 for https://host/v1/chat/completions?key=PASSWORD.",
        "sent Authorization: Bearer PASSWORD to the server",
        "headers {'Authorization': 'Basic PASSWORD'}",
        '{"Proxy-Authorization": "Bearer PASSWORD", "X-Api-Key": "PASSWORD"}',
        "found api-key=PASSWORD; bearer PASSWORD",
    ],
    ids=["url-in-error", "query-in-error", "bearer-header", "basic-header", "json-headers", "bare-forms"],
)
def test_messages_keep_their_words_but_no_credential(text):
    redacted = redact(text)
    assert "PASSWORD" not in redacted and "***" in redacted
    assert redacted.split()[0] == text.split()[0]
