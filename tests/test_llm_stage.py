import polars as pl
import pytest

from coder.errors import LLMBackendError
from coder.llm import LLMSettings, run_llm_stage
from coder.llm.backends import Generation
from coder.schema import CM, PCS, PREDICTION_SCHEMA


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
    [
        {"note_id": "n1", "system": CM, "code": "E11.9", "score": 0.4},
        {"note_id": "n1", "system": CM, "code": "I10", "score": 0.6},
        {"note_id": "n2", "system": PCS, "code": "0DTJ4ZZ", "score": 0.2},
    ],
    schema={k: PREDICTION_SCHEMA[k] for k in ("note_id", "system", "code", "score")},
)
LOCAL = LLMSettings(backend="local", chunk_tokens=2)


def test_votes_are_validated_and_shared_over_chunks(tiny_ontology):
    backend = ScriptedBackend(
        [
            Generation("E11.9\nZZZ.999\nE10.9"),  # n1 chunk 1: one good, one invented, one outside the set
            Generation("E11.9\nE11.65\nE11", truncated=True),  # n1 chunk 2: the cut last item is dropped
            Generation("Resection of Appendix, Open Approach"),  # n2: a description, mapped
        ]
    )
    result = run_llm_stage(NOTES, CANDIDATES, settings=LOCAL, ontology=tiny_ontology, backend=backend)
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
    assert result.manifest()["counts"] == counts.to_dict()


def test_failed_prompts_are_counted_and_all_failing_means_unavailable(tiny_ontology):
    failing = ScriptedBackend([Generation("", error="HTTP 503")] * 3)
    result = run_llm_stage(NOTES, CANDIDATES, settings=LOCAL, ontology=tiny_ontology, backend=failing)
    assert not result.available and result.error == "3 of 3 prompts failed, first: HTTP 503"
    assert result.counts.failed_prompts == 3 and result.votes.is_empty()
    required = LLMSettings(backend="local", chunk_tokens=2, required=True)
    failing = ScriptedBackend([Generation("I10"), Generation("", error="HTTP 503"), Generation("0DTJ")])
    with pytest.raises(LLMBackendError, match="required but 1 of 3 prompts failed"):
        run_llm_stage(NOTES, CANDIDATES, settings=required, ontology=tiny_ontology, backend=failing)


def test_stage_off_by_default(tiny_ontology):
    result = run_llm_stage(NOTES, CANDIDATES, settings=LLMSettings(), ontology=tiny_ontology)
    assert not result.available and result.error is None and result.votes.is_empty()


def test_batch_without_candidates_is_available_with_nothing_to_ask(tiny_ontology):
    backend = ScriptedBackend([])
    result = run_llm_stage(NOTES, CANDIDATES.clear(), settings=LOCAL, ontology=tiny_ontology, backend=backend)
    assert result.available and result.error is None and result.counts.notes == 0


def test_note_budget_cuts_are_counted(tiny_ontology):
    settings = LLMSettings(backend="local", note_token_budget=2, chunk_tokens=2)
    backend = ScriptedBackend([Generation("I10"), Generation("")])
    result = run_llm_stage(NOTES, CANDIDATES, settings=settings, ontology=tiny_ontology, backend=backend)
    assert result.counts.notes_cut == 1 and len(backend.requests) == 2


def test_ontology_scope_allows_any_code(tiny_ontology):
    settings = LLMSettings(backend="local", scope="ontology")
    backend = ScriptedBackend([Generation("J45.909"), Generation("J45.909")])
    result = run_llm_stage(NOTES, CANDIDATES, settings=settings, ontology=tiny_ontology, backend=backend)
    assert result.votes["code"].to_list() == ["J45.909", "J45.909"]
    assert backend.requests[0].allowed is backend.requests[1].allowed  # built once, shared
