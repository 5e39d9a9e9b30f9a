"""What the worker engines share: a worker reads a batch from the file as it was planned."""

import polars as pl
import pytest

from coder.engines.batches import plan_batches, read_batch
from coder.errors import InputFileError
from coder.io.read import plan_inputs
from coder.schema import NOTE_ID, TEXT


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
