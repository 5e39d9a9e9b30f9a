"""The LLM vote stage on a scripted backend: validated votes, counts, failures, and merging votes into candidates."""

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import LLMBackendError
from coder.llm.backends import Generation
from coder.llm.settings import LLMSettings
from coder.llm.vote import VOTES_SCHEMA, merge_votes
from coder.schema import CM, PCS
from conftest import run_vote


class ScriptedBackend:
    """Answers each prompt with the next scripted text (a model stand-in for stage logic tests)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, requests):
        self.requests.extend(requests)
        return [self.answers.pop(0) for _ in requests]


NOTES = pl.DataFrame({"note_id": ["n1", "n2", "n3"], "text": ["one two\nthree four", "five", "no candidates"]})
CANDIDATES = pl.DataFrame(
    {"note_id": ["n1", "n1", "n2"], "system": [CM, CM, PCS], "code": ["E11.9", "I10", "0DTJ4ZZ"], "score": [0.4, 0.6, 0.2]})
LOCAL = LLMSettings(backend="local", chunk_tokens=2)


def test_votes_are_validated_and_shared_over_chunks(tiny_gate):
    backend = ScriptedBackend(
        [
            Generation("E11.9\nZZZ.999\nE10.9"),  # n1 chunk 1: one good, one invented, one outside the set
            Generation("E11.9\nE11.65\nE11", truncated=True),  # n1 chunk 2: the cut last item is dropped
            Generation("Resection of Appendix, Open Approach"),  # n2: a description, mapped
        ]
    )
    result = run_vote(NOTES, CANDIDATES, settings=LOCAL, gate=tiny_gate, backend=backend)
    assert result.available and result.error is None
    assert len(backend.requests) == 3  # n1 in two chunks, n3 skipped: no candidates
    assert "I10 Essential (primary) hypertension\nE11.9" in backend.requests[0].messages[1]["content"]
    assert result.votes.select("note_id", "system", "code", "votes", "share").rows() == [
        ("n1", CM, "E11.9", 2, 1.0),
        ("n1", CM, "E11.65", 1, 0.5),
        ("n2", PCS, "0DTJ0ZZ", 1, 1.0),
    ]
    counts = result.counts
    assert (counts.notes, counts.prompts, counts.proposals, counts.accepted) == (2, 3, 6, 4)
    assert (counts.rejected_unknown, counts.rejected_not_allowed, counts.mapped_from_text) == (1, 1, 1)
    assert counts.truncated == 1
    assert result.section["counts"] == counts.to_dict()


def test_a_known_prefix_that_no_label_uses_counts_as_invented(tiny_ontology):
    from coder.validate import AssignableCodes

    full_codes_only = AssignableCodes(tiny_ontology)  # a model trained on full PCS codes: 0DTJ is not a code
    backend = ScriptedBackend([Generation("0DTJ\n0DTJ0ZZ")])
    result = run_vote(NOTES.filter(pl.col("note_id") == "n2"), CANDIDATES, settings=LLMSettings(backend="local"),
                      gate=full_codes_only, backend=backend)
    assert "0DTJ" not in backend.requests[0].allowed and "0DTJ0ZZ" in backend.requests[0].allowed
    assert result.votes["code"].to_list() == ["0DTJ0ZZ"]
    assert (result.counts.rejected_unknown, result.counts.accepted) == (1, 1)


def test_failed_prompts_are_counted_and_all_failing_means_unavailable(tiny_gate):
    failing = ScriptedBackend([Generation("", error="HTTP 503")] * 3)
    result = run_vote(NOTES, CANDIDATES, settings=LOCAL, gate=tiny_gate, backend=failing)
    assert not result.available and result.error == "3 of 3 prompts failed, first: HTTP 503"
    assert result.counts.failed_prompts == 3 and result.votes.is_empty()
    required = LLMSettings(backend="local", chunk_tokens=2, required=True)
    failing = ScriptedBackend([Generation("I10"), Generation("", error="HTTP 503"), Generation("0DTJ")])
    with pytest.raises(LLMBackendError, match="required but 1 of 3 prompts failed"):
        run_vote(NOTES, CANDIDATES, settings=required, gate=tiny_gate, backend=failing)


def test_batch_without_candidates_is_available_with_nothing_to_ask(tiny_gate):
    result = run_vote(NOTES, CANDIDATES.clear(), settings=LOCAL, gate=tiny_gate, backend=ScriptedBackend([]))
    assert result.available and result.error is None and result.counts.notes == 0


def test_note_budget_cuts_are_counted(tiny_gate):
    settings = LLMSettings(backend="local", note_token_budget=2, chunk_tokens=2)
    backend = ScriptedBackend([Generation("I10"), Generation("")])
    result = run_vote(NOTES, CANDIDATES, settings=settings, gate=tiny_gate, backend=backend)
    assert result.counts.notes_cut == 1 and len(backend.requests) == 2


def test_ontology_scope_allows_any_code(tiny_gate):
    settings = LLMSettings(backend="local", scope="ontology")
    backend = ScriptedBackend([Generation("J45.909"), Generation("J45.909")])
    result = run_vote(NOTES, CANDIDATES, settings=settings, gate=tiny_gate, backend=backend)
    assert result.votes["code"].to_list() == ["J45.909", "J45.909"]
    assert backend.requests[0].allowed is backend.requests[1].allowed  # built once, shared


def test_the_prompt_lists_each_notes_best_candidates_per_system(tiny_gate):
    backend = ScriptedBackend([Generation("")])
    run_vote(NOTES.head(1), CANDIDATES, settings=LLMSettings(backend="local"), gate=tiny_gate, backend=backend, per_note=1)
    listing = backend.requests[0].messages[1]["content"]
    assert "I10 Essential" in listing and "E11.9" not in listing  # one candidate per system: the best


# --- merging votes into the scored candidates --------------------------------------------------

SCORED = pl.DataFrame({
    "note_id": ["n2", "n2", "n2", "n1"], "system": [CM, CM, PCS, CM], "code": ["I10", "E11.9", "0DTJ4ZZ", "E10.9"],
    "score": [0.6, 0.5, 0.3, 0.2], "threshold": [0.5, 0.5, 0.5, 0.5],
    "source": ["plm_icd", "plm_icd+lexicon", "ontology", "plm_icd"],
})


def votes(rows):
    return pl.DataFrame(rows, schema=VOTES_SCHEMA, orient="row")


def test_votes_raise_scores_and_mark_source():
    out = merge_votes(SCORED, votes([("n2", CM, "E11.9", 2, 1.0)]), weight=0.5).sort("note_id", "code")
    n2 = out.filter(pl.col("note_id") == "n2", pl.col("system") == CM)
    assert n2["code"].to_list() == ["E11.9", "I10"]
    assert n2["score"].to_list() == pytest.approx([0.75, 0.6])
    assert n2["source"].to_list() == ["plm_icd+lexicon+llm", "plm_icd"]


def test_voted_code_that_was_not_a_candidate_is_added_without_a_threshold_decision():
    out = merge_votes(SCORED, votes([("n1", CM, "E10", 1, 0.5)]), weight=0.2)
    added = out.filter(pl.col("code") == "E10")
    assert added.select("score", "source", "threshold").row(0) == pytest.approx((0.1, "llm", float("inf")))


@pytest.mark.parametrize("weight", [0.0, 0.3], ids=["weight-zero", "no-votes"])
def test_nothing_changes_without_effect(weight):
    vote_rows = [("n2", CM, "E11.9", 1, 1.0)] if weight == 0.0 else []
    assert_frame_equal(merge_votes(SCORED, votes(vote_rows), weight=weight), SCORED)
