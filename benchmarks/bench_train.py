"""Training throughput of the engine (issue 19): ratios measured in one run, on one machine.

On the demo config (``configs/datasets/synthetic-glas.yaml`` + ``configs/demo/synthetic-glas.yaml``,
CAM on ResNet-18 at 128², batch 16; the set is synthesised into a temporary folder unless
``--root`` names one):

1. **engine / bare** — the training time of an epoch of ``Trainer.fit`` with the defaults
   (data loading with the default workers, augmentation, the method's training_step, loss
   bookkeeping) against a bare PyTorch loop (``zero_grad → forward → cross-entropy →
   backward → step``) over batches pre-loaded and pre-transformed in memory. Bar: ≤ 1.15×.
   The two are interleaved **step by step** so that both see the same machine load (on a
   shared machine the load moves by 2× within minutes): a progress callback of the real
   ``Trainer.fit`` runs one bare step after each engine step; an engine step is the time
   between two callbacks minus that bare step (the first one includes the workers' start).
   While a bare step runs, the engine's workers may prefetch; they are idle ≥ 99 % of the
   time anyway (see 2.), so this favours the engine by at most that much.
2. **data / model** — images per second the data pipeline alone delivers (the training
   loader with the default workers, iterated without a model) against the images per second
   the model trains on (the bare loop). Bar: ≥ 3×. Also printed: the pipeline in the main
   process (``num_workers: 0``), and the former pipeline (per-sample ops with torch's
   default intra-op threads) for comparison.
3. **bf16 / fp32** — the bare loop's step time with ``torch.autocast(bfloat16)`` against fp32,
   and the same for channels-last (interleaved step by step, each with its own model). With
   ``--amp-epochs N`` also the validation metrics of
   ``N``-epoch runs with ``optim.amp: bf16`` against ``none`` (their difference is the
   accuracy cost of bf16 on the demo).
4. **validation share** — the seconds the engine's epochs spent in validation (valcl + valpx)
   against the whole epoch.

    nice -n 10 .venv/bin/python benchmarks/bench_train.py                   # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --repeats 3 --amp-epochs 4 --json out.json
    .venv/bin/python benchmarks/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from wsol.config import RunConfig, load_config
from wsol.data import synthesize
from wsol.data.registry import build_dataset
from wsol.engine.callbacks import Callbacks
from wsol.engine.loader import available_cores, make_loader, resolve_workers, set_epoch
from wsol.engine.trainer import Trainer, build_model, build_optimizer, seed_everything

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "wsol" / "configs"
DEMO = [CONFIGS / "datasets" / "synthetic-glas.yaml", CONFIGS / "demo" / "synthetic-glas.yaml"]


def demo_config(root: Path, run_dir: Path, device: str, *sets: str) -> RunConfig:
    return load_config(DEMO, [f"data.root={root}", f"run_dir={run_dir}", f"device={device}", *sets])


def preload(cfg: RunConfig, epochs: int = 1) -> list:
    """The training batches of ``epochs`` epochs, loaded and transformed, kept in memory."""
    loader = make_loader(cfg, "train", train=True, seed=cfg.seed)
    out = []
    for e in range(epochs):
        set_epoch(loader, e)
        out += list(loader)
    return out


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def bare_model(cfg: RunConfig, device: torch.device, channels_last: bool = False):
    seed_everything(cfg.seed)
    model, _ = build_model(cfg)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    return model, build_optimizer(cfg, model)


def bare_step(model, opt, b, device: torch.device, amp: torch.dtype | None = None, channels_last: bool = False) -> float:
    """Seconds of one bare training step (the method's forward + CE) on a loaded batch."""
    _sync(device)
    t0 = time.perf_counter()
    x = b.images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = b.labels.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with autocast(device, amp):
        loss = F.cross_entropy(model(x).logits, y)
    loss.backward()
    opt.step()
    _sync(device)
    return time.perf_counter() - t0


class Interleave(Callbacks):
    """Runs one bare step after every engine training step (module doc, 1.)."""

    def __init__(self, cfg: RunConfig, batches: list, device: torch.device):
        self.model, self.opt = bare_model(cfg, device)
        self.batches, self.device, self.k = batches, device, 0
        self.engine: list[float] = []
        self.bare: list[float] = []
        self.t: float | None = None

    def on_stage(self, name: str, total: int) -> None:
        self.t = time.perf_counter() if name.startswith("epoch ") else None  # validation stages are not timed

    def on_advance(self, n: int) -> None:
        if self.t is None:
            return
        self.engine.append(time.perf_counter() - self.t)
        self.bare.append(bare_step(self.model, self.opt, self.batches[self.k % len(self.batches)], self.device))
        self.k += 1
        self.t = time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_rate(cfg: RunConfig, epochs: int = 2) -> float:
    """Images per second of the training loader alone (no model), over ``epochs`` epochs
    (worker start-up included, as in training)."""
    loader = make_loader(cfg, "train", train=True, seed=cfg.seed)
    n = 0
    t0 = time.perf_counter()
    for e in range(epochs):
        set_epoch(loader, e)
        for b in loader:
            n += len(b)
    return n / (time.perf_counter() - t0)


def former_pipeline_rate(cfg: RunConfig, n: int = 64) -> float:
    """Images per second of the former pipeline: per-sample decode + transforms in the main
    process with torch's default intra-op threads (``num_workers: 0`` before issue 19)."""
    ds = build_dataset(cfg.data, "train", train=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        t0 = time.perf_counter()
        for i in range(min(n, len(ds))):
            ds[i]
        return min(n, len(ds)) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def amp_metrics(cfg: RunConfig, epochs: int, tmp: Path) -> dict[str, dict[str, float]]:
    out = {}
    for amp in ("none", "bf16"):
        c = cfg.model_copy(update={"run_dir": str(tmp / f"amp-{amp}"),
                                   "optim": cfg.optim.model_copy(update={"epochs": epochs, "amp": amp})})
        t0 = time.perf_counter()
        res = Trainer(c, overwrite=True).fit()
        last = res.history[-1]
        out[amp] = {"seconds": time.perf_counter() - t0, "valcl/top1_acc": last.get("valcl/top1_acc", float("nan")),
                    "valpx/pxap": last.get("valpx/pxap", float("nan")), "train/total": last["train/total"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="synthetic-glas folder (default: synthesised into a temp folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved engine / bare epochs (fastest kept)")
    ap.add_argument("--amp-epochs", type=int, default=0, help="also train N epochs with amp none and bf16")
    ap.add_argument("--compile", action="store_true",
                    help="also time the bare loop with torch.compile (after one warm-up epoch that compiles)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        root = args.root or synthesize("synthetic-glas", tmp / "synthetic-glas", seed=0)
        cfg = demo_config(root, tmp / "run", args.device)
        steps = len(make_loader(cfg, "train", train=True))
        workers = resolve_workers(cfg.data.num_workers, steps)
        print(f"machine: {available_cores()} cores (affinity), torch {torch.__version__}, "
              f"{torch.get_num_threads()} intra-op threads, device {device}; demo: {steps} steps of "
              f"{cfg.optim.batch_size} images at {cfg.data.image_size}², num_workers auto -> {workers}", flush=True)

        batches = preload(cfg)
        m, o = bare_model(cfg, device)
        for b in batches[:2]:  # warm-up (allocator, oneDNN kernels)
            bare_step(m, o, b, device)
        inter = Interleave(cfg, batches, device)
        engine_val = []
        for r in range(args.repeats):
            c = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 1})})
            t = Trainer(c, callbacks=inter, overwrite=True).fit().timings[0]
            engine_val.append(t["val_s"])
            k = len(inter.engine)
            print(f"  epoch {r + 1}: engine steps {sum(inter.engine[k - steps:]):.2f} s, interleaved bare steps "
                  f"{sum(inter.bare[k - steps:]):.2f} s, validation {t['val_s']:.2f} s", flush=True)
        e_best, b_best = sum(inter.engine) / args.repeats, sum(inter.bare) / args.repeats
        pair_ratio = sorted(e / b for e, b in zip(inter.engine, inter.bare))[len(inter.engine) // 2]
        model_rate = steps * cfg.optim.batch_size / b_best

        data_rate = pipeline_rate(cfg)
        data_rate0 = pipeline_rate(cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 0})}))
        former = former_pipeline_rate(cfg)

        # bf16 / channels-last vs fp32: bare steps on the same batches, interleaved step by step
        m32, o32 = bare_model(cfg, device)
        m16, o16 = bare_model(cfg, device)
        mcl, ocl = bare_model(cfg, device, channels_last=True)
        t32 = t16 = tcl = 0.0
        for _ in range(args.repeats):
            for b in batches:
                t32 += bare_step(m32, o32, b, device)
                t16 += bare_step(m16, o16, b, device, torch.bfloat16)
                tcl += bare_step(mcl, ocl, b, device, None, True)

        figures = {
            "cores": available_cores(), "device": str(device), "num_workers_auto": workers, "steps": steps,
            "engine_epoch_s": e_best, "bare_epoch_s": b_best, "engine_over_bare": e_best / b_best,
            "engine_over_bare_median_step": pair_ratio,
            "data_images_per_s": data_rate, "data_images_per_s_workers0": data_rate0,
            "former_pipeline_images_per_s": former, "model_images_per_s": model_rate,
            "data_over_model": data_rate / model_rate,
            "validation_s": min(engine_val), "validation_share": min(engine_val) / (e_best + min(engine_val)),
            "load_average": os.getloadavg()[0],
            "fp32_epoch_s": t32 / args.repeats, "bf16_epoch_s": t16 / args.repeats, "bf16_speedup": t32 / t16,
            "channels_last_epoch_s": tcl / args.repeats, "channels_last_speedup": t32 / tcl,
        }
        if args.compile:
            mc, oc = bare_model(cfg, device)
            mc.compile()
            t0 = time.perf_counter()
            for b in batches:  # compiles
                bare_step(mc, oc, b, device)
            figures["compile_first_epoch_s"] = time.perf_counter() - t0
            te = tc = 0.0
            for _ in range(args.repeats):
                for b in batches:
                    te += bare_step(m32, o32, b, device)
                    tc += bare_step(mc, oc, b, device)
            figures["compiled_epoch_s"] = tc / args.repeats
            figures["compile_speedup"] = te / tc
        if args.amp_epochs:
            figures["amp_runs"] = amp_metrics(cfg, args.amp_epochs, tmp)

    print(f"engine epoch {e_best:.2f} s vs bare loop {b_best:.2f} s: {e_best / b_best:.3f}× (bar ≤ 1.15; median "
          f"step ratio {pair_ratio:.3f}; load average {figures['load_average']:.1f} on {available_cores()} cores)")
    print(f"data pipeline {data_rate:.0f} img/s ({workers} workers; {data_rate0:.0f} img/s in the main process; "
          f"former pipeline {former:.0f} img/s) vs model {model_rate:.1f} img/s: {data_rate / model_rate:.1f}× "
          "(bar ≥ 3)")
    print(f"bf16 vs fp32 (bare loop, {device}): {figures['bf16_epoch_s']:.2f} s vs {figures['fp32_epoch_s']:.2f} s: "
          f"{figures['bf16_speedup']:.2f}× faster; channels-last {figures['channels_last_speedup']:.2f}×")
    print(f"validation {figures['validation_s']:.2f} s = {100 * figures['validation_share']:.0f}% of an epoch "
          "(valcl + valpx)")
    if "compile_speedup" in figures:
        print(f"torch.compile (bare loop): {figures['compiled_epoch_s']:.2f} s per epoch, "
              f"{figures['compile_speedup']:.2f}× eager (interleaved), after a first epoch of "
              f"{figures['compile_first_epoch_s']:.1f} s")
    if "amp_runs" in figures:
        for k, v in figures["amp_runs"].items():  # type: ignore[union-attr]
            print(f"  amp {k}: {args.amp_epochs} epochs in {v['seconds']:.1f} s, valcl top-1 {v['valcl/top1_acc']:.2f}, "
                  f"valpx PxAP {v['valpx/pxap']:.2f}, train loss {v['train/total']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["engine_over_bare"] <= 1.15 and figures["data_over_model"] >= 3
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
