import pytest

from coder.llm.constrain import allowed_codes
from coder.llm.validate import HallucinationCounts, split_answer, validate_answer, sum_counts
from coder.schema import CM


@pytest.fixture
def allowed(tiny_ontology, tiny_gate):
    return allowed_codes([(CM, "E11.9"), (CM, "I10")], ontology=tiny_ontology, assignable=tiny_gate)


def check(text, allowed, ontology, **kwargs):
    from coder.validate import AssignableCodes

    return validate_answer(text, allowed=allowed, ontology=ontology, assignable=AssignableCodes(ontology),
                           fuzzy_threshold=90.0, **kwargs)


@pytest.mark.parametrize(
    ("text", "codes", "outcome"),
    [
        ("E11.9", ("E11.9",), "accepted"),
        ("e11.9", (), "rejected_text"),  # lower case is not code-shaped, and matches no description
        ("E119", ("E11.9",), "accepted"),  # normalised by the ontology
        ("1. E11.65 - with hyperglycemia", ("E11.65",), "accepted"),
        ("ZZZ.999", (), "rejected_unknown"),
        ("E10.9", (), "rejected_not_allowed"),
        ("Essential primary hypertension", ("I10",), "mapped_from_text"),
        ("hypertension", (), "rejected_text"),  # too little of any description to be sure
        ("the patient is well", (), "rejected_text"),
    ],
    ids=["code", "lower-case", "no-dot", "bullet-and-text", "invented", "outside-set", "description", "one-word", "prose"],
)
def test_each_item_is_judged_and_counted(text, codes, outcome, allowed, tiny_ontology):
    result = check(text, allowed, tiny_ontology)
    assert result.codes == codes
    assert result.counts.proposals == 1
    assert getattr(result.counts, outcome) == 1
    assert result.counts.accepted == len(codes)


def test_duplicates_counted_once_kept_once(allowed, tiny_ontology):
    result = check("I10\nE11.9\nI10, E11.9", allowed, tiny_ontology)  # a comma-separated line is two items
    assert result.codes == ("I10", "E11.9")
    assert (result.counts.proposals, result.counts.accepted, result.counts.duplicates) == (4, 4, 2)


def test_truncated_answer_drops_its_last_item(allowed, tiny_ontology):
    result = check("I10\nE11", allowed, tiny_ontology, truncated=True)
    assert result.codes == ("I10",) and result.counts.truncated == 1 and result.counts.proposals == 1


def test_split_answer_strips_bullets_and_blank_items():
    assert split_answer("- E11.9\n\n* I10;  2) J45.909 ,", truncated=False) == ["E11.9", "I10", "J45.909"]


def test_counts_add_up_and_serialise():
    a = HallucinationCounts(proposals=3, accepted=2, rejected_unknown=1)
    b = HallucinationCounts(proposals=1, mapped_from_text=1, accepted=1)
    total = sum_counts([a, b])
    assert total == a + b
    assert total.to_dict()["proposals"] == 4 and total.to_dict()["accepted"] == 3
