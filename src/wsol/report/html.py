"""Self-contained HTML report of a run (inline PNGs, inline CSS, no network): config,
metrics table of the selected checkpoints, training curves, and per checkpoint the pixel
precision–recall curve, the CAM value histograms and a gallery of test samples (image, GT
mask, CAM heatmap, mask at τ*). Built from what the run folder holds, so
``wsol report RUN`` rebuilds it at any time."""

from __future__ import annotations

import base64
import csv
import html
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from wsol.errors import CheckpointError
from wsol.fileio import atomic_write_text
from wsol.report import figures
from wsol.runs import eval_dir, load_run_config, read_json, read_run_info, summary_path

ROWS = [
    ("top1_acc", "Classification accuracy (%)"), ("pxap", "PxAP"), ("tp_star", "TP*"), ("fn_star", "FN*"),
    ("fp_star", "FP*"), ("tn_star", "TN*"), ("dice_fg_pooled", "Dice+ (pooled, τ*)"),
    ("dice_bg_pooled", "Dice− (pooled, τ*)"), ("f1_fg_mean", "F1+ (mean, τ=0.5)"), ("f1_bg_mean", "F1− (mean, τ=0.5)"),
    ("tau", "τ* (from valpx)"), ("max_box_acc", "MaxBoxAcc"), ("max_box_acc_v2", "MaxBoxAccV2"),
    ("top1_loc", "top-1 loc"), ("top5_loc", "top-5 loc"), ("fg_fraction", "foreground fraction (%)"),
    ("epoch", "selected epoch"),
]

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
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _load_eval(run_dir: Path, column: str, split: str) -> dict | None:
    d = eval_dir(run_dir, column, split)
    if not (d / "metrics.json").is_file():
        return None
    out = {"metrics": read_json(d / "metrics.json")}
    out["curves"] = read_json(d / "curves.json") if (d / "curves.json").is_file() else {}
    g = d / "gallery.npz"
    out["gallery"] = load_gallery(g) if g.is_file() else []
    return out


def load_gallery(path: Path) -> list[dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n"])
            items = []
            for i in range(n):
                it = {"image": z[f"image_{i}"], "cam": z[f"cam_{i}"], "label": int(z[f"label_{i}"]),
                      "image_id": str(z[f"id_{i}"])}
                it["mask"] = z[f"mask_{i}"] if f"mask_{i}" in z else None
                it["boxes"] = z[f"boxes_{i}"] if f"boxes_{i}" in z else None
                items.append(it)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: damaged gallery ({e}); re-run `wsol evaluate` to rewrite it") from None
    return items


def evaluated_columns(run_dir: Path, split: str) -> list[str]:
    """The columns evaluated on ``split``, in the summary's order (checkpoints first)."""
    path = summary_path(run_dir, split)
    cols = [k for k in read_json(path) if k != "split"] if path.is_file() else []
    found = sorted(p.parent.name for p in (run_dir / "eval").glob(f"*/{split}/metrics.json"))
    return cols + [c for c in found if c not in cols]


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
    for key, label in ROWS:
        if any(key in e["metrics"] for e in evals.values()):
            parts.append(f"<tr><td>{html.escape(label)}</td>"
                         + "".join(f"<td>{_fmt(key, e['metrics'].get(key))}</td>" for e in evals.values()) + "</tr>")
    parts.append("</tbody></table><p class='muted'>best_loc: B-LOC selection (localisation on valpx); "
                 "best_cls: B-CL selection (accuracy on valcl). τ* maximises mean IoU on valpx.</p>")

    parts.append("<h2>Training</h2>" + _img(figures.training_curves(read_history(run_dir)), "training curves"))
    for name, e in evals.items():
        tau = e["metrics"].get("tau")
        parts.append(f"<h2>{html.escape(name)}: localisation</h2>")
        for png in (figures.pr_and_histogram(e["curves"], tau, name), figures.region_sizes(e["curves"], name),
                    figures.box_curves(e["curves"], name)):
            if png is not None:
                parts.append(_img(png, f"{name} curves"))
        parts.append(f"<h3>{html.escape(name)}: gallery</h3>")
        parts.append(_img(figures.gallery(e["gallery"], tau, class_names), f"{name} gallery"))

    parts.append("<h2>Configuration</h2><pre>" + html.escape((run_dir / "config.yaml").read_text()) + "</pre>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
