from __future__ import annotations

import polars as pl
import pytest

from coder.errors import UsageError
from coder.train import plm as trainer
from coder.train.plm import TrainingOptions, checkpoint_folder, train

OPTIONS = TrainingOptions(epochs=2, batch_size=4, accumulation=1, chunk_len=16, max_chunks=2, attention_dim=8, patience=5)


@pytest.fixture
def inputs(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    notes, codes = tmp_path / "notes.parquet", tmp_path / "codes.parquet"
    pl.read_parquet(data / "notes.parquet").head(8).write_parquet(notes)
    pl.read_parquet(data / "codes.parquet").write_parquet(codes)
    return {
        "notes": notes, "codes": codes, "dev_notes": notes, "dev_codes": codes,
        "encoder_path": tiny_model_path.parent / "encoder", "encoder_name": "tiny", "options": OPTIONS,
    }


def test_an_interrupted_run_resumes_to_the_same_result(inputs, tmp_path, monkeypatch):
    full = train(out=tmp_path / "full", **inputs)
    uninterrupted = trainer._train_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return uninterrupted(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(out=tmp_path / "resumed", **inputs)
    checkpoint = checkpoint_folder(tmp_path / "resumed")
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json", "tensors.safetensors"]  # no pickle
    assert not any(p.suffix == ".pt" for p in (tmp_path / "resumed").rglob("*"))
    monkeypatch.setattr(trainer, "_train_epoch", uninterrupted)
    resumed = train(out=tmp_path / "resumed", resume=True, **inputs)
    assert resumed.training["history"] == full.training["history"]
    assert resumed.files["plm_icd/model.safetensors"] == full.files["plm_icd/model.safetensors"]
    assert not checkpoint.exists()


def test_resume_without_a_checkpoint_is_refused(inputs, tmp_path):
    with pytest.raises(UsageError, match="no checkpoint at"):
        train(out=tmp_path / "nothing", resume=True, **inputs)
