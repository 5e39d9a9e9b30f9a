"""A user code list that extends or overrides the release (e.g. CodiEsp's 2018 codes).

Format: a UTF-8 text file with a header row, tab-separated if the header holds a tab, else
comma-separated. Columns ``code`` and ``description`` are required, ``system`` (ICD-10-CM or
ICD-10-PCS) is optional; without it each code's system is inferred from its shape. Every
listed code counts as billable, with the list's description. Blank lines are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from coder.errors import CodeFormatError, OntologyError, UsageError
from coder.ontology.syntax import check_system, infer_system, normalize
from coder.schema import CODE, SYSTEM

logger = logging.getLogger(__name__)

DESCRIPTION = "description"


@dataclass(frozen=True)
class ListedCode:
    """One row of a user code list, in canonical form."""

    code: str
    system: str
    description: str


@dataclass(frozen=True)
class CodeList:
    """A parsed user code list and the sha256 of its bytes (recorded in ``Ontology.release``)."""

    path: Path
    sha256: str
    codes: tuple[ListedCode, ...]


def read_code_list(path: Path) -> CodeList:
    """Parse ``path``; OntologyError names the row and what to fix for any unusable row."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise OntologyError(f"cannot read codes file {path}: {error.strerror}") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise OntologyError(f"codes file {path} is not UTF-8 (byte {error.start}); save it as UTF-8") from error
    header = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if "\t" in header else ",")
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or ()}
    missing = [name for name in (CODE, DESCRIPTION) if name not in columns]
    if missing:
        raise OntologyError(
            f"codes file {path} lacks column(s) {', '.join(missing)}: expected a header row with "
            f"code, description and optionally system; found {sorted(columns)}"
        )
    codes: dict[tuple[str, str], ListedCode] = {}
    for row in reader:
        values = {name: (row.get(original) or "").strip() for name, original in columns.items()}
        if not any(values.values()):
            continue
        entry = _entry(values, where=f"codes file {path} line {reader.line_num}")
        if (entry.code, entry.system) in codes:
            logger.warning("codes file %s line %d repeats %s; the later row wins", path, reader.line_num, entry.code)
        codes[(entry.code, entry.system)] = entry
    return CodeList(path=path, sha256=hashlib.sha256(raw).hexdigest(), codes=tuple(codes.values()))


def _entry(values: dict[str, str], *, where: str) -> ListedCode:
    code, description = values[CODE], values[DESCRIPTION]
    try:
        system = check_system(values[SYSTEM]) if values.get(SYSTEM) else infer_system(code)
        canonical = normalize(code, system)
    except (CodeFormatError, UsageError) as error:
        raise OntologyError(f"{where}: {error}; fix or remove the row") from error
    if not description:
        raise OntologyError(f"{where}: code {canonical} has no description; every listed code needs one")
    return ListedCode(code=canonical, system=system, description=description)
