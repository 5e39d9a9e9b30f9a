import re

import pytest

from coder.llm.constrain import TokenTrie, allowed_codes, code_gbnf, code_regex, ontology_codes
from coder.schema import CM, PCS

EOS, NL = 0, 10


def encode(code: str) -> list[int]:
    """Two characters a token where possible, as BPE merges do (``E11.9`` -> ``E1``, ``1.``, ``9``)."""
    return [sum(ord(c) * 256**i for i, c in enumerate(code[i : i + 2])) for i in range(0, len(code), 2)]


def trie(codes: list[str]) -> TokenTrie:
    return TokenTrie(codes, encode=lambda batch: [encode(code) for code in batch])


def decode(tokens: list[int]) -> str:
    out = []
    for token in tokens:
        while token:
            out.append(chr(token % 256))
            token //= 256
    return "".join(out)


def greedy(codes: TokenTrie, prefer) -> str:
    """Decode under the trie, always taking the allowed token that ``prefer`` ranks first."""
    generated: list[int] = []
    while True:
        allowed = codes.allowed_next(generated, delimiter_id=NL, eos_id=EOS)
        token = min(allowed, key=prefer)
        if token == EOS:
            return decode(generated)
        generated.append(token)


def test_trie_only_allows_listed_codes():
    codes = trie(["E11.9", "E11.65", "I10"])
    first = codes.allowed_next([], delimiter_id=NL, eos_id=EOS)
    assert sorted(decode([t]) for t in first if t != EOS) == ["E1", "I1"] and EOS in first
    inside = codes.allowed_next(encode("E11."), delimiter_id=NL, eos_id=EOS)
    assert sorted(decode([t]) for t in inside) == ["65", "9"]  # no EOS or newline inside a code
    done = codes.allowed_next(encode("I10"), delimiter_id=NL, eos_id=EOS)
    assert NL in done and EOS in done


def test_trie_prunes_emitted_codes_so_greedy_decoding_cannot_repeat():
    codes = trie(["E11.9", "E11", "I10"])
    # A model that always prefers to continue a code (never EOS) still ends, listing each code once.
    text = greedy(codes, prefer=lambda token: (token == EOS, token == NL, token))
    assert sorted(text.split("\n")) == ["E11", "E11.9", "I10"]


def test_trie_code_that_prefixes_another_can_be_emitted_before_or_after_it():
    codes = trie(["E11", "E11.9", "E11"])  # repeats in the input are ignored
    assert len(codes) == 2
    after_e11 = encode("E11") + [NL]
    assert decode(codes.allowed_next(after_e11, delimiter_id=NL, eos_id=EOS)[:1]) == "E1"
    inside = codes.allowed_next(after_e11 + encode("E11"), delimiter_id=NL, eos_id=EOS)
    assert NL not in inside and EOS not in inside  # E11 was emitted: only E11.9 can follow


def test_allowed_codes_adds_parent_children_siblings_but_not_blocks(tiny_ontology, tiny_gate):
    allowed = allowed_codes([(CM, "E11.9"), (PCS, "0DTJ4ZZ")], ontology=tiny_ontology, assignable=tiny_gate)
    assert sorted(allowed.systems_by_code) == ["0DTJ", "0DTJ0ZZ", "0DTJ4ZZ", "E11", "E11.65", "E11.9"]
    assert allowed.systems_by_code["0DTJ"] == (PCS,)
    assert allowed.descriptions["E11.65"] == "Type 2 diabetes mellitus with hyperglycemia"
    category = allowed_codes([(CM, "E11")], ontology=tiny_ontology, assignable=tiny_gate)
    assert "E08-E13" not in category and {"E10", "E11.9"} <= set(category.systems_by_code)
    no_truncations = allowed_codes([(PCS, "0DTJ4ZZ")], ontology=tiny_ontology, assignable=lambda code, system: len(code) == 7)
    assert sorted(no_truncations.systems_by_code) == ["0DTJ0ZZ", "0DTJ4ZZ"]  # the parent 0DTJ is no code there


def test_ontology_scope_lists_every_code(tiny_ontology, tiny_gate):
    allowed = ontology_codes(ontology=tiny_ontology, systems=[CM], assignable=tiny_gate)
    assert "J45.909" in allowed and "I10-I1A" not in allowed and "0DTJ4ZZ" not in allowed


CODES = ["E11", "E11.65", "E11.9", "E10.9", "I10", "0DTJ4ZZ"]


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("E11", True),
        ("E11.9\nI10", True),
        ("E11.65\nE11\n0DTJ4ZZ", True),
        ("E11.", False),
        ("E11.6", False),
        ("ZZZ.999", False),
        ("I10\n", False),
        ("E11.9 I10", False),
    ],
    ids=["category", "two", "three", "dangling-dot", "partial", "invented", "trailing-delimiter", "space"],
)
def test_code_regex_accepts_exactly_delimited_allowed_codes(text, matches):
    assert bool(re.fullmatch(code_regex(CODES), text)) is matches


def test_trie_renderings_collapse_single_child_chains():
    pattern = code_regex(CODES)
    assert "0DTJ4ZZ" in pattern  # one literal, not seven alternatives
    grammar = code_gbnf(CODES)
    assert grammar.startswith('root ::= code ("\\n" code)*\ncode ::= ')
    assert '"0DTJ4ZZ"' in grammar and '"E1" ("0.9" | "1" ("." ("65" | "9"))?)' in grammar
