"""Find the input parquet files, check their columns, and stream their notes in batches.

Files are checked before any work starts, so a bad file stops the run with one error that
names it (and the column at fault) instead of failing half-way through a night.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coder.errors import InputFileError
from coder.hashing import file_sha256
from coder.schema import NOTE_ID

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One parquet file of the dump."""

    path: Path
    rows: int
    sha256: str


@dataclass(frozen=True)
class InputPlan:
    """What will be read: the files, and which file column feeds which model column."""

    files: tuple[InputFile, ...]
    id_column: str
    columns: Mapping[str, str]
    """Input column -> model text column, primary first."""
    skipped_columns: tuple[str, ...]
    """Optional model text columns that the input lacks (the model skips that component)."""

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class NoteBatch:
    """A slice of one file: ``frame`` has NOTE_ID and the model's text columns, as strings."""

    index: int
    """Position of the batch in the whole run (stable across runs with the same batch size)."""
    file: Path
    first_row: int
    """0-based row number, within ``file``, of the batch's first row."""
    frame: pl.DataFrame


def resolve_inputs(source: str | Path) -> list[Path]:
    """A parquet file, a directory of ``*.parquet`` files, or a glob -> the files, sorted."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if p.is_file())
    if path.exists():
        return [path]
    if _GLOB_CHARS & set(str(source)):
        matches = sorted(Path(p) for p in glob.glob(str(source)) if Path(p).is_file())
        if matches:
            return matches
        raise InputFileError(f"{source}: no file matches this pattern; check the path")
    raise InputFileError(f"{source}: no such file or directory")


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise InputFileError(
            f"{path}: not a readable parquet file ({type(error).__name__}); is it truncated or another format?"
        ) from None


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _check_column(path: Path, schema: pa.Schema, column: str, role: str, *, what: str = "notes",
                  accepts: Callable[[pa.DataType], bool] = _is_text) -> None:
    """``column`` is in ``schema`` and of a type ``accepts``; else one error naming file, column and what to do."""
    if column not in schema.names:
        hint = f"; name it with --{role}-column" if what == "notes" and role in ("id", "text") else ""
        raise InputFileError(f"{path}: missing {role} column {column!r} in the {what} (columns: {', '.join(schema.names)}){hint}")
    kind = schema.field(column).type
    if not accepts(kind):
        expected = "a string" if accepts is _is_text else f"an {role}" if role[0] in "aeiou" else f"a {role}"
        raise InputFileError(f"{path}: {role} column {column!r} is {kind}, expected {expected} column")


def plan_inputs(
    source: str | Path,
    *,
    id_column: str = NOTE_ID,
    text_columns: Sequence[str],
    primary_column: str | None = None,
) -> InputPlan:
    """Check every file and decide which columns to read.

    ``text_columns`` are the model's columns, primary first; ``primary_column`` names the input
    column to read as the primary text when it is not called the same. A secondary column is
    used only if every file has it; otherwise it is skipped and reported.
    """
    primary, *secondary = text_columns
    parquet_files = [(path, _open(path)) for path in resolve_inputs(source)]
    if not parquet_files:
        log.warning("%s: no parquet files; writing an empty output", source)
    for path, parquet in parquet_files:
        schema = parquet.schema_arrow
        _check_column(path, schema, id_column, "id")
        _check_column(path, schema, primary_column or primary, "text")
    columns = {primary_column or primary: primary}
    skipped = []
    for column in secondary:
        if parquet_files and all(column in p.schema_arrow.names for _, p in parquet_files):
            for path, parquet in parquet_files:
                _check_column(path, parquet.schema_arrow, column, "text")
            columns[column] = column
        else:
            log.warning("input lacks optional text column %r: the model skips that component", column)
            skipped.append(column)
    files = tuple(InputFile(path=path, rows=p.metadata.num_rows, sha256=file_sha256(path)) for path, p in parquet_files)
    return InputPlan(files=files, id_column=id_column, columns=columns, skipped_columns=tuple(skipped))


_KINDS = {"integer": pa.types.is_integer, "number": lambda kind: pa.types.is_integer(kind) or pa.types.is_floating(kind),
          "boolean": pa.types.is_boolean}


def read_table(path: Path, *, columns: Mapping[str, str], what: str, typed: Mapping[str, str] | None = None,
               optional: Sequence[str] = ()) -> pl.DataFrame:
    """A parquet file's ``columns`` (string columns, name -> role: ``{"note_id": "id"}``) and
    ``typed`` columns (name -> ``integer``, ``number`` or ``boolean``), each checked present and of
    its type, with the errors ``plan_inputs`` gives, and the ``optional`` columns the file has: the
    one reader of corpora (training notes, gold codes, evidence) and of audit inputs."""
    schema = _open(path).schema_arrow
    for column, role in columns.items():
        _check_column(path, schema, column, role, what=what)
    for column, kind in (typed or {}).items():
        _check_column(path, schema, column, kind, what=what, accepts=_KINDS[kind])
    try:
        return pl.read_parquet(path, columns=[*columns, *(typed or {}), *(c for c in optional if c in schema.names)])
    except (OSError, pl.exceptions.PolarsError) as error:
        raise InputFileError(f"{path}: unreadable {what} parquet ({type(error).__name__}); is the file truncated?") from None


def iter_batches(plan: InputPlan, *, batch_size: int) -> Iterator[NoteBatch]:
    """Stream the notes: only one batch of each file is in memory at a time."""
    renames = {plan.id_column: NOTE_ID, **plan.columns}
    index = 0
    for file in plan.files:
        first_row = 0
        try:
            batches = _open(file.path).iter_batches(batch_size=batch_size, columns=list(renames))
            for record_batch in batches:
                frame = pl.from_arrow(record_batch).rename(renames).cast(pl.String)
                yield NoteBatch(index=index, file=file.path, first_row=first_row, frame=frame)
                index += 1
                first_row += record_batch.num_rows
        except (pa.ArrowException, OSError) as error:
            raise InputFileError(
                f"{file.path}: unreadable after row {first_row} ({type(error).__name__}); is the file truncated?"
            ) from None
