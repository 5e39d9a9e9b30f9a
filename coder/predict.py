"""``coder predict``: check the inputs, load the model, open the optional LLM stage, run the batches on an engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from coder.engines.local import code_locally
from coder.errors import UsageError
from coder.io.outputs import claim_outputs
from coder.llm.vote import LLMStage, llm_settings
from coder.model.folder import default_model_path, read_config
from coder.model.load import load_model
from coder.run import Engine, PredictOptions, RunSummary, plan_run, run_batches

if TYPE_CHECKING:
    from coder.llm.backends import Backend


def predict_notes(source: str | Path, *, out: Path, model: Path | None = None, device: str = "auto",
                  codes_file: Path | None = None, options: PredictOptions = PredictOptions(), engine: Engine | None = None,
                  llm_backend: Backend | None = None) -> RunSummary:
    """``coder predict``: load the model (default ``coder.model.folder.default_model_path()``), open the
    LLM stage when its settings (``options.llm`` over the model config's ``llm`` entry) turn it on,
    and run the batches. With another ``engine`` (``coder.engines.processes``, ``coder.engines.ray``) the model loaded here only
    describes the run; the LLM stage runs in one process only. The outputs are checked and
    locked (``coder.io.outputs.claim_outputs``) and every input file is checked against the columns the model's
    config names (``coder.run.plan_run``) before the model loads: a mistyped path, an output that is an input,
    a run already writing ``out`` or a file without the right columns costs seconds."""
    with claim_outputs(source, out=out, quarantine=options.quarantine) as outputs:
        folder = model or default_model_path()
        plan = plan_run(source, text_columns=read_config(folder).note_columns, options=options)
        loaded = load_model(folder, device=device, precision=options.precision, codes_file=codes_file)
        settings = llm_settings(configured=loaded.config.llm, given=options.llm)
        if settings.enabled and engine is not None:
            raise UsageError(f"--llm {settings.backend} runs in one process (--engine local, --workers 1); drop --llm or the other engine")
        llm = LLMStage(settings, gate=loaded.gate, backend=llm_backend) if settings.enabled else None
        return run_batches(plan, model=loaded, outputs=outputs, options=options, engine=engine or code_locally, llm=llm,
                           model_path=model)
