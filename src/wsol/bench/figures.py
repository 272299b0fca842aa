"""The papers' figures from a suite's cell folders (matplotlib, Agg, PNG bytes). Each
builder returns the PNG, or a string saying why there is nothing to draw (the dataset's
labels do not give that curve, no cell of the figure ran).

- ``threshold_curves`` (survey Fig. 8): localisation vs threshold τ — pooled Dice+ (mask
  sets) or box accuracy (box sets) — of every row (orange), their mean ± one standard
  deviation (blue), the ``reference`` row (the U-Net, green);
- ``selection_epochs`` (survey Fig. 9): epoch of the selected checkpoint vs its test
  localisation, B-LOC (orange) and B-CL (blue), the means as large circles;
- ``tau_curves`` (f-cam Fig. 5): the same curve for a few rows (CAM* vs CAM* + F-CAM);
- ``histograms`` (f-cam Fig. 6): distribution of the test CAM values of the rows;
- ``downscale`` (f-cam Fig. D.3): PxAP of the true masks down-scaled by z and up-scaled
  back (bilinear), vs z;
- ``confusion`` (max-min Figs. 5-6): pixel confusion matrix over the test set at the F1
  threshold (0.5, MAXMIN's σ), rows normalised (% of ROI / background pixels);
- ``region_sizes`` (max-min Figs. 7-8): per test image, true vs predicted ROI size (at
  τ*), and the balanced size ½;
- ``pr_curves`` (min-max-entropy Fig. 6): pooled precision–recall of the foreground and
  of the background (the background predicted where the CAM is below τ).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from wsol.bench.suites import FigureSpec
from wsol.bench.tables import Results

Builder = Callable[[FigureSpec, Results, dict[str, Any]], "bytes | str"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _finish(fig, spec: FigureSpec, drawn: bool, why: str) -> bytes | str:
    """The figure as PNG bytes, or ``why`` when nothing was drawn (the figure closed either way)."""
    if not drawn:
        _plt().close(fig)
        return why
    fig.suptitle(spec.title, fontsize=10, y=1.03)
    return _png(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _rows(spec: FigureSpec, res: Results) -> list[str]:
    rows = res.suite.all_rows() if spec.rows == "all" else list(spec.rows)
    return [r for r in rows if res.suite.resolve(r)[0].id in res.present and r != spec.reference]


def _curve_key(loc_kind: str) -> tuple[str, str]:
    return ("dice_fg", "Dice+ (pooled, %)") if loc_kind == "mask" else ("box_acc", "box accuracy (%)")


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def threshold_curves(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    key, ylabel = _curve_key(res.loc_kind)
    ck = res.suite.checkpoint
    fig, axes = _grid(len(res.backbones))
    drawn = False
    for ax, b in zip(axes, res.backbones):
        ys = []
        for r in _rows(spec, res):
            c = res.curves(r, b.key, ck)
            if c and c.get(key):
                y = np.asarray(c[key], dtype=float)
                ax.plot(np.asarray(c["tau"][: len(y)]), y, color="tab:orange", lw=0.8, alpha=0.6)
                ys.append(y)
        if ys:
            n = min(len(y) for y in ys)
            tau = np.linspace(0, 1, n) if res.loc_kind == "mask" else np.arange(n) / 1000.0
            stack = np.stack([y[:n] for y in ys])
            mean, std = np.nanmean(stack, 0), np.nanstd(stack, 0)
            ax.plot(tau, mean, color="tab:blue", lw=2, label=f"mean of {len(ys)} WSOL rows")
            ax.fill_between(tau, mean - std, mean + std, color="tab:blue", alpha=0.2)
            drawn = True
        if spec.reference:
            c = res.curves(spec.reference, b.key, ck)
            if c and c.get(key):
                ax.plot(c["tau"][: len(c[key])], c[key], color="tab:green", lw=2, label=res.label(spec.reference))
                drawn = True
        ax.set(title=b.label, xlabel="threshold τ", ylabel=ylabel, xlim=(0, 1))
        _legend(ax)
    return _finish(fig, spec, drawn, "no evaluated curve")


def selection_epochs(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    metric = "pxap" if res.loc_kind == "mask" else "max_box_acc_v2"
    fig, axes = _grid(len(res.backbones))
    drawn = False
    for ax, b in zip(axes, res.backbones):
        for ck, color, name in (("best_loc", "tab:orange", "B-LOC"), ("best_cls", "tab:blue", "B-CL")):
            pts = []
            for r in _rows(spec, res):
                ep, v = res.value(r, b.key, "epoch", ck), res.value(r, b.key, metric, ck)
                if ep is not None and v is not None:
                    pts.append((ep, v))
            if pts:
                x, y = np.array(pts).T
                ax.scatter(x, y, color=color, s=18, alpha=0.7, label=name)
                ax.scatter([x.mean()], [y.mean()], color=color, s=200, alpha=0.5, edgecolors="k")
                drawn = True
        ax.set(title=b.label, xlabel="epoch of the selected model", ylabel=f"test {metric}")
        _legend(ax)
    return _finish(fig, spec, drawn, "no cell with both B-LOC and B-CL checkpoints evaluated")


def tau_curves(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    key, ylabel = _curve_key(res.loc_kind)
    fig, axes = _grid(len(res.backbones))
    drawn = False
    for ax, b in zip(axes, res.backbones):
        for r in _rows(spec, res):
            c = res.curves(r, b.key, res.suite.checkpoint)
            if c and c.get(key):
                ax.plot(c["tau"][: len(c[key])], c[key], lw=1.5, label=res.label(r))
                drawn = True
        ax.set(title=b.label, xlabel="threshold τ", ylabel=ylabel, xlim=(0, 1))
        _legend(ax)
    return _finish(fig, spec, drawn, "no evaluated curve")


def histograms(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    from wsol.bench.runner import load_activations, table_checkpoint

    fig, axes = _grid(len(res.backbones))
    drawn = False
    for ax, b in zip(axes, res.backbones):
        for r in _rows(spec, res):
            cell, suffix = res.suite.resolve(r)
            data = res.data(cell.id, b.key)
            if data is None or suffix is not None:
                continue
            h = load_activations(data.plan.dir, table_checkpoint(cell, res.suite.checkpoint))
            if not h or not sum(h["all"]):
                continue
            edges = np.asarray(h["edges"])
            dens = np.asarray(h["all"]) / sum(h["all"]) / np.diff(edges)
            ax.stairs(dens, edges, label=res.label(r), lw=1.5)
            drawn = True
        ax.set(title=b.label, xlabel="CAM value", ylabel="density", yscale="log")
        _legend(ax)
    return _finish(fig, spec, drawn, "no cell of the figure recorded its activations (cell option histogram: true)")


def downscale(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    sim = ctx.get("downscale")
    if not sim or not sim.get("pxap"):
        return "no pixel mask in the test split"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(sim["factors"], sim["pxap"], marker="o")
    ax.set(xscale="log", xlabel="down-scale factor z", ylabel="PxAP (true mask ↓z ↑z)", title=spec.title)
    ax.set_xticks(sim["factors"], [str(z) for z in sim["factors"]])
    return _png(fig)


def _at(curve: list[Any], tau: float) -> float:
    return float(curve[int(round(tau * 1000))])


def confusion(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    if res.loc_kind != "mask":
        return "pixel confusion matrices need pixel masks"
    cells = []
    for r in _rows(spec, res):
        for b in res.backbones:
            c = res.curves(r, b.key, res.suite.checkpoint)
            cell, suffix = res.suite.resolve(r)
            data = res.data(cell.id, b.key)
            if not c or data is None:
                continue
            from wsol.bench.runner import column_name

            tau = float(data.metrics.get(column_name(cell, res.suite.checkpoint, suffix), {}).get("f1_tau", 0.5))
            m = np.array([[_at(c["tp"], tau), _at(c["fn"], tau)], [_at(c["fp"], tau), _at(c["tn"], tau)]])
            if np.isnan(m).any():
                continue
            cells.append((f"{res.label(r)}\n{b.label}", m))
    if not cells:
        return "no evaluated curve"
    plt = _plt()
    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, m) in zip(axes.flat, cells):
        ax.axis("on")
        ax.imshow(m, vmin=0, vmax=100, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="k" if v < 60 else "w", fontsize=8)
        ax.set_xticks([0, 1], ["ROI", "bg"], fontsize=7)
        ax.set_yticks([0, 1], ["ROI", "bg"], fontsize=7)
        ax.set_title(title, fontsize=7)
    fig.suptitle(spec.title + " (true class: rows, predicted: columns, % of the true class)", fontsize=9, y=1.03)
    return _png(fig)


def region_sizes(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    if res.loc_kind != "mask":
        return "region sizes need pixel masks"
    panels = []
    for r in _rows(spec, res):
        for b in res.backbones:
            c = res.curves(r, b.key, res.suite.checkpoint)
            reg = (c or {}).get("regions") or {}
            if reg.get("true"):
                panels.append((f"{res.label(r)} — {b.label}", reg))
    if not panels:
        return "no evaluated region sizes"
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    for ax, (title, reg) in zip(axes[:, 0], panels):
        true, pred = 100 * np.asarray(reg["true"]), 100 * np.asarray(reg["pred"])
        order = np.argsort(true, kind="stable")
        x = np.arange(len(true))
        ax.plot(x, true[order], color="tab:blue", label="true")
        ax.plot(x, pred[order], color="tab:green", label=f"predicted (τ={reg.get('tau')})")
        ax.axhline(50, color="tab:orange", lw=1, label="balanced (½ image)")
        ax.set(title=title, ylabel="ROI size (% of image)", xlabel="test image (sorted by true size)")
        _legend(ax)
    return _png(fig)


def pr_curves(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    if res.loc_kind != "mask":
        return "pixel precision-recall needs pixel masks"
    plt = _plt()
    fig, axes = plt.subplots(len(res.backbones), 2, figsize=(8, 3.4 * len(res.backbones)), squeeze=False)
    drawn = False
    for row, b in zip(axes, res.backbones):
        for r in _rows(spec, res):
            c = res.curves(r, b.key, res.suite.checkpoint)
            cell, suffix = res.suite.resolve(r)
            data = res.data(cell.id, b.key)
            if not c or data is None:
                continue
            from wsol.bench.runner import column_name

            m = data.metrics.get(column_name(cell, res.suite.checkpoint, suffix), {})
            n_fg, n_bg = float(m.get("n_pixels_fg") or 0), float(m.get("n_pixels_bg") or 0)
            prec, rec = np.asarray(c["precision"], float), np.asarray(c["recall"], float)
            row[0].plot(rec, prec, label=res.label(r))
            if n_fg > 0 and n_bg > 0:
                # background predicted where CAM < τ: TN = n_bg − FP, FN = n_fg − TP (curves in % of each class)
                tn = (100 - np.asarray(c["fp"], float)) / 100 * n_bg
                fn = (100 - np.asarray(c["tp"], float)) / 100 * n_fg
                with np.errstate(invalid="ignore", divide="ignore"):
                    prec_bg = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
                row[1].plot(tn / n_bg, prec_bg, label=res.label(r))
            drawn = True
        row[0].set(title=f"foreground — {b.label}", xlabel="recall", ylabel="precision")
        row[1].set(title=f"background — {b.label}", xlabel="recall", ylabel="precision")
        _legend(row[0])
    return _finish(fig, spec, drawn, "no evaluated curve")


BUILDERS: dict[str, Builder] = {
    "threshold_curves": threshold_curves, "selection_epochs": selection_epochs, "tau_curves": tau_curves,
    "histograms": histograms, "downscale": downscale, "confusion": confusion, "region_sizes": region_sizes,
    "pr_curves": pr_curves,
}


def build_figure(spec: FigureSpec, res: Results, ctx: dict[str, Any]) -> bytes | str:
    return BUILDERS[spec.kind](spec, res, ctx)
