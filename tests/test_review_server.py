import pytest
from review_cases import open_review
from starlette.testclient import TestClient

from coder.review.decisions import read_decisions
from coder.review.server import COOKIE, HEADER, SECURITY_HEADERS, bind, create_app
from coder.schema import CM

TOKEN = "secret-token"


@pytest.fixture
def client(tmp_path, tiny_ontology):
    review = open_review(tmp_path, tiny_ontology)
    with TestClient(create_app(review, token=TOKEN), base_url="http://127.0.0.1") as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/page/review.js", "/api/progress", "/api/notes/0", "/api/codes?q=asthma"],
                         ids=["page", "script", "progress", "note", "search"])
def test_every_route_refuses_a_request_without_the_token(client, path):
    for headers in ({}, {HEADER: "wrong"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 403
        assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert client.post("/api/notes/0/complete").status_code == 403


def test_the_token_in_the_address_becomes_a_cookie_and_leaves_the_address(client):
    response = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/")
    assert client.cookies.get(COOKIE) == TOKEN
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/page/review.js"' in page.text
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/page/review.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/page/../server.py").status_code == 404
    assert client.get("/docs").status_code == 404  # no API docs: they would load a CDN's scripts


def test_the_api_reviews_a_note(client, tmp_path):
    headers = {HEADER: TOKEN}
    assert client.get("/api/progress", headers=headers).json()["total"] == 2
    note = client.post("/api/notes/0/decisions", json={"system": CM, "code": "I10", "decision": "rejected"}, headers=headers).json()
    assert [c["decision"] for c in note["codes"]] == [None, "rejected", None]
    found = client.get("/api/codes", params={"q": "asthma unsp"}, headers=headers).json()
    assert [(c["code"], c["status"]) for c in found] == [("J45.90", "valid"), ("J45.909", "billable")]  # shorter description first
    added = client.post("/api/notes/0/decisions", json={"system": CM, "code": "J45.909", "decision": "added"}, headers=headers)
    assert added.json()["added"] == [{"system": CM, "code": "J45.909", "description": "Unspecified asthma, uncomplicated"}]
    refused = client.post("/api/notes/0/decisions", json={"system": CM, "code": "X99", "decision": "added"}, headers=headers)
    assert refused.status_code == 422 and "not an assignable" in refused.json()["error"]
    assert client.put("/api/notes/0/comment", json={"comment": "seen"}, headers=headers).status_code == 200
    assert client.post("/api/notes/0/complete", headers=headers).json()["reviewed"] == 1
    assert client.get("/api/notes/7", headers=headers).status_code == 404
    assert read_decisions(tmp_path / "decisions.parquet").height == 5  # 3 suggested, 1 added, the note's row


def test_bind_serves_on_a_free_local_port_and_stops(tmp_path, tiny_ontology):
    served = bind(open_review(tmp_path, tiny_ontology), port=0)
    assert served.url.startswith("http://127.0.0.1:") and "?token=" in served.url
    served.socket.close()
