"""The dev figures ``coder train`` records in the model config (and so on its card).

Each comes from components that never saw the scored dev note: the rerankers over PLM-ICD's
scores cross-fitted over five dev folds (each dev note scored by a reranker fitted on the other
four and on the out-of-fold train candidates), over candidates from sources fitted on train and
the other four folds, as the shipped sources are fitted on train and dev. PLM-ICD's best epoch
and thresholds were chosen on dev.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from coder.candidates.features import ABSENT_RANK, LABEL
from coder.metrics import gold_sets, rankings, system_scores
from coder.rerank.reranker import Reranker
from coder.schema import CODE, NOTE_ID, SCORE, SYSTEM
from coder.train.stacking import Stacking, cross_fit, without_plm

PROTOCOL = ("CodiEsp's MAP (mean over the dev notes with gold codes of the system and a prediction) and P@5, from "
            "components that never saw the scored dev note: rerankers over PLM-ICD's scores cross-fitted over 5 "
            "dev folds (each also fitted on the out-of-fold train candidates, PLM-ICD's scores missing there), "
            "scoring candidates from sources fitted on train and the other dev folds (the shipped sources: train "
            "and dev). Dev: {dev_origin}.")


def row(name: str, scored: pl.DataFrame, gold: pl.DataFrame) -> dict[str, Any]:
    """One evaluation row: MAP and P@5 per system of ``scored`` (candidates with ``score``)."""
    out: dict[str, Any] = {"ranking": name}
    for system, found in system_scores(rankings(scored, score=SCORE), gold_sets(gold)).items():
        short = system.removeprefix("ICD-10-")
        out[f"MAP {short}"], out[f"P@5 {short}"] = round(found.map, 4), round(found.precision_at[5], 4)
    return out


def evaluate_stacking(stacking: Stacking, frames: dict[tuple[str, ...], pl.DataFrame], *, held_out: dict[tuple[str, ...], pl.DataFrame],
                   gold: pl.DataFrame, reranker: Reranker, dev_origin: str, degraded_column: str) -> dict[str, Any]:
    """Rows: each source alone (its own score over its own candidates), then the whole model on each
    kind of dump. ``frames``: labelled dev frames per source set (``stacking.dev_frames``), which
    the rerankers learn from; ``held_out``: the same from sources refitted without the scored fold
    (``stacking.refit_dev_frames``), which they score; ``stacking``: what was fitted, whose
    out-of-fold train frames the rerankers also learn from."""
    full = max(frames, key=len)
    rows = [row(f"{name} alone", held_out[full].filter(pl.col(f"{name}_rank") < ABSENT_RANK).with_columns(pl.col(name).alias(SCORE)), gold)
            for name in full]
    for sources, frame in sorted(frames.items(), key=lambda item: -len(item[0])):
        scored = cross_fit(frame, reranker=reranker, extra_rows=without_plm(stacking, sources), held_out=held_out[sources])
        scored = scored.select(NOTE_ID, SYSTEM, CODE, SCORE, LABEL)
        dump = "every text column" if sources == full else f"a dump with only `{degraded_column}`"
        rows.append(row(f"whole model on {dump}: {' + '.join(sources)}, reranked", scored, gold))
    return {"rows": rows, "protocol": PROTOCOL.format(dev_origin=dev_origin)}
