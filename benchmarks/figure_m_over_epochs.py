"""A method's maps over training epochs (weight-map-wsol Fig. 4), from the CAM overlays the
trainer logs to TensorBoard at each validation: one row per logged valpx image (the image,
then its overlay at each validation epoch, left to right).

    python benchmarks/figure_m_over_epochs.py RUN out.png [--rows 3]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (its tb/ holds the overlays)")
    ap.add_argument("out", help="output PNG")
    ap.add_argument("--rows", type=int, default=3)
    args = ap.parse_args()
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(f"{args.run}/tb", size_guidance={"images": 0})
    acc.Reload()
    tags = sorted(t for t in acc.Tags()["images"] if t.startswith("cams/"))[: args.rows]
    if not tags:
        raise SystemExit(f"{args.run}/tb holds no CAM overlays (trained without tensorboard?)")
    rows = []
    for tag in tags:
        frames = [np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")) for e in acc.Images(tag)]
        h, w = frames[0].shape[:2]
        side = w // 3 if w >= 3 * h else w // 2  # panels: image | overlay (| mask)
        rows.append(np.concatenate([frames[0][:, :side]] + [f[:, side:2 * side] for f in frames], axis=1))
    width = min(r.shape[1] for r in rows)
    Image.fromarray(np.concatenate([r[:, :width] for r in rows], axis=0)).quantize(colors=128).save(args.out,
                                                                                         optimize=True)
    print(f"{args.out}: {len(tags)} images, {len(acc.Images(tags[0]))} validations")


if __name__ == "__main__":
    main()
