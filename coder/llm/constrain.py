"""What the model may emit, and how decoding is held to it.

The allowed set is built from the ontology (candidates plus parents, children and siblings, or the
whole ontology). Locally a token trie drives transformers' ``prefix_allowed_tokens_fn``; remote servers
get the same set as a character trie rendered to a regex (vLLM) or a GBNF grammar (llama.cpp), with
single-child chains collapsed into one literal (a flat alternation of codes is much slower).
Output format in every case: codes separated by ``DELIMITER``, then end of sequence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DELIMITER = "\n"


class OntologyView(Protocol):
    """The part of ``coder.ontology``'s interface this stage uses."""

    def lookup(self, code: str, system: str | None = None): ...

    def parent(self, canonical: str, system: str) -> str | None: ...

    def children(self, canonical: str, system: str) -> Sequence[str]: ...

    def codes(self, system: str, billable_only: bool = False) -> Iterable[str]: ...

    def description(self, canonical: str, system: str) -> str | None: ...


@dataclass(frozen=True, eq=False)
class AllowedCodes:
    """Codes one prompt may produce: canonical code -> the systems it is allowed in.

    Compared and hashed by identity, so a backend can cache the decoding structure built for it.
    """

    systems_by_code: Mapping[str, tuple[str, ...]]
    descriptions: Mapping[str, str] = field(default_factory=dict)
    """canonical code -> description (the text that free-text answers are matched against)."""

    def __contains__(self, code: str) -> bool:
        return code in self.systems_by_code

    def __len__(self) -> int:
        return len(self.systems_by_code)


Assignable = Callable[[str, str], bool]
"""(code, system) -> whether the code may be written (``coder.validate.AssignableCodes``)."""


def allowed_codes(candidates: Iterable[tuple[str, str]], *, ontology: OntologyView, assignable: Assignable) -> AllowedCodes:
    """The neighbourhood of one note's candidates: each (system, canonical code), its parent, children and
    siblings, keeping only assignable codes (CM blocks and chapters are parents too, and so are PCS
    prefixes that no model writes: ``10E0XZ`` is the parent of ``10E0XZZ``, not a code)."""
    pairs: set[tuple[str, str]] = set()
    for system, code in candidates:
        pairs.add((system, code))
        pairs.update((system, child) for child in ontology.children(code, system))
        parent = ontology.parent(code, system)
        if parent is not None:
            pairs.add((system, parent))
            pairs.update((system, sibling) for sibling in ontology.children(parent, system))
    return _described({pair for pair in pairs if assignable(pair[1], pair[0])}, ontology=ontology)


def ontology_codes(*, ontology: OntologyView, systems: Iterable[str], assignable: Assignable) -> AllowedCodes:
    """Every assignable code of ``systems`` (``scope="ontology"``): one set shared by all notes."""
    return _described({(system, code) for system in systems for code in ontology.codes(system) if assignable(code, system)},
                      ontology=ontology)


def _described(pairs: set[tuple[str, str]], *, ontology: OntologyView) -> AllowedCodes:
    systems: dict[str, tuple[str, ...]] = {}
    descriptions: dict[str, str] = {}
    for system, code in sorted(pairs):
        systems[code] = (*systems.get(code, ()), system)
        description = ontology.description(code, system)
        if description:
            descriptions[code] = description
    return AllowedCodes(systems_by_code=systems, descriptions=descriptions)


class _Node:
    __slots__ = ("children", "code", "n_codes")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.code: str | None = None
        self.n_codes = 0  # codes ending at or below this node


class TokenTrie:
    """Codes as token-id paths. ``encode`` turns a list of codes into the token ids a model emits for each
    (batched: a fast tokenizer encodes all 176,789 CM and PCS codes in a few seconds, one by one takes longer)."""

    def __init__(self, codes: Iterable[str], *, encode: Callable[[list[str]], Sequence[Sequence[int]]]):
        self.root = _Node()
        self.paths: dict[str, tuple[int, ...]] = {}
        unique = list(dict.fromkeys(codes))
        for code, ids in zip(unique, encode(unique)):
            path = tuple(ids)
            if not path:
                continue
            self.paths[code] = path
            node = self.root
            node.n_codes += 1
            for token in path:
                node = node.children.setdefault(token, _Node())
                node.n_codes += 1
            node.code = code

    def __len__(self) -> int:
        return len(self.paths)

    def allowed_next(self, generated: Sequence[int], *, delimiter_id: int, eos_id: int) -> list[int]:
        """Tokens allowed after ``generated`` (the new tokens so far), codes already emitted pruned.

        Greedy decoding repeats itself; pruning each emitted code stops it from spending the budget on repeats.
        """
        node = self.root
        emitted: list[str] = []
        for token in generated:
            if token == delimiter_id:
                emitted.append(node.code)  # type: ignore[arg-type]  # the constraint only allows it after a code
                node = self.root
            elif token == eos_id:
                return [eos_id]
            else:
                node = node.children[token]
        used = self._emitted_below(emitted)
        allowed = [token for token, child in node.children.items() if child.n_codes > used.get(id(child), 0)]
        if node is self.root:
            allowed.append(eos_id)
        elif node.code is not None and node.code not in emitted:
            allowed.append(eos_id)
            if self.root.n_codes > len(set(emitted)) + 1:  # a delimiter only if some code can follow
                allowed.append(delimiter_id)
        return allowed

    def _emitted_below(self, emitted: Iterable[str]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for code in set(emitted):
            node = self.root
            for token in self.paths[code]:
                node = node.children[token]
                counts[id(node)] = counts.get(id(node), 0) + 1
        return counts


def prefix_allowed_tokens_fn(
    trie: TokenTrie, *, prompt_len: int, delimiter_id: int, eos_id: int
) -> Callable[[int, object], list[int]]:
    """The callback for ``model.generate(prefix_allowed_tokens_fn=...)``; ``input_ids``: [seq_len] of one row."""

    def allowed(_batch_id: int, input_ids) -> list[int]:
        generated = input_ids[prompt_len:].tolist()
        return trie.allowed_next(generated, delimiter_id=delimiter_id, eos_id=eos_id)

    return allowed


# --- remote servers: the allowed set as a character trie, rendered to a regex or a GBNF grammar ---

_END = ""


def _char_trie(codes: Iterable[str]) -> dict:
    root: dict = {}
    for code in codes:
        node = root
        for char in code:
            node = node.setdefault(char, {})
        node[_END] = {}
    return root


@dataclass(frozen=True)
class _Syntax:
    literal: Callable[[str], str]
    group: Callable[[list[str]], str]
    optional: Callable[[str], str]
    then: str  # between the parts of a sequence


_REGEX = _Syntax(
    literal=re.escape,
    group=lambda items: items[0] if len(items) == 1 else "(?:" + "|".join(items) + ")",
    optional=lambda item: f"(?:{item})?",
    then="",
)
_GBNF = _Syntax(
    literal=json.dumps,  # codes are letters, digits and dots: a JSON string is a valid GBNF literal
    group=lambda items: items[0] if len(items) == 1 else "(" + " | ".join(items) + ")",
    optional=lambda item: f"({item})?",
    then=" ",
)


def _render(node: dict, syntax: _Syntax) -> str:
    """One alternative per child; a chain of single children becomes one literal."""
    alternatives = []
    for char in sorted(key for key in node if key != _END):
        text, below = char, node[char]
        while len(below) == 1 and _END not in below:
            (next_char, below), = below.items()
            text += next_char
        rest = _render(below, syntax) if set(below) - {_END} else ""
        if rest and _END in below:
            rest = syntax.optional(rest)
        alternatives.append(syntax.literal(text) + (syntax.then + rest if rest else ""))
    return syntax.group(alternatives)


def code_regex(codes: Iterable[str]) -> str:
    """A regex for ``code(DELIMITER code)*`` over ``codes`` (vLLM ``structured_outputs``)."""
    one = _render(_char_trie(codes), _REGEX)
    return f"{one}(?:{re.escape(DELIMITER)}{one})*"


def code_gbnf(codes: Iterable[str]) -> str:
    """A GBNF grammar for ``code(DELIMITER code)*`` over ``codes`` (llama.cpp ``grammar``)."""
    return f"root ::= code ({json.dumps(DELIMITER)} code)*\ncode ::= {_render(_char_trie(codes), _GBNF)}\n"
