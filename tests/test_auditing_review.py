import polars as pl
import pytest

from coder.auditing.review import VERDICT, review_sample, score_decisions, score_review, wilson_interval
from coder.errors import InputFileError
from coder.schema import CM, DECISION_SCHEMA, GOLD_SCHEMA, NOTE_ID, PCS, PREDICTION_SCHEMA


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [(8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (0, 0, (0.0, 1.0))],
    ids=["8-of-10", "none-correct", "no-trials"],
)
def test_wilson_interval_known_values(successes, trials, expected):
    assert wilson_interval(successes, trials) == pytest.approx(expected, abs=1e-4)


def _predictions(notes: int = 12) -> pl.DataFrame:
    rows = [
        (f"n{i:02d}", system, f"{system[-2:]}{rank}", f"about {rank}", 1 / rank, rank, rank <= 2, "plm_icd", "span", 0, 4, "text", "release")
        for i in range(notes)
        for system in (CM, PCS)
        for rank in range(1, 11)
    ]
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")


def test_sample_is_reproducible_and_marks_gold():
    gold = pl.DataFrame([(f"n{i:02d}", "CM1", CM) for i in range(6)], schema=GOLD_SCHEMA, orient="row")
    first = review_sample(_predictions(), n=3, seed=7, top=4, gold=gold)
    again = review_sample(_predictions(), n=3, seed=7, top=4, gold=gold)
    assert first.equals(again)
    notes = first.get_column(NOTE_ID).unique()
    assert notes.len() == 3 and set(notes) <= {f"n{i:02d}" for i in range(6)}
    assert first.height == 3 * 2 * 4
    assert first.filter(pl.col("in_gold") == "yes").get_column("code").unique().to_list() == ["CM1"]
    assert set(first.get_column(VERDICT)) == {""}


def test_verdicts_give_precision_at_k_with_intervals(tmp_path):
    sample = review_sample(_predictions(), n=5, seed=1, top=2).filter(pl.col("system") == CM)
    # ranks 1 correct, rank 2 incorrect on every note; one row left blank
    verdicts = sample.with_columns(pl.when(pl.col("rank") == 1).then(pl.lit("Correct")).otherwise(pl.lit("incorrect")).alias(VERDICT))
    verdicts = verdicts.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("")).otherwise(pl.col(VERDICT)).alias(VERDICT))
    path = tmp_path / "review.csv"
    verdicts.write_csv(path)
    result = score_review(path, ks=(1, 2))[CM]
    assert result["judged"] == 9 and result["notes"] == 5
    assert result["p@1"]["precision"] == 1.0 and result["p@1"]["judged"] == 4
    assert result["p@2"]["precision"] == pytest.approx(4 / 9)
    assert (result["p@2"]["ci95_low"], result["p@2"]["ci95_high"]) == pytest.approx(wilson_interval(4, 9))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("note_id,system,rank,verdict\nn1,ICD-10-CM,1,maybe\n", r"line\(s\) 2"),
        ("note_id,system,verdict\nn1,ICD-10-CM,correct\n", "missing column"),
    ],
    ids=["bad-verdict", "missing-rank"],
)
def test_bad_review_files_are_refused(tmp_path, content, match):
    path = tmp_path / "review.csv"
    path.write_text(content)
    with pytest.raises(InputFileError, match=match):
        score_review(path, ks=(1,))


def _decisions(path, reviewer, rows, reviewed=("n1", "n2")):
    """A decision file: (note, system, code, decision, rank) rows, and the notes marked reviewed."""
    frame = pl.DataFrame(
        [(note, system, code, decision, reviewer, None, rank, None, None) for note, system, code, decision, rank in rows]
        + [(note, None, None, "reviewed", reviewer, None, None, None, None) for note in reviewed],
        schema=DECISION_SCHEMA, orient="row")
    frame.write_parquet(path)
    return path


ANA = [("n1", CM, "A1", "accepted", 1), ("n1", CM, "A2", "rejected", 2), ("n1", CM, "A9", "added", None),
       ("n2", CM, "B1", "accepted", 1), ("n2", CM, "B2", "accepted", 2), ("n2", PCS, "0DTJ", "rejected", 1)]
BEN = [("n1", CM, "A1", "accepted", 1), ("n1", CM, "A2", "accepted", 2),
       ("n2", CM, "B1", "accepted", 1), ("n2", CM, "B2", "rejected", 2), ("n2", PCS, "0DTJ", "rejected", 1)]


def test_decisions_give_precision_at_k_with_wilson_intervals(tmp_path):
    result = score_decisions([_decisions(tmp_path / "ana.parquet", "ana", ANA)], ks=(1, 2))
    assert (result[CM]["p@1"]["precision"], result[CM]["p@2"]["precision"], result[CM]["added"]) == (1.0, 0.75, 1)
    assert (result[CM]["p@2"]["ci95_low"], result[CM]["p@2"]["ci95_high"]) == pytest.approx(wilson_interval(3, 4))
    assert (result[PCS]["p@1"]["precision"], result[PCS]["notes"]) == (0.0, 1)


def test_two_reviewers_agreement_and_kappa(tmp_path):
    files = [_decisions(tmp_path / "ana.parquet", "ana", ANA), _decisions(tmp_path / "ben.parquet", "ben", BEN)]
    result = score_decisions(files, ks=(1,))
    assert set(result["precision"]) == {str(path) for path in files}
    pair = result["agreement"][f"{files[0]} vs {files[1]}"]
    # CM items: A1 (yes, yes), A2 (no, yes), A9 (yes, no), B1 (yes, yes), B2 (yes, no): 2 of 5 agree;
    # chance: ana gives 4/5, ben 3/5: 0.8*0.6 + 0.2*0.4 = 0.56, kappa (0.4 - 0.56) / 0.44
    assert (pair[CM]["codes"], pair[CM]["notes"]) == (5, 2)
    assert pair[CM]["agreement"] == pytest.approx(0.4)
    assert pair[CM]["kappa"] == pytest.approx((0.4 - 0.56) / 0.44)
    assert (pair[PCS]["agreement"], pair[PCS]["kappa"]) == (1.0, None)  # both rejected the one code: kappa undefined


def test_agreement_counts_only_notes_both_reviewed(tmp_path):
    files = [_decisions(tmp_path / "ana.parquet", "ana", ANA), _decisions(tmp_path / "ben.parquet", "ben", BEN, reviewed=("n2",))]
    assert score_decisions(files, ks=(1,))["agreement"][f"{files[0]} vs {files[1]}"][CM]["notes"] == 1


def test_a_decision_file_with_an_odd_decision_is_refused(tmp_path):
    path = _decisions(tmp_path / "odd.parquet", "ana", [("n1", CM, "A1", "maybe", 1)])
    with pytest.raises(InputFileError, match="decision must be one of .* the first for note 'n1'"):
        score_decisions([path], ks=(1,))
