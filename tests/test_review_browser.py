"""The review page in a real Chromium (the system's, /usr/bin/chromium, which .ci/run installs): two notes
reviewed end to end, then audited; and an escaping test. CODER_SCREENSHOTS=docs writes docs/review.png."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import polars as pl
import pytest
from review_cases import _row, open_review, write_case
from typer.testing import CliRunner

from cli import app
from coder.review.server import bind
from coder.schema import CM

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def serve():
    running = []

    def start(review):
        served = bind(review)
        thread = threading.Thread(target=served.run, daemon=True)
        thread.start()
        running.append((served, thread))
        return served.url

    yield start
    for served, thread in running:
        served.stop()
        thread.join(timeout=10)


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def _saved(page, text):
    playwright.expect(page.locator("#status")).to_have_text(f"saved: {text}")


def test_two_notes_reviewed_end_to_end_then_audited(browser, serve, tmp_path, tiny_ontology):
    url = serve(open_review(tmp_path, tiny_ontology))
    page, errors = _page(browser)
    page.goto(url)
    expect = playwright.expect
    expect(page.locator("#note-id")).to_have_text("n1")
    expect(page.locator("mark.evidence")).to_have_count(2)
    page.locator("li.code", has_text="E11.9").get_by_role("button", name="Accept").click()
    _saved(page, "accepted E11.9")
    page.keyboard.press("j")  # focus I10
    page.keyboard.press("r")
    _saved(page, "rejected I10")
    page.locator("mark.evidence").nth(1).click()  # the appendix span shows its code
    expect(page.locator("#evidence-codes")).to_contain_text("0DTJ")
    page.keyboard.press("/")
    page.keyboard.type("asthma unc")
    expect(page.locator("#results li.result")).to_have_count(1)
    page.keyboard.press("Enter")
    _saved(page, "added J45.909")
    page.locator("#comment").fill("dictated late")
    page.keyboard.press("Escape")
    _saved(page, "comment")
    if folder := os.environ.get("CODER_SCREENSHOTS"):
        page.screenshot(path=str(Path(folder) / "review.png"), full_page=False)
    page.screenshot(path=str(tmp_path / "review.png"))
    page.keyboard.press("n")
    expect(page.locator("#note-id")).to_have_text("n2")
    page.keyboard.press("r")
    _saved(page, "rejected I10")
    page.keyboard.press("n")
    expect(page.locator("#counts")).to_contain_text("2 reviewed")

    page.reload()
    expect(page.locator("#note-id")).to_have_text("n2")
    expect(page.locator("li.code .decision")).to_have_text(["rejected", "rejected"])
    page.keyboard.press("p")
    expect(page.locator("#note-id")).to_have_text("n1")
    expect(page.locator("li.code .decision")).to_have_text(["accepted", "rejected", "accepted"])
    expect(page.locator("#added")).to_contain_text("J45.909")
    expect(page.locator("#comment")).to_have_value("dictated late")
    assert errors == []
    page.close()

    result = CliRunner().invoke(app, ["audit", "--reviewed", str(tmp_path / "decisions.parquet"), "--k", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)
    assert (audit[CM]["p@1"]["precision"], audit[CM]["p@2"]["precision"], audit[CM]["added"]) == (0.5, 0.25, 1)
    assert audit["ICD-10-PCS"]["p@1"]["precision"] == 1.0


def test_note_text_ids_descriptions_and_comments_are_shown_as_text(browser, serve, tmp_path, tiny_ontology):
    attack = "<script>window.attacked = true</script><img src=x onerror=\"window.attacked = true\">"
    notes = pl.DataFrame({"note_id": [attack], "text": [f"Fever. {attack} asthma"]})
    rows = [(attack, *_row("n2", CM, "I10", attack, 0.8, 1, True)[1:])]
    write_case(tmp_path, notes=notes, rows=rows)
    review = open_review(tmp_path, tiny_ontology)
    review.comment(0, attack)
    page, errors = _page(browser)
    page.goto(serve(review))
    expect = playwright.expect
    expect(page.locator("#note-id")).to_have_text(attack)
    expect(page.locator("#note-text")).to_have_text(f"Fever. {attack} asthma")
    expect(page.locator("li.code .description")).to_have_text(attack)
    expect(page.locator("#comment")).to_have_value(attack)
    assert page.evaluate("window.attacked === undefined")
    assert page.locator("#note-text script, #note-text img, .description img").count() == 0
    assert errors == []
    page.close()
