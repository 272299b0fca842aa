"""Report figures (matplotlib, Agg backend) returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wsol.report.overlay import heatmap, mask_rgb  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves(history: list[dict[str, float]]) -> bytes | None:
    """Loss terms (left) and validation metrics (right) per epoch."""
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(10, 3.4))
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
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
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


def gallery(items: list[dict], tau: float | None, class_names: list[str] | None = None) -> bytes | None:
    """One row per image: image, ground-truth mask, CAM heatmap, CAM ≥ τ*."""
    if not items:
        return None
    n = len(items)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    for row, it in zip(axes, items):
        cam = np.asarray(it["cam"], dtype=np.float32)
        mask = it.get("mask")
        label = it.get("label")
        name = class_names[label] if class_names and label is not None and label < len(class_names) else label
        panels = [
            (it["image"], f"{it.get('image_id', '')}\nlabel: {name}"),
            (mask_rgb(mask) if mask is not None else np.zeros_like(it["image"]), "ground truth"),
            (heatmap(cam), "CAM"),
            ((cam >= (tau if tau is not None else 0.5))[..., None].repeat(3, 2).astype(np.uint8) * 255,
             f"CAM ≥ τ* ({tau:.3f})" if tau is not None else "CAM ≥ 0.5"),
        ]
        for ax, (img, t) in zip(row, panels):
            ax.imshow(img)
            ax.set_title(t, fontsize=7)
            ax.axis("off")
    return _png(fig)


def region_sizes(curves: dict, title: str) -> bytes | None:
    """Predicted vs true ROI fraction per image at τ* (max-min-uncertainty Figs. 7-8)."""
    reg = curves.get("regions") or {}
    true, pred = np.asarray(reg.get("true", []), float), np.asarray(reg.get("pred", []), float)
    if true.size == 0:
        return None
    fig, ax = plt.subplots(figsize=(4, 3.6))
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
    fig, ax = plt.subplots(figsize=(6, 3.4))
    tau = np.asarray(curves["tau"])
    for key in sorted(k for k in curves if k.startswith(("box_acc", "top1_loc", "top5_loc"))):
        ax.plot(tau, curves[key], label=key)
    ax.set(xlabel="threshold τ", ylabel="% of images", title=f"{title}: box localisation vs threshold")
    ax.legend(fontsize=7)
    return _png(fig)
