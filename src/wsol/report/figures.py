"""Report figures (matplotlib, Agg backend) returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wsol.report.overlay import mask_rgb, overlay  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _figure(*args, **kw):
    """``plt.subplots`` with constrained layout: titles, labels and legends never overlap."""
    return plt.subplots(*args, layout="constrained", **kw)


def training_curves(history: list[dict[str, float]]) -> bytes | None:
    """Loss terms (left) and validation metrics (right) per epoch."""
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_v) = _figure(1, 2, figsize=(10, 3.4))
    for key in sorted({k for r in history for k in r if k.startswith("train/")}):
        ax_l.plot(epochs, [r.get(key, np.nan) for r in history], marker=".", label=key.removeprefix("train/"))
    ax_l.set(xlabel="epoch", ylabel="loss", title="training loss terms")
    ax_l.legend(fontsize=7)
    for key, label in (("valcl/top1_acc", "valcl accuracy (%)"), ("valpx/pxap", "valpx PxAP"),
                       ("valpx/max_box_acc_v2", "valpx MaxBoxAccV2")):
        vals = [r.get(key, np.nan) for r in history]
        if not all(np.isnan(v) for v in vals):
            ax_v.plot(epochs, vals, marker=".", label=label)
    ax_v.set(xlabel="epoch", ylabel="%", title="validation (model selection)")
    ax_v.legend(fontsize=7)
    return _png(fig)


def pr_and_histogram(curves: dict[str, list[float]], tau: float | None, title: str) -> bytes | None:
    """Pixel precision–recall curve, CAM value histograms (fg vs bg) and TP/FP vs τ."""
    if "precision" not in curves:
        return None
    fig, axes = _figure(1, 3, figsize=(12, 3.6))
    rec, prec = np.asarray(curves["recall"]), np.asarray(curves["precision"], dtype=float)
    ok = np.isfinite(prec)
    axes[0].plot(rec[ok], prec[ok])
    axes[0].set(xlabel="pixel recall", ylabel="pixel precision", xlim=(0, 1), ylim=(0, 1.02), title="precision–recall")
    bins = np.asarray(curves["tau"])
    for key, label, color in (("hist_fg", "foreground (ROI)", "tab:red"), ("hist_bg", "background", "tab:blue")):
        h = np.asarray(curves[key], dtype=float)
        axes[1].plot(bins, h / max(h.sum(), 1), label=label, color=color)
    axes[1].set(xlabel="CAM value", ylabel="fraction of pixels", title="CAM value histogram", yscale="log")
    axes[1].legend(fontsize=7)
    for key in ("tp", "fp"):
        if key in curves:
            axes[2].plot(bins, curves[key], label=f"{key.upper()}(τ) %")
    if tau is not None:
        axes[2].axvline(tau, color="k", ls="--", lw=0.8, label=f"τ* = {tau:.3f}")
    axes[2].set(xlabel="threshold τ", ylabel="%", title="localisation vs threshold")
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def pr_fg_bg(curves_by_column: dict[str, dict]) -> bytes | None:
    """Per-image averaged precision–recall curves of the foreground (left) and background
    (right), one line per evaluated column with its AUC (min-max-entropy Fig. 6); from each
    column's ``curves["pr"]`` (:class:`wsol.metrics.pr.PRAccumulator`)."""
    cols = {name: c["pr"] for name, c in curves_by_column.items() if isinstance(c.get("pr"), dict)}
    if not cols:
        return None
    fig, axes = _figure(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "fg", "foreground"), (axes[1], "bg", "background")):
        for name, pr in cols.items():
            prec = np.asarray([np.nan if v is None else v for v in pr.get(f"precision_{key}", [])], dtype=float)
            auc = pr.get(f"auc_{key}")
            if prec.size and np.isfinite(prec).any():
                ax.plot(pr["recall"], prec, label=f"{name} (AUC = {auc:.3f})" if auc is not None else name)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"{label}: per-image average precision–recall")
        if ax.lines:
            ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _draw_boxes(ax, boxes, color: str, label: str | None = None) -> None:
    from matplotlib.patches import Rectangle

    for j, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=color,
                               linewidth=1.6, label=label if j == 0 else None))


def gallery(items: list[dict], tau: float | None, class_names: list[str] | None = None,
            box_tau: float | None = None) -> bytes | None:
    """One row per image (the ``best``, ``median`` and ``worst`` by per-image IoU, see
    :mod:`wsol.report.gallery`), its IoU in the row title. Mask sets: image, ground truth,
    CAM over the image, CAM ≥ τ*. Box sets: image with the ground-truth (green) and
    predicted (red, largest contour at ``box_tau``) boxes, CAM over the image with the same
    boxes, CAM ≥ ``box_tau``."""
    from wsol.report.gallery import pick, predicted_box

    is_box = any(it.get("boxes") is not None for it in items)
    t = box_tau if is_box else tau
    rows = pick(items, t)
    if not rows:
        return None
    n_col = 3 if is_box else 4
    fig, axes = _figure(len(rows), n_col, figsize=(2.3 * n_col, 2.5 * len(rows)), squeeze=False)
    thr = t if t is not None else 0.5
    for row, it in zip(axes, rows):
        cam = np.asarray(it["cam"], dtype=np.float32) if it.get("cam") is not None else None
        image = np.asarray(it["image"])
        label = it.get("label")
        name = class_names[label] if class_names and label is not None and 0 <= label < len(class_names) else label
        iou = it.get("iou")
        head = " · ".join(x for x in (str(it.get("rank", "")), f"IoU {iou:.2f}" if iou is not None and
                                      np.isfinite(iou) else "") if x)
        first = f"{head}\n{_short(str(it.get('image_id', '')))}\nclass: {name}"
        ov = overlay(image, cam) if cam is not None else image
        binary = ((cam >= thr)[..., None].repeat(3, 2).astype(np.uint8) * 255) if cam is not None else np.zeros_like(image)
        thr_title = f"CAM ≥ {'τ*' if not is_box else 'τ'} ({thr:.3f})"
        if is_box:
            panels = [(image, first), (ov, "CAM over image"), (binary, thr_title)]
        else:
            mask = it.get("mask")
            panels = [(image, first), (mask_rgb(mask) if mask is not None else np.zeros_like(image), "ground truth"),
                      (ov, "CAM over image"), (binary, thr_title)]
        for j, (ax, (img, title)) in enumerate(zip(row, panels)):
            ax.imshow(img)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
            if is_box and j < 2 and it.get("boxes") is not None:
                _draw_boxes(ax, it["boxes"], "lime", "ground truth")
                if cam is not None:
                    _draw_boxes(ax, predicted_box(cam, thr), "red", "predicted")
    if is_box:
        axes[0][0].legend(loc="lower left", fontsize=6, framealpha=0.7)
    return _png(fig)


def region_sizes(curves: dict, title: str) -> bytes | None:
    """Predicted vs true ROI fraction per image at τ* (max-min-uncertainty Figs. 7-8)."""
    reg = curves.get("regions") or {}
    true, pred = np.asarray(reg.get("true", []), float), np.asarray(reg.get("pred", []), float)
    if true.size == 0:
        return None
    fig, ax = _figure(figsize=(4.4, 3.8))
    ax.scatter(true * 100, pred * 100, s=10, alpha=0.7)  # fractions -> %
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    tau = reg.get("tau")
    ax.set(xlabel="true ROI fraction (%)", ylabel="predicted ROI fraction (%)", xlim=(0, 100), ylim=(0, 100),
           title=f"{title}: region sizes" + (f" at τ={tau:.3f}" if tau is not None else ""))
    return _png(fig)


def box_curves(curves: dict, title: str) -> bytes | None:
    """Box localisation accuracy vs τ (survey Fig. 8, f-cam Fig. 5)."""
    if "box_acc" not in curves:
        return None
    fig, ax = _figure(figsize=(6.4, 3.6))
    tau = np.asarray(curves["tau"])
    for key in sorted(k for k in curves if k.startswith(("box_acc", "top1_loc", "top5_loc"))):
        ax.plot(tau, curves[key], label=key)
    ax.set(xlabel="threshold τ", ylabel="% of images", title=f"{title}: box localisation vs threshold")
    ax.legend(fontsize=7)
    return _png(fig)
