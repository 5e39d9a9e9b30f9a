"""The model card (``README.md`` of a model folder), rendered from its config and ``card.json``.

Nothing on the card is written by hand, so a rebuild with the same command reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coder.io.atomic import write_text
from coder.model.folder import CARD_DATA_FILE, CARD_FILE, CONFIG_FILE, ModelCard, ModelConfig

_CODIESP = """- Training data: CodiEsp corpus, CLEF eHealth 2020 Task 1 (Barcelona Supercomputing Center):
  Miranda-Escalada A., Gonzalez-Agirre A., Armengol-Estapé J., Krallinger M. (2020), "Overview of
  automatic clinical coding: annotations, guidelines, and solutions for non-English clinical cases
  at CodiEsp track of CLEF eHealth 2020". Licence CC BY 4.0 (Spanish clinical case reports and their
  English machine translation)."""


def _plm_metrics(metrics: dict[str, Any]) -> str:
    rows = ["| system | notes | MAP | P@5 | P@10 | micro-F1 at thresholds |", "|---|---|---|---|---|---|"]
    for system, values in metrics.items():
        if isinstance(values, dict):
            cells = [f"{values[key]:.4f}" if key in values else "–" for key in ("map", "p@5", "p@10", "micro_f1_at_threshold")]
            rows.append(f"| {system} | {int(values.get('notes', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _evaluation(evaluation: dict[str, Any]) -> str:
    """The whole model's dev figures: a table of ``rows`` ({"ranking", "<metric>": value}) and how they were measured."""
    rows = evaluation.get("rows", [])
    if not rows:
        return "Not measured yet."
    metrics = [key for key in rows[0] if key != "ranking"]
    lines = ["| ranking | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    lines += [f"| {row['ranking']} | " + " | ".join(f"{row[m]:.3f}" if isinstance(row.get(m), float) else str(row.get(m, "–"))
                                                    for m in metrics) + " |" for row in rows]
    notes = [evaluation[key] for key in ("protocol", "command") if evaluation.get(key)]
    return "\n".join(lines) + ("\n\n" + "\n\n".join(notes) if notes else "")


def render_card(config: ModelConfig, card: ModelCard) -> str:
    """The card's Markdown."""
    counts: dict[str, int] = {}
    for label in config.labels:
        counts[label.system] = counts.get(label.system, 0) + 1
    sources = "\n".join(f"- `{s.folder}/`: {s.kind} (`{s.name}`), reads `{s.text_column}`" for s in config.sources)
    rerankers = "\n".join(f"- `{r.folder}/`: combines {', '.join(r.sources)}" for r in config.rerankers)
    if config.rerankers:
        ranking = (f"A reranker per set of sources a dump allows gives each candidate a calibrated probability "
                   f"(the dump's columns choose the set; a skipped source is recorded in the run manifest):\n\n{rerankers}")
    else:
        ranking = "No reranker: PLM-ICD's scores rank the codes and its per-label thresholds decide them."
    variants = "\n".join(
        f"- {variant}: `{info.get('file')}`, kept: {info.get('kept')}, dev MAP: {info.get('dev_map')}"
        for variant, info in card.onnx.items()
    ) or "- none yet: run `coder export` on this folder"
    truncations = ", ".join(f"{system} at {', '.join(map(str, lengths))} characters"
                            for system, lengths in config.truncations.items()) or "none"
    encoder = card.encoder.get("name", "")
    commands = "\n".join(card.training.get("commands", [card.training.get("command", "")]))
    order = "\n".join(f"{i}. {c.stage}: `{c.path}` ({c.type})" for i, c in enumerate(config.components, start=1))
    return f"""# {config.name}

ICD-10-CM (diagnoses) and ICD-10-PCS (procedures) coding model for `coder predict`. This card is
generated from `{CONFIG_FILE}` and `{CARD_DATA_FILE}`; `coder train` and `coder export` rewrite it.

## Components

- `plm_icd/`, `onnx/`: PLM-ICD, {encoder} fine-tuned per {config.chunk_len}-token chunk (at most
  {config.max_chunks} chunks per note) with masked label-wise attention over the joined chunks; reads
  `{config.text_columns.get("encoder")}`. Labels: {len(config.labels)} ({", ".join(f"{s}: {n}" for s, n in counts.items())});
  training codes no ontology or code list knew (left out): {len(card.unknown_codes)}.
{sources}
- Code list: {f"`{config.code_list}`" if config.code_list else "none"}; truncated codes assignable: {truncations}.
- LLM stage: {"settings " + str(config.llm) if config.llm else "off unless `coder predict --llm` asks for it"}.

{ranking}

Ontology release: {config.ontology}

The components in the order a batch meets them (`{CONFIG_FILE}`, `components`):

{order}

## Dev figures of the whole model

{_evaluation(card.evaluation)}

## PLM-ICD dev metrics (epoch {card.dev_metrics.get("epoch", "–")})

MAP as CodiEsp's official scorer computes it, over dev notes with gold codes of the system.
Micro-F1 uses thresholds tuned on these same dev notes (optimistic) and counts every gold code.

{_plm_metrics(card.dev_metrics)}

## ONNX variants

{variants}

A copy of this folder may leave out large variants; `coder export` on the folder writes them again.

## Training

```
{commands}
```

Seed {card.training.get("seed")}; hyperparameters, data hashes and per-epoch history are in `{CARD_DATA_FILE}`.

## Data and licences

{_CODIESP if "codiesp" in config.name.lower() else "- Training data: see the training command above."}
- Encoder weights: {encoder}{" (Apache-2.0)" if "MiniLM" in encoder else ""}.
- Not for unsupervised clinical use: scores rank candidate codes for a human coder.
"""


def write_card(folder: Path, config: ModelConfig, card: ModelCard) -> None:
    write_text(folder / CARD_FILE, render_card(config, card))
