"""Training cost of each method against CAM (issue 15: "the training-time ratio of each
against CAM; ACoL and SPG add branches").

One training step = ``training_step`` (forward, the method's own losses) + backward + an SGD
step, on the same random batch, through the same code the engine runs. The methods are timed
round-robin (one step of each, repeated), so a change of the machine's load hits them all
alike; the script prints the median step time of each and its ratio to CAM's.

    python benchmarks/bench_methods.py                        # ResNet-50 (CAM-friendly), 224², batch 4
    python benchmarks/bench_methods.py --backbone vgg16 --methods cam,acol,spg --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.methods import METHODS, build_method
from wsol.methods.base import TrainState

REFINEMENT = ["cam", "has", "acol", "spg", "adl", "cutmix", "tscam"]


def one_step(method, opt, batch: Batch, state: TrainState) -> None:
    opt.zero_grad(set_to_none=True)
    terms = method.training_step(batch, state)
    if terms["total"].requires_grad:  # methods that backpropagate inside training_step return a detached total
        terms["total"].backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(REFINEMENT))
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "cam" not in names:
        names.insert(0, "cam")
    g = torch.Generator().manual_seed(0)
    n = args.batch
    batch = Batch(images=torch.rand(n, 3, args.size, args.size, generator=g),
                  labels=torch.arange(n) % args.classes, image_ids=[str(i) for i in range(n)])
    models = {}
    for name in names:
        METHODS.get(name)  # a clear error on a typo
        torch.manual_seed(0)
        m = build_method(MethodConfig(name=name), BackboneConfig(name=args.backbone), args.classes).train()
        models[name] = (m, torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.warmup + args.repeats):
        for name, (m, opt) in models.items():
            m.on_epoch_start(r)
            t0 = time.perf_counter()
            one_step(m, opt, batch, TrainState(epoch=r, step=r, num_epochs=args.warmup + args.repeats))
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    print(f"backbone {args.backbone} (CAM-friendly), {args.size}², batch {n}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} steps (round-robin)")
    base = statistics.median(times["cam"])
    print(f"{'method':<16}{'step (s)':>10}{'× CAM':>8}")
    for name in names:
        t = statistics.median(times[name])
        note = "  (DeiT-S: its own backbone)" if name == "tscam" else ""
        print(f"{name:<16}{t:>10.3f}{t / base:>8.2f}{note}")


if __name__ == "__main__":
    main()
