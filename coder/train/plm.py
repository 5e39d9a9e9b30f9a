"""Fine-tune PLM-ICD on CPU: AdamW, warm-up + linear decay, accumulation, clipping, early stopping on dev MAP.

Each time dev MAP improves, the model folder is rewritten complete (weights, thresholds, config,
card), so the folder is usable whenever training stops. A checkpoint beside the folder
(``<out>.checkpoint/``: safetensors and JSON, no pickle) lets ``--resume`` continue after an
interruption; it is removed when training ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from coder.errors import UsageError
from coder.hashing import file_sha256
from coder.io.atomic import write_json
from coder.io.corpus import Corpus
from coder.model.chunking import ChunkedNote, WordPieces, chunk_notes, collate
from coder.model.folder import (
    CODE_LIST_FILE, CONFIG_FILE, ModelCard, ModelConfig, encoder_record, read_config, read_plm_icd,
)
from coder.model.write import finalize
from coder.model.plm_icd import PlmIcd, predict_proba, save_torch
from coder.ontology import Ontology, canonical_codes, load_ontology
from coder.schema import NOTE_ID
from coder.train.data import LabelSet, build_labels, label_matrix
from coder.metrics import gold_sets, matrix_scores
from coder.train.thresholds import ThresholdTuner, micro_f1
from coder.validate import truncation_levels

logger = logging.getLogger(__name__)

def empty_model_folder(out: Path) -> None:
    """Make ``out`` an empty folder for a new model: a model folder there is replaced; any other
    non-empty folder is refused (a mistyped ``--out`` must not delete someone's files)."""
    if out.exists() and any(out.iterdir()):
        if not (out / CONFIG_FILE).is_file():
            raise UsageError(f"--out {out} is a non-empty folder that is not a coder model folder; choose another --out")
        logger.warning("replacing the model in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def checkpoint_folder(out: Path) -> Path:
    """Where training keeps its checkpoint: beside the model folder, never in it."""
    return out.with_name(f"{out.name}.checkpoint")


@dataclass(frozen=True)
class TrainingOptions:
    """Hyperparameters; recorded in the model config."""

    epochs: int = 12
    batch_size: int = 4  # notes per forward pass
    accumulation: int = 2  # forward passes per optimiser step
    encoder_lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    clip_norm: float = 1.0
    patience: int = 3  # epochs without dev MAP gain before stopping
    seed: int = 13
    chunk_len: int = 128
    max_chunks: int = 24
    attention_dim: int = 256
    eval_batch_size: int = 8
    label_init: str = "descriptions"  # or "random": how the label-wise attention starts (see _describe_labels)


@dataclass(frozen=True)
class Split:
    """Notes tokenised and their targets."""

    note_ids: list[str]
    chunks: list[ChunkedNote]
    targets: np.ndarray  # [n_notes, n_labels]
    gold: dict[str, dict[str, set[str]]]
    truncated: int
    unprocessable: int


def _split(notes: pl.DataFrame, canonical: pl.DataFrame, *, labels: LabelSet, tokenizer, text_column: str, options: TrainingOptions, name: str) -> Split:
    note_ids = notes[NOTE_ID].to_list()
    chunks = chunk_notes(notes[text_column].to_list(), tokenizer=WordPieces.of(tokenizer), chunk_len=options.chunk_len,
                         max_chunks=options.max_chunks)
    canonical = canonical.filter(pl.col(NOTE_ID).is_in(note_ids))
    split = Split(
        note_ids=note_ids,
        chunks=chunks,
        targets=label_matrix(note_ids, canonical, labels=labels.labels),
        gold=gold_sets(canonical),
        truncated=sum(c.truncated for c in chunks),
        unprocessable=sum(c.unprocessable for c in chunks),
    )
    logger.info(
        "%s: %d notes, %d chunks, %d truncated at %d tokens, %d unprocessable (skipped)",
        name, len(chunks), sum(c.n_chunks for c in chunks), split.truncated,
        options.chunk_len * options.max_chunks, split.unprocessable,
    )
    return split


def _epoch_batches(split: Split, *, options: TrainingOptions, epoch: int) -> list[list[int]]:
    """Notes bucketed by chunk count (random order within a length), batch order shuffled; seeded per epoch."""
    rng = np.random.default_rng(options.seed + epoch)
    usable = [i for i, c in enumerate(split.chunks) if not c.unprocessable]
    keys = rng.random(len(usable))
    order = sorted(range(len(usable)), key=lambda k: (split.chunks[usable[k]].n_chunks, keys[k]))
    groups = [[usable[k] for k in order[s : s + options.batch_size]] for s in range(0, len(order), options.batch_size)]
    rng.shuffle(groups)
    return groups


def _optimizer(model: PlmIcd, options: TrainingOptions) -> torch.optim.AdamW:
    groups: list[dict[str, Any]] = []
    for module, lr in ((model.encoder, options.encoder_lr), (model.head, options.head_lr)):
        decay = [p for n, p in module.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
        no_decay = [p for n, p in module.named_parameters() if p.ndim <= 1 or "LayerNorm" in n]
        groups.append({"params": decay, "lr": lr, "weight_decay": options.weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def _schedule(optimizer: torch.optim.Optimizer, *, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _prior_bias(targets: np.ndarray) -> torch.Tensor:
    """Logit of each label's training frequency: rare labels start near 0 probability, not 0.5."""
    rate = np.clip(targets.mean(axis=0), 1e-4, 1 - 1e-4)
    return torch.from_numpy(np.log(rate / (1 - rate)).astype(np.float32))


@dataclass(frozen=True)
class Data:
    """Labels and tokenised splits for one training run."""

    labels: LabelSet
    tokenizer: Any
    train: Split
    dev: Split | None


def _load_data(train: Corpus, dev: Corpus | None, *, text_column: str, encoder_path: Path, ontology: Ontology,
               options: TrainingOptions) -> Data:
    """Tokenise the splits; labels are the training codes the ontology knows (or the code list vouches for)."""
    train_canonical = canonical_codes(train.codes, ontology=ontology)
    labels = build_labels(train_canonical)
    if not labels.labels:
        raise UsageError("the training codes hold no code the ontology knows (pass --codes-file to vouch for others)")
    counts = Counter(label.system for label in labels.labels)
    logger.info("%d labels (%s)", len(labels.labels), ", ".join(f"{s}: {n}" for s, n in counts.items()))
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path))
    split_args = {"labels": labels, "tokenizer": tokenizer, "text_column": text_column, "options": options}
    return Data(labels=labels, tokenizer=tokenizer, train=_split(train.notes, train_canonical, name="train", **split_args),
                dev=_split(dev.notes, canonical_codes(dev.codes, ontology=ontology), name="dev", **split_args) if dev else None)


def _base_config(out: Path, data: Data, *, ontology: Ontology, options: TrainingOptions, text_column: str, encoder_path: Path,
                 encoder_name: str, sources: dict[str, str], command: str, code_list: str | None
                 ) -> tuple[ModelConfig, ModelCard]:
    """The config and card before any epoch: provenance now, thresholds and dev metrics filled in as training goes."""
    splits = {"train": data.train, **({"dev": data.dev} if data.dev else {})}
    provenance = {
        "command": command,
        "seed": options.seed,
        "options": dataclasses.asdict(options),
        "data_sha256": sources,
        "train_notes": len(data.train.note_ids),
        "truncated": {name: split.truncated for name, split in splits.items()},
        "unprocessable": {name: split.unprocessable for name, split in splits.items()},
    }
    config = ModelConfig(
        name=out.name,
        labels=data.labels.labels,
        thresholds=tuple(0.5 for _ in data.labels.labels),
        chunk_len=options.chunk_len,
        max_chunks=options.max_chunks,
        attention_dim=options.attention_dim,
        text_columns={"encoder": text_column},
        # the folder's own copy of the code list, not the path it was trained from (folders travel)
        ontology={**ontology.release, "code_list": code_list} if code_list else dict(ontology.release),
        truncations=truncation_levels([(label.system, label.code) for label in data.labels.labels], ontology=ontology),
    ).with_components(code_list=code_list)
    return config, ModelCard(training=provenance, encoder=encoder_record(encoder_path, name=encoder_name),
                             unknown_codes=data.labels.unknown)


def _dev_metrics(scores: np.ndarray, dev: Split, *, labels) -> dict[str, dict[str, float]]:
    """system -> {map, p@5, p@10, notes} of PLM-ICD's dev scores [n_notes, n_labels]."""
    found = matrix_scores(scores, note_ids=dev.note_ids, labels=[(label.system, label.code) for label in labels], gold=dev.gold)
    return {system: {"map": s.map, "p@5": s.precision_at[5], "p@10": s.precision_at[10], "notes": float(s.notes)}
            for system, s in found.items()}


def _label_key(labels: LabelSet) -> list[tuple[str, str]]:
    return [dataclasses.astuple(label) for label in labels.labels]


def _save_checkpoint(folder: Path, *, model: PlmIcd, optimizer, scheduler, labels: LabelSet, state: dict[str, Any]) -> None:
    """Weights, optimiser moments and the RNG state as safetensors; everything else as JSON."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = {f"model.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()}
    tensors |= {f"optimizer.{index}.{name}": value.contiguous() for index, moments in optimizer_state["state"].items()
                for name, value in moments.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(folder / "tensors.safetensors"))
    write_json(folder / "state.json", {"labels": _label_key(labels), "state": state, "scheduler": scheduler.state_dict(),
                                       "param_groups": optimizer_state["param_groups"]})


def _restore(folder: Path, *, model: PlmIcd, optimizer, scheduler, labels: LabelSet) -> dict[str, Any]:
    """Load a checkpoint into model, optimiser and scheduler; returns the loop state (epoch, best, history)."""
    from safetensors.torch import load_file

    saved = json.loads((folder / "state.json").read_text())
    if [tuple(label) for label in saved["labels"]] != _label_key(labels):
        raise UsageError(f"--resume: {folder} was trained on other labels; start without --resume")
    tensors = load_file(str(folder / "tensors.safetensors"))
    model.load_state_dict({name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")})
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            moments.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(tensors["torch_rng"])
    state = saved["state"]
    logger.info("resumed after epoch %d (best dev MAP %.4f)", state["epoch"], state["best"])
    return state


def train(
    *,
    train: Corpus,
    out: Path,
    dev: Corpus | None = None,
    text_column: str = "text",
    encoder_path: Path,
    encoder_name: str,
    codes_file: Path | None = None,
    options: TrainingOptions = TrainingOptions(),
    resume: bool = False,
    command: str = "",
    sources: dict[str, str] | None = None,
) -> ModelConfig:
    """Train PLM-ICD on the ``train`` corpus (early stopping and thresholds on ``dev``) and write a
    complete model folder to ``out``. ``sources``: the input files and their sha256, for provenance."""
    checkpoint_path = checkpoint_folder(out)
    if resume and not (checkpoint_path / "state.json").is_file():
        raise UsageError(f"--resume: no checkpoint at {checkpoint_path}; start without --resume")
    torch.manual_seed(options.seed)
    ontology = load_ontology(codes_file=codes_file)
    data = _load_data(train, dev, text_column=text_column, encoder_path=encoder_path, ontology=ontology, options=options)
    base, card = _base_config(
        out, data, ontology=ontology, options=options, text_column=text_column, encoder_path=encoder_path,
        encoder_name=encoder_name, sources=sources or {}, command=command, code_list=CODE_LIST_FILE if codes_file else None,
    )
    model = PlmIcd(encoder=AutoModel.from_pretrained(str(encoder_path)), n_labels=len(data.labels.labels), attention_dim=options.attention_dim)
    with torch.no_grad():
        model.head.label_bias.copy_(_prior_bias(data.train.targets))
    if options.label_init == "descriptions" and not resume:
        _describe_labels(model, data.labels, tokenizer=data.tokenizer, ontology=ontology)
    optimizer = _optimizer(model, options)
    total = math.ceil(len(_epoch_batches(data.train, options=options, epoch=0)) / options.accumulation) * options.epochs
    scheduler = _schedule(optimizer, total=total, warmup=max(1, int(options.warmup * total)))
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    if resume:
        state = _restore(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, labels=data.labels)
    else:
        empty_model_folder(out)
        if codes_file is not None:  # predict validates the model's codes with the list it was trained with
            shutil.copyfile(codes_file, out / CODE_LIST_FILE)

    pad_id = data.tokenizer.pad_token_id
    for epoch in range(state["epoch"], options.epochs):
        loss = _train_epoch(model, data.train, optimizer=optimizer, scheduler=scheduler, options=options, epoch=epoch, pad_id=pad_id)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
        scores, improved = None, True
        if data.dev is not None:
            scores = predict_proba(model, data.dev.chunks, batch_size=options.eval_batch_size, pad_id=pad_id)
            record["dev"] = _dev_metrics(scores, data.dev, labels=data.labels.labels)
            mean_map = float(np.mean([m["map"] for m in record["dev"].values()]))
            improved = mean_map > state["best"]
            state["best"] = max(state["best"], mean_map)
        logger.info("epoch %d: loss %.4f, dev MAP %s", epoch + 1, loss, {s: round(m["map"], 4) for s, m in record.get("dev", {}).items()})
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        if improved:
            _write_folder(out, base, card, model=model, tokenizer=data.tokenizer, dev=data.dev, dev_scores=scores, state=state)
        if state["bad_epochs"] >= options.patience:
            logger.info("no dev MAP gain for %d epochs: stopping after epoch %d", options.patience, epoch + 1)
            break
        if epoch + 1 < options.epochs:
            _save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, labels=data.labels, state=state)
    shutil.rmtree(checkpoint_path, ignore_errors=True)
    return read_config(out)


def finished(out: Path, *, sources: dict[str, str], options: TrainingOptions, text_column: str, encoder: dict[str, str],
             codes_file: Path | None) -> bool:
    """Whether ``out`` holds a PLM-ICD whose training ended (no checkpoint left) and whose ONNX files
    were written: ``--resume`` then keeps it and fits the rest of the model again. It must have been
    trained as now: the same input files (``sources``: path -> sha256), ``options``, text column, encoder
    (``encoder_record``) and code list."""
    if checkpoint_folder(out).exists() or not (out / CONFIG_FILE).is_file():
        return False
    config, card = read_plm_icd(out)
    if not card.onnx:
        return False
    trained = {"input files": (card.training.get("data_sha256"), sources),
               "options": (card.training.get("options"), dataclasses.asdict(options)),
               "text column": (config.text_columns.get("encoder"), text_column),
               "encoder": (card.encoder, encoder),
               "code list": (config.ontology.get("code_list_sha256"), file_sha256(codes_file) if codes_file else None)}
    differ = [what for what, (then, now) in trained.items() if then != now]
    if differ:
        raise UsageError(f"--resume: PLM-ICD in {out} was trained with other {' and '.join(differ)}; "
                         "start without --resume")
    return True


def _describe_labels(model: PlmIcd, labels: LabelSet, *, tokenizer, ontology: Ontology, batch_size: int = 64) -> None:
    """Start each label's query (U) and output vector (O) from its code description, mean-pooled by
    the encoder, at the norm of the random start: a label attends to, and scores, the tokens that
    read like its description before it has seen an example, which helps the rare labels most."""
    texts = [ontology.description(label.code, label.system) or label.code for label in labels.labels]
    model.eval()
    pooled = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
            states = model.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled.append((states * mask).sum(1) / mask.sum(1))
        descriptions = torch.cat(pooled)  # [labels, hidden]
        head = model.head
        for weight, direction in ((head.label_weights, descriptions),
                                  (head.label_queries.weight, torch.tanh(head.project(descriptions)))):
            norm = weight.norm(dim=1, keepdim=True).mean()
            weight.copy_(direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-6) * norm)
    model.train()


def _train_epoch(model: PlmIcd, split: Split, *, optimizer, scheduler, options: TrainingOptions, epoch: int, pad_id: int) -> float:
    model.train()
    groups = _epoch_batches(split, options=options, epoch=epoch)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    total = 0.0
    bar = tqdm(groups, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch", file=sys.stderr, dynamic_ncols=True)
    for step, indices in enumerate(bar, start=1):
        batch = collate([split.chunks[i] for i in indices], indices=indices, pad_id=pad_id)
        logits, _ = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        loss = loss_fn(logits, torch.from_numpy(split.targets[indices]))
        (loss / options.accumulation).backward()
        total += loss.item()
        if step % options.accumulation == 0 or step == len(groups):
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{total / step:.4f}")
    return total / max(1, len(groups))


def _write_folder(out: Path, config: ModelConfig, card: ModelCard, *, model: PlmIcd, tokenizer, dev: Split | None,
                  dev_scores: np.ndarray | None, state: dict) -> None:
    """Write weights, thresholds (tuned on dev when given), config and card for the current model."""
    save_torch(out, model=model, tokenizer=tokenizer)
    card = dataclasses.replace(card, training={**card.training, "epochs_run": state["epoch"], "history": state["history"]})
    if dev is not None and dev_scores is not None:
        tuner = ThresholdTuner().fit(dev_scores, dev.targets, systems=config.systems)
        metrics = _dev_metrics(dev_scores, dev, labels=config.labels)
        f1 = micro_f1(tuner.predict(dev_scores), dev.targets, systems=config.systems, gold=dev.gold)
        for system, value in f1.items():
            metrics.setdefault(system, {})["micro_f1_at_threshold"] = value
        config = dataclasses.replace(config, thresholds=tuple(float(t) for t in tuner.thresholds_))
        card = dataclasses.replace(card, dev_metrics={"epoch": state["epoch"], **metrics})
    finalize(out, config, card)
    logger.info("wrote %s (epoch %d)", out, state["epoch"])
