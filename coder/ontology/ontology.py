"""The loaded ontology: O(1) lookups of status, description and hierarchy for CM and PCS codes.

Status of a code in its system:
- ``billable``: a leaf of the release (or a complete code from the user code list);
- ``valid``: a real item with children (a category such as ``R51`` in FY2026), or a listed code
  that lacks characters the release's format requires (``T81.4XX``: no 7th character);
- ``prefix``: not an item, but a proper prefix of items (PCS ``0DT6``, CM ``W19.XXX``);
- ``unknown``: anything else, unreadable strings included.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import polars as pl

from coder.errors import CodeFormatError
from coder.hashing import file_sha256
from coder.ontology.cache import load_or_build
from coder.ontology.codelist import CodeList, check_format, read_code_list
from coder.ontology.sources import BILLABLE, BUILD_VERSION, PREFIX, VALID, build_tables, is_code_name, releases, source_files
from coder.ontology.syntax import check_system, infer_system, normalize, shorter_prefix
from coder.schema import CM, CODE, NOTE_ID, PCS, SYSTEM, SYSTEMS

logger = logging.getLogger(__name__)

Status = Literal["billable", "valid", "prefix", "unknown"]
UNKNOWN: Status = "unknown"
EXCLUDES = ("excludes1", "excludes2")


@dataclass(frozen=True)
class CodeInfo:
    """What the ontology says about one input string."""

    input: str
    system: str | None  # None when no system was given and none could be inferred
    canonical: str | None  # None when the input cannot be read as a code of ``system``
    status: Status
    description: str  # "" only for unknown codes
    inferred_system: bool  # True when ``system`` was inferred from the code's shape


class _Node(NamedTuple):
    description: str
    parent: str  # "" for a root (CM chapter, PCS section)
    status: str


@dataclass(frozen=True, eq=False)
class Ontology:
    """ICD-10-CM and ICD-10-PCS, optionally extended by a user code list. Build with ``load_ontology``."""

    release: dict[str, str | None]
    _nodes: dict[str, dict[str, _Node]] = field(repr=False)
    _notes: dict[str, dict[str, tuple[str, ...]]] = field(repr=False)
    listed: frozenset[tuple[str, str]] = frozenset()
    """(system, code) of the code list's codes that the release has no item for: valid by the list alone."""
    _memo: dict[tuple, object] = field(default_factory=dict, repr=False)

    def lookup(self, code: str, system: str | None = None) -> CodeInfo:
        """Status, canonical form and description of ``code``; never raises for a bad code.
        Without ``system`` it is inferred from the shape (see ``coder.ontology.syntax``), and a
        code that only the other system knows (PCS ``B020ZZZ``) is looked up there."""
        if system is not None:
            return self._lookup_in(code, check_system(system), inferred=False)
        try:
            first = infer_system(code)
        except CodeFormatError:
            return CodeInfo(code, None, None, UNKNOWN, "", inferred_system=True)
        info = self._lookup_in(code, first, inferred=True)
        if info.status == UNKNOWN:
            other = self._lookup_in(code, PCS if first == CM else CM, inferred=True)
            if other.status != UNKNOWN:
                return other
        return info

    def is_known(self, code: str, system: str | None = None) -> bool:
        """True unless ``lookup`` says ``unknown``."""
        return self.lookup(code, system).status != UNKNOWN

    def description(self, canonical: str, system: str) -> str:
        """Description of a code, prefix, CM block or chapter; "" if unknown."""
        node = self._node(canonical, system)
        return node.description if node else ""

    def parent(self, canonical: str, system: str) -> str | None:
        """The enclosing item (CM: subcategory, category, block, chapter; PCS: one axis less)."""
        node = self._node(canonical, system)
        return node.parent or None if node else None

    def ancestors(self, canonical: str, system: str) -> tuple[str, ...]:
        """Parents up to the root, nearest first (CM ends at the chapter, PCS at the section)."""
        out: list[str] = []
        node = self._node(canonical, system)
        while node and node.parent:
            out.append(node.parent)
            node = self._nodes[system].get(node.parent)
        return tuple(out)

    def children(self, canonical: str, system: str) -> tuple[str, ...]:
        """Items one level down in release order; for PCS also prefixes one axis longer. CM
        prefixes such as ``W19.XXX`` stand beside the release tree: they have no children and
        are nobody's child."""
        node_name = self._name(canonical, system)
        return self._children(system).get(node_name, ()) if node_name else ()

    def chapter(self, canonical: str, system: str) -> str:
        """CM chapter number (``"9"``; its name is ``description("9", CM)``) or PCS section
        character; "" when unknown or when a listed code has no chapter in the release."""
        name = self._name(canonical, system)
        if name is None:
            return ""
        root = (name, *self.ancestors(name, system))[-1]
        return root if (root.isdigit() if system == CM else len(root) == 1) else ""

    def inclusion_terms(self, canonical: str) -> tuple[str, ...]:
        """CM inclusion terms of this item itself; () for PCS and unknown codes."""
        name = self._name(canonical, CM)
        return self._notes["inclusion_terms"].get(name, ()) if name else ()

    def excludes(self, canonical: str) -> dict[str, tuple[str, ...]]:
        """CM Excludes1/Excludes2 notes of the item and its ancestors (a note on a category or
        block applies to every code below it), nearest first; empty for PCS and unknown codes."""
        name = self._name(canonical, CM)
        chain = (name, *self.ancestors(name, CM)) if name else ()
        return {
            kind: tuple(dict.fromkeys(note for item in chain for note in self._notes[kind].get(item, ())))
            for kind in EXCLUDES
        }

    def seventh_characters(self, canonical: str) -> tuple[str, ...]:
        """The 7th characters that the codes of a CM item take (its or its nearest ancestor's
        sevenChrDef: ``("A", "D", "S")`` for ``T81.40``); () where none applies, for PCS and unknown codes."""
        name, defined = self._name(canonical, CM), self._notes["seventh_characters"]
        chain = (name, *self.ancestors(name, CM)) if name else ()
        return next((defined[item] for item in chain if item in defined), ())

    def codes(self, system: str, *, billable_only: bool = False) -> Sequence[str]:
        """Every code of ``system`` in release order (user-listed codes that are new come last):
        billable and valid ones, or only billable; never prefixes, CM chapters or blocks."""
        key = ("codes", check_system(system), billable_only)
        if key not in self._memo:
            self._memo[key] = tuple(
                name
                for name, node in self._nodes[system].items()
                if (node.status == BILLABLE or (not billable_only and node.status != PREFIX))
                and (system == PCS or is_code_name(name))
            )
        return self._memo[key]  # type: ignore[return-value]

    def _lookup_in(self, code: str, system: str, *, inferred: bool) -> CodeInfo:
        try:
            canonical = normalize(code, system)
        except CodeFormatError:
            return CodeInfo(code, system, None, UNKNOWN, "", inferred)
        node = self._nodes[system].get(canonical)
        if node is None:
            return CodeInfo(code, system, canonical, UNKNOWN, "", inferred)
        return CodeInfo(code, system, canonical, node.status, node.description, inferred)  # type: ignore[arg-type]

    def _name(self, name: str, system: str) -> str | None:
        """``name`` if it is a node (codes, prefixes, blocks, chapters), else its canonical form
        if that is a node, else None."""
        nodes = self._nodes[check_system(system)]
        if name in nodes:
            return name
        try:
            canonical = normalize(name, system)
        except CodeFormatError:
            return None
        return canonical if canonical in nodes else None

    def _node(self, name: str, system: str) -> _Node | None:
        found = self._name(name, system)
        return self._nodes[system][found] if found else None

    def _children(self, system: str) -> dict[str, tuple[str, ...]]:
        key = ("children", system)
        if key not in self._memo:
            index: dict[str, list[str]] = {}
            for name, node in self._nodes[system].items():
                if node.parent and not (system == CM and node.status == PREFIX):
                    index.setdefault(node.parent, []).append(name)
            self._memo[key] = {parent: tuple(names) for parent, names in index.items()}
        return self._memo[key]  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _release_tables() -> tuple[dict[str, dict[str, _Node]], dict[str, dict[str, tuple[str, ...]]], dict[str, str]]:
    started = time.perf_counter()
    salt = f"{BUILD_VERSION}|{sorted(releases().items())}"
    tables = load_or_build(name="icd10", sources=source_files(), salt=salt, build=build_tables)
    nodes = {
        system: {
            name: _Node(description, parent, status)
            for name, description, parent, status in zip(
                tables[system]["name"], tables[system]["description"], tables[system]["parent"], tables[system]["status"]
            )
        }
        for system in SYSTEMS
    }
    notes = {kind: {name: tuple(values) for name, values in by_name.items()} for kind, by_name in tables["cm_notes"].items()}
    logger.info("ontology tables ready in %.2f s", time.perf_counter() - started)
    return nodes, notes, releases()


def _with_code_list(nodes: dict[str, dict[str, _Node]], code_list: CodeList,
                    incomplete: frozenset[tuple[str, str]]) -> dict[str, dict[str, _Node]]:
    """A copy of ``nodes`` where every listed code is billable (``valid`` if ``incomplete``) with the
    list's description; a code new to the release hangs under its nearest known ancestor (missing
    prefixes are added)."""
    out = {system: dict(by_name) for system, by_name in nodes.items()}
    for listed in code_list.codes:
        table = out[listed.system]
        existing = table.get(listed.code)
        status = VALID if (listed.system, listed.code) in incomplete else BILLABLE
        if existing is not None and existing.status != PREFIX:
            table[listed.code] = existing._replace(description=listed.description, status=status)
        else:
            parent = _attach(table, listed.code, listed.system, listed.description)
            table[listed.code] = _Node(listed.description, parent or "", status)
    return out


def _attach(table: dict[str, _Node], code: str, system: str, description: str) -> str | None:
    """Add the missing proper prefixes of a new ``code`` and return its parent in the tree."""
    missing = []
    parent = shorter_prefix(code, system)
    while parent is not None and parent not in table:
        missing.append(parent)
        parent = shorter_prefix(parent, system)
    # New prefixes read like the nearest known ancestor, else like the listed code.
    prefix_description = table[parent].description if parent else description
    for name in reversed(missing):
        table[name] = _Node(prefix_description, parent or "", PREFIX)
        parent = name
    # CM prefixes (W19.XXX) are aliases beside the release tree, not nodes of it.
    while system == CM and parent is not None and table[parent].status == PREFIX:
        parent = table[parent].parent or None
    return parent


@functools.lru_cache(maxsize=8)
def _load(codes_file: Path | None, sha256: str | None) -> Ontology:
    nodes, notes, labels = _release_tables()
    if codes_file is None:
        return Ontology({**labels, "code_list": None, "code_list_sha256": None}, nodes, notes)
    code_list = read_code_list(codes_file)
    logger.info("codes file %s: %d codes", codes_file, len(code_list.codes))
    release = {**labels, "code_list": str(codes_file), "code_list_sha256": code_list.sha256}
    listed = frozenset((c.system, c.code) for c in code_list.codes
                       if c.code not in nodes[c.system] or nodes[c.system][c.code].status == PREFIX)
    return Ontology(release, _with_code_list(nodes, code_list, check_format(code_list, _load(None, None))), notes, listed)


def load_ontology(codes_file: Path | None = None) -> Ontology:
    """The release ontology, extended by ``codes_file`` (see ``coder.ontology.codelist``).
    Memoised per file path and content; the release tables come from a content-keyed cache
    (``coder.ontology.cache``) built on first use."""
    if codes_file is None:
        return _load(None, None)
    path = Path(codes_file).resolve()
    try:
        sha256 = file_sha256(path)
    except OSError:
        sha256 = None  # read_code_list reports the problem
    return _load(path, sha256)


def canonical_codes(codes: pl.DataFrame, *, ontology) -> pl.DataFrame:
    """Gold codes in the ontology's canonical form, with ``known`` = the ontology (or user list) knows them."""
    pairs = codes.select(CODE, SYSTEM).unique()
    infos = [ontology.lookup(code, system) for code, system in pairs.iter_rows()]
    lookup = pairs.with_columns(
        pl.Series("canonical", [info.canonical or code for info, code in zip(infos, pairs[CODE], strict=True)], dtype=pl.String),
        pl.Series("known", [info.status != UNKNOWN for info in infos], dtype=pl.Boolean),
    )
    return (
        codes.join(lookup, on=[CODE, SYSTEM], how="left")
        .select(NOTE_ID, SYSTEM, pl.col("canonical").alias(CODE), "known")
        .unique(maintain_order=True)
    )
