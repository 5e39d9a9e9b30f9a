from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from coder.model.chunking import WordPieces, chunk_notes, collate
from coder.model.plm_icd import LabelAttention, PlmIcd


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path):
    encoder_dir = str(tiny_model_path.parent / "encoder")
    torch.manual_seed(0)
    model = PlmIcd(encoder=AutoModel.from_pretrained(encoder_dir), n_labels=5, attention_dim=8).eval()
    return model, WordPieces.of(AutoTokenizer.from_pretrained(encoder_dir))


def test_a_note_scores_the_same_alone_and_in_a_padded_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    short, long = chunk_notes(
        ["fever and cough", "the patient was admitted to the hospital " * 6], tokenizer=tokenizer, chunk_len=16, max_chunks=4
    )
    assert short.n_chunks < long.n_chunks
    alone = collate([short], indices=[0], pad_id=0)
    padded = collate([short, long], indices=[0, 1], pad_id=0)
    with torch.no_grad():
        logits_alone, peak_alone = model(torch.from_numpy(alone.input_ids), torch.from_numpy(alone.attention_mask))
        logits_batch, peak_batch = model(torch.from_numpy(padded.input_ids), torch.from_numpy(padded.attention_mask))
    np.testing.assert_allclose(logits_alone[0].numpy(), logits_batch[0].numpy(), atol=1e-5)
    assert torch.equal(peak_alone[0], peak_batch[0])


def test_attention_ignores_padding_tokens():
    torch.manual_seed(0)
    head = LabelAttention(hidden_size=4, attention_dim=3, n_labels=2)
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    noisy = hidden.clone()
    noisy[:, 3:] = 1e6  # whatever padding holds must not matter
    logits, peak = head(hidden, mask)
    logits_noisy, _ = head(noisy, mask)
    torch.testing.assert_close(logits, logits_noisy)
    assert (peak < 3).all()
    assert logits.shape == (1, 2)
