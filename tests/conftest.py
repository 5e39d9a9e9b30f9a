"""Shared test fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from coder.schema import CM, PCS


class TinyOntology:
    """A hand-made ontology with ``coder.ontology.Ontology``'s lookup/hierarchy interface, for fast tests."""

    # system -> code -> (status, description, parent)
    ITEMS = {
        CM: {
            "E08-E13": ("block", "Diabetes mellitus", None),
            "E10": ("valid", "Type 1 diabetes mellitus", "E08-E13"),
            "E10.9": ("billable", "Type 1 diabetes mellitus without complications", "E10"),
            "E11": ("valid", "Type 2 diabetes mellitus", "E08-E13"),
            "E11.9": ("billable", "Type 2 diabetes mellitus without complications", "E11"),
            "E11.65": ("billable", "Type 2 diabetes mellitus with hyperglycemia", "E11"),
            "I10": ("billable", "Essential (primary) hypertension", "I10-I1A"),
            "I10-I1A": ("block", "Hypertensive diseases", None),
            "J45.909": ("billable", "Unspecified asthma, uncomplicated", "J45.90"),
            "J45.90": ("valid", "Unspecified asthma", None),
        },
        PCS: {
            "0DTJ": ("prefix", "Resection of Appendix", None),
            "0DTJ4ZZ": ("billable", "Resection of Appendix, Percutaneous Endoscopic Approach", "0DTJ"),
            "0DTJ0ZZ": ("billable", "Resection of Appendix, Open Approach", "0DTJ"),
        },
    }

    @staticmethod
    def _canonical(code: str, system: str) -> str:
        code = code.strip().upper().replace(".", "")
        return code[:3] + "." + code[3:] if system == CM and len(code) > 3 else code

    def lookup(self, code: str, system: str | None = None):
        for candidate in (system,) if system else (CM, PCS):
            canonical = self._canonical(code, candidate)
            status, description, _ = self.ITEMS[candidate].get(canonical, ("unknown", "", None))
            if status not in ("unknown", "block"):
                return SimpleNamespace(canonical=canonical, status=status, description=description, system=candidate)
        return SimpleNamespace(canonical=None, status="unknown", description="", system=system)

    def is_known(self, code: str, system: str | None = None) -> bool:
        return self.lookup(code, system).status != "unknown"

    def description(self, canonical: str, system: str) -> str:
        return self.ITEMS[system].get(canonical, ("", "", None))[1]

    def parent(self, canonical: str, system: str) -> str | None:
        return self.ITEMS[system].get(canonical, ("", "", None))[2]

    def children(self, canonical: str, system: str) -> tuple[str, ...]:
        return tuple(code for code, (_, _, parent) in self.ITEMS[system].items() if parent == canonical)

    def codes(self, system: str, *, billable_only: bool = False) -> tuple[str, ...]:
        wanted = ("billable",) if billable_only else ("billable", "valid")
        return tuple(code for code, (status, _, _) in self.ITEMS[system].items() if status in wanted)

    def inclusion_terms(self, canonical: str) -> tuple[str, ...]:
        return {"I10": ("High blood pressure",)}.get(canonical, ())


@pytest.fixture(scope="session")
def tiny_ontology() -> TinyOntology:
    return TinyOntology()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The committed tiny PLM-ICD model folder (random 2-layer BERT, a few training steps, ONNX files).

    Rebuild with ``python tests/assets/build_tiny_model.py``; its encoder and synthetic notes are
    beside it (``tiny_model_path.parent / "encoder"`` and ``/ "data"``).
    """
    return Path(__file__).parent / "assets" / "tiny_model" / "bundle"


@pytest.fixture
def encoder_copy(tmp_path, tiny_model_path) -> Path:
    """A copy of the tiny model's encoder folder, for a test to change (its config, its weights)."""
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_model_path.parent / "encoder", folder)
    return folder


# (note id, English text, Spanish text, [(system, code, Spanish evidence span)])
TINY_CODIESP = [
    ("n1", "Patient with arterial hypertension and type 2 diabetes mellitus. Laparoscopic appendectomy was done.",
     "Paciente con hipertensión arterial y diabetes mellitus tipo 2. Se realizó apendicectomía laparoscópica.",
     [(CM, "I10", "hipertensión arterial"), (CM, "E11.9", "diabetes mellitus tipo 2"),
      (PCS, "0DTJ4ZZ", "apendicectomía laparoscópica")]),
    ("n2", "Woman with asthma. Denies arterial hypertension.", "Mujer con asma. Niega hipertensión arterial.",
     [(CM, "J45.909", "asma")]),
    ("n3", "Known high blood pressure. Abdominal pain.", "Hipertension arterial conocida. Dolor abdominal.",
     [(CM, "I10", "Hipertension arterial")]),
    ("n4", "Type 2 diabetes mellitus with hyperglycemia.", "Diabetes mellitus tipo 2 con hiperglucemia.",
     [(CM, "E11.65", "Diabetes mellitus tipo 2 con hiperglucemia")]),
    ("n5", "Asthma since childhood, now arterial hypertension.", "Asma desde la infancia, ahora hipertensión arterial.",
     [(CM, "J45.909", "Asma"), (CM, "I10", "hipertensión arterial")]),
    ("n6", "Open appendectomy for appendicitis.", "Apendicectomía abierta por apendicitis.",
     [(PCS, "0DTJ0ZZ", "Apendicectomía abierta")]),
]


@pytest.fixture(scope="session")
def tiny_codiesp():
    """A six-note CodiEsp-shaped corpus: ``(notes, codes, evidence)`` frames (notes: note_id,
    text, text_es; evidence: SPAN_SCHEMA, offsets into text_es)."""
    import polars as pl

    from coder.schema import GOLD_SCHEMA, SPAN_SCHEMA

    notes = pl.DataFrame([(n, en, es) for n, en, es, _ in TINY_CODIESP], schema=["note_id", "text", "text_es"], orient="row")
    evidence = []
    for note_id, _, es, spans in TINY_CODIESP:
        for system, code, span in spans:
            start = es.index(span)
            evidence.append((note_id, system, code, span, f"{start} {start + len(span)}"))
    evidence_frame = pl.DataFrame(evidence, schema=SPAN_SCHEMA, orient="row")
    codes = evidence_frame.select("note_id", "code", "system").unique(maintain_order=True).cast(dict(GOLD_SCHEMA))
    return notes, codes, evidence_frame



@pytest.fixture(scope="session")
def tiny_corpus(tiny_codiesp):
    """``tiny_codiesp`` as a ``coder.io.corpus.Corpus``."""
    from coder.io.corpus import Corpus

    return Corpus(*tiny_codiesp)


@pytest.fixture(scope="session")
def tiny_gate(tiny_ontology):
    """The assignable-code rule over ``tiny_ontology`` for a model whose labels use 4-character PCS codes."""
    from coder.validate import AssignableCodes

    return AssignableCodes(tiny_ontology, truncations={PCS: (4,)})


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, tiny_codiesp, tiny_model_path) -> SimpleNamespace:
    """A model built once per session by ``coder train`` through the CLI from ``tiny_codiesp``: notes with
    a Spanish column, coders' spans, the same notes as dev, one epoch of the tiny encoder, the dense search's
    sentences through one distilled layer. A namespace of ``folder`` and the ``notes``, ``codes`` and
    ``evidence`` files; a test that changes the folder copies it."""
    from typer.testing import CliRunner

    from cli import app
    from coder.schema import EVIDENCE_FILE_OFFSETS, EVIDENCE_FILE_TEXT, SPAN_OFFSETS, SPAN_TEXT

    folder = tmp_path_factory.mktemp("trained")
    files = {name: folder / f"{name}.parquet" for name in ("notes", "codes", "evidence")}
    notes, codes, spans = tiny_codiesp
    evidence = spans.rename({SPAN_TEXT: EVIDENCE_FILE_TEXT, SPAN_OFFSETS: EVIDENCE_FILE_OFFSETS})  # the file's CodiEsp-X names
    for frame, path in zip((notes, codes, evidence), files.values(), strict=True):
        frame.write_parquet(path)
    encoder = str(tiny_model_path.parent / "encoder")
    result = CliRunner().invoke(app, [
        "train", "--notes", str(files["notes"]), "--codes", str(files["codes"]), "--evidence", str(files["evidence"]),
        "--dev-notes", str(files["notes"]), "--dev-codes", str(files["codes"]), "--encoder", encoder,
        "--sentence-encoder", encoder, "--sentence-layers", "1", "--epochs", "1", "--out", str(folder / "model"),
    ])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(folder=folder / "model", **files)


def run_vote(notes, candidates, *, settings, gate, backend=None, per_note=50):
    """An ``LLMStage`` opened with ``settings`` voting once: what the stage reports, in one namespace
    (``available`` and ``error`` as the manifest records them, ``votes``, ``counts``, ``new_tokens``)."""
    from coder.llm.vote import LLMStage, manifest_section

    stage = LLMStage(settings, gate=gate, backend=backend)
    votes = stage.vote(notes, candidates, text_column="text", per_note=per_note)
    section = manifest_section(stage, votes.batch_counts())
    return SimpleNamespace(available=section["available"], error=stage.error, votes=votes.votes, counts=votes.counts,
                           new_tokens=votes.new_tokens, section=section, requests=None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module that runs the real local LLM, the previous count restored after it.

    A 135M model decodes one token at a time: a second thread gains little, and on a shared machine the
    two threads wait on each other at every step."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray (2 CPUs, a small object store) started once per session for every test that runs on Ray
    (the engine joins a session already open). The stand-ins (``standin``, ``engine_cases``) live in test
    modules, which Ray's workers cannot import: they are shipped by value."""
    ray = pytest.importorskip("ray")
    import engine_cases
    import standin

    for module in (standin, engine_cases):
        ray.cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def dump(tmp_path):
    """A dump of two files with every kind of bad row (``engine_cases.write_dump``)."""
    from engine_cases import write_dump

    return write_dump(tmp_path / "dump")


@pytest.fixture
def local_run(tmp_path, dump):
    """``dump`` coded by the local engine with the stand-in model, in batches of 2: what other engines must write."""
    from engine_cases import OPTIONS, run_batches

    out = tmp_path / "local" / "out.parquet"
    out.parent.mkdir()
    run_batches(dump, out=out, options=OPTIONS)
    return out



@pytest.fixture(scope="session")
def cli_local_run(tmp_path_factory, tiny_model_path) -> SimpleNamespace:
    """A dump (``engine_cases.write_dump``) coded once per session by `coder predict` on the local engine with
    the tiny model, in batches of 3 (``CLI_ENGINE_ARGS``): what the CLI's other engines must write. A
    namespace of ``dump`` and ``out``; the tests only read them."""
    from typer.testing import CliRunner

    from cli import app
    from engine_cases import CLI_ENGINE_ARGS, write_dump

    folder = tmp_path_factory.mktemp("cli_local_run")
    dump, out = write_dump(folder / "dump"), folder / "out" / "out.parquet"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["predict", str(dump), "--out", str(out), "--model", str(tiny_model_path),
                                      *CLI_ENGINE_ARGS])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(dump=dump, out=out)
