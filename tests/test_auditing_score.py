"""An audit of a toy example: exact metric values, computed by hand in the comments."""

import polars as pl
import pytest

from coder.auditing.score import audit_system
from coder.schema import CM, GOLD_SCHEMA, PREDICTION_SCHEMA


def _toy():
    # gold n1 = {A01, B02, C03}, n2 = {D04}
    gold = pl.DataFrame(
        [("n1", "A01", CM), ("n1", "B02", CM), ("n1", "C03", CM), ("n2", "D04", CM)], schema=GOLD_SCHEMA, orient="row"
    )
    rows = [
        # note, code, score, rank, above threshold; "a.01" repeats A01 and is dropped
        ("n1", "A01", 0.9, 1, True),
        ("n1", "X99", 0.6, 2, True),
        ("n1", "B02", 0.4, 3, False),
        ("n1", "a.01", 0.3, 4, False),
        ("n2", "Y88", 0.7, 1, True),
        ("n2", "D04", 0.2, 2, False),
    ]
    predictions = pl.DataFrame(
        [(n, CM, c, f"about {c}", s, r, a, "plm_icd", None, None, None, None, "release") for n, c, s, r, a in rows],
        schema=PREDICTION_SCHEMA,
        orient="row",
    )
    return predictions, gold


def test_toy_audit_exact_values():
    audit = audit_system(*_toy(), ks=(1, 2, 5))
    ranking = audit.ranking
    # AP n1 = (1/1 + 2/3) / 3 = 5/9; AP n2 = (1/2) / 1; MAP = (5/9 + 1/2) / 2 = 19/36
    assert ranking.map == pytest.approx(19 / 36) and ranking.map_all_notes == pytest.approx(19 / 36)
    # P@1 = (1 + 0)/2; P@2 = (1/2 + 1/2)/2; P@5 = (2/5 + 1/5)/2
    assert ranking.precision_at == pytest.approx({1: 0.5, 2: 0.5, 5: 0.3})
    # R@1 = (1/3 + 0)/2; R@2 = (1/3 + 1)/2; R@5 = (2/3 + 1)/2
    assert ranking.recall_at == pytest.approx({1: 1 / 6, 2: 2 / 3, 5: 5 / 6})
    # above threshold: A01 tp, X99 fp, Y88 fp; missed B02, C03, D04
    assert audit.micro == pytest.approx({"precision": 1 / 3, "recall": 1 / 4, "f1": 2 / 7})
    # six codes, only A01 has P = R = F1 = 1
    assert audit.macro == pytest.approx({"precision": 1 / 6, "recall": 1 / 6, "f1": 1 / 6})
    assert (ranking.notes, ranking.gold_notes) == (2, 2)
    assert [(c.code, c.count) for c in audit.false_positives] == [("X99", 1), ("Y88", 1)]
    assert [c.code for c in audit.missed] == ["B02", "C03", "D04"]
    assert audit.chapters[0] == {"chapter": "A", "gold": 1, "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    curve = {point["threshold"]: point for point in audit.pr_curve}
    assert (curve[0.0]["precision"], curve[0.0]["recall"]) == pytest.approx((3 / 5, 3 / 4))
    assert (curve[0.5]["precision"], curve[0.5]["recall"]) == pytest.approx((1 / 3, 1 / 4))
    assert max(curve) == 0.9  # nothing scores 0.95 or more
    # scores 0.2 (gold), 0.4 (gold), 0.6, 0.7, 0.9 (gold): one per bin
    assert [(round(b["low"] * 10), b["count"], b["fraction_gold"]) for b in audit.calibration] == [
        (2, 1, 1.0), (4, 1, 1.0), (6, 1, 0.0), (7, 1, 0.0), (9, 1, 1.0)
    ]


def test_valid_list_filters_the_ranking():
    # without X99, n1 ranks A01, B02: AP = (1 + 2/2) / 3 = 2/3; MAP = (2/3 + 1/2) / 2 = 7/12
    audit = audit_system(*_toy(), ks=(1, 2), is_valid=lambda key: key != "X99")
    assert audit.ranking.map == pytest.approx(7 / 12)
    # n1 ranks A01, B02; n2 Y88, D04: P@1 = (1 + 0)/2, P@2 = (1 + 1/2)/2
    assert audit.ranking.precision_at == pytest.approx({1: 0.5, 2: 0.75})
    assert audit.micro["precision"] == pytest.approx(1 / 3)  # the threshold metrics are not filtered


def test_notes_without_predictions_leave_map_and_count_in_map_all_notes():
    predictions, gold = _toy()
    audit = audit_system(predictions.filter(pl.col("note_id") == "n1"), gold, ks=(5,))
    assert (audit.ranking.map, audit.ranking.map_all_notes) == pytest.approx((5 / 9, 5 / 18))
    assert audit.as_dict()["gold_notes_without_predictions"] == 1
    empty = audit_system(predictions.clear(), gold, ks=(5,))
    assert (empty.ranking.map, empty.ranking.precision_at[5], empty.micro["f1"], empty.ranking.notes) == (0.0, 0.0, 0.0, 0)


def test_gold_that_is_no_code_is_kept_and_reported_and_a_repeated_row_is_scored_once():
    predictions, gold = _toy()
    extra = [("n1", "ZZZ.999", CM), ("n1", "b.02", CM), ("n2", "D04", CM)]  # no code; B02 and D04 again
    questioned = pl.concat([gold, pl.DataFrame(extra, schema=GOLD_SCHEMA, orient="row")])
    audit = audit_system(predictions, questioned, ks=(5,), is_valid=lambda key: key != "ZZZ999")
    # ZZZ.999 stays in n1's gold, as CodiEsp's script keeps it: AP n1 = (1/1 + 2/3) / 4; MAP = (5/12 + 1/2) / 2
    assert audit.ranking.map == pytest.approx(11 / 24)
    assert (audit.gold_rows, audit.duplicate_gold_rows, audit.invalid_gold_rows) == (7, 2, 1)
    assert [(c.code, c.count) for c in audit.invalid_gold] == [("ZZZ.999", 1)]
    assert "ZZZ999" in [c.code for c in audit.missed]
    assert {key: audit.as_dict()[key] for key in ("gold_rows", "duplicate_gold_rows", "invalid_gold_rows", "invalid_gold_codes")} \
        == {"gold_rows": 7, "duplicate_gold_rows": 2, "invalid_gold_rows": 1, "invalid_gold_codes": [{"code": "ZZZ.999", "count": 1}]}
    assert audit_system(predictions, questioned, ks=(5,)).invalid_gold_rows == 0  # without a rule every code is valid
