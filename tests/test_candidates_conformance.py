"""Every registered candidate source passes the same checks, as scikit-learn's ``check_estimator`` runs
over estimators: an unfitted copy by ``clone``, no use before ``fit``, only declared features, a note's
rows independent of the notes beside it, and the same candidates after ``save`` and ``load`` (no pickle)."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.base import clone

from coder.candidates import SOURCES
from coder.candidates.base import CandidateSource
from coder.errors import NotFittedError
from coder.model.folder import is_pickle
from coder.schema import EVIDENCE, KEY, NOTE_ID

# Parameters that suit the six-note corpus (defaults where they do); a new kind adds its line here.
SMALL = {
    "dense_search": {"top_k": 3},
    "evidence_lexicon": {},
    "mined_lexicon": {},
    "ontology_search": {"top_k": 3},
    "term_match": {"top_k": 3},
    "tfidf": {"min_df": 1, "top_k": 3},
}


@pytest.fixture(scope="module")
def fitted(tiny_corpus, tiny_ontology, tiny_model_path, tmp_path_factory):
    """kind -> (an unfitted source, the same fitted on the tiny corpus); the dense search with the tiny
    encoder, its ONNX export in this module's cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CODER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        out = {}
        for kind, params in SMALL.items():
            extra = {"encoder": str(tiny_model_path.parent / "encoder")} if kind == "dense_search" else {}
            source = SOURCES[kind](**params, **extra)
            out[kind] = source, clone(source).fit(tiny_corpus, ontology=tiny_ontology)
        yield out


def test_every_registered_source_is_checked():
    assert set(SMALL) == set(SOURCES) and all(issubclass(cls, CandidateSource) for cls in SOURCES.values())


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_clone_gives_an_unfitted_copy_with_the_same_parameters(kind, fitted, tiny_corpus):
    source, trained = fitted[kind]
    copy = clone(trained)
    assert copy.get_params() == source.get_params() and type(copy) is type(source)
    with pytest.raises(NotFittedError, match=f"{type(source).__name__} is not fitted"):
        copy.candidates(tiny_corpus.notes)
    assert copy.can_fit(tiny_corpus)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_candidates_carry_the_key_and_only_declared_columns(kind, fitted, tiny_corpus):
    _, source = fitted[kind]
    frame = source.candidates(tiny_corpus.notes)
    assert frame.height and frame.select(KEY).is_unique().all()
    assert set(frame[NOTE_ID]) <= set(tiny_corpus.notes[NOTE_ID])
    declared = source.get_feature_names_out()
    assert source.name in frame.columns and frame[source.name].dtype.is_numeric()
    assert [c for c in frame.columns if c not in (*KEY, *EVIDENCE, *declared)] == []
    assert set(frame.columns) - set(KEY) - set(EVIDENCE) <= set(declared)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_a_notes_candidates_do_not_depend_on_the_notes_beside_it(kind, fitted, tiny_corpus):
    _, source = fitted[kind]
    notes = tiny_corpus.notes
    together = source.candidates(notes).sort(KEY)
    alone = pl.concat([source.candidates(notes.slice(i, 1)) for i in range(notes.height)]).sort(KEY)
    assert_frame_equal(alone, together, check_exact=False, rel_tol=0, abs_tol=1e-9)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_saved_and_loaded_it_gives_the_same_candidates_without_pickle(kind, fitted, tiny_corpus, tmp_path):
    _, source = fitted[kind]
    source.save(tmp_path / kind)
    assert not [path for path in (tmp_path / kind).rglob("*") if path.is_file() and is_pickle(path)]
    loaded = type(source).load(tmp_path / kind, terms=source.terms_) if source.reads_terms else type(source).load(tmp_path / kind)
    assert_frame_equal(loaded.candidates(tiny_corpus.notes), source.candidates(tiny_corpus.notes))


@pytest.mark.parametrize("kind", sorted(kind for kind, cls in SOURCES.items() if cls(**SMALL[kind]).backfill))
def test_a_backfilling_source_scores_its_own_candidates_as_it_proposed_them(kind, fitted, tiny_corpus):
    _, source = fitted[kind]
    frame = source.candidates(tiny_corpus.notes)
    scored = source.score(tiny_corpus.notes, frame.select(KEY))
    assert scored.columns[: len(KEY)] == list(KEY) and source.name in scored.columns
    both = frame.join(scored, on=list(KEY), suffix="_scored")
    assert both.height == frame.height
    assert (both[source.name] - both[f"{source.name}_scored"]).abs().max() < 1e-6
