from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.candidates.features import (
    ABSENT_RANK, LABEL, CandidateBuilder, assemble, code_prior, feature_columns, merge_candidates, top_codes, with_labels,
)
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.ontology_search import OntologySearch, ontology_terms
from coder.schema import CM, PCS
from coder.candidates.tfidf import TfidfClassifier


def _source(name: str, rows: list[tuple], evidence: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["note_id", "system", "code", name], orient="row")
    if evidence:
        frame = frame.with_columns(pl.lit(name).alias("evidence_text"), pl.lit(0, dtype=pl.Int32).alias("evidence_start"),
                                   pl.lit(3, dtype=pl.Int32).alias("evidence_end"))
    return frame


SOURCES = {
    "tfidf": _source("tfidf", [("a", CM, "I10", 0.9), ("a", CM, "E11.9", 0.4)]),
    "ontology": _source("ontology", [("a", CM, "E11", 0.7), ("a", CM, "I10", 0.2)], evidence=True),
    "lexicon": _source("lexicon", [("a", CM, "E11.9", 0.8)], evidence=True),
}
PRIOR = pl.DataFrame({"system": [CM, CM], "code": ["I10", "E11.9"], "prior": [5, 1]})


def test_merge_outer_joins_and_prefers_lexicon_evidence():
    merged = merge_candidates(SOURCES).sort("code")
    assert merged["code"].to_list() == ["E11", "E11.9", "I10"]
    assert merged["evidence_text"].to_list() == ["ontology", "lexicon", "ontology"]
    assert merged.filter(pl.col("code") == "E11.9")["tfidf_rank"].item() == 2


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
    assert top_codes(frame, score="tfidf") == {CM: {"a": ["I10", "E11.9", "E11"]}}


@pytest.fixture(scope="module")
def builder(tiny_codiesp, tiny_ontology) -> CandidateBuilder:
    notes, codes, evidence = tiny_codiesp
    return CandidateBuilder(
        prior=code_prior(codes),
        lexicon=EvidenceLexicon().fit(notes, evidence),
        search=OntologySearch(top_k=3).fit(ontology_terms(tiny_ontology)),
        classifier=TfidfClassifier(min_df=1, top_k=3).fit(notes, codes),
    )


def test_builder_runs_every_source_and_skips_missing_columns(builder, tiny_codiesp):
    notes = tiny_codiesp[0]
    full = builder.build(notes)
    assert builder.sources_for(notes.columns) == ("lexicon", "ontology", "tfidf")
    assert {"lexicon", "ontology", "tfidf"} <= set(full.columns) and set(full["system"]) == {CM, PCS}
    english = builder.build(notes.select("note_id", "text"))
    assert builder.sources_for(["note_id", "text"]) == ("ontology", "tfidf")
    assert "lexicon" not in english.columns


def test_builder_takes_plm_icd_scores_as_an_extra_source(builder, tiny_codiesp):
    notes = tiny_codiesp[0]
    plm = pl.DataFrame({"note_id": ["n1", "zz"], "system": [CM, CM], "code": ["R51", "I10"], "plm_icd": [0.7, 0.9]})
    frame = builder.build(notes, extra={"plm_icd": plm})
    assert frame.filter(pl.col("code") == "R51")["plm_icd"].to_list() == [0.7]
    assert "zz" not in frame["note_id"].to_list()  # extra rows of other notes are dropped
    assert builder.sources_for(notes.columns, extra=("plm_icd",))[-1] == "plm_icd"


def test_builder_save_load_round_trip(builder, tiny_codiesp, tmp_path):
    notes = tiny_codiesp[0]
    builder.save(tmp_path)
    assert_frame_equal(CandidateBuilder.load(tmp_path).build(notes), builder.build(notes))
