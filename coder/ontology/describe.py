"""What `coder codes show` and `coder codes validate` print: lookups rendered for people or JSON.

Both judge codes by the model in force (its truncation levels, ``coder.validate``): a prefix of
real codes is a code to people only at a length the model writes (CodiEsp's 4-character PCS
codes); other prefixes (``B``, ``0DT60``) are ``unknown`` here. ``Ontology.lookup`` itself keeps
every prefix known, since training learns from them. Without a model every prefix stays ``prefix``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

from coder.errors import CodeFormatError, UsageError
from coder.ontology.ontology import UNKNOWN, CodeInfo, Ontology, load_ontology
from coder.ontology.sources import PREFIX
from coder.ontology.syntax import infer_system, normalize
from coder.schema import CM
from coder.validate import AssignableCodes

STDIN = "-"
JSON_KEYS = ("input", "system", "canonical", "status", "description", "assignable")


@dataclass(frozen=True)
class Shown:
    """One code described for people; ``info.status`` decides the exit code."""

    info: CodeInfo
    text: str


@dataclass(frozen=True)
class Validation:
    """One lookup per input code, in input order, and whether each may be written (``coder.validate``)."""

    results: tuple[CodeInfo, ...]
    assignable: tuple[bool, ...]

    @property
    def all_known(self) -> bool:
        return all(info.status != UNKNOWN for info in self.results)

    def to_json(self) -> str:
        """A JSON list of objects with exactly the keys ``JSON_KEYS``."""
        return json.dumps([{**{key: asdict(info)[key] for key in JSON_KEYS[:-1]}, "assignable": ok}
                           for info, ok in zip(self.results, self.assignable, strict=True)], indent=2)

    def to_text(self) -> str:
        """One tab-separated line per input: input, canonical, system, status, assignable or not, description."""
        return "\n".join(
            "\t".join((info.input, info.canonical or "-", _system_label(info), info.status,
                       "assignable" if ok else "not assignable", _description(info)))
            for info, ok in zip(self.results, self.assignable, strict=True)
        )

    def inference_note(self) -> str | None:
        """For stderr: how many codes got which inferred system; None if the system was given."""
        counts = Counter(info.system or "no system (unreadable)" for info in self.results if info.inferred_system)
        if not counts:
            return None
        return "no --system given, inferred per code: " + ", ".join(f"{system} {n}" for system, n in counts.items())


def describe_code(code: str, *, system: str | None = None, codes_file: Path | None = None,
                  truncations: Mapping[str, tuple[int, ...]] | None = None) -> Shown:
    """Status, canonical form, description, ancestors, children count, inclusion terms and excludes;
    ``truncations``: the model's levels (None: no model)."""
    ontology = load_ontology(codes_file)
    gate = AssignableCodes(ontology, truncations=truncations or {})
    info = _as_used(ontology.lookup(code, system), gate, levels_known=truncations is not None)
    lines = [f"{info.canonical or info.input} ({_system_label(info)}): {info.status}", f"  {_description(info)}"]
    if info.canonical is not None and info.status != UNKNOWN:
        lines += _details(ontology, info.canonical, info.system or "")
    return Shown(info=info, text="\n".join(lines))


def validate_codes(
    codes: Sequence[str],
    *,
    system: str | None = None,
    codes_file: Path | None = None,
    truncations: Mapping[str, tuple[int, ...]] | None = None,
    stdin: TextIO | None = None,
) -> Validation:
    """Look up every code; ``-`` stands for one code a line read from ``stdin``. A code is
    assignable under ``codes_file`` and the ``truncations`` of a model (``coder.validate``; None:
    no model). UsageError when there is no code at all."""
    inputs = list(_expand_stdin(codes, stdin))
    if not inputs:
        raise UsageError("no codes to validate: give codes as arguments, or '-' and one code a line on stdin")
    ontology = load_ontology(codes_file)
    gate = AssignableCodes(ontology, truncations=truncations or {})
    results = tuple(_as_used(ontology.lookup(code, system), gate, levels_known=truncations is not None) for code in inputs)
    return Validation(results=results, assignable=tuple(
        info.canonical is not None and info.system is not None and gate(info.canonical, info.system) for info in results))


def _as_used(info: CodeInfo, gate: AssignableCodes, *, levels_known: bool) -> CodeInfo:
    """``info``, or ``unknown`` for a prefix of real codes that ``gate`` does not let the model write."""
    if not levels_known or info.status != PREFIX or gate(info.canonical, info.system):
        return info
    levels = ", ".join(map(str, gate.truncations.get(info.system, ()))) or "none"
    return replace(info, status=UNKNOWN, description=f"a prefix of real codes at a length the model does not use ({levels})")


def _expand_stdin(codes: Iterable[str], stdin: TextIO | None) -> Iterable[str]:
    for code in codes:
        if code != STDIN:
            yield code
        elif stdin is None:
            raise UsageError("'-' reads codes from stdin, but no stdin was given")
        else:
            yield from (line.strip() for line in stdin if line.strip())


def _system_label(info: CodeInfo) -> str:
    label = info.system or "no system"
    return f"{label}, inferred" if info.inferred_system else label


def _description(info: CodeInfo) -> str:
    if info.status != UNKNOWN or info.description:
        return info.description
    if info.canonical is not None:
        return "not in the ontology (nor a prefix of its codes); a --codes-file can add it"
    try:
        normalize(info.input, info.system) if info.system else infer_system(info.input)
    except CodeFormatError as error:
        return f"not a code: {error.reason}"
    return "not a code"


def _details(ontology: Ontology, canonical: str, system: str) -> list[str]:
    lines = []
    ancestors = ontology.ancestors(canonical, system)
    if ancestors:
        lines.append("  ancestors:")
        lines += [f"    {name}  {ontology.description(name, system)}" for name in ancestors]
    children = ontology.children(canonical, system)
    if children:
        lines.append(f"  children: {len(children)} ({', '.join(children[:8])}{', ...' if len(children) > 8 else ''})")
    sections = {"inclusion terms": ontology.inclusion_terms(canonical), **ontology.excludes(canonical)} if system == CM else {}
    for title, notes in sections.items():
        if notes:
            lines.append(f"  {title}:")
            lines += [f"    {note}" for note in notes]
    return lines
