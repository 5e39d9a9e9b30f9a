from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from transformers import AutoTokenizer

from coder.errors import ModelBundleError
from coder.model.chunking import NO_OFFSET, WordPieces, batches, chunk_notes, collate
from coder.model.folder import TORCH_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return WordPieces.read(tiny_model_path.parent / "encoder")


def _words(n: int) -> str:
    return " ".join(["patient"] * n)  # one word piece each in the tiny vocabulary


@pytest.mark.parametrize(
    ("n_words", "expected_chunks", "truncated"),
    [(1, 1, False), (6, 1, False), (7, 2, False), (12, 2, False), (18, 3, False), (19, 3, True), (100, 3, True)],
    ids=["one-token", "exactly-one-chunk", "one-past-boundary", "exactly-two-chunks", "exactly-max", "one-past-max", "far-past-max"],
)
def test_chunk_counts_and_truncation(tokenizer, n_words, expected_chunks, truncated):
    [note] = chunk_notes([_words(n_words)], tokenizer=tokenizer, chunk_len=8, max_chunks=3)
    assert note.input_ids.shape == (expected_chunks, 8)
    assert note.truncated is truncated
    assert (note.input_ids[:, 0] == tokenizer.cls_token_id).all()
    kept = min(n_words, 3 * 6)
    assert int(note.attention_mask.sum()) == kept + 2 * expected_chunks  # word pieces + [CLS]/[SEP] per chunk


@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x01", "\ufeff"], ids=["zero-width", "control", "bom"])
def test_text_without_tokens_is_unprocessable(tokenizer, text):
    [note] = chunk_notes([text], tokenizer=tokenizer, chunk_len=8, max_chunks=3)
    assert note.unprocessable and note.n_chunks == 0 and not note.truncated


def test_offsets_point_back_into_the_text(tokenizer):
    text = "fever and cough"
    [note] = chunk_notes([text], tokenizer=tokenizer, chunk_len=8, max_chunks=3)
    spans = [tuple(span) for span in note.offsets[0] if span[0] != NO_OFFSET]
    assert [text[s:e] for s, e in spans] == ["fever", "and", "cough"]
    assert tuple(note.offsets[0, 0]) == (NO_OFFSET, NO_OFFSET)  # [CLS]


def test_collate_pads_chunks_with_a_zero_mask(tokenizer):
    notes = chunk_notes([_words(3), _words(15)], tokenizer=tokenizer, chunk_len=8, max_chunks=3)
    batch = collate(notes, indices=[0, 1], pad_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape == (2, 3, 8)
    assert batch.attention_mask[0, 1:].sum() == 0
    assert batch.n_chunks == 4


def test_batches_bucket_by_length_and_skip_unprocessable(tokenizer):
    notes = chunk_notes([_words(15), "\x00", _words(1), _words(8)], tokenizer=tokenizer, chunk_len=8, max_chunks=3)
    got = list(batches(notes, batch_size=2, pad_id=0))
    assert [b.indices for b in got] == [(2, 3), (0,)]
    np.testing.assert_array_equal(got[1].input_ids[0], notes[0].input_ids)


def test_rejects_a_chunk_too_short_for_special_tokens(tokenizer):
    with pytest.raises(ValueError, match="chunk_len must be >= 3"):
        chunk_notes(["x"], tokenizer=tokenizer, chunk_len=2)


@pytest.mark.parametrize("column", ["text", "text_es"])
def test_word_pieces_give_hugging_faces_ids_and_offsets(column):
    """The shipped model's tokenizer read with ``tokenizers`` alone, and taken from a Hugging Face tokenizer,
    against the Hugging Face call PLM-ICD was trained with, on CodiEsp dev notes in both languages."""
    folder = ROOT / "models" / "codiesp-minilm" / TORCH_DIR
    texts = pl.read_parquet(ROOT / "data" / "codiesp" / "dev" / "notes.parquet")[column].to_list()
    hugging_face = AutoTokenizer.from_pretrained(str(folder))
    expected = hugging_face(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    for pieces in (WordPieces.read(folder), WordPieces.of(hugging_face)):
        ids, offsets = pieces.encode(texts)
        assert ids == expected["input_ids"]
        assert [[tuple(span) for span in note] for note in offsets] == [[tuple(span) for span in note]
                                                                          for note in expected["offset_mapping"]]
        assert (pieces.cls_token_id, pieces.sep_token_id, pieces.pad_token_id) == (
            hugging_face.cls_token_id, hugging_face.sep_token_id, hugging_face.pad_token_id)


def test_a_tokenizer_folder_without_its_special_tokens_is_a_bundle_error(tmp_path, tiny_model_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text((tiny_model_path.parent / "encoder" / "tokenizer.json").read_text())
    (folder / "tokenizer_config.json").write_text('{"cls_token": "<s>"}')
    with pytest.raises(ModelBundleError, match="vocabulary lacks <s>"):
        WordPieces.read(folder)
    (folder / "tokenizer.json").write_text("{")
    with pytest.raises(ModelBundleError, match="cannot read the tokenizer"):
        WordPieces.read(folder)
