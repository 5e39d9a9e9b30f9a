"""Find the input parquet files, check their columns, and stream their notes in batches.

Files are checked before any work starts, so a bad file stops the run with one error that
names it (and the column at fault) instead of failing half-way through a night. A bad value
is a bad row, not a bad file: a value that is not valid UTF-8 reads as null and its row is
marked (``NoteBatch.invalid_utf8``), for the screen to quarantine.

A file is read as it was planned: its size and modification time are taken with its sha256, and a
file that vanished or changed since stops the run (``check_unchanged``) when it is read and before
the outputs are published, so the manifest's sha256 is always that of the rows coded. A note longer
than ``max_note_chars`` is coded on its first characters (``bound_notes``), so one huge note cannot
take the machine's memory.

The parquet files of a model folder, which coder wrote itself, are read through ``read_saved``.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coder.errors import InputFileError, ModelBundleError, UsageError
from coder.hashing import file_sha256
from coder.schema import NOTE_ID

DEFAULT_MAX_NOTE_CHARS = 100_000
"""Characters of a note's text that are coded; the rest is cut (``bound_notes``). Well above a long discharge
summary; PLM-ICD itself reads only its first ``max_chunks`` chunks of any note."""

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")
_NOT_READ = (".", "_")
"""Prefixes of the names a folder read skips, as pyarrow and polars skip them (``_SUCCESS``, ``.part.tmp``)."""


@dataclass(frozen=True)
class InputFile:
    """One parquet file of the dump."""

    path: Path
    rows: int
    sha256: str
    size: int
    mtime_ns: int
    """Size and modification time when planned: a file that differs later changed during the run."""


@dataclass(frozen=True)
class InputPlan:
    """What will be read: the files, and which file column feeds which model column."""

    files: tuple[InputFile, ...]
    id_column: str
    columns: Mapping[str, str]
    """Input column -> model text column, primary first."""
    skipped_columns: tuple[str, ...]
    """Optional model text columns that the input lacks (the model skips that component)."""
    skipped_files: tuple[Path, ...] = ()
    """Files of the input folder that are not read: not parquet, or hidden."""

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def renames(self) -> dict[str, str]:
        """Input column -> column of ``NoteBatch.frame``."""
        return {self.id_column: NOTE_ID, **self.columns}

    def file(self, path: Path) -> InputFile:
        """The planned file at ``path``."""
        return self._by_path[path]

    @functools.cached_property
    def _by_path(self) -> dict[Path, InputFile]:
        # a worker looks up each batch's file: a scan of the files per batch grew with files x batches
        return {file.path: file for file in self.files}


@dataclass(frozen=True)
class NoteBatch:
    """A slice of one file: ``frame`` has NOTE_ID and the model's text columns, as strings."""

    index: int
    """Position of the batch in the whole run (stable across runs with the same batch size)."""
    file: Path
    first_row: int
    """0-based row number, within ``file``, of the batch's first row."""
    frame: pl.DataFrame
    invalid_utf8: frozenset[int] = frozenset()
    """Rows (0-based in ``frame``) whose id or text was not valid UTF-8: those values read as null."""


@dataclass(frozen=True)
class Dump:
    """What a source names: the parquet files to read (absolute, sorted) and the files it skips."""

    files: tuple[Path, ...]
    skipped: tuple[Path, ...] = ()


def _unreadable(error: OSError) -> None:
    raise InputFileError(f"{error.filename}: cannot list this folder of the dump ({error.strerror or error}); "
                         "fix its permissions or move it out of the dump")


def _walk(folder: Path) -> Dump:
    """Every ``*.parquet`` file under ``folder`` (any case, partitions such as ``site=A/part-0.parquet`` too);
    a file or folder whose name starts with '.' or '_' is skipped, as pyarrow and polars skip it. A folder
    that cannot be listed, or a ``*.parquet`` name that is no file (a broken link, a link loop), is an error."""
    files, skipped = [], []
    for root, folders, names in os.walk(folder, onerror=_unreadable):
        skipped += [Path(root, name) for name in folders if name.startswith(_NOT_READ)]
        folders[:] = [name for name in folders if not name.startswith(_NOT_READ)]
        for name in names:
            read = name.lower().endswith(".parquet") and not name.startswith(_NOT_READ)
            if read and not Path(root, name).is_file():
                raise InputFileError(f"{Path(root, name)}: not a file (a broken symbolic link or a link loop); "
                                     "fix the link or move it out of the dump")
            (files if read else skipped).append(Path(root, name))
    return Dump(tuple(sorted(files)), tuple(sorted(skipped)))


def resolve_inputs(source: str | Path) -> Dump:
    """A parquet file, a folder (read recursively, ``_walk``), or a glob -> its files; none is an error."""
    path = Path(source)
    if path.is_dir():
        dump = _walk(path.absolute())
        if not dump.files:
            others = f" ({len(dump.skipped)} other files, none read)" if dump.skipped else ""
            raise InputFileError(f"{source}: no input notes: the folder holds no *.parquet file{others}")
        return dump
    if path.exists():
        return Dump((path.absolute(),))
    if _GLOB_CHARS & set(str(source)):
        matches = sorted(Path(p).absolute() for p in glob.glob(str(source)) if Path(p).is_file())
        if matches:
            return Dump(tuple(matches))
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
    """Strings in any arrow layout, dictionary-encoded ones (pandas category, polars Categorical) included."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_note_text(kind: pa.DataType) -> bool:
    """A note's id or text: strings (``_is_text``) or bytes read as UTF-8 (parquet strings written without
    their UTF8 annotation, as Impala and Hive write them; polars Binary, Python bytes); ``_utf8`` marks a bad value."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return _is_text(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def _check_column(path: Path, schema: pa.Schema, column: str, role: str, *, what: str = "notes",
                  accepts: Callable[[pa.DataType], bool] = _is_text) -> None:
    """``column`` is in ``schema`` and of a type ``accepts``; else one error naming file, column and what to do."""
    if column not in schema.names:
        hint = f"; name it with --{role}-column ({role}_column= in Python)" if what == "notes" and role in ("id", "text") else ""
        raise InputFileError(f"{path}: missing {role} column {column!r} in the {what} (columns: {', '.join(schema.names)}){hint}")
    if len(found := schema.get_all_field_indices(column)) > 1:
        raise InputFileError(f"{path}: the {what} have {len(found)} columns named {column!r}; rename them so that each name is unique")
    kind = schema.field(column).type
    if not accepts(kind):
        expected = "a string" if accepts in (_is_text, _is_note_text) else f"an {role}" if role[0] in "aeiou" else f"a {role}"
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
    used only if every file has it and it is not read as the id or the primary text; otherwise it is
    skipped and reported. No notes (every file empty) is an error: a dump is what the user pointed at.
    """
    dump = resolve_inputs(source)
    if dump.skipped:
        shown = ", ".join(str(path) for path in dump.skipped[:10]) + (f" and {len(dump.skipped) - 10} more" if len(dump.skipped) > 10 else "")
        log.warning("%s: %d files not read (not *.parquet, or named .* or _*): %s", source, len(dump.skipped), shown)
    parquet_files = [(path, _open(path)) for path in dump.files]
    if not sum(p.metadata.num_rows for _, p in parquet_files):
        raise InputFileError(f"{source}: no input notes: {len(parquet_files)} parquet files, all without rows")
    columns, skipped = note_columns({path: p.schema_arrow for path, p in parquet_files}, id_column=id_column,
                                    text_columns=text_columns, primary_column=primary_column)
    files = tuple(_planned(path, rows=p.metadata.num_rows) for path, p in parquet_files)
    return InputPlan(files=files, id_column=id_column, columns=columns, skipped_columns=skipped, skipped_files=dump.skipped)


def note_columns(schemas: Mapping[Path, pa.Schema], *, id_column: str, text_columns: Sequence[str],
                 primary_column: str | None = None) -> tuple[dict[str, str], tuple[str, ...]]:
    """Input column -> model text column (primary first), and the optional model columns skipped, for
    notes of these ``schemas`` (file -> schema): every file's id and primary text column checked present
    and of a text type (``_is_note_text``); the rules and messages of ``plan_inputs`` and of the Python API."""
    primary, *secondary = text_columns
    text_column = primary_column or primary
    if id_column == text_column:
        raise UsageError(f"the id column and the text column are both {id_column!r}; name them with --id-column and --text-column")
    for path, schema in schemas.items():
        _check_column(path, schema, id_column, "id", accepts=_is_note_text)
        _check_column(path, schema, text_column, "text", accepts=_is_note_text)
    columns = {text_column: primary}
    skipped = []
    for column in secondary:
        if column not in (id_column, text_column) and all(column in schema.names for schema in schemas.values()):
            for path, schema in schemas.items():
                _check_column(path, schema, column, "text", accepts=_is_note_text)
            columns[column] = column
        else:
            log.warning("input lacks optional text column %r: the model skips that component", column)
            skipped.append(column)
    return columns, tuple(skipped)


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: the input file vanished during the run; nothing was published: put it back "
                             "and rerun with --resume, or rerun without --resume") from None
    except OSError as error:
        raise InputFileError(f"{path}: cannot read the input file ({error.strerror or error})") from None


def _planned(path: Path, *, rows: int) -> InputFile:
    """The file's identity, taken before its sha256 so that a change while it is hashed shows later."""
    stat = _stat(path)
    return InputFile(path=path, rows=rows, sha256=file_sha256(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def check_unchanged(file: InputFile) -> None:
    """InputFileError unless ``file`` is still there with the size and modification time it was planned with."""
    stat = _stat(file.path)
    if (stat.st_size, stat.st_mtime_ns) != (file.size, file.mtime_ns):
        raise InputFileError(f"{file.path}: the input file changed during the run (it was replaced or written to); "
                             "nothing was published: put the planned file back and rerun with --resume, or rerun "
                             "without --resume to code the file as it is now")


def open_planned(file: InputFile) -> pq.ParquetFile:
    """``file``, opened once it is checked unchanged (``check_unchanged``)."""
    check_unchanged(file)
    return _open(file.path)


def bound_notes(notes: pl.DataFrame, *, columns: Sequence[str], max_chars: int) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """``notes`` with each of the text ``columns`` it has cut to its first ``max_chars`` characters, and the
    ids of the notes that were longer: every stage reads the kept beginning, and evidence offsets point into it."""
    present = [column for column in columns if column in notes.columns]
    longer = notes.filter(pl.any_horizontal(pl.col(column).str.len_chars() > max_chars for column in present))
    if longer.is_empty():
        return notes, ()
    return notes.with_columns(pl.col(present).str.slice(0, max_chars)), tuple(longer.get_column(NOTE_ID))


_KINDS = {"integer": pa.types.is_integer, "number": lambda kind: pa.types.is_integer(kind) or pa.types.is_floating(kind),
          "boolean": pa.types.is_boolean}


def read_table(path: Path, *, columns: Mapping[str, str], what: str, typed: Mapping[str, str] | None = None,
               optional: Sequence[str] = (), table: pa.Table | None = None,
               rows: tuple[int, int] | None = None) -> pl.DataFrame:
    """A parquet file's ``columns`` (string columns, name -> role: ``{"note_id": "id"}``) and
    ``typed`` columns (name -> ``integer``, ``number`` or ``boolean``), each checked present and of
    its type, with the errors ``plan_inputs`` gives, and the ``optional`` columns the file has: the
    one reader of corpora (training notes, gold codes, evidence), of audit and review inputs. ``table``:
    rows already in memory (a Python API frame), checked the same way; ``path`` then only names them.
    ``rows``: (offset, length) of the rows to read alone, without decoding the pages before them."""
    schema = _open(path).schema_arrow if table is None else table.schema
    for column, role in columns.items():
        _check_column(path, schema, column, role, what=what)
    for column, kind in (typed or {}).items():
        _check_column(path, schema, column, kind, what=what, accepts=_KINDS[kind])
    read = [*columns, *(typed or {}), *(c for c in optional if c in schema.names)]
    try:
        if table is not None:
            frame = pl.from_arrow(table.select(read))
        elif rows is not None:
            frame = pl.scan_parquet(path).select(read).slice(*rows).collect()
        else:
            frame = pl.read_parquet(path, columns=read)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise InputFileError(f"{path}: unreadable {what} parquet ({type(error).__name__}); is the file truncated?") from None
    return frame.cast(dict.fromkeys(columns, pl.String))  # dictionary-encoded strings read as Categorical


def read_saved(path: Path) -> pl.DataFrame:
    """The whole parquet file ``path`` that coder saved into a model folder itself (a source's terms, the
    rerankers' code prior): unchecked columns, as it wrote them; a missing or unreadable file is a
    ModelBundleError naming it, for the folder is at fault, not the user's input."""
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise ModelBundleError(f"{path}: cannot read this parquet file of the model folder ({type(error).__name__}); "
                               "copy the whole model folder again or rebuild it with `coder train`") from None


def _utf8(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[int]]:
    """``values`` as large strings, and the rows whose value is not valid UTF-8, nulled.

    Arrow does not check UTF-8 when it reads parquet and polars panics on a bad value, so every
    column is validated; only a column that fails is searched value by value. Bytes are read the
    same way: the unsafe cast leaves the check to ``validate``."""
    values = values.cast(pa.large_string(), safe=False)
    try:
        values.validate(full=True)
        return values, []
    except pa.ArrowInvalid:
        raw = values.cast(pa.large_binary()).combine_chunks()
        bad = [value is not None and not _decodes(value) for value in raw.to_pylist()]
        fixed = pc.if_else(pa.array(bad), pa.scalar(None, raw.type), raw).cast(pa.large_string())
        return pa.chunked_array([fixed]), [row for row, invalid in enumerate(bad) if invalid]


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def note_batch(table: pa.Table, *, plan: InputPlan, index: int, file: Path, first_row: int) -> NoteBatch:
    """Rows of ``file`` read by arrow -> a NoteBatch of string columns, renamed: the one conversion of the
    local reader (``iter_batches``), of a worker's (``coder.batches.read_batch``), of the run's id pass
    (``coder.batches.plan_batches``) and of the Python API."""
    columns, invalid = {}, set()
    for column, name in plan.renames.items():
        columns[name], rows = _utf8(table.column(column))
        invalid.update(rows)
    frame = pl.from_arrow(pa.table(columns)).cast(pl.String)
    return NoteBatch(index=index, file=file, first_row=first_row, frame=frame, invalid_utf8=frozenset(invalid))


def iter_batches(plan: InputPlan, *, batch_size: int) -> Iterator[NoteBatch]:
    """Stream the notes: only one batch of each file is in memory at a time. Each file is checked unchanged
    since it was planned (``check_unchanged``) when it is opened and before each of its batches."""
    index = 0
    for file in plan.files:
        first_row = 0
        try:
            batches = open_planned(file).iter_batches(batch_size=batch_size, columns=list(plan.renames))
            for record_batch in batches:
                check_unchanged(file)
                table = pa.Table.from_batches([record_batch])
                yield note_batch(table, plan=plan, index=index, file=file.path, first_row=first_row)
                index += 1
                first_row += record_batch.num_rows
        except (pa.ArrowException, OSError) as error:
            raise unreadable_after(file.path, first_row, error) from None


def unreadable_after(path: Path, row: int, error: Exception) -> InputFileError:
    """The error of an input file whose rows from ``row`` on cannot be read: the one message of the local
    reader (``iter_batches``) and of a worker's (``coder.batches.read_batch``)."""
    return InputFileError(f"{path}: unreadable after row {row} ({type(error).__name__}); is the file truncated?")
