"""Speed and memory of the evaluation metrics (issue "evaluation", speed bar).

On N images of S×S (default 2000 × 224²) with random CAM-like maps (7×7 uniform noise
upsampled bilinearly and min-max normalised, as a CAM from a stride-32 network), random
blob masks and 1–3 random GT boxes per image, it times

- the pixel metrics (PixelAccumulator: PxAP + confusion* + Dice/F1 + histograms),
- the box metrics (BoxAccumulator: MaxBoxAcc V1 + MaxBoxAccV2 + top-1/top-5 loc +
  weight-map rule, all in one update),

and compares them with (a) a torchvision ResNet-50 forward pass over the same images
(measured on a subset, scaled per image) and (b) the straightforward NumPy/OpenCV
implementation of the same semantics in ``wsol.metrics.reference`` (one np.histogram per
image; 1000 cv2.threshold + findContours per image and contour mode), also measured on a
subset and scaled per image. The bar: pixel ≤ 5 % and box ≤ 25 % of the forward pass.
Data generation is not timed. Memory: the accumulators' state size after a quarter of the
images and at the end (must be equal).

    nice -n 10 .venv/bin/python benchmarks/bench_metrics.py [--n 2000] [--size 224] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsol.cams import minmax_normalize
from wsol.metrics import BoxAccumulator, PixelAccumulator
from wsol.metrics.reference import reference_box_metrics, reference_pixel_metrics


def make_batch(seed: int, n: int, size: int):
    g = torch.Generator().manual_seed(seed)
    up = dict(size=(size, size), mode="bilinear", align_corners=False)
    cams = minmax_normalize(torch.nn.functional.interpolate(torch.rand(n, 1, 7, 7, generator=g), **up)[:, 0])
    blobs = torch.nn.functional.interpolate(torch.rand(n, 1, 5, 5, generator=g), **up)[:, 0]
    masks = (blobs > 0.6).to(torch.uint8)
    masks[:, 0, 0] = 1  # every image has some ROI pixel
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xy = rng.integers(0, size, size=(k, 2, 2))
        boxes.append(np.concatenate([xy.min(1), xy.max(1)], 1).astype(np.float64))
    logits = torch.randn(n, 200, generator=g)
    labels = torch.randint(0, 200, (n,), generator=g)
    return cams, masks, boxes, logits, labels


def state_bytes(acc) -> int:
    return sum(v.numel() * v.element_size() for v in acc.state_dict().values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=50)
    # 1 thread by default: on a shared 2-core machine, OpenMP threads under contention distort
    # the timings of small torch ops; the forward pass runs with the same setting
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fwd-subset", type=int, default=16, help="images for the ResNet-50 forward timing")
    ap.add_argument("--ref-pixel-subset", type=int, default=100, help="images for the NumPy pixel reference")
    ap.add_argument("--ref-box-subset", type=int, default=8, help="images for the 1000-threshold box reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, size = args.n, args.size
    n_batches = (n + args.batch - 1) // args.batch
    batches = [make_batch(i, min(args.batch, n - i * args.batch), size) for i in range(n_batches)]

    pix = PixelAccumulator(track_regions=False)
    t0 = time.perf_counter()
    pix_state = []
    for i, (cams, masks, _, _, _) in enumerate(batches):
        pix.update(cams, masks)
        if i == len(batches) // 4:
            pix_state.append(state_bytes(pix))
    pm = pix.compute()
    pix.curves()
    t_pix = time.perf_counter() - t0
    pix_state.append(state_bytes(pix))

    box = BoxAccumulator()
    t0 = time.perf_counter()
    box_state = []
    for i, (cams, _, boxes, logits, labels) in enumerate(batches):
        box.update(cams, boxes, logits, labels)
        if i == len(batches) // 4:
            box_state.append(state_bytes(box))
    bm = box.compute()
    box.curves()
    t_box = time.perf_counter() - t0
    box_state.append(state_bytes(box))

    import torchvision

    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.fwd_subset, 3, size, size)
    with torch.no_grad():
        model(x[:2])
        t0 = time.perf_counter()
        for i in range(0, len(x), 8):
            model(x[i : i + 8])
        t_fwd_img = (time.perf_counter() - t0) / len(x)
    t_fwd = t_fwd_img * n

    cams, masks, boxes, logits, labels = make_batch(0, max(args.ref_pixel_subset, args.ref_box_subset), size)
    k = args.ref_pixel_subset
    t0 = time.perf_counter()
    ref_p = reference_pixel_metrics(cams[:k].numpy(), masks[:k].numpy())
    t_ref_pix = (time.perf_counter() - t0) / k * n
    k = args.ref_box_subset
    t0 = time.perf_counter()
    ref_b = reference_box_metrics(cams[:k].numpy(), boxes[:k], logits[:k].numpy(), labels[:k].numpy())
    t_ref_box = (time.perf_counter() - t0) / k * n
    # sanity: same numbers as the fast path on the same subset
    chk_p = PixelAccumulator(track_regions=False)
    chk_p.update(cams[: args.ref_pixel_subset], masks[: args.ref_pixel_subset])
    chk_b = BoxAccumulator()
    chk_b.update(cams[:k], boxes[:k], logits[:k], labels[:k])
    fast_p, fast_b = chk_p.compute(), chk_b.compute()
    agree = all(abs(fast_p[key] - v) < 1e-6 for key, v in ref_p.items()) and all(
        abs(fast_b[key] - v) < 1e-6 for key, v in ref_b.items()
    )

    print(f"images: {n} × {size}², batch {args.batch}, torch threads {args.threads}")
    print(f"ResNet-50 forward: {t_fwd_img * 1e3:.1f} ms/image (measured on {args.fwd_subset} images) "
          f"→ {t_fwd:.1f} s for {n} images (scaled)")
    print(f"pixel metrics (PxAP + confusion* + Dice/F1): {t_pix:.2f} s = {100 * t_pix / t_fwd:.2f} % of the forward "
          f"(bar ≤ 5 %: {'OK' if t_pix <= 0.05 * t_fwd else 'MISSED'}); {1e3 * t_pix / n:.2f} ms/image")
    print(f"box metrics (MaxBoxAcc + V2 + top-k loc + weight-map): {t_box:.2f} s = {100 * t_box / t_fwd:.2f} % of the "
          f"forward (bar ≤ 25 %: {'OK' if t_box <= 0.25 * t_fwd else 'MISSED'}); {1e3 * t_box / n:.2f} ms/image")
    print(f"NumPy reference, pixel (np.histogram per image; {args.ref_pixel_subset} images scaled to {n}): "
          f"{t_ref_pix:.1f} s → fast is {t_ref_pix / t_pix:.1f}× faster")
    print(f"NumPy/OpenCV reference, boxes (1000 threshold+findContours per image and mode; {args.ref_box_subset} "
          f"images scaled to {n}): {t_ref_box:.1f} s → fast is {t_ref_box / t_box:.1f}× faster")
    print(f"fast == reference on the subsets: {agree}")
    print(f"state bytes after 1/4 and all images: pixel {pix_state}, box {box_state} "
          f"({'constant' if len(set(pix_state)) == 1 and len(set(box_state)) == 1 else 'GROWS'})")
    print(f"(values on random maps, for the record: PxAP {pm['pxap']:.2f}, MaxBoxAccV2 {bm['max_box_acc_v2']:.2f})")


if __name__ == "__main__":
    main()
