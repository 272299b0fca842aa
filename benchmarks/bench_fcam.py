"""F-CAM benchmarks (f-cam.txt App. E, F), one run, figures side by side:

(a) inference: F-CAM's CAM (``FCAM.localize``: one encoder pass with the stage taps + the
    decoder, S² at full resolution) vs our Grad-CAM (``wsol.explain``, target layer4, CAM
    upsampled to the input) on the same classifier (a ``cam`` method, random init, eval) and
    the same batch, at batch 1 (Table F.4's setting) and ``--batch``; both get channels-last
    input (our extractors convert to it). Ratio F-CAM / Grad-CAM; the bar is ≤ 1.0 (Table
    F.4: F-CAM is faster than the gradient CAMs). The classifier's bare forward and the
    multiply-accumulates of the encoder and decoder are printed for reference;
(b) training cost of the CRF term: ``crf_loss`` (f-cam Eq. B.1) forward + backward at
    ``--size``², batch ``--batch`` on synthetic-glas images, with the ``lattice`` operator
    (F-CAM's default here) and ``fast``, vs the decoder's forward + backward on the same
    batch (encoder features precomputed: the encoder is frozen in F-CAM). Bar ≤ 1.0;
(c) App. E simulation: the true masks of the embedded synthetic-glas test set at
    ``--size``², down-scaled by z ∈ {1, 2, 4, 8, 16, 32} and up-scaled back (bilinear, as
    Fig. E.4), min-max normalised, scored with PxAP (``wsol.metrics.pixel_metrics``): the
    upper bound a CAM of stride z can reach (Fig. D.3).

Times are the best of ``--repeat`` interleaved rounds after a warm-up.

    .venv/bin/python benchmarks/bench_fcam.py [--device auto] [--batch 8] [--size 224] [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import wsol.methods.fcam  # noqa: F401  (registers fcam)
from wsol.cams import to_cam
from wsol.config import BackboneConfig, DataConfig, MethodConfig
from wsol.data import synthesize
from wsol.data.registry import build_dataset
from wsol.explain.registry import build_extractor
from wsol.losses.crf import crf_loss
from wsol.methods.base import build_method
from wsol.metrics.pixel import pixel_metrics


def best_time(entries: dict[str, Callable[[], object]], repeat: int, device: torch.device) -> dict[str, float]:
    """Best wall time (s) of each entry over ``repeat`` round-robin rounds after a warm-up."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in entries.values():
        fn()
    best = {k: float("inf") for k in entries}
    for _ in range(repeat):
        for k, fn in entries.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def glas_images(n: int, size: int, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of the synthetic-glas test split at ``size``² (n training images)."""
    synthesize("synthetic-glas", root, n=n, size=size, seed=0)
    ds = build_dataset(DataConfig(name="synthetic-glas", root=str(root), image_size=size), "test", train=False)
    samples = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["mask"] for s in samples])


def macs(fn: Callable[[], object]) -> float:
    """Multiply-accumulates (G) of one call (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2e9


def part_a(args, device: torch.device, images: torch.Tensor) -> None:
    bb = BackboneConfig(name=args.backbone, cam_friendly=not args.no_cam_friendly)
    m = build_method(MethodConfig(name="fcam", params={}), bb, args.classes).to(device).eval()
    clf = m.classifier
    gradcam = build_extractor("gradcam", clf, f"backbone.{clf.backbone.default_layer}")
    n_dec = sum(p.numel() for p in m.decoder.parameters()) / 1e6
    n_cls = sum(p.numel() for p in clf.parameters()) / 1e6
    one = images[:1].to(device)
    enc_macs = macs(lambda: clf.backbone.forward_stages(one))
    stages = clf.backbone.forward_stages(one)
    dec_macs = macs(lambda: m.decode(stages, tuple(one.shape[-2:])))
    print(f"\n(a) inference, {args.backbone} (cam_friendly={not args.no_cam_friendly}), {one.shape[-1]}², "
          f"{device.type}: classifier {n_cls:.1f} M params, decoder {n_dec:.2f} M (Table F.4: ≈9 M); per image "
          f"encoder {enc_macs:.1f} GMAC, decoder {dec_macs:.1f} GMAC")
    print("    F-CAM = encoder (stage taps) + decoder; Grad-CAM = forward + backward from the score to layer4 "
          "(GAP + fc only); both get channels-last input")
    print(f"{'batch':>6} {'F-CAM ms':>10} {'Grad-CAM ms':>12} {'forward ms':>11} {'F-CAM/Grad-CAM':>15} {'bar':>6}")
    for b in sorted({1, args.batch}):
        x = images[:b].to(device).contiguous(memory_format=torch.channels_last)
        targets = torch.arange(b, device=device) % args.classes

        def fcam() -> object:
            with torch.inference_mode():
                return m.localize(x)

        def bare() -> object:
            with torch.inference_mode():
                return clf(x).logits

        t = best_time({"fcam": fcam, "gradcam": lambda: gradcam(x, targets), "forward": bare}, args.repeat, device)
        r = t["fcam"] / t["gradcam"]
        print(f"{b:6d} {t['fcam'] * 1e3:10.1f} {t['gradcam'] * 1e3:12.1f} {t['forward'] * 1e3:11.1f} {r:15.2f} "
              f"{'ok' if r <= 1.0 else 'MISS':>6}")


def part_b(args, device: torch.device, images: torch.Tensor) -> None:
    bb = BackboneConfig(name=args.backbone, cam_friendly=not args.no_cam_friendly)
    m = build_method(MethodConfig(name="fcam", params={}), bb, args.classes).to(device).train()
    x = images[: args.batch].to(device)
    size = (x.shape[-2], x.shape[-1])
    with torch.no_grad():
        stages = [s.detach() for s in m.classifier.backbone.forward_stages(x)]
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(len(x), 2, *size, generator=g)).to(device)

    def decoder() -> None:
        m.decoder.zero_grad(set_to_none=True)
        m.decode(stages, size).square().mean().backward()

    def crf(method: str) -> Callable[[], None]:
        def run() -> None:
            lg = logits.clone().requires_grad_(True)
            crf_loss(x, torch.softmax(lg, 1), method=method).backward()
        return run

    t = best_time({"decoder": decoder, "lattice": crf("lattice"), "fast": crf("fast")}, args.repeat, device)
    print(f"\n(b) CRF loss forward+backward vs the decoder's, batch {len(x)}, {size[0]}², {device.type}")
    print(f"{'decoder ms':>11} {'CRF lattice ms':>15} {'CRF fast ms':>12} {'lattice/dec':>12} {'fast/dec':>9} {'bar':>6}")
    rl, rf = t["lattice"] / t["decoder"], t["fast"] / t["decoder"]
    print(f"{t['decoder'] * 1e3:11.1f} {t['lattice'] * 1e3:15.1f} {t['fast'] * 1e3:12.1f} {rl:12.2f} {rf:9.2f} "
          f"{'ok' if rl <= 1.0 else 'MISS':>6}")


def part_c(masks: torch.Tensor, antialias: bool) -> None:
    size = masks.shape[-1]
    gt = (masks == 1).float()[:, None]
    print(f"\n(c) App. E: PxAP of the true masks down-scaled by z and up-scaled back (bilinear"
          f"{', antialiased' if antialias else ''}), {len(masks)} synthetic-glas test masks at {size}², "
          f"foreground {100 * float(gt.mean()):.1f} %")
    print(f"{'z':>4} {'CAM size':>9} {'PxAP':>7} {'mIoU':>7}")
    for z in (1, 2, 4, 8, 16, 32):
        low = F.interpolate(gt, size=(size // z, size // z), mode="bilinear", align_corners=False, antialias=antialias)
        cam = to_cam(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0])
        m = pixel_metrics(cam, masks)
        print(f"{z:4d} {size // z:>6}²  {m['pxap']:7.2f} {m['miou']:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (parts a and b)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--no-cam-friendly", action="store_true", help="plain strides (default: the WSOL protocol's)")
    ap.add_argument("--classes", type=int, default=200, help="classifier classes (Table F.4: 200)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--antialias", action="store_true", help="(c): antialiased down-scaling")
    ap.add_argument("--sim-n", type=int, default=64, help="(c): synthetic-glas size parameter n (≈ test masks)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = glas_images(max(args.sim_n, args.batch), args.size, Path(tmp) / "synthetic-glas")
    while len(images) < args.batch:
        images = torch.cat([images, images])
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    if "a" not in args.skip:
        part_a(args, device, images)
    if "b" not in args.skip:
        part_b(args, device, images)
    if "c" not in args.skip:
        part_c(masks, args.antialias)


if __name__ == "__main__":
    main()
