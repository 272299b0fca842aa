"""Speed and accuracy of the CRF code (wsol.losses.crf, wsol.postprocess.crf), one run:

(a) dense-CRF post-processing, ours (PyTorch permutohedral lattice, batch of one) vs
    pydensecrf2 (Krähenbühl's C++), "natural" preset, on CPU, for a few image sizes
    (skimage's chelsea resized, a blurred-box CAM): times, ratio, argmax agreement; ours on
    CUDA too when there is a GPU;
(b) the CRF loss (f-cam Eq. B.1) forward+backward at 224², batch 8, ``fast`` (bilateral
    grid) and ``lattice`` (Tang et al.'s operator), vs a stand-in F-CAM decoder
    forward+backward (wsol.nn.decoders.UNetDecoder on ResNet-50 stage shapes — the frozen
    encoder's forward is not included; a small conv net if the decoder module is missing);
(c) the CRF loss's ``fast`` and ``lattice`` vs ``exact`` at 48×48: relative error of R and
    of the gradient w.r.t. the logits, on random smooth images and maps.

    .venv/bin/python benchmarks/bench_crf.py [--sizes 64 128 224] [--batch 8] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from wsol.losses.crf import crf_loss
from wsol.postprocess import PRESETS, dense_crf


def timeit(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median wall time (s) of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def smooth(g: torch.Generator, b: int, c: int, size: int, knots: int = 6) -> torch.Tensor:
    z = torch.rand(b, c, knots, knots, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def box_cam(size: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., size // 6 : 4 * size // 5, size // 4 : 3 * size // 4] = 1
    sigma = size / 16
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1) / sigma) ** 2)
    k = k / k.sum()
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]
    return (m - m.min()) / (m.max() - m.min())


def part_a(sizes: list[int], repeat: int, cuda: bool) -> None:
    from skimage import data, transform

    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        dcrf = None
        print("(a) pydensecrf2 is not installed: timing ours only (pip install pydensecrf2)")
    p = PRESETS["natural"]
    print(f"\n(a) dense CRF, 'natural' preset ({p.iterations} iterations), one image, CPU")
    head = f"{'size':>6} {'ours CPU s':>11} {'pydensecrf s':>13} {'ours/pydcrf':>12} {'agree %':>8}"
    print(head + (f" {'ours CUDA s':>12}" if cuda else ""))
    for s in sizes:
        img8 = np.ascontiguousarray((transform.resize(data.chelsea(), (s, s), anti_aliasing=True) * 255).round())
        img8 = img8.astype(np.uint8)
        images = torch.from_numpy(img8).permute(2, 0, 1)[None].float() / 255
        cam = box_cam(s)
        ours_t = timeit(lambda: dense_crf(images, cam, "natural", normalize=False), torch.device("cpu"), repeat)
        ours = dense_crf(images, cam, "natural", normalize=False)[0].numpy()
        line = f"{s:>6} {ours_t:>11.4f}"
        if dcrf is not None:
            c = cam[0].numpy()
            unary = np.ascontiguousarray(-np.log(np.clip(np.stack([1 - c, c]).reshape(2, -1), p.eps, 1)))

            def run_ref():
                d = dcrf.DenseCRF2D(s, s, 2)
                d.setUnaryEnergy(unary.astype(np.float32))
                d.addPairwiseGaussian(sxy=p.theta_gamma, compat=p.w_smoothness)
                d.addPairwiseBilateral(sxy=p.theta_alpha, srgb=p.theta_beta, rgbim=img8, compat=p.w_appearance)
                return np.array(d.inference(p.iterations))[1].reshape(s, s)

            ref_t = timeit(run_ref, torch.device("cpu"), repeat)
            agree = 100 * ((run_ref() > 0.5) == (ours > 0.5)).mean()
            line += f" {ref_t:>13.4f} {ours_t / ref_t:>12.2f} {agree:>8.2f}"
        else:
            line += f" {'-':>13} {'-':>12} {'-':>8}"
        if cuda:
            dev = torch.device("cuda")
            gi, gc = images.to(dev), cam.to(dev)
            line += f" {timeit(lambda: dense_crf(gi, gc, 'natural'), dev, repeat):>12.4f}"
        print(line)


def stand_in_decoder(device: torch.device, batch: int, size: int):
    """(module, stage features, description): F-CAM's decoder on ResNet-50 (CAM-friendly)
    stage shapes, or a small conv net when wsol.nn.decoders is not there."""
    g = torch.Generator().manual_seed(0)
    try:
        from wsol.nn.decoders import UNetDecoder
    except ImportError:
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 2, 3, padding=1),
            torch.nn.Softmax(dim=1),
        ).to(device)
        x = torch.rand(batch, 3, size, size, generator=g).to(device)
        return (lambda: net(x)), "small conv net (3→64→64→2, 3×3; wsol.nn.decoders not found)"
    channels, strides = [64, 256, 512, 1024, 2048], [2, 4, 8, 8, 8]
    dec = UNetDecoder(channels, strides, out_channels=2, final="softmax2", family="resnet").to(device)
    feats = [torch.randn(batch, c, size // s, size // s, generator=g).to(device) for c, s in zip(channels, strides)]
    n_params = sum(p.numel() for p in dec.parameters()) / 1e6
    return (lambda: dec(feats, (size, size))), f"UNetDecoder on ResNet-50 stages ({n_params:.2f} M params)"


def part_b(device: torch.device, batch: int, repeat: int, size: int = 224) -> None:
    g = torch.Generator().manual_seed(1)
    images = smooth(g, batch, 3, size, knots=20).to(device)
    logits = (smooth(g, batch, 2, size, knots=12) * 8 - 4).to(device)
    forward, what = stand_in_decoder(device, batch, size)

    def decoder_step():
        forward().sum().backward()

    def loss_step(method):
        z = logits.clone().requires_grad_()
        crf_loss(images, z.softmax(1), method=method).backward()

    t_dec = timeit(decoder_step, device, repeat)
    print(f"\n(b) forward+backward at {size}², batch {batch}, {device.type}")
    print(f"    decoder stand-in: {what}: {t_dec:.4f} s")
    for method in ("fast", "lattice"):
        t = timeit(lambda m=method: loss_step(m), device, repeat)
        print(f"    CRF loss {method:>7}: {t:.4f} s   ratio loss/decoder {t / t_dec:.2f}")


def part_c(seeds: int = 4) -> None:
    print("\n(c) CRF loss vs exact at 48×48 (σ_rgb 15, σ_xy 100), random smooth images and maps, batch 4")
    print(f"{'seed':>5} {'fast ΔR/R':>10} {'fast Δ∇':>9} {'lattice R/R_exact':>18} {'lattice Δ∇':>11}")
    worst = [0.0, 0.0]
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        images, logits = smooth(g, 4, 3, 48), smooth(g, 4, 2, 48) * 8 - 4
        res = {}
        for method in ("exact", "fast", "lattice"):
            z = logits.clone().requires_grad_()
            r = crf_loss(images, z.softmax(1), method=method)
            r.backward()
            res[method] = (r.item(), z.grad)
        r_e, g_e = res["exact"]
        fast_r = (res["fast"][0] - r_e) / r_e
        fast_g = ((res["fast"][1] - g_e).norm() / g_e.norm()).item()
        lat_g = ((res["lattice"][1] - g_e).norm() / g_e.norm()).item()
        worst = [max(worst[0], abs(fast_r)), max(worst[1], fast_g)]
        print(f"{seed:>5} {fast_r:>+10.4f} {fast_g:>9.4f} {res['lattice'][0] / r_e:>18.3f} {lat_g:>11.3f}")
    print(
        f"    fast: worst |ΔR|/R = {100 * worst[0]:.2f} % (test bound 2 %), worst ‖Δ∇‖/‖∇‖ = "
        f"{100 * worst[1]:.2f} % (test bound 5 %)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="device for (b): auto, cpu or cuda")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device(
        "cuda" if (args.device == "auto" and cuda) else ("cpu" if args.device == "auto" else args.device)
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name()}" if cuda else ", no GPU")
    )
    if "a" not in args.skip:
        part_a(args.sizes, args.repeat, cuda)
    if "b" not in args.skip:
        part_b(device, args.batch, args.repeat)
    if "c" not in args.skip:
        part_c()


if __name__ == "__main__":
    main()
