"""The whole job: train a config, evaluate both selected checkpoints (B-LOC, B-CL) on the
test split, write ``RUN/metrics.json`` and ``RUN/report.html``."""

from __future__ import annotations

from pathlib import Path

from wsol.config import RunConfig
from wsol.engine.run import RunEvaluation, evaluate_run
from wsol.engine.trainer import Callbacks, Trainer, TrainResult
from wsol.fileio import write_json

SELECTED = ("best_loc", "best_cls")


def evaluate_selected(run_dir: Path, split: str = "test", callbacks: Callbacks | None = None,
                      checkpoints: tuple[str, ...] = SELECTED, **kw) -> dict[str, RunEvaluation]:
    """Evaluate several checkpoints of a run; writes ``RUN/metrics.json`` with their metrics
    side by side (``{checkpoint: {metric: value}}``)."""
    evals = {name: evaluate_run(run_dir, name, split, callbacks=callbacks, **kw) for name in checkpoints}
    tag = kw.get("tag")
    name = f"metrics-{tag}.json" if tag else "metrics.json"
    write_json(Path(run_dir) / name, {"split": split, **{k: v.result.metrics for k, v in evals.items()}})
    return evals


def train_and_evaluate(cfg: RunConfig, callbacks: Callbacks | None = None, resume: bool = False,
                       report: bool = True) -> tuple[TrainResult, dict[str, RunEvaluation]]:
    result = Trainer(cfg, callbacks=callbacks).fit(resume=resume)
    evals = evaluate_selected(result.run_dir, "test", callbacks)
    if report:
        from wsol.report.html import write_report

        write_report(result.run_dir)
    return result, evals
