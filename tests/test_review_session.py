import polars as pl
import pytest
from review_cases import NOTE_1, open_review

from coder.errors import UsageError
from coder.review.decisions import read_decisions
from coder.schema import CM, PCS


def test_a_note_shows_its_codes_best_first_with_the_evidence_cut_out(tmp_path, tiny_ontology):
    review = open_review(tmp_path, tiny_ontology)
    note = review.note(0)
    assert (note["note_id"], note["total"], note["reviewed"], note["resume"]) == ("n1", 2, 0, 0)
    assert [(c["system"], c["code"], c["rank"]) for c in note["codes"]] == [(CM, "E11.9", 1), (CM, "I10", 2), (PCS, "0DTJ", 1)]
    segments = note["columns"]["text"]
    assert "".join(s["text"] for s in segments) == NOTE_1
    assert [(s["text"], s["codes"]) for s in segments if s["codes"]] == [("type 2 diabetes", [0]), ("Appendix removed", [2])]
    assert note["codes"][1]["evidence"] is None


def test_decisions_are_written_at_once_and_resume_where_the_reviewer_stopped(tmp_path, tiny_ontology):
    review = open_review(tmp_path, tiny_ontology)
    review.decide(0, system=CM, code="I10", decision="accepted")
    review.decide(0, system=PCS, code="0DTJ", decision="rejected")
    review.decide(0, system=CM, code="e11.65", decision="added")
    review.comment(0, "dictated late")
    saved = read_decisions(tmp_path / "decisions.parquet")
    assert set(saved.select("code", "decision").iter_rows()) == {("I10", "accepted"), ("0DTJ", "rejected"),
                                                                  ("E11.65", "added"), (None, "comment")}
    review.complete(0)  # E11.9 was proposed (above threshold): accepted
    again = open_review(tmp_path, tiny_ontology)
    assert again.progress()["resume"] == 1
    note = again.note(0)
    assert [c["decision"] for c in note["codes"]] == ["accepted", "accepted", "rejected"]
    assert (note["added"][0]["code"], note["comment"], note["reviewed"]) == ("E11.65", "dictated late", True)
    decisions = read_decisions(tmp_path / "decisions.parquet")
    assert decisions.filter(pl.col("code") == "E11.65").select("rank", "score").row(0) == (None, None)
    assert decisions.filter(pl.col("code") == "I10").select("rank", "score", "reviewer").row(0) == (2, 0.4, "ana")


def test_adding_a_suggested_code_accepts_it(tmp_path, tiny_ontology):
    review = open_review(tmp_path, tiny_ontology)
    review.decide(0, system=CM, code="i10", decision="added")
    assert (review.note(0)["codes"][1]["decision"], review.note(0)["added"]) == ("accepted", [])


@pytest.mark.parametrize(("system", "code", "decision", "match"), [
    (CM, "E08-E13", "added", "not an assignable"),
    (PCS, "0DTJ4", "added", "not an assignable"),
    (CM, "J45.909", "accepted", "not among the codes suggested"),
], ids=["block", "prefix-at-an-unused-length", "accept-unsuggested"])
def test_refused_decisions(tmp_path, tiny_ontology, system, code, decision, match):
    review = open_review(tmp_path, tiny_ontology)
    with pytest.raises(UsageError, match=match):
        review.decide(0, system=system, code=code, decision=decision)


def test_another_reviewers_file_is_refused(tmp_path, tiny_ontology):
    open_review(tmp_path, tiny_ontology).decide(0, system=CM, code="I10", decision="accepted")
    with pytest.raises(UsageError, match="holds the decisions of ana"):
        open_review(tmp_path, tiny_ontology, reviewer="ben")


def test_the_sample_is_seeded_and_gold_restricts_it(tmp_path, tiny_ontology):
    gold = tmp_path / "gold.parquet"
    pl.DataFrame({"note_id": ["n2"], "code": ["I10"], "system": [CM]}).write_parquet(gold)
    assert open_review(tmp_path, tiny_ontology, sample=5, seed=3).queue == open_review(tmp_path, tiny_ontology, sample=5, seed=3).queue
    assert open_review(tmp_path, tiny_ontology, gold=gold).queue == ("n2",)
    assert open_review(tmp_path, tiny_ontology, sample=1, seed=0, gold=gold).queue == ("n2",)
