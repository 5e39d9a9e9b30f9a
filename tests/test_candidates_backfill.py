from __future__ import annotations

import polars as pl
import pytest

from coder.candidates.backfill import backfill
from coder.candidates.features import ABSENT_RANK
from coder.candidates.ontology_search import TERMS_SCHEMA, OntologySearch
from coder.schema import CM
from standin import assemble

TERMS = pl.DataFrame([(CM, "I10", "Essential (primary) hypertension"), (CM, "E11.9", "Type 2 diabetes mellitus"),
                      (CM, "E11.65", "Type 2 diabetes mellitus with hyperglycemia")], schema=TERMS_SCHEMA, orient="row")
NOTES = pl.DataFrame({"note_id": ["a"], "text": ["Type 2 diabetes mellitus with hyperglycemia. Essential hypertension."]})
PRIOR = pl.DataFrame({"system": [CM], "code": ["I10"], "prior": [3]})


@pytest.fixture
def frames() -> dict[str, pl.DataFrame]:
    search = OntologySearch(top_k=1).index(TERMS)
    return {"lexicon": pl.DataFrame({"note_id": ["a", "a"], "system": [CM, CM], "code": ["E11.9", "R73.9"], "lexicon": [0.9, 0.3]}),
            "ontology": search.candidates(NOTES),
            "tfidf": pl.DataFrame({"note_id": ["a"], "system": [CM], "code": ["I10"], "tfidf": [0.4]})}


def test_a_search_scores_the_codes_other_sources_propose_without_proposing_them(frames):
    search = OntologySearch(top_k=1).index(TERMS)
    assert frames["ontology"]["code"].to_list() == ["E11.65"]
    filled = backfill(frames, sources=[search], notes=NOTES)
    assert filled["lexicon"] is frames["lexicon"] and filled["tfidf"] is frames["tfidf"]
    added = filled["ontology"].filter(pl.col("ontology_rank").is_null())
    # R73.9 is not in the search's terms: no score, as when it matches nothing
    assert sorted(added["code"].to_list()) == ["E11.9", "I10"]
    assert added["evidence_text"].null_count() == added.height
    expected = search.score(NOTES, added.select("note_id", "system", "code"))
    assert dict(added.select("code", "ontology_all").iter_rows()) == dict(expected.select("code", "ontology").iter_rows())
    assert (added["ontology_all"] > 0).all() and added["ontology"].null_count() == added.height
    own = filled["ontology"].filter(pl.col("ontology_rank") == 1)
    assert own["ontology_all"].to_list() == own["ontology"].to_list()

    merged = assemble(filled, prior=PRIOR).sort("code")
    rows = {r["code"]: r for r in merged.iter_rows(named=True)}
    assert sorted(rows) == ["E11.65", "E11.9", "I10", "R73.9"]
    assert rows["E11.9"]["ontology_all"] == pytest.approx(added.filter(pl.col("code") == "E11.9")["ontology_all"].item())
    assert rows["E11.9"]["ontology"] == 0.0 and rows["E11.9"]["ontology_rank"] == ABSENT_RANK
    assert rows["E11.9"]["source"] == "lexicon" and rows["E11.9"]["n_sources"] == 1
    assert rows["E11.65"]["ontology_rank"] == 1 and rows["E11.65"]["ontology_all"] == rows["E11.65"]["ontology"]
    assert rows["R73.9"]["ontology_all"] == 0.0


def test_codes_only_left_out_sources_proposed_are_not_candidates(frames):
    filled = backfill(frames, sources=[OntologySearch(top_k=1).index(TERMS)], notes=NOTES)
    without_tfidf = assemble({name: filled[name] for name in ("lexicon", "ontology")}, prior=PRIOR)
    assert sorted(without_tfidf["code"].to_list()) == ["E11.65", "E11.9", "R73.9"]  # I10: only tfidf proposed it


def test_searches_that_do_not_backfill_and_other_sources_leave_frames_alone(frames):
    filled = backfill(frames, sources=[OntologySearch(top_k=1, backfill=False).index(TERMS), object()], notes=NOTES)
    assert all(filled[name] is frames[name] for name in frames)
