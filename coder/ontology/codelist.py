"""A user code list that extends or overrides the release (e.g. CodiEsp's 2018 codes).

Format: a UTF-8 text file with a header row, tab-separated if the header holds a tab, else
comma-separated. Columns ``code`` and ``description`` are required, ``system`` (ICD-10-CM or
ICD-10-PCS) is optional; without it each code's system is inferred from its shape. Every
listed code counts as billable, with the list's description, unless it lacks characters that the
release's format requires (``check_format``). Blank lines are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coder.errors import CodeFormatError, OntologyError, UsageError
from coder.ontology.sources import BILLABLE, VALID
from coder.ontology.syntax import check_system, infer_system, normalize, shorter_prefix
from coder.schema import CM, CODE, PCS, SYSTEM, SYSTEMS

if TYPE_CHECKING:
    from coder.ontology.ontology import Ontology

logger = logging.getLogger(__name__)

DESCRIPTION = "description"


@dataclass(frozen=True)
class ListedCode:
    """One row of a user code list, in canonical form."""

    code: str
    system: str
    description: str
    line: int


@dataclass(frozen=True)
class CodeList:
    """A parsed user code list and the sha256 of its bytes (recorded in ``Ontology.release``)."""

    path: Path
    sha256: str
    codes: tuple[ListedCode, ...]


def read_code_list(path: Path) -> CodeList:
    """Parse ``path``; OntologyError names the line and what to fix for any unusable row (never its content:
    a model folder's code list could be any file)."""
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
            f"codes file {path} lacks column(s) {', '.join(missing)}: expected a header row (line 1) with "
            "code, description and optionally system"
        )
    codes: dict[tuple[str, str], ListedCode] = {}
    for row in reader:
        values = {name: (row.get(original) or "").strip() for name, original in columns.items()}
        if not any(values.values()):
            continue
        entry = _entry(values, line=reader.line_num, where=f"codes file {path} line {reader.line_num}")
        if (entry.code, entry.system) in codes:
            logger.warning("codes file %s line %d repeats %s; the later row wins", path, reader.line_num, entry.code)
        codes[(entry.code, entry.system)] = entry
    return CodeList(path=path, sha256=hashlib.sha256(raw).hexdigest(), codes=tuple(codes.values()))


def _entry(values: dict[str, str], *, line: int, where: str) -> ListedCode:
    code, description = values[CODE], values[DESCRIPTION]
    try:
        system = check_system(values[SYSTEM]) if values.get(SYSTEM) else infer_system(code)
        canonical = normalize(code, system)
    except CodeFormatError as error:
        raise OntologyError(f"{where}: the code is not an ICD-10 code ({error.reason}); fix or remove the row") from error
    except UsageError as error:
        raise OntologyError(f"{where}: the system is not one of {', '.join(SYSTEMS)}; fix or remove the row") from error
    if not description:
        raise OntologyError(f"{where}: the code has no description; every listed code needs one")
    return ListedCode(code=canonical, system=system, description=description, line=line)


def check_format(code_list: CodeList, release: Ontology) -> frozenset[tuple[str, str]]:
    """The (system, code) pairs of ``code_list`` that lack characters the release's format requires:
    not billable, whatever the list says. Each finding is logged (info: a model's own list is read on
    every run, and ``coder codes validate`` shows the status) naming the file and line.

    A PCS code has 7 characters. A CM code is checked against its nearest item in the release
    (itself, or the longest prefix that is an item): under a 7th-character definition it has 7
    characters and a 7th the definition gives; otherwise a 7th character needs a category that has
    7-character codes; a placeholder X right after that item needs release codes with an X there.
    Only missing characters make a code incomplete: the rest may be drift, so it stays billable.
    """
    incomplete = set()
    for listed in code_list.codes:
        lacks, findings = _findings(listed, release)
        if lacks:
            incomplete.add((listed.system, listed.code))
        if findings:
            # info, not warning: a vetted list (the shipped model's) would warn on every predict
            logger.info("codes file %s line %d: %s %s%s", code_list.path, listed.line, listed.code, "; ".join(findings),
                        ": valid, not billable" if lacks else "")
    return frozenset(incomplete)


def _findings(listed: ListedCode, release: Ontology) -> tuple[bool, list[str]]:
    """(whether ``listed`` lacks characters, what it breaks of the release's format)."""
    body = listed.code.replace(".", "")
    if listed.system == PCS:
        lacks = len(body) < 7
        return lacks, [f"lacks characters {len(body) + 1}-7 (ICD-10-PCS codes have 7)"] if lacks else []
    item: str | None = listed.code
    while item is not None and release.lookup(item, CM).status not in (BILLABLE, VALID):
        item = shorter_prefix(item, CM)
    if item is None:  # a category the release lacks: nothing to compare with
        return False, []
    seventh, findings = release.seventh_characters(item), []
    lacks = bool(seventh) and len(body) < 7
    if lacks:
        findings.append(f"lacks its 7th character ({', '.join(seventh)}: every {item} code has one)")
    elif seventh and body[6] not in seventh:
        findings.append(f"has a 7th character {body[6]} that {item} codes do not take ({', '.join(seventh)})")
    elif not seventh and len(body) == 7 and not any(len(code) == 8 and code.startswith(body[:3]) for code in release.codes(CM)):
        findings.append(f"has a 7th character, which no {body[:3]} code of the release has")
    at = len(item.replace(".", ""))
    found = sorted({child.replace(".", "")[at] for child in release.children(item, CM)})
    if body[at:at + 1] == "X" and "X" not in found:
        where = f"where {item} codes have {', '.join(found)}" if found else f"after {item}, which has no codes below it"
        findings.append(f"has a placeholder X as character {at + 1}, {where}")
    return lacks, findings
