from __future__ import annotations

import polars as pl
import pytest

from coder.candidates.features import ABSENT_RANK, LABEL, feature_columns, merge_candidates, with_labels
from coder.metrics import rankings
from coder.schema import CM
from standin import assemble


def _source(name: str, rows: list[tuple], evidence: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["note_id", "system", "code", name], orient="row")
    if evidence:
        frame = frame.with_columns(pl.lit(name).alias("evidence_text"), pl.lit(0, dtype=pl.Int32).alias("evidence_start"),
                                   pl.lit(3, dtype=pl.Int32).alias("evidence_end"))
    return frame


SOURCES = {  # in evidence priority
    "lexicon": _source("lexicon", [("a", CM, "E11.9", 0.8)], evidence=True),
    "ontology": _source("ontology", [("a", CM, "E11", 0.7), ("a", CM, "I10", 0.2)], evidence=True),
    "tfidf": _source("tfidf", [("a", CM, "I10", 0.9), ("a", CM, "E11.9", 0.4)]),
}
PRIOR = pl.DataFrame({"system": [CM, CM], "code": ["I10", "E11.9"], "prior": [5, 1]})


def _merged(frames):
    return merge_candidates(frames, columns=dict.fromkeys(frames, "text"), features={name: (name,) for name in frames})


def test_merge_outer_joins_and_prefers_the_first_sources_evidence():
    merged = _merged(SOURCES).sort("code")
    assert merged["code"].to_list() == ["E11", "E11.9", "I10"]
    assert merged["evidence_text"].to_list() == ["ontology", "lexicon", "ontology"]
    assert merged.filter(pl.col("code") == "E11.9")["tfidf_rank"].item() == 2
    assert merged["source"].to_list() == ["ontology", "lexicon+tfidf", "ontology+tfidf"]
    reversed_priority = _merged(dict(reversed(SOURCES.items()))).sort("code")
    assert reversed_priority["evidence_text"].to_list() == ["ontology", "lexicon", "ontology"]  # tfidf has none
    assert reversed_priority["source"].to_list() == ["ontology", "tfidf+lexicon", "tfidf+ontology"]


def test_features_fill_absent_sources_and_describe_hierarchy():
    frame = assemble(SOURCES, prior=PRIOR).sort("code")
    rows = {r["code"]: r for r in frame.iter_rows(named=True)}
    assert rows["E11"]["lexicon"] == 0 and rows["E11"]["lexicon_rank"] == ABSENT_RANK
    assert (rows["E11"]["has_child"], rows["E11.9"]["has_parent"], rows["I10"]["has_child"]) == (1, 1, 0)
    assert rows["E11.9"]["same_category"] == 2 and rows["I10"]["same_category"] == 1
    assert rows["E11.9"]["n_sources"] == 2 and rows["E11"]["seen"] == 0 and rows["I10"]["seen"] == 1
    assert rows["I10"]["tfidf_gap"] == 0 and rows["E11.9"]["tfidf_gap"] == pytest.approx(-0.5)
    assert "evidence_start" not in feature_columns(frame) and "tfidf_rank" in feature_columns(frame)


def test_labels_and_rankings():
    frame = with_labels(assemble(SOURCES, prior=PRIOR), pl.DataFrame({"note_id": ["a"], "code": ["I10"], "system": [CM]}))
    assert frame.filter(pl.col(LABEL) == 1)["code"].to_list() == ["I10"]
    assert rankings(frame, score="tfidf") == {CM: {"a": ["I10", "E11.9", "E11"]}}


def test_only_the_columns_a_source_declares_reach_the_rerankers():
    frames = {"tfidf": SOURCES["tfidf"].with_columns(pl.lit(7.0).alias("tfidf_debug"))}
    merged = merge_candidates(frames, columns={"tfidf": "text"}, features={"tfidf": ("tfidf", "tfidf_rank")})
    assert "tfidf_debug" not in feature_columns(merged) and "tfidf" in feature_columns(merged)
