"""CAMs for arbitrary image files with a trained run (``wsol cam``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsol.cams import model_logits
from wsol.data.records import Record, load_sample
from wsol.data.transforms import build_transform
from wsol.engine.pipeline import LocalizerFactory
from wsol.errors import WSOLError
from wsol.report.overlay import heatmap, overlay, save_png
from wsol.runs import load_run


def _target_id(target: str | None, class_names: list[str]) -> int | None:
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    raise WSOLError(f"--target: unknown class {target!r}; valid: {', '.join(class_names)} (or an id)")


def output_stems(images: list[Path]) -> list[str]:
    """One distinct output name per input: the file stem, prefixed by its folder (then an
    index) when two inputs share a stem — ``a/x.png`` and ``b/x.png`` never overwrite."""
    stems = [Path(p).stem for p in images]
    out = [s if stems.count(s) == 1 else f"{Path(p).parent.name}_{s}" for p, s in zip(images, stems)]
    return [s if out.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(out)]


def cam_images(run_dir: Path, images: list[Path], out: Path, *, checkpoint: str = "best_loc",
               target: str | None = None, localizer_factory: LocalizerFactory | None = None) -> list[dict]:
    """Predict each image, compute its CAM (for ``target`` or the predicted class) at the
    model's input size, and write ``<stem>_heatmap.png`` and ``<stem>_overlay.png``. Needs
    only the run folder (not its dataset)."""
    run = load_run(Path(run_dir), checkpoint)
    method, class_names, device = run.method, run.class_names, run.device
    localize = localizer_factory(method) if localizer_factory is not None else method.localize
    transform = build_transform(run.config.data, train=False)
    tid = _target_id(target, class_names)
    stems = output_stems(images)
    rows = []
    for path, stem in zip(images, stems):
        sample = transform(load_sample(Record(image_id=path.name, image_path=Path(path), label=0)))
        x = sample["image"][None].to(device)
        with torch.no_grad():
            prob = model_logits(method(x)).softmax(1)[0]
        pred = int(prob.argmax())
        t = torch.tensor([pred if tid is None else tid], device=device)
        cam = localize(x, t)[0].detach().cpu().numpy()
        img = (sample["image"].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        hm, ov = Path(out) / f"{stem}_heatmap.png", Path(out) / f"{stem}_overlay.png"
        save_png(hm, heatmap(cam))
        save_png(ov, overlay(img, cam))
        rows.append({"image": str(path), "predicted": class_names[pred], "prob": float(prob[pred]),
                     "target": class_names[int(t)], "heatmap": str(hm), "overlay": str(ov)})
    return rows
