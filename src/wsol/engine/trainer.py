"""One engine trains every method.

Optimiser and LR schedule from the config (:func:`build_optimizer`, :func:`build_scheduler`;
default SGD with Nesterov momentum, a classifier-head LR multiplier); seeded (same seed ->
same metrics on CPU); per-epoch validation (accuracy on ``valcl``, localisation on
``valpx``); keeps one checkpoint per selection criterion (``best_loc`` = B-LOC, ``best_cls``
= B-CL, and any the method adds, see :mod:`wsol.engine.selection`) plus ``last``; resumable
from ``last``; logs every loss term and metric per epoch to CSV and TensorBoard; writes
``run.json`` so the run can be used without its dataset (:func:`wsol.runs.load_run`).
Human-facing progress goes through :class:`Callbacks` (the CLI draws progress bars); the
library itself only logs.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from wsol.config import RunConfig, dump_config
from wsol.data.registry import build_dataset, get_dataset
from wsol.data.sample import collate
from wsol.engine.callbacks import Callbacks
from wsol.engine.evaluate import Evaluator
from wsol.engine.selection import DEFAULT_CRITERIA, SELECTION, Criterion
from wsol.errors import CheckpointError, WSOLError
from wsol.fileio import atomic_write_text
from wsol.methods.base import Method, TrainState, build_method
from wsol.nn.backbones import IMAGENET_MEAN, IMAGENET_STD
from wsol.runs import (
    HISTORY,
    LAST,
    RunInfo,
    RunLock,
    checkpoint_path,
    load_checkpoint,
    prepare_run_folder,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_run_info,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def make_loader(cfg: RunConfig, split: str, train: bool, seed: int = 0, keep_original: bool = False) -> DataLoader:
    ds = build_dataset(cfg.data, split, train=train, keep_original=keep_original)
    if len(ds) == 0:
        raise WSOLError(f"split {split!r} of {cfg.data.name} at {cfg.data.root} is empty")
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=cfg.optim.batch_size if train else cfg.eval.batch_size,
        shuffle=train,
        drop_last=train and len(ds) > cfg.optim.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        generator=g,
        worker_init_fn=_worker_init,
    )


def build_model(cfg: RunConfig) -> tuple[Method, RunInfo]:
    """The method for this config and the run's description (class names from the dataset)."""
    spec = get_dataset(cfg.data.name)
    class_names = spec.class_names(Path(cfg.data.root), dict(cfg.data.options))
    method = build_method(cfg.model.method, cfg.model.backbone, len(class_names))
    criteria = [*DEFAULT_CRITERIA, *method.selection_criteria]
    info = RunInfo(method=cfg.model.method.name, class_names=list(class_names), loc_kind=spec.loc,
                   image_size=cfg.data.image_size, data_root=str(Path(cfg.data.root).resolve()), dataset=cfg.data.name,
                   normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, selection=criteria,
                   versions=RunInfo.versions_now())
    return method, info


def build_optimizer(cfg: RunConfig, method: Method) -> torch.optim.Optimizer:
    """``optim.name``: SGD (momentum, Nesterov), Adam or AdamW over the method's parameter
    groups (backbone at ``lr``, new layers at ``lr · head_lr_mult``)."""
    o = cfg.optim
    groups = method.param_groups(o.lr, o.head_lr_mult)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)


def lr_factor(cfg: RunConfig, epoch: int) -> float:
    """The LR multiplier after ``epoch`` completed epochs (``sched.*``), before the floor."""
    s, n = cfg.sched, cfg.optim.epochs
    if s.warmup_epochs and epoch < s.warmup_epochs:
        return (epoch + 1) / (s.warmup_epochs + 1)
    e = epoch - s.warmup_epochs
    span = max(n - s.warmup_epochs, 1)
    if s.name == "step":
        return s.gamma ** (e // s.step_size)
    if s.name == "multistep":
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(e, span) / span))
    if s.name == "poly":
        return max(1 - e / span, 0.0) ** s.power
    return 1.0


def build_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule of ``sched.name`` with warm-up and the ``min_lr`` floor; None when
    the LR is constant."""
    s = cfg.sched
    if s.name == "none" and not s.warmup_epochs:
        return None
    def factor(floor: float) -> Callable[[int], float]:
        return lambda epoch: max(lr_factor(cfg, epoch), floor)

    floors = [s.min_lr / g["lr"] if g["lr"] > 0 else 0.0 for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(f) for f in floors])


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    best: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path | str | None = None, callbacks: Callbacks | None = None,
                 overwrite: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.cb = callbacks or Callbacks()
        self.overwrite = overwrite
        self.device = resolve_device(cfg.device)

    def _write_history(self, history: list[dict[str, float]]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.run_dir / HISTORY, buf.getvalue())

    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or continue, ``resume``) into the run folder, which is locked meanwhile;
        a folder holding another run is refused unless the trainer was built with
        ``overwrite=True`` (see :func:`wsol.runs.prepare_run_folder`)."""
        prepare_run_folder(self.run_dir, resume=resume, overwrite=self.overwrite)
        with RunLock(self.run_dir):
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        method, info = build_model(cfg)
        method.to(self.device)
        opt = build_optimizer(cfg, method)
        sched = build_scheduler(cfg, opt)
        criteria = [SELECTION.get(name) for name in info.selection]
        train_loader = make_loader(cfg, "train", train=True, seed=cfg.seed)
        val_loaders = {split: make_loader(cfg, split, train=False)
                       for split in ("valcl", "valpx") if any(c.split == split for c in criteria)}

        history: list[dict[str, float]] = []
        best = {c.name: -math.inf for c in criteria}
        start_epoch = 0
        if resume:
            ck = load_checkpoint(self.run_dir, LAST, map_location=self.device)
            if _resume_key(ck.get("config", "")) != _resume_key(dump_config(cfg)):
                raise CheckpointError(
                    f"{checkpoint_path(self.run_dir, LAST)}: the run was trained with another config; "
                    "resume with the run's own config.yaml (only optim.epochs may change), "
                    "or train into a new run_dir"
                )
            if cfg.optim.epochs < int(ck["epoch"]) + 1:
                raise CheckpointError(
                    f"{self.run_dir}: already trained {int(ck['epoch']) + 1} epochs; --resume can only extend a run "
                    f"(optim.epochs={cfg.optim.epochs} is fewer)"
                )
            method.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            history, best, start_epoch = list(ck["history"]), dict(ck["best"]), int(ck["epoch"]) + 1
            set_rng_state(ck["rng"], train_loader.generator)
            log.info("resumed %s at epoch %d", self.run_dir, start_epoch)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        write_run_info(self.run_dir, info)
        writer = _tensorboard(self.run_dir / "tb")
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                row = self._train_epoch(method, opt, train_loader, epoch)
                if sched is not None:
                    sched.step()
                if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs:
                    row.update(self._validate(method, val_loaders, criteria, info, epoch, best))
                history.append(row)
                for k, v in row.items():
                    if k != "epoch" and writer is not None:
                        writer.add_scalar(k, v, epoch)
                self._write_history(history)
                save_checkpoint(checkpoint_path(self.run_dir, LAST), {
                    "model": method.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "epoch": epoch, "history": history, "best": best, "config": dump_config(cfg),
                    "class_names": info.class_names, "rng": rng_state(train_loader.generator),
                })
                self.cb.on_epoch_end(row)
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(self.run_dir, history, best)

    def _train_epoch(self, method: Method, opt: torch.optim.Optimizer, loader: DataLoader, epoch: int) -> dict:
        method.train()
        method.on_epoch_start(epoch)
        state = TrainState(epoch=epoch, step=epoch * len(loader), num_epochs=self.cfg.optim.epochs)
        sums: dict[str, float] = {}
        n = 0
        self.cb.on_stage(f"epoch {epoch + 1}/{self.cfg.optim.epochs}", len(loader.dataset))  # type: ignore[arg-type]
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            # zero first: a method may backpropagate part of its loss inside training_step
            # (min-max entropy's recursion does, one step at a time) before ``total``
            opt.zero_grad(set_to_none=True)
            terms = method.training_step(batch, state)
            total = terms["total"]
            if not torch.isfinite(total.detach()):
                raise WSOLError(
                    f"epoch {epoch + 1}: loss became {float(total.detach())} (terms: "
                    + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    + "); lower optim.lr or check the data"
                )
            if total.requires_grad:
                total.backward()
            opt.step()
            bs = len(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bs
            n += bs
            state.step += 1
            self.cb.on_advance(bs)
        row: dict[str, float] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update({f"train/{k}": v / max(n, 1) for k, v in sums.items()})
        return row

    def _validate(self, method: Method, loaders: dict[str, DataLoader], criteria: list[Criterion], info: RunInfo,
                  epoch: int, best: dict[str, float]) -> dict[str, float]:
        method.eval()
        metrics: dict[str, dict[str, Any]] = {}
        for split, loader in loaders.items():
            self.cb.on_stage(split, len(loader.dataset))  # type: ignore[arg-type]
            ev = Evaluator(method, loc_kind=info.loc_kind, device=self.device, localize=split == "valpx",
                           label_free_s=any(c.label_free_s and c.split == split for c in criteria))
            metrics[split] = ev.run(loader, progress=self.cb.on_advance).metrics
        for c in criteria:
            score = float(c.score(metrics[c.split], info.loc_kind, self.cfg.eval.selection_metric))
            if c.better(score, best[c.name]):
                best[c.name] = score
                save_checkpoint(checkpoint_path(self.run_dir, c.name), {
                    "model": method.state_dict(), "epoch": epoch, "score": score,
                    "config": dump_config(self.cfg), "class_names": info.class_names,
                })
        row: dict[str, float] = {}
        for split, m in metrics.items():
            row.update({f"{split}/{k}": float(v) for k, v in m.items() if _is_number(v)})
        return row


def _resume_key(config_yaml: str) -> dict:
    """A config as compared on --resume: everything but optim.epochs (a run may be
    extended), the run folder and the data root (a run folder or its data may move)."""
    data = yaml.safe_load(config_yaml) or {}
    data.get("optim", {}).pop("epochs", None)
    data.pop("run_dir", None)
    data.get("data", {}).pop("root", None)
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; stay usable without it
        log.warning("tensorboard not installed (pip install 'wsol[tb]'); logging to CSV only")
        return None
    return SummaryWriter(str(path))
