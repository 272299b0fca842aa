"""Cost of minmax_entropy's recursive erasing (min-max-entropy-recursive-erasing.txt A.1, Alg. 1):
peak memory and time of one training step with u = 4 against u = 0, and the cost of one
recursion step against one forward + backward of the localizer M.

A training step is what the engine runs: ``zero_grad → training_step → total.backward``
(no optimiser step, the same for every setting). Settings, on the same random batch:

- ``u0``:      u = 0, the one-pass model of §3;
- ``u4``:      u = 4 with the real trust coefficients (random-init networks: few samples stay
  trusted, so the recursion stops early; ``m_steps`` / ``m_passes`` say how far it went);
- ``u4-all``:  u = 4 with every sample trusted at every step (Ψ = exp(−t/σ)): the worst case,
  five passes of M over the whole batch;
- ``M``:       one forward + backward of M alone (its cross-entropy, Eq. 7): the unit of a
  recursion step.

Bars: peak memory of a u = 4 step within 10% of u = 0 (M's term is backpropagated per step,
so no graph outlives its step); each recursion step ≤ 1.1× one M forward + backward, i.e.
``(t(u4-all) − t(u0)) / 4 ≤ 1.1·t(M)``; the u = 4 / u = 0 time ratio is then what the
recursion's work implies. Steps after t = 0 forward only the samples still trusted, so a
step costs between its share of the batch and a whole-batch pass (a GPU runs a small batch
at a lower throughput): the measured ratio lies between ``(t(u0) + (m_passes − 1)·t(M)) / t(u0)``
(cost ∝ samples) and ``(t(u0) + (m_steps − 1)·t(M)) / t(u0)`` (cost ∝ steps), printed next to
the paper's whole-training ratios (Table 5: 1.83× GlaS, 2.16× CUB5).

Memory, CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
memory allocated before the step (exact: the caching allocator's own accounting). CPU: torch's
CPU allocations are invisible to ``tracemalloc``, and ``getrusage`` max RSS is a lifetime
high-water mark (imports, model build, earlier settings). So each setting runs in a fresh
subprocess with glibc's mmap threshold pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``: every
tensor buffer above it is its own mapping, returned to the kernel when freed, so resident
memory tracks live tensors instead of a heap that only grows); after a warm-up step the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` ← 5, Linux ≥ 4.0) and the step's
peak is ``VmHWM`` after the step minus ``VmRSS`` before it.

    nice -n 10 .venv/bin/python benchmarks/bench_minmax_entropy.py              # CPU: resnet18, 4×224²
    .venv/bin/python benchmarks/bench_minmax_entropy.py --device cuda --backbone resnet50 --batch 8 --size 480
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import wsol.methods.minmax_entropy as mme
from wsol.config import BackboneConfig
from wsol.data.sample import Batch
from wsol.methods.base import TrainState
from wsol.methods.minmax_entropy import MinMaxEntropy, MinMaxEntropyParams

SETTINGS = ("u0", "u4", "u4-all", "M")
PAPER = {"GlaS": 90 / 49, "CUB5": 141 / 65}  # Table 5: training time u = 4 / u = 0
TRUST = mme.trust_coefficients  # the real Eqs. 11-12


def always_trusted(t, logits, labels, ce0, sigma, alive=None):
    """Ψ(t, i) = exp(−t/σ) for every sample (the worst case: the recursion never stops early)."""
    gamma = torch.ones(len(labels), device=logits.device)
    return torch.exp(torch.tensor(-t / sigma)) * gamma, gamma


def build(args: argparse.Namespace, setting: str, device: torch.device) -> tuple[MinMaxEntropy, Batch]:
    torch.manual_seed(0)
    u = 0 if setting in ("u0", "M") else 4
    mme.trust_coefficients = always_trusted if setting == "u4-all" else TRUST
    method = MinMaxEntropy(MinMaxEntropyParams(u=u), BackboneConfig(name=args.backbone), args.classes).to(device)
    method.train()
    g = torch.Generator().manual_seed(1)
    batch = Batch(images=torch.rand(args.batch, 3, args.size, args.size, generator=g),
                  labels=torch.arange(args.batch) % args.classes, image_ids=[str(i) for i in range(args.batch)])
    return method, batch.to(device)


def run_step(method: MinMaxEntropy, batch: Batch, setting: str) -> tuple[float, float]:
    """One step of ``setting``; returns M's ``(steps, passes)`` (passes in full-batch units)."""
    torch.manual_seed(2)  # same dropout masks every run: the same trusted steps every run
    method.zero_grad(set_to_none=True)
    if setting == "M":
        logits, _ = method.localizer(batch.images)
        F.cross_entropy(logits, batch.labels).backward()  # Eq. 7
        return 1.0, 1.0
    terms = method.training_step(batch, TrainState())
    terms["total"].backward()
    return float(terms["m_steps"]), float(terms["m_passes"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, float], dict[str, tuple]]:
    """Median wall time of each setting over ``--repeat`` interleaved rounds (after a warm-up)."""
    built = {s: build(args, s, device) for s in SETTINGS}
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    passes: dict[str, tuple] = {}
    for r in range(args.repeat + 1):
        for s in SETTINGS:
            mme.trust_coefficients = always_trusted if s == "u4-all" else TRUST
            sync(device)
            t0 = time.perf_counter()
            passes[s] = run_step(*built[s], s)
            sync(device)
            if r:
                times[s].append(time.perf_counter() - t0)
    return {s: statistics.median(v) for s, v in times.items()}, passes


# --- memory -------------------------------------------------------------------------------
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_cpu_child(args: argparse.Namespace, setting: str) -> dict:
    method, batch = build(args, setting, torch.device("cpu"))
    run_step(method, batch, setting)  # warm-up: lazy initialisation, thread pools
    method.zero_grad(set_to_none=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    steps, passes = run_step(method, batch, setting)
    return {"peak": _status("VmHWM") - before, "steps": steps, "passes": passes}


def peak_cpu(args: argparse.Namespace, setting: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", setting, "--backbone", args.backbone, "--batch", str(args.batch),
           "--size", str(args.size), "--classes", str(args.classes), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_cuda(args: argparse.Namespace, setting: str, device: torch.device) -> dict:
    method, batch = build(args, setting, device)
    run_step(method, batch, setting)
    method.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    steps, passes = run_step(method, batch, setting)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del method, batch
    torch.cuda.empty_cache()
    return {"peak": peak, "steps": steps, "passes": passes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(peak_cpu_child(args, args.child)))
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"minmax_entropy, {args.backbone}, batch {args.batch}×{args.size}², {args.classes} classes, {name}")

    mem = {s: (peak_cuda(args, s, device) if device.type == "cuda" else peak_cpu(args, s)) for s in SETTINGS}
    mib = {s: m["peak"] / 2**20 for s, m in mem.items()}
    print("\npeak memory of one training step (MiB above the model)")
    print(f"  {'setting':8s} {'MiB':>9s} {'vs u0':>7s} {'M steps':>8s} {'M passes':>9s}")
    for s in SETTINGS:
        print(f"  {s:8s} {mib[s]:9.1f} {mib[s] / mib['u0']:6.2f}× {mem[s]['steps']:8.0f} {mem[s]['passes']:9.2f}")
    worst = max(mib["u4"], mib["u4-all"]) / mib["u0"]
    print(f"  bar: u=4 within 10% of u=0 -> worst {worst:.3f}× {'OK' if worst <= 1.10 else 'MISSED'}")

    t, passes = timings(args, device)
    per_step = (t["u4-all"] - t["u0"]) / 4
    print(f"\ntime of one training step (median of {args.repeat}, ms)")
    print(f"  {'setting':8s} {'ms':>9s} {'vs u0':>7s} {'M steps':>8s} {'M passes':>9s}")
    for s in SETTINGS:
        print(f"  {s:8s} {1e3 * t[s]:9.1f} {t[s] / t['u0']:6.2f}× {passes[s][0]:8.0f} {passes[s][1]:9.2f}")
    print(f"  one recursion step = (u4-all − u0)/4 = {1e3 * per_step:.1f} ms = {per_step / t['M']:.2f}× one M "
          f"forward+backward ({'OK' if per_step <= 1.1 * t['M'] else 'MISSED'}, bar ≤ 1.10×)")
    for s in ("u4", "u4-all"):
        steps, n = passes[s]
        lo, hi = ((t["u0"] + (k - 1) * t["M"]) / t["u0"] for k in (n, steps))
        print(f"  {s}: u=4/u=0 measured {t[s] / t['u0']:.2f}×; implied {lo:.2f}× ({n:.2f} M passes, "
              f"cost ∝ samples) to {hi:.2f}× ({steps:.0f} M steps, cost ∝ steps)")
    print("  paper, Table 5 (whole training, V100): " + ", ".join(f"{k} {v:.2f}×" for k, v in PAPER.items()))


if __name__ == "__main__":
    main()
