"""``coder predict``: check the inputs, plan the run, choose its engine, run it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from coder.engines.local import LocalEngine
from coder.engines.processes import ProcessesEngine
from coder.engines.ray import RayEngine, RayOptions, import_ray
from coder.errors import UsageError
from coder.io.outputs import claim_outputs
from coder.llm.vote import LLMStage, llm_settings
from coder.model.folder import default_model_path, read_config
from coder.assembly import load_model
from coder.run import ModelRecord, PredictOptions, RunSummary, plan_run, run_batches

if TYPE_CHECKING:
    from coder.llm.backends import Backend


def predict_notes(source: str | Path, *, out: Path, model: Path | None = None, device: str = "auto",
                  codes_file: Path | None = None, options: PredictOptions = PredictOptions(), workers: int = 1,
                  ray: RayOptions | None = None, llm_backend: Backend | None = None) -> RunSummary:
    """``coder predict`` on ``model`` (default ``coder.model.folder.default_model_path()``).

    The outputs are checked and locked (``coder.io.outputs.claim_outputs``) and every input file is checked
    against the columns the model's config names (``coder.run.plan_run``) before any model loads: a mistyped
    path, an output that is an input, a run already writing ``out`` or a file without the right columns costs
    seconds. Then the engine: with ``workers`` above 1 worker processes (``coder.engines.processes``), with
    ``ray`` Ray actors (``coder.engines.ray``), each loading its own model with ``device`` while this process
    only describes the run from the folder (``coder.run.ModelRecord.read``); else this process loads the
    model and codes the batches, with the LLM stage when its settings (``options.llm`` over the model
    config's ``llm`` entry) turn it on: it runs in this process only."""
    if ray is not None:
        if workers > 1:
            raise UsageError("--workers is for the local engine; Ray runs one model per actor")
        import_ray()  # a missing Ray fails before anything is read
    with claim_outputs(source, out=out, quarantine=options.quarantine) as outputs:
        folder = model or default_model_path()
        config = read_config(folder)
        plan = plan_run(source, text_columns=config.note_columns, options=options)
        settings = llm_settings(configured=config.llm, given=options.llm)
        if ray is None and workers == 1:
            loaded = load_model(folder, device=device, precision=options.precision, codes_file=codes_file, config=config)
            llm = LLMStage(settings, gate=loaded.gate, backend=llm_backend) if settings.enabled else None
            return run_batches(plan, model=ModelRecord.of(loaded, path=model), outputs=outputs,
                               engine=LocalEngine(loaded, llm), options=options, llm=llm)
        if settings.enabled:
            raise UsageError(f"--llm {settings.backend} runs in one process (--engine local, --workers 1); drop --llm or the other engine")
        # absolute: workers do not share this process's working directory
        folder, codes = folder.resolve(), codes_file.resolve() if codes_file else None
        load = functools.partial(load_model, folder, device=device, precision=options.precision, codes_file=codes)
        engine = ProcessesEngine(load=load, workers=workers) if ray is None else RayEngine(load=load, ray=ray)
        record = ModelRecord.read(folder, config, device=device, precision=options.precision, codes_file=codes)
        return run_batches(plan, model=record, outputs=outputs, engine=engine, options=options)
