"""Running a suite: plan the (cell × backbone) grid, run each cell through the normal
engine into its own run folder, then write the tables, figures and the HTML page.

Suite folder (``OUT``, default ``runs/bench/<suite>-<dataset>-<budget>``)::

    OUT/suite.json                      what ran: command, dataset, budget, track, cells
    OUT/cells/<cell>/<backbone>/        a run folder (trained cells) with bench.json (the
                                        device that ran it, seconds) and metrics.json; a
                                        baseline's folder holds eval/baseline/ + metrics.json
    OUT/cells/<cell>/any/               a backbone-free baseline (shared by every column)
    OUT/tables/<id>.md, <id>.csv        one per table
    OUT/figures/<id>.png                one per figure
    OUT/README.md, OUT/index.html       every table and figure on one page
    OUT/data/<dataset>/                 the embedded set written for the tiny budget

**Resumable.** A cell whose ``metrics.json`` exists is done and skipped (``metrics.json``
is the last file a cell writes: every checkpoint and extractor column is evaluated first,
then merged into it at once). A cell killed before that is run again: training resumes
from its ``checkpoints/last.pt`` when there is one (:func:`wsol.runs.prepare_run_folder`'s
resume semantics; a run whose config changed meanwhile is retrained), otherwise its own
files are replaced (overwrite semantics). ``overwrite=True`` re-runs every cell. A cell
that fails is recorded in ``suite.json`` (with the error) and the suite goes on; cells that
need it are not run.
"""

from __future__ import annotations

import csv
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from wsol.bench.baselines import COLUMN as BASELINE_COLUMN
from wsol.bench.baselines import build_baseline, evaluate_baseline
from wsol.bench.suites import CONFIGS, BudgetSpec, CellSpec, Suite, load_suite
from wsol.config import RunConfig, apply_overrides, build_config, deep_merge, load_yaml
from wsol.engine.callbacks import Callbacks
from wsol.errors import CheckpointError, ConfigError, WSOLError
from wsol.fileio import write_json
from wsol.runs import HISTORY, METRICS, RunLock, read_json, read_run_info, resolve_device, update_summary

log = logging.getLogger(__name__)

Track = Literal["random", "pretrained", "both", "auto"]
#: the one ImageNet backbone available offline (wsol.nn.efficientnet)
PRETRAINED = ("efficientnet_lite0", "imagenet-offline")
SUITE_JSON = "suite.json"
BENCH_JSON = "bench.json"
COMPLEXITY_JSON = "complexity.json"
ACTIVATIONS_JSON = "activations.json"
#: files the bench writes into a cell folder besides the engine's run files
BENCH_FILES = (BENCH_JSON, COMPLEXITY_JSON)
CLASSIFICATION_METRICS = frozenset({"top1_acc", "cl_error", "top1_loc", "top5_loc", "top5_acc"})

BACKBONE_LABELS = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "vgg16": "VGG-16",
                   "inception_v3": "Inception-v3", "efficientnet_lite0": "EfficientNet-Lite0"}


@dataclass(frozen=True)
class BackboneChoice:
    """A column of the grid: a backbone and its initial weights."""

    name: str
    weights: str = "none"

    @property
    def key(self) -> str:
        return self.name if self.weights == "none" else f"{self.name}-{self.weights}"

    @property
    def label(self) -> str:
        base = BACKBONE_LABELS.get(self.name, self.name)
        return base if self.weights == "none" else f"{base} ({'ImageNet' if self.weights == 'imagenet-offline' else self.weights})"


@dataclass
class CellPlan:
    """One cell of the grid: ``columns`` are the backbone keys it fills (every column for a
    baseline, one otherwise); ``config`` is None when the cell is skipped (``skip`` says why)."""

    cell: CellSpec
    backbone: BackboneChoice
    dir: Path
    columns: list[str]
    config: RunConfig | None = None
    skip: str | None = None
    needs: list[CellPlan] = field(default_factory=list)
    #: the suite's model selection (tables and figures read it; histograms are taken there)
    checkpoint: str = "best_loc"

    @property
    def name(self) -> str:
        return f"{self.cell.id}/{self.dir.name}"


@dataclass
class CellOutcome:
    plan: CellPlan
    status: Literal["ran", "done", "skipped", "failed"]
    seconds: float = 0.0
    error: str = ""


@dataclass
class SuiteRun:
    """What :func:`run_suite` did and wrote."""

    suite: Suite
    out: Path
    dataset: str
    loc_kind: str
    budget: str
    backbones: list[BackboneChoice]
    plans: list[CellPlan]
    outcomes: list[CellOutcome] = field(default_factory=list)
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    skipped_outputs: dict[str, str] = field(default_factory=dict)
    command: str = ""
    device: str = "auto"

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# --- configs ----------------------------------------------------------------------------
def track_backbones(track: Track, budget: BudgetSpec, backbones: Sequence[str] | None = None) -> list[BackboneChoice]:
    """The grid's columns: the random-init backbones (``backbones`` or the budget's), and/or
    EfficientNet-Lite0 with ImageNet weights; ``auto``: both on CUDA, random on CPU."""
    if track == "auto":
        track = "both" if torch.cuda.is_available() else "random"
    if track not in ("random", "pretrained", "both"):
        raise ConfigError(f"--track: expected random, pretrained, both or auto, got {track!r}")
    out: list[BackboneChoice] = []
    if track in ("random", "both"):
        out += [BackboneChoice(b, "none") for b in (backbones or budget.backbones)]
    if track in ("pretrained", "both"):
        out.append(BackboneChoice(*PRETRAINED))
    return list(dict.fromkeys(out))


def set_path(data: dict, dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (sections created; a null section
    becomes a mapping)."""
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def _shipped(name: str) -> dict:
    return load_yaml(CONFIGS / f"{name}.yaml")


def base_config(dataset: str, root: Path, budget: BudgetSpec) -> dict:
    """The dataset file (when shipped) with the budget's sections over it."""
    ds_file = CONFIGS / "datasets" / f"{dataset}.yaml"
    data = load_yaml(ds_file) if ds_file.is_file() else {}
    data = deep_merge(data, {"data": {"name": dataset}})
    data = deep_merge(data, budget.config)
    data = deep_merge(data, budget.datasets.get(dataset, {}))
    set_path(data, "data.root", str(root))
    return data


def cell_config(suite: Suite, cell: CellSpec, *, budget_name: str, dataset: str, root: Path,
                backbone: BackboneChoice, run_dir: Path, deps: dict[str, Path], overrides: Sequence[str] = (),
                device: str = "auto") -> RunConfig:
    """The validated config of one cell (order: see :mod:`wsol.bench.suites`)."""
    budget = suite.budgets[budget_name]
    ds_file = CONFIGS / "datasets" / f"{dataset}.yaml"
    data: dict = load_yaml(ds_file) if ds_file.is_file() else {}
    data = deep_merge(data, {"data": {"name": dataset}})
    files = [_shipped(f) for f in cell.dataset_configs.get(dataset, cell.configs)]
    if budget.use_configs == "model":
        for f in files:
            data = deep_merge(data, {"model": f.get("model") or {}})
        data = deep_merge(data, budget.config)
        data = deep_merge(data, budget.datasets.get(dataset, {}))
    else:
        data = deep_merge(data, budget.config)
        data = deep_merge(data, budget.datasets.get(dataset, {}))
        for f in files:
            data = deep_merge(data, f)
        data = deep_merge(data, cell.paper)
        data = deep_merge(data, cell.paper_datasets.get(dataset, {}))
    if cell.method is not None:
        set_path(data, "model.method.name", cell.method)
    else:
        data.pop("model", None)  # a baseline has no model; the defaults keep the config valid
    data = apply_overrides(data, [*cell.set, *cell.budget_set.get(budget_name, []), *cell.dataset_set.get(dataset, [])])
    if cell.method is not None and cell.uses_backbone:
        set_path(data, "model.backbone", {"name": backbone.name, "weights": backbone.weights,
                                          "cam_friendly": budget.cam_friendly})
    for path, dep in deps.items():
        set_path(data, f"model.method.params.{path}", str(dep.resolve()))
    set_path(data, "data.root", str(root))
    data["run_dir"] = str(run_dir)
    data["device"] = device
    data = apply_overrides(data, list(overrides))
    return build_config(data, f"suite {suite.name}, cell {cell.id} ({backbone.key})")


def selected_cells(suite: Suite, only: Sequence[str] | None = None) -> set[str]:
    """The ids of the cells ``only`` names and of the cells they need (every cell: None)."""
    ids = [c.id for c in suite.cells]
    if not only:
        return set(ids)
    unknown = [c for c in only if c not in ids]
    if unknown:
        raise ConfigError(f"--only: unknown cell(s) {unknown}; cells of suite {suite.name}: {', '.join(ids)}")
    keep = set(only)
    for c in reversed(suite.cells):
        if c.id in keep:
            keep |= set(c.needs.values())
    return keep


def plan_suite(suite: Suite, *, dataset: str, root: Path, budget: str, backbones: list[BackboneChoice], out: Path,
               overrides: Sequence[str] = (), only: Sequence[str] | None = None, device: str = "auto") -> list[CellPlan]:
    """Every (cell × backbone) to run, in dependency order (a cell after the cells it needs).
    ``only``: these cells (and the cells they need)."""
    keep = selected_cells(suite, only)
    cells = [c for c in suite.cells if c.id in keep]
    plans: list[CellPlan] = []
    by_key: dict[tuple[str, str], CellPlan] = {}
    for cell in cells:
        shared = cell.baseline is not None
        choices = [backbones[0]] if (shared or not cell.uses_backbone) else backbones
        for bb in choices:
            folder = "any" if shared else bb.key
            columns = [b.key for b in backbones] if shared else [bb.key]
            plan = CellPlan(cell, bb, out / "cells" / cell.id / folder, columns, checkpoint=suite.checkpoint)
            deps = {path: by_key[(dep, bb.key)] for path, dep in cell.needs.items()}
            plan.needs = list(deps.values())
            if cell.uses_backbone and bb.name in cell.skip_backbones:
                plan.skip = f"{cell.method} cannot take {bb.name} (skip_backbones)"
            elif any(d.skip for d in plan.needs):
                plan.skip = "a stage-1 cell it needs is skipped"
            else:
                plan.config = cell_config(suite, cell, budget_name=budget, dataset=dataset, root=root, backbone=bb,
                                          run_dir=plan.dir, deps={p: d.dir for p, d in deps.items()},
                                          overrides=overrides, device=device)
            plans.append(plan)
            for b in columns:
                by_key[(cell.id, b)] = plan
    return plans


# --- running cells ------------------------------------------------------------------------
def extractor_factory(name: str):
    from wsol.bench.complexity import extractor_localizer

    return lambda method: extractor_localizer(name, method)


HISTOLOGY = ("glas", "camelyon", "ihc")


def crf_preset(preset: str, dataset: str) -> str:
    """``auto``: the min-max-entropy App. B.3.3 preset for the dataset — ``glas`` on
    histology sets, ``natural`` (CUB5, CUB, Oxford flowers) otherwise."""
    if preset != "auto":
        return preset
    return "glas" if any(h in dataset for h in HISTOLOGY) else "natural"


def crf_factory(preset: str):
    """Localiser factory: the method's own CAMs refined by the dense CRF ``preset``
    (min-max-entropy App. B.3.3)."""
    from wsol.postprocess import dense_crf

    def factory(method):
        def localize(images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
            with torch.no_grad():
                cams = method.localize(images, targets)
            return dense_crf(images, cams, preset)

        return localize

    return factory


def table_checkpoint(cell: CellSpec, checkpoint: str) -> str:
    """The checkpoint a table column ``best_loc`` / ``best_cls`` reads for ``cell`` (a cell's
    own B-LOC checkpoint, e.g. the weight map's ``best_s``, replaces ``best_loc``)."""
    if checkpoint == "best_loc" and cell.checkpoint:
        return cell.checkpoint
    return checkpoint


def column_name(cell: CellSpec, checkpoint: str, suffix: str | None = None) -> str:
    if cell.baseline is not None:
        return BASELINE_COLUMN
    ck = table_checkpoint(cell, checkpoint)
    return f"{ck}+{suffix}" if suffix else ck


class _TrainingStages(Callbacks):
    """Forwards the engine's progress to ``inner`` and records the size of its training
    stages (``epoch k/n``): how many images an epoch went over."""

    def __init__(self, inner: Callbacks):
        self.inner = inner
        self.sizes: set[int] = set()

    def on_stage(self, name: str, total: int) -> None:
        if name.startswith("epoch "):
            self.sizes.add(int(total))
        self.inner.on_stage(name, total)

    def on_advance(self, n: int) -> None:
        self.inner.on_advance(n)

    def on_epoch_end(self, row: dict[str, float]) -> None:
        self.inner.on_epoch_end(row)


def _check_train_split(plan: CellPlan, sizes: set[int]) -> None:
    """A method that trains on another split (the FSL U-Net: ``train_split: valpx``) must
    have been trained on it: an engine that ignores ``method.train_split`` would silently
    give the full-supervision numbers under the FSL label."""
    from wsol.data.registry import build_dataset

    cfg = plan.config
    assert cfg is not None
    split = cfg.model.method.params.get("train_split", "train")
    if split == "train" or not sizes:
        return
    expected = len(build_dataset(cfg.data, split))
    if sizes != {expected}:
        # the next attempt must train again, not resume this run
        (plan.dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
        raise WSOLError(
            f"the method trains on {split!r} ({expected} images) but the engine's epochs went over "
            f"{sorted(sizes)} images; this wsol's trainer does not honour Method.train_split (it needs "
            "make_loader(cfg, getattr(method, 'train_split', 'train'), ...) in Trainer._fit)")


def _train(plan: CellPlan, cb: Callbacks, overwrite: bool) -> None:
    from wsol.engine.trainer import Trainer

    cfg = plan.config
    assert cfg is not None
    stages = _TrainingStages(cb)
    resume = (plan.dir / "checkpoints" / "last.pt").is_file() and not overwrite
    try:
        Trainer(cfg, callbacks=stages, overwrite=not resume).fit(resume=resume)
    except CheckpointError as e:
        if not resume:
            raise
        log.warning("cell %s: cannot resume (%s); training it again", plan.name, e)
        Trainer(cfg, callbacks=stages, overwrite=True).fit(resume=False)
    _check_train_split(plan, stages.sizes)


def _evaluate(plan: CellPlan, cb: Callbacks) -> dict[str, dict[str, Any]]:
    """Every kept checkpoint on test, plus the cell's extractor / CRF columns at the
    checkpoints the tables read; the activation histogram when the cell records one."""
    from wsol.engine.pipeline import evaluate_run
    from wsol.runs import load_run

    cell = plan.cell
    info = read_run_info(plan.dir)
    checkpoints = list(info.selection) if info else ["best_loc", "best_cls"]
    read = {table_checkpoint(cell, c) for c in ("best_loc", "best_cls")}
    hist_at = table_checkpoint(cell, plan.checkpoint)
    columns: dict[str, dict[str, Any]] = {}
    for ck in checkpoints:
        run = load_run(plan.dir, ck)
        ev = evaluate_run(plan.dir, ck, "test", callbacks=cb, loaded=run)
        columns[ev.column] = ev.result.metrics
        if ck not in read:
            continue
        for ex in cell.extractors:
            ev = evaluate_run(plan.dir, ck, "test", callbacks=cb, loaded=run, localizer_factory=extractor_factory(ex),
                              tag=ex)
            columns[ev.column] = ev.result.metrics
        if cell.crf:
            preset = crf_preset(cell.crf, run.config.data.name)
            ev = evaluate_run(plan.dir, ck, "test", callbacks=cb, loaded=run, localizer_factory=crf_factory(preset),
                              tag="crf")
            columns[ev.column] = ev.result.metrics
        if cell.histogram and ck == hist_at:
            from wsol.engine.trainer import make_loader

            hist = activation_histogram(run.method, make_loader(run.data_config, "test", train=False), run.device)
            write_json(plan.dir / "eval" / ck / "test" / ACTIVATIONS_JSON, hist)
    return columns


def activation_histogram(model: Any, loader: Any, device: torch.device, bins: int = 50) -> dict[str, Any]:
    """Histogram of the test CAM values (f-cam Fig. 6): every pixel, and the pixels inside
    / outside the masks when the images have masks. ``bins`` equal bins over [0, 1]."""
    from wsol.cams import check_cams

    totals = {k: torch.zeros(bins, dtype=torch.float64) for k in ("all", "fg", "bg")}
    was = model.training
    model.eval()
    try:
        for batch in loader:
            images = batch.images.to(device)
            with torch.no_grad():
                cams = check_cams(model.localize(images, batch.labels.to(device)).detach()).cpu()
            idx = (cams * bins).long().clamp_(0, bins - 1)
            totals["all"] += torch.bincount(idx.flatten(), minlength=bins).double()
            if batch.masks is not None:
                m = batch.masks
                totals["fg"] += torch.bincount(idx[m == 1], minlength=bins).double()
                totals["bg"] += torch.bincount(idx[m == 0], minlength=bins).double()
    finally:
        model.train(was)
    return {"edges": torch.linspace(0, 1, bins + 1).tolist(), **{k: v.tolist() for k, v in totals.items()}}


def _run_cell(plan: CellPlan, cb: Callbacks, overwrite: bool) -> dict[str, dict[str, Any]]:
    cfg = plan.config
    assert cfg is not None
    for name in BENCH_FILES:  # the bench's own files of a previous attempt
        (plan.dir / name).unlink(missing_ok=True)
    if plan.cell.baseline is not None:
        from wsol.data.registry import get_dataset

        spec = get_dataset(cfg.data.name)
        n_classes = len(spec.class_names(cfg.data.root, dict(cfg.data.options)))
        model = build_baseline(plan.cell.baseline, n_classes, plan.cell.sigma)
        res = evaluate_baseline(cfg, plan.dir, model, "test", cb)
        return {BASELINE_COLUMN: res.metrics}
    _train(plan, cb, overwrite)
    return _evaluate(plan, cb)


def run_cell(plan: CellPlan, *, overwrite: bool = False, callbacks: Callbacks | None = None) -> CellOutcome:
    """Run one cell unless it is done (its ``metrics.json`` exists) or skipped."""
    if plan.skip or plan.config is None:
        return CellOutcome(plan, "skipped", error=plan.skip or "")
    if (plan.dir / METRICS).is_file() and not overwrite:
        return CellOutcome(plan, "done")
    cb = callbacks or Callbacks()
    t0 = time.perf_counter()
    columns = _run_cell(plan, cb, overwrite)
    seconds = time.perf_counter() - t0
    from wsol.bench.complexity import device_name

    write_json(plan.dir / BENCH_JSON, {
        "cell": plan.cell.id, "label": plan.cell.display, "method": plan.cell.method or plan.cell.baseline,
        "backbone": plan.backbone.key if plan.cell.baseline is None else "any", "columns": plan.columns,
        "device": device_name(resolve_device(plan.config.device)), "seconds": seconds,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"), "evaluated": sorted(columns),
    })
    update_summary(plan.dir, "test", columns)  # metrics.json: the last file, the cell is done
    return CellOutcome(plan, "ran", seconds)


# --- the suite ------------------------------------------------------------------------------
def default_out(suite: Suite, dataset: str, budget: str) -> Path:
    return Path("runs") / "bench" / f"{suite.name}-{dataset}-{budget}"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise WSOLError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(p.name != ".wsol.lock" for p in out.iterdir()) and not (out / SUITE_JSON).is_file():
        raise WSOLError(f"--out {out} is not empty and holds no wsol suite; wsol will not write into it — "
                        "choose a new folder")


def resolve_root(dataset: str, root: Path | str | None, budget: BudgetSpec, out: Path) -> Path:
    """The data root: ``root``, else the budget's default; an embedded set missing there is
    written (with the budget's ``synth`` size)."""
    from wsol.data import synthesize
    from wsol.data.metadata import has_metadata
    from wsol.data.registry import EMBEDDED

    if root is None:
        root = out / "data" / dataset if budget.data_root == "suite" else Path("data") / dataset
    root = Path(root)
    if dataset in EMBEDDED and not has_metadata(root):
        log.info("writing %s (n=%d, %d²) into %s", dataset, budget.synth.n, budget.synth.size, root)
        synthesize(dataset, root, n=budget.synth.n, size=budget.synth.size, seed=0)
    return root


def run_suite(suite: Suite | str | Path, *, dataset: str | None = None, root: Path | str | None = None,
              budget: str = "tiny", track: Track = "auto", backbones: Sequence[str] | None = None,
              out: Path | str | None = None, overrides: Sequence[str] = (), only: Sequence[str] | None = None,
              overwrite: bool = False, device: str = "auto", callbacks: Callbacks | None = None,
              command: str | None = None) -> SuiteRun:
    """Run ``suite`` (a :class:`Suite`, a shipped name or a YAML path) on ``dataset`` and
    write its tables, figures, ``README.md`` and ``index.html`` into ``out``. See the
    module docstring for resumption; ``overrides`` (``KEY=VALUE``) apply to every cell."""
    from wsol.bench import ensure_registered
    from wsol.data.registry import get_dataset

    ensure_registered()
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    if budget not in suite.budgets:
        raise ConfigError(f"--budget: suite {suite.name} has budgets {', '.join(suite.budgets)}, not {budget!r}")
    dataset = dataset or suite.dataset
    spec = get_dataset(dataset)
    budget_spec = suite.budgets[budget]
    run_ids = selected_cells(suite, only)  # an unknown cell is an error before anything is written
    out = Path(out) if out is not None else default_out(suite, dataset, budget)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    command = command if command is not None else shlex.join(["wsol", *sys.argv[1:]])
    with RunLock(out):
        needs_data = bool(suite.cells) or any(f.kind == "downscale" for f in suite.figures)
        root_path = resolve_root(dataset, root, budget_spec, out) if needs_data else Path(root or "-")
        cols = track_backbones(track, budget_spec, backbones)
        # every cell is planned (the tables show every finished cell of the folder); ``only`` runs a subset
        plans = plan_suite(suite, dataset=dataset, root=root_path, budget=budget, backbones=cols, out=out,
                           overrides=overrides, device=device)
        first = next((p for p in plans if p.config is not None and p.cell.id in run_ids), None)
        if first is not None:  # the data reads (a wrong --root fails here, once, not in every cell)
            from wsol.data.registry import build_dataset

            assert first.config is not None
            build_dataset(first.config.data, "test")
        result = SuiteRun(suite, out, dataset, spec.loc, budget, cols, plans, command=command, device=device)
        _write_suite_json(result, root_path, track)
        failed: set[int] = set()
        for plan in plans:
            if plan.cell.id not in run_ids:
                continue
            if any(id(d) in failed for d in plan.needs):
                outcome = CellOutcome(plan, "failed", error="a stage-1 cell it needs failed")
            else:
                try:
                    outcome = run_cell(plan, overwrite=overwrite, callbacks=callbacks)
                except Exception as e:  # noqa: BLE001 — any cell error is recorded; the other cells still run
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
                    if isinstance(e, WSOLError):
                        msg = str(e).splitlines()[0]
                    log.error("cell %s failed: %s", plan.name, msg, exc_info=not isinstance(e, WSOLError))
                    outcome = CellOutcome(plan, "failed", error=msg)
            if outcome.status == "failed":
                failed.add(id(plan))
            result.outcomes.append(outcome)
            _write_suite_json(result, root_path, track)
        from wsol.bench.outputs import write_outputs

        write_outputs(result)
        _write_suite_json(result, root_path, track)
    return result


def _write_suite_json(result: SuiteRun, root: Path, track: str) -> None:
    from wsol import __version__

    status = {id(o.plan): o for o in result.outcomes}
    cells = []
    for p in result.plans:
        o = status.get(id(p))
        rec = read_bench(p.dir)
        status_ = o.status if o else ("done" if (p.dir / METRICS).is_file() else "not run")
        cells.append({"cell": p.cell.id, "folder": str(p.dir.relative_to(result.out)), "columns": p.columns,
                      "status": status_, "error": (o.error if o else "") or p.skip or "",
                      "device": rec.get("device"), "seconds": rec.get("seconds")})
    write_json(result.out / SUITE_JSON, {
        "suite": result.suite.name, "title": result.suite.title, "dataset": result.dataset, "data_root": str(root),
        "loc_kind": result.loc_kind, "budget": result.budget, "track": track,
        "backbones": [{"key": b.key, "name": b.name, "weights": b.weights} for b in result.backbones],
        "command": result.command, "wsol": __version__, "torch": torch.__version__,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"), "cells": cells,
        "tables": {k: str(v.relative_to(result.out)) for k, v in result.tables.items()},
        "figures": {k: str(v.relative_to(result.out)) for k, v in result.figures.items()},
        "skipped_outputs": result.skipped_outputs,
    })


def read_bench(cell_dir: Path) -> dict[str, Any]:
    path = cell_dir / BENCH_JSON
    return read_json(path) if path.is_file() else {}


def selection_progress(cell_dir: Path, loc_kind: str) -> dict[str, Any] | None:
    """From ``history.csv``: the epoch at which the validation localisation metric (valpx
    PxAP / MaxBoxAccV2) peaked, its value there and at the last epoch — to tell whether a
    budget was long enough for it to stop rising."""
    path = cell_dir / HISTORY
    if not path.is_file():
        return None
    key = "valpx/pxap" if loc_kind == "mask" else "valpx/max_box_acc_v2"
    rows = [r for r in csv.DictReader(path.open()) if r.get(key) not in (None, "")]
    if not rows:
        return None
    vals = [float(r[key]) for r in rows]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))
    return {"metric": key, "best_epoch": int(float(rows[best]["epoch"])), "best": vals[best],
            "last_epoch": int(float(rows[-1]["epoch"])), "last": vals[-1]}


def finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def load_metrics(cell_dir: Path) -> dict[str, dict[str, Any]]:
    path = cell_dir / METRICS
    if not path.is_file():
        return {}
    data = read_json(path)
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def load_curves(cell_dir: Path, column: str) -> dict[str, Any] | None:
    path = cell_dir / "eval" / column / "test" / "curves.json"
    return read_json(path) if path.is_file() else None


def load_activations(cell_dir: Path, column: str) -> dict[str, Any] | None:
    path = cell_dir / "eval" / column / "test" / ACTIVATIONS_JSON
    return read_json(path) if path.is_file() else None
