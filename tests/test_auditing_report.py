import re
import shutil
import subprocess

import polars as pl
import pytest

from coder.auditing.score import audit_system
from coder.auditing.report import render_report
from coder.schema import CM, GOLD_SCHEMA, PCS, PREDICTION_SCHEMA

CHROMIUM = shutil.which("chromium")


def _audit() -> dict:
    gold = pl.DataFrame([("n1", "A01", CM), ("n1", "B02", CM), ("n2", "0DTJ0ZZ", PCS)], schema=GOLD_SCHEMA, orient="row")
    predictions = pl.DataFrame(
        [
            ("n1", CM, "A01", "<script>alert(1)</script>", 0.9, 1, True, "plm_icd", None, None, None, None, "release"),
            ("n1", CM, "C03", "other", 0.3, 2, False, "plm_icd", None, None, None, None, "release"),
            ("n2", PCS, "0DTJ0ZZ", "Resection of Appendix", 0.6, 1, True, "plm_icd", None, None, None, None, "release"),
        ],
        schema=PREDICTION_SCHEMA,
        orient="row",
    )
    describe = {"B02": "<script>alert(1)</script>"}.get  # B02 is missed: listed with its description
    return {
        system: audit_system(predictions.filter(pl.col("system") == system), gold.filter(pl.col("system") == system),
                             ks=(1, 5), describe=describe).as_dict()
        for system in (CM, PCS)
    } | {"llm": {"hallucinated_codes": 3}}


def test_report_is_self_contained_and_escapes_text():
    html = render_report(_audit(), title="audit & test")
    assert "<script" not in html
    assert not re.search(r'\b(src|href)\s*=', html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<svg") == 8  # four plots per system
    assert "hallucinated_codes" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    page = tmp_path / "audit.html"
    page.write_text(render_report(_audit()))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CONSOLE" not in done.stderr, done.stderr
    assert done.stdout.count("<svg") == 8
    assert "Calibration (reliability diagram)" in done.stdout
