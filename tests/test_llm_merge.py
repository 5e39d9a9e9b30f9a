import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.llm.merge import VOTES_SCHEMA, merge_llm_votes
from coder.schema import CM, PCS, PREDICTION_SCHEMA


def predictions(rows):
    full = [
        {
            "note_id": note, "system": system, "code": code, "description": f"d {code}", "score": score,
            "rank": rank, "above_threshold": score > 0.5, "source": source,
            "evidence_text": None, "evidence_start": None, "evidence_end": None,
        }
        for note, system, code, score, rank, source in rows
    ]
    return pl.DataFrame(full, schema=PREDICTION_SCHEMA)


def votes(rows):
    return pl.DataFrame(rows, schema=VOTES_SCHEMA, orient="row")


PREDICTIONS = predictions(
    [
        ("n2", CM, "I10", 0.6, 1, "plm_icd"),
        ("n2", CM, "E11.9", 0.5, 2, "plm_icd+lexicon"),
        ("n2", PCS, "0DTJ4ZZ", 0.3, 1, "ontology"),
        ("n1", CM, "E10.9", 0.2, 1, "plm_icd"),
    ]
)


def test_votes_raise_scores_rerank_and_mark_source():
    out = merge_llm_votes(PREDICTIONS, votes([("n2", CM, "E11.9", "x", 2, 1.0)]), weight=0.5)
    n2 = out.filter(pl.col("note_id") == "n2", pl.col("system") == CM)
    assert n2["code"].to_list() == ["E11.9", "I10"]
    assert n2["score"].to_list() == pytest.approx([0.75, 0.6])
    assert n2["rank"].to_list() == [1, 2]
    assert n2["source"].to_list() == ["plm_icd+lexicon+llm", "plm_icd"]
    assert out["note_id"].to_list() == ["n2", "n2", "n2", "n1"]  # note and system order kept


def test_voted_code_that_was_not_a_candidate_is_added_below():
    out = merge_llm_votes(PREDICTIONS, votes([("n1", CM, "E10", "Type 1 diabetes mellitus", 1, 0.5)]), weight=0.2)
    n1 = out.filter(pl.col("note_id") == "n1")
    assert n1["code"].to_list() == ["E10.9", "E10"]
    assert n1["score"].to_list() == pytest.approx([0.2, 0.1])
    assert n1["source"].to_list() == ["plm_icd", "llm"]
    assert n1["description"].to_list() == ["d E10.9", "Type 1 diabetes mellitus"]
    assert n1["above_threshold"].to_list() == [False, False]
    assert out.schema == PREDICTION_SCHEMA


@pytest.mark.parametrize("weight", [0.0, 0.3], ids=["weight-zero", "no-votes"])
def test_nothing_changes_without_effect(weight):
    vote_rows = [("n2", CM, "E11.9", "x", 1, 1.0)] if weight == 0.0 else []
    assert_frame_equal(merge_llm_votes(PREDICTIONS, votes(vote_rows), weight=weight), PREDICTIONS)


def test_source_never_gets_llm_twice():
    once = merge_llm_votes(PREDICTIONS, votes([("n1", CM, "E10.9", "x", 1, 1.0)]), weight=0.1)
    twice = merge_llm_votes(once, votes([("n1", CM, "E10.9", "x", 1, 1.0)]), weight=0.1)
    assert twice.filter(pl.col("code") == "E10.9")["source"].item() == "plm_icd+llm"
