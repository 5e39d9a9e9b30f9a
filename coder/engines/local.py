"""The local engine: one batch after another in this process."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import InputPlan, iter_batches
from coder.io.screen import RowScreen
from coder.llm.vote import LLMStage
from coder.run import EngineReport, PredictOptions, code_and_write, stage_seconds

if TYPE_CHECKING:
    from coder.model.load import Model


def code_locally(plan: InputPlan, *, model: Model, parts: PartsFolder, done: dict[int, dict[str, Any]],
                 progress: Progress, options: PredictOptions, llm: LLMStage | None) -> EngineReport:
    """A ``coder.run.Engine``: every batch not in ``done``, in input order, in this process."""
    screen = RowScreen()
    seconds: Counter = Counter()
    fresh_rows = batches = 0
    for batch in iter_batches(plan, batch_size=options.batch_size):
        batches += 1
        if batch.index in done:
            screen.split(batch, text_column=model.scorer.text_column)  # it remembers the done batches' ids
        else:
            done[batch.index] = code_and_write(model, batch, screen=screen, parts=parts, options=options, llm=llm)
            seconds.update(stage_seconds(done[batch.index]))
            fresh_rows += batch.frame.height
        progress.update(batch.frame.height)
    return EngineReport(batches=batches, fresh_rows=fresh_rows, stage_seconds=dict(seconds),
                        execution_provider=model.execution_provider, precision=model.precision, engine={"name": "local"})
