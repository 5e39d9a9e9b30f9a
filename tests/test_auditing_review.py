import polars as pl
import pytest

from coder.auditing.review import VERDICT, review_sample, score_review, wilson_interval
from coder.errors import InputFileError
from coder.schema import CM, GOLD_SCHEMA, NOTE_ID, PCS, PREDICTION_SCHEMA


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
