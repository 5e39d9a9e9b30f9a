"""The batches of a run and the worker's reader: every engine's batches are the local reader's, and a
worker reads a batch from the file as it was planned."""

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.batches import PendingBatch, plan_batches, read_batch
from coder.errors import InputFileError
from coder.io.read import iter_batches, plan_inputs
from coder.schema import NOTE_ID, TEXT
from standin import StandInModel as StandIn


def test_a_worker_refuses_a_file_replaced_since_the_plan(tmp_path):
    notes = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: ["a", "b", "c"], TEXT: ["fever", "cough", "rash"]}).write_parquet(notes)
    plan = plan_inputs(notes, text_columns=(TEXT,))
    _, pending = plan_batches(plan, batch_size=2, done={})
    assert read_batch(plan, pending[1]).frame.rows() == [("c", "rash")]
    replacement = tmp_path / "six.parquet"
    pl.DataFrame({NOTE_ID: list("uvwxyz"), TEXT: ["new"] * 6}).write_parquet(replacement)
    replacement.replace(notes)
    with pytest.raises(InputFileError, match=f"{notes}: the input file changed during the run"):
        read_batch(plan, pending[1])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 64], ids=["1", "2", "3", "5", "64"])
def test_read_batch_gives_the_local_readers_batches(dump, batch_size):
    plan = plan_inputs(dump, text_columns=StandIn().text_columns)
    batches, pending = plan_batches(plan, batch_size=batch_size, done={})
    local = list(iter_batches(plan, batch_size=batch_size))
    assert batches == len(local) == len(pending)
    for expected, job in zip(local, pending, strict=True):
        got = read_batch(plan, PendingBatch.from_item(job.to_item()))
        assert (got.index, got.file.resolve(), got.first_row) == (expected.index, expected.file.resolve(), expected.first_row)
        assert_frame_equal(got.frame, expected.frame)
        assert got.invalid_utf8 == expected.invalid_utf8


def test_plan_batches_marks_ids_of_earlier_batches_and_skips_done_ones(dump):
    plan = plan_inputs(dump, text_columns=StandIn().text_columns)
    batches, pending = plan_batches(plan, batch_size=2, done={0: {}, 1: {}})
    assert batches == 10
    assert [(p.index, p.seen) for p in pending] == [
        (2, ("b",)), (3, ()), (4, ()), (5, ("a",)), (6, ()), (7, ("k",)), (8, ("l",)), (9, ())
    ]
