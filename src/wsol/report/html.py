"""Self-contained HTML report of a run (inline PNGs, inline CSS, no network): config,
metrics table of every evaluated column (checkpoints, and checkpoints seen through an
extractor; checkpoints of the same epoch shown once), training curves, and per column the
pixel precision–recall curve, the CAM value histograms and a gallery of the best, median
and worst test images by per-image IoU (CAM over the image; boxes drawn on box sets). A
damaged file of the run folder is one CheckpointError naming it. Built from what the run folder holds, so
``wsol report RUN`` rebuilds it at any time."""

from __future__ import annotations

import base64
import csv
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from wsol.errors import CheckpointError
from wsol.fileio import atomic_write_text
from wsol.report import figures
from wsol.runs import eval_dir, load_run_config, read_json, read_run_info, summary_path

ROWS = [
    ("top1_acc", "Classification accuracy (%)"), ("top5_acc", "Top-5 accuracy (%)"), ("pxap", "PxAP"), ("tp_star", "TP*"), ("fn_star", "FN*"),
    ("fp_star", "FP*"), ("tn_star", "TN*"), ("dice_fg_pooled", "Dice+ (pooled, τ*)"),
    ("dice_bg_pooled", "Dice− (pooled, τ*)"), ("f1_fg_mean", "F1+ (mean, τ=0.5)"), ("f1_bg_mean", "F1− (mean, τ=0.5)"),
    ("pr_auc_fg", "PR-AUC+ (per-image mean, Fig. 6)"), ("pr_auc_bg", "PR-AUC− (per-image mean, Fig. 6)"),
    ("tau", "τ* (from valpx)"), ("max_box_acc", "MaxBoxAcc"), ("max_box_acc_v2", "MaxBoxAccV2"),
    ("top1_loc", "top-1 loc"), ("top5_loc", "top-5 loc"), ("fg_fraction", "foreground fraction (%)"),
    ("epoch", "selected epoch"),
]
#: rows that mean nothing with five classes or fewer (top-5 is then always right)
TOP5 = ("top5_acc", "top5_loc")


def table_rows(n_classes: int | None) -> list[tuple[str, str]]:
    """The metric rows to show: top-5 rows only with more than five classes."""
    return [(k, label) for k, label in ROWS if n_classes is None or n_classes > 5 or k not in TOP5]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
img{max-width:100%;display:block;margin:.5em 0}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.muted{color:#777;font-size:.9em}
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p class='muted'>({html.escape(alt)}: nothing to show)</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "tau":
        return f"{v:.3f}"
    return f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """``RUN/history.csv`` as rows of floats; a damaged file is a CheckpointError naming it."""
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return [{k: float(v) for k, v in row.items() if k is not None and v not in ("", None)}
                    for row in csv.DictReader(f)]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: damaged history ({e}); it is rewritten by training "
                              "(`wsol train ... --resume`)") from None


def _read_dict(path: Path, what: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged {what} (expected a JSON object, found {type(data).__name__}); "
                              "re-run `wsol evaluate` to rewrite it")
    return data


def _load_eval(run_dir: Path, column: str, split: str) -> dict | None:
    d = eval_dir(run_dir, column, split)
    if not (d / "metrics.json").is_file():
        return None
    out: dict[str, Any] = {"metrics": _read_dict(d / "metrics.json", "metrics")}
    out["curves"] = _read_dict(d / "curves.json", "curves") if (d / "curves.json").is_file() else {}
    g = d / "gallery.npz"
    out["gallery"] = load_gallery(g) if g.is_file() else []
    return out


def load_gallery(path: Path) -> list[dict]:
    """``gallery.npz`` (written by the engine) as a list of items; anything damaged (not a
    zip, missing or pickled entries) is a CheckpointError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n"])
            items = []
            for i in range(n):
                it = {"image": z[f"image_{i}"], "cam": z[f"cam_{i}"], "label": int(z[f"label_{i}"]),
                      "image_id": str(z[f"id_{i}"])}
                it["mask"] = z[f"mask_{i}"] if f"mask_{i}" in z else None
                it["boxes"] = z[f"boxes_{i}"] if f"boxes_{i}" in z else None
                for key in ("iou", "rank"):  # chosen over the whole split by the engine (optional)
                    if f"{key}_{i}" in z:
                        it[key] = float(z[f"{key}_{i}"]) if key == "iou" else str(z[f"{key}_{i}"])
                items.append(it)
    except Exception as e:  # BadZipFile, OSError, ValueError (pickled data), KeyError, EOFError, ...
        raise CheckpointError(f"{path}: damaged gallery ({type(e).__name__}: {e}); re-run `wsol evaluate` "
                              "to rewrite it") from None
    return items


def evaluated_columns(run_dir: Path, split: str) -> list[str]:
    """The columns evaluated on ``split``: every column of the split's summary (checkpoints
    and extractor evaluations, in its order), then any other evaluated folder."""
    path = summary_path(run_dir, split)
    summary = _read_dict(path, "summary") if path.is_file() else {}
    cols = [k for k, v in summary.items() if isinstance(v, dict)]
    found = sorted(p.parent.parent.name for p in (run_dir / "eval").glob(f"*/{split}/metrics.json"))
    return cols + [c for c in found if c not in cols]


def merge_same_epoch(evals: dict[str, dict]) -> dict[str, dict]:
    """Columns that are the same model seen the same way — checkpoints saved at the same
    epoch (best_loc and best_cls picking one epoch), with the same extractor — become one
    column named ``best_loc = best_cls`` (its numbers are those of the first)."""
    groups: dict[tuple, list[str]] = {}
    for name, e in evals.items():
        ckpt, _, tag = name.partition("+")
        epoch = e["metrics"].get("epoch")
        key = (tag, epoch) if epoch is not None else (tag, name)
        groups.setdefault(key, []).append(name)
    out: dict[str, dict] = {}
    for names in groups.values():
        tag = names[0].partition("+")[2]
        ckpts = [n.partition("+")[0] for n in names]
        label = " = ".join(ckpts) + (f"+{tag}" if tag else "")
        out[label] = evals[names[0]]
    return out


def write_report(run_dir: Path | str, split: str = "test", columns: tuple[str, ...] | None = None) -> Path:
    """Write ``RUN/report.html`` from the run folder's config, history and evaluations
    (every evaluated column of ``split`` unless ``columns`` is given). Needs only the run
    folder: class names come from ``run.json``."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    cols = columns if columns is not None else evaluated_columns(run_dir, split)
    evals = {c: e for c in cols if (e := _load_eval(run_dir, c, split)) is not None}
    if not evals:
        raise CheckpointError(f"{run_dir}: no evaluation on {split!r} found; run `wsol evaluate {run_dir}` first")
    evals = merge_same_epoch(evals)
    info = read_run_info(run_dir)
    class_names = info.class_names if info is not None else None

    title = f"wsol — {cfg.model.method.name} / {cfg.model.backbone.name} on {cfg.data.name}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='muted'>run folder <code>{html.escape(str(run_dir))}</code> · generated "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}</p>"]

    parts.append(f"<h2>Metrics — {html.escape(split)} split</h2><table id='metrics'><thead><tr><th>metric</th>")
    parts += [f"<th>{html.escape(c)}</th>" for c in evals]
    parts.append("</tr></thead><tbody>")
    for key, label in table_rows(len(class_names) if class_names else None):
        if any(key in e["metrics"] for e in evals.values()):
            parts.append(f"<tr><td>{html.escape(label)}</td>"
                         + "".join(f"<td>{_fmt(key, e['metrics'].get(key))}</td>" for e in evals.values()) + "</tr>")
    parts.append("</tbody></table><p class='muted'>best_loc: B-LOC selection (localisation on valpx); "
                 "best_cls: B-CL selection (accuracy on valcl); <code>a = b</code>: both picked the same epoch "
                 "(one model); <code>+name</code>: CAMs from the extractor <i>name</i>; <code>+crf-preset</code>: CAMs "
                 "refined by a dense CRF. τ* maximises mean IoU on valpx.</p>")

    pr_png = figures.pr_fg_bg({name: e["curves"] for name, e in evals.items()})
    if pr_png is not None:  # min-max-entropy Fig. 6: per-image averaged PR curves, fg and bg
        parts.append("<h2>Precision–recall per image (foreground / background)</h2>" + _img(pr_png, "PR curves")
                     + "<p class='muted'>per-image precision–recall curves at the PxAP thresholds, precision "
                     "interpolated on a common recall axis (step 0.001) and averaged over images (an image without "
                     "ROI counts for the background only); AUC by the trapezoid rule.</p>")
    parts.append("<h2>Training</h2>" + _img(figures.training_curves(read_history(run_dir)), "training curves"))
    for name, e in evals.items():
        tau = e["metrics"].get("tau")
        parts.append(f"<h2>{html.escape(name)}: localisation</h2>")
        for png in (figures.pr_and_histogram(e["curves"], tau, name), figures.region_sizes(e["curves"], name),
                    figures.box_curves(e["curves"], name)):
            if png is not None:
                parts.append(_img(png, f"{name} curves"))
        parts.append(f"<h3>{html.escape(name)}: gallery</h3><p class='muted'>best, median and worst images by "
                     "per-image IoU (mask sets: of the ROI at τ*, of the background for an image without ROI; "
                     "box sets: of the predicted box, largest contour at the MaxBoxAcc threshold)</p>")
        parts.append(_img(figures.gallery(e["gallery"], tau, class_names, e["metrics"].get("max_box_acc_tau")),
                          f"{name} gallery"))

    parts.append("<h2>Configuration</h2><pre>" + html.escape((run_dir / "config.yaml").read_text()) + "</pre>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
