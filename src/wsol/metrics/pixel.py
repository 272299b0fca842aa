"""Pixel-level localisation metrics from pooled threshold histograms (see the package
docstring for every convention): PxAP, the threshold-marginalised confusion matrix
TP*/FN*/FP*/TN*, pooled Dice at τ and at τ* (argmax mean IoU), per-image F1+/F1- at 0.5,
region sizes and the CAM value histograms.

Everything is derived from one ``torch.bincount`` per batch (chunks of ≤ 256 images) of a
key ``bin + 1001·(3·image + class)``, class ∈ {background, ROI, ignore}: the per-image
histograms over the 1001 threshold bins. Summing them over images gives the pooled
histograms (the only state whose size matters); the per-image ones give F1 at 0.5 and
region sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from wsol.cams import check_cams
from wsol.errors import MetricError

#: number of threshold steps: τ_l = l / N_THRESHOLDS, l = 0..N_THRESHOLDS
N_THRESHOLDS = 1000
IGNORE_INDEX = 255
CHUNK = 256  # images per bincount
F1_TAU = 0.5


def threshold_grid(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """τ_l = l/1000 for l = 0..1000 as float32 (correctly rounded: ``float32(l) / 1000``, the
    precision in which CAM values are compared), optionally cast to ``dtype``."""
    return (torch.arange(N_THRESHOLDS + 1, dtype=torch.float32, device=device) / N_THRESHOLDS).to(dtype)


def threshold_bins(cams: torch.Tensor) -> torch.Tensor:
    """Bin index (int64) of every CAM value, see :func:`_bins_float`."""
    return _bins_float(cams).long()


def _bins_float(cams: torch.Tensor) -> torch.Tensor:
    """Bin index (float32 holding an integer) of every CAM value: the largest l with
    τ_l ≤ s in float32, so that ``bin ≥ l`` ⟺ ``s ≥ τ_l`` exactly, also for values sitting
    exactly on a threshold. ``floor(s·1000)`` can be off by one through the rounding of the
    product; it is corrected by comparing s with float32(l)/1000 and float32(l+1)/1000
    (the grid's own values), elementwise, without table look-ups."""
    s = cams.float()
    b = (s * N_THRESHOLDS).floor_()
    b -= (s < b / N_THRESHOLDS).float()
    b += (s >= (b + 1) / N_THRESHOLDS).float()
    return b.clamp_(0, N_THRESHOLDS)


def tau_to_index(tau: float) -> int:
    """Grid index of a threshold: τ is snapped to the nearest τ_l = l/1000."""
    if not (0.0 <= float(tau) <= 1.0) or math.isnan(float(tau)):
        raise MetricError(f"threshold tau={tau!r} is outside [0, 1]; CAM thresholds live in [0, 1]")
    return int(round(float(tau) * N_THRESHOLDS))


def validate_cams(cams: torch.Tensor, name: str = "cams") -> torch.Tensor:
    """CAM contract check in one pass (``aminmax``; NaN propagates through it): float32
    B×H×W in [0, 1]. The slower :func:`wsol.cams.check_cams` only runs to word the error."""
    cams = torch.as_tensor(cams)
    if cams.dim() != 3:
        raise MetricError(f"{name}: expected a B×H×W tensor, got shape {tuple(cams.shape)}")
    cams = cams.float()
    if cams.numel():
        lo, hi = torch.aminmax(cams)
        if not (0.0 <= float(lo) and float(hi) <= 1.0):  # False for NaN too
            check_cams(cams, name)  # raises with the count of NaN / the range found
            raise MetricError(f"{name}: values in [{float(lo)}, {float(hi)}], expected [0, 1] (CAM contract)")
    return cams


def _mask_classes(masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """uint8 class per pixel: 0 background, 1 ROI, 2 ignore; other mask values are an error
    (a bool mask is read as ROI / background)."""
    if masks.dtype == torch.bool:
        return masks.to(torch.uint8)
    if masks.dtype.is_floating_point:
        raise MetricError(
            f"masks: expected an integer (uint8) tensor with 0 = background, 1 = ROI, {ignore_index} = ignore; "
            f"got dtype {masks.dtype}"
        )
    bad = (masks > 1) & (masks != ignore_index)
    if bool(bad.any()):
        vals = torch.unique(masks[bad])[:5].tolist()
        raise MetricError(
            f"masks: values {vals} found; expected only 0 (background), 1 (ROI) and {ignore_index} (ignore). "
            "Binarise the mask (e.g. mask > 0) before evaluation"
        )
    if masks.dtype != torch.uint8 or ignore_index != 255:
        masks = torch.where(masks == ignore_index, 2, masks).to(torch.uint8)
    return masks.clamp(max=2)  # 255 -> 2


class PixelAccumulator:
    """Streaming pixel metrics over a split (PxAP, confusion*, Dice, F1±, sizes, histograms).

    ``update(cams, masks)`` per batch; ``compute(tau=None)`` at the end; ``curves()`` for the
    per-τ curves. State: two 1001-bin int64 histograms plus a few scalars — memory does not
    grow with the number of images (except the optional per-image region sizes, see
    ``region_tau``). Accumulators over disjoint parts of a split add up exactly:
    ``a.merge(b)`` / ``a + b`` / ``state_dict()`` tensors summed across DDP ranks.

    Args:
        ignore_index: mask value of pixels left out of every metric (default 255).
        region_tau: threshold of the per-image region sizes (predicted foreground fraction).
            A float keeps two floats per image. ``None`` means τ* of this split, resolved at
            ``compute``: then the per-image cumulative counts (1001 int32 per image) are kept,
            which is meant for small selection splits (valpx). ``track_regions=False`` keeps
            no per-image state at all.
        f1_tau: threshold of the per-image F1+/F1- (default 0.5, the MAXMIN /
            min-max-entropy definition; a method whose own binary mask is its graded map
            thresholded at another value, e.g. MAXMIN's M+ ≥ σ, evaluates at that value).
    """

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, region_tau: float | None = None, track_regions: bool = True,
        f1_tau: float = F1_TAU,
    ) -> None:
        self.ignore_index = int(ignore_index)
        self.f1_tau = tau_to_index(f1_tau) / N_THRESHOLDS
        self.region_tau = None if region_tau is None else tau_to_index(region_tau) / N_THRESHOLDS
        self.track_regions = track_regions
        self.hist = torch.zeros(2, N_THRESHOLDS + 1, dtype=torch.int64)  # [0] background, [1] foreground
        self.f1 = torch.zeros(4, dtype=torch.float64)  # sum F1+, #images with fg, sum F1-, #images with bg
        self.n_images = 0
        self.n_ignored = 0
        # region sizes: image ids order of update; true fraction; predicted (fraction or counts)
        self._true_frac: list[float] = []
        self._pred_frac: list[float] = []
        self._pred_counts: list[torch.Tensor] = []  # per image: #pixels ≥ τ_l (region_tau None)
        self._valid: list[int] = []

    # --- streaming ----------------------------------------------------------------
    def update(self, cams: torch.Tensor | Sequence[torch.Tensor],
               masks: torch.Tensor | Sequence[torch.Tensor | None]) -> None:
        """Add a batch: ``cams`` B×H×W in [0, 1] (CAM contract); ``masks`` B×H×W integer
        (0/1/ignore) or a length-B list whose entries are H_i×W_i masks or ``None`` (that
        image has no pixel label and is skipped; ``cams`` may then also be a list)."""
        if isinstance(masks, torch.Tensor):
            if not isinstance(cams, torch.Tensor):
                cams = torch.stack([torch.as_tensor(c) for c in cams])
            self._update_batch(cams, masks)
            return
        if len(cams) != len(masks):
            raise MetricError(f"update: {len(cams)} CAMs but {len(masks)} masks; one mask (or None) per CAM")
        pairs = [(torch.as_tensor(c), torch.as_tensor(m)) for c, m in zip(cams, masks) if m is not None]
        if len({(tuple(c.shape), tuple(m.shape)) for c, m in pairs}) == 1:  # one shape: one batch
            self._update_batch(torch.stack([c for c, _ in pairs]), torch.stack([m for _, m in pairs]))
            return
        for cam, mask in pairs:
            self._update_batch(cam[None], mask[None])

    def _update_batch(self, cams: torch.Tensor, masks: torch.Tensor) -> None:
        # chunks keep the float32 key exact (< 2**24) and the temporaries small
        for i in range(0, max(len(cams), 1), CHUNK):
            self._update_chunk(cams[i : i + CHUNK], masks[i : i + CHUNK])

    def _update_chunk(self, cams: torch.Tensor, masks: torch.Tensor) -> None:
        cams = validate_cams(cams)
        masks = torch.as_tensor(masks)
        if masks.dim() == 2:
            masks = masks[None]
        if tuple(cams.shape) != tuple(masks.shape):
            raise MetricError(
                f"update: CAMs of shape {tuple(cams.shape)} vs masks of shape {tuple(masks.shape)}; they must "
                "match (resize the CAM to the mask with wsol.cams.to_cam, or use eval_size='original')"
            )
        cls = _mask_classes(masks.to(cams.device), self.ignore_index)
        B = cams.shape[0]
        if B == 0:
            return
        nb = N_THRESHOLDS + 1
        # one bincount of key = bin + 1001·(3·image + class): per-image histograms of the
        # bins of background (0), ROI (1) and ignored (2) pixels
        img = torch.arange(B, device=cams.device, dtype=torch.float32).view(B, 1, 1)
        key = _bins_float(cams).add_(cls.float().add_(img * 3).mul_(nb))
        per = torch.bincount(key.view(-1).long(), minlength=B * 3 * nb).view(B, 3, nb)
        self.n_ignored += int(per[:, 2].sum())
        per = per[:, :2]  # per image: [bg, fg] histograms
        self.hist += per.sum(0).cpu()
        self.n_images += B
        # cumulative "≥ τ_l" counts per image and class
        ge = per.flip(-1).cumsum(-1).flip(-1)  # B×2×1001
        n_bg, n_fg = ge[:, 0, 0], ge[:, 1, 0]
        # per-image F1 at τ = 0.5 (Eqs. 14-15, max-min-uncertainty): F1+ over images with ROI
        # pixels, F1- over images with background pixels
        h = tau_to_index(self.f1_tau)
        tp, fp = ge[:, 1, h], ge[:, 0, h]
        tn, fn = n_bg - fp, n_fg - tp
        has_fg, has_bg = n_fg > 0, n_bg > 0
        f1p = (2 * tp).double() / (2 * tp + fp + fn).clamp_min(1).double()
        f1n = (2 * tn).double() / (2 * tn + fn + fp).clamp_min(1).double()
        self.f1 += torch.stack(
            [f1p[has_fg].sum(), has_fg.sum().double(), f1n[has_bg].sum(), has_bg.sum().double()]
        ).cpu()
        if self.track_regions:
            n_valid = (n_bg + n_fg).cpu()
            self._valid += n_valid.tolist()
            self._true_frac += (n_fg.cpu().double() / n_valid.clamp_min(1).double()).tolist()
            pos = ge.sum(1)  # B×1001 predicted-positive counts per threshold
            if self.region_tau is not None:
                r = tau_to_index(self.region_tau)
                self._pred_frac += (pos[:, r].cpu().double() / n_valid.clamp_min(1).double()).tolist()
            else:
                self._pred_counts += list(pos.to(torch.int32).cpu().unbind(0))

    # --- merging (DDP / split-and-merge) ---------------------------------------------
    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        """Add ``other`` (same settings) into this accumulator, in place; returns self."""
        if (other.ignore_index, other.region_tau, other.track_regions, other.f1_tau) != (
            self.ignore_index,
            self.region_tau,
            self.track_regions,
            self.f1_tau,
        ):
            raise MetricError("merge: PixelAccumulators built with different settings cannot be merged")
        self.hist += other.hist
        self.f1 += other.f1
        self.n_images += other.n_images
        self.n_ignored += other.n_ignored
        self._true_frac += other._true_frac
        self._pred_frac += other._pred_frac
        self._pred_counts += other._pred_counts
        self._valid += other._valid
        return self

    def __add__(self, other: PixelAccumulator) -> PixelAccumulator:
        out = PixelAccumulator(self.ignore_index, self.region_tau, self.track_regions, self.f1_tau)
        return out.merge(self).merge(other)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Summable state (histograms and counters) as tensors, e.g. for ``all_reduce(SUM)``.
        Per-image region sizes are not part of it (gather them with ``all_gather_object``)."""
        counts = torch.tensor([self.n_images, self.n_ignored], dtype=torch.int64)
        return {"hist": self.hist.clone(), "f1": self.f1.clone(), "counts": counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.hist = state["hist"].detach().to("cpu", torch.int64).clone()
        self.f1 = state["f1"].detach().to("cpu", torch.float64).clone()
        self.n_images, self.n_ignored = (int(v) for v in state["counts"].tolist())

    # --- results --------------------------------------------------------------------
    def _ge(self) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        if self.n_images == 0:
            raise MetricError("pixel metrics: no image with a pixel mask was given; nothing to evaluate")
        hist = self.hist.double()
        ge = hist.flip(-1).cumsum(-1).flip(-1)  # counts with s ≥ τ_l
        bg_ge, fg_ge = ge[0], ge[1]
        n_bg, n_fg = float(bg_ge[0]), float(fg_ge[0])
        if n_fg == 0:
            raise MetricError(
                f"pixel metrics: the split has no foreground (ROI, mask = 1) pixel in its {self.n_images} "
                "pixel-labelled image(s), so PxAP / TP* / Dice+ are undefined. Evaluate localisation on a "
                "split that contains ROI pixels (e.g. valpx/test with abnormal images), or check that masks "
                "use 1 for ROI (not 255, which is 'ignore')"
            )
        return fg_ge, bg_ge, n_fg, n_bg

    def tau_star(self) -> float:
        """τ* = argmax over τ_l of the pooled mean IoU (foreground and background IoU
        averaged); ties go to the smallest τ."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        return float(_miou(fg_ge, bg_ge, n_fg, n_bg).argmax()) / N_THRESHOLDS

    def compute(self, tau: float | None = None) -> dict[str, float]:
        """All pixel metrics as a flat dict of floats (percentages for scores).

        ``tau``: threshold of ``dice_fg_pooled``/``dice_bg_pooled``/``miou`` (e.g. τ* chosen
        on the selection split); ``None`` uses this split's own τ*. It is snapped to the
        grid l/1000 and reported as ``tau``. The Dice at this split's τ* is always reported
        too (``*_tau_star``)."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        npred = fg_ge + bg_ge
        # PxAP (Eq. 16, survey; Choe et al. 2020): walking τ from 1.0 down,
        # Σ P(τ_l)·(R(τ_l) − R(τ_{l+1})), R(τ_1001) = 0, τ with no positive skipped.
        prec = torch.where(npred > 0, fg_ge / npred.clamp_min(1), torch.zeros_like(npred))
        rec = fg_ge / n_fg
        rec_next = torch.cat([rec[1:], rec.new_zeros(1)])
        pxap = 100.0 * float((prec * (rec - rec_next))[npred > 0].sum())
        # threshold-marginalised confusion matrix (Eqs. 17-24, survey): mean over τ = 0.001..1.000
        tp = 100.0 * fg_ge[1:] / n_fg
        fp = 100.0 * bg_ge[1:] / n_bg if n_bg > 0 else torch.full_like(tp, math.nan)
        miou = _miou(fg_ge, bg_ge, n_fg, n_bg)
        l_star = int(miou.argmax())
        l_tau = l_star if tau is None else tau_to_index(tau)
        d_fg, d_bg = _dice(fg_ge, bg_ge, n_fg, n_bg)
        out = {
            "pxap": pxap,
            "tp_star": float(tp.mean()),
            "fn_star": float((100.0 - tp).mean()),
            "fp_star": float(fp.mean()),
            "tn_star": float((100.0 - fp).mean()),
            "tau": l_tau / N_THRESHOLDS,
            "tau_star": l_star / N_THRESHOLDS,
            "miou": 100.0 * float(miou[l_tau]),
            "miou_tau_star": 100.0 * float(miou[l_star]),
            "dice_fg_pooled": 100.0 * float(d_fg[l_tau]),
            "dice_bg_pooled": 100.0 * float(d_bg[l_tau]),
            "dice_fg_pooled_tau_star": 100.0 * float(d_fg[l_star]),
            "dice_bg_pooled_tau_star": 100.0 * float(d_bg[l_star]),
            "f1_tau": self.f1_tau,
            "f1_fg_mean": 100.0 * float(self.f1[0] / self.f1[1]) if self.f1[1] > 0 else math.nan,
            "f1_bg_mean": 100.0 * float(self.f1[2] / self.f1[3]) if self.f1[3] > 0 else math.nan,
            "f1_fg_images": int(self.f1[1]),
            "f1_bg_images": int(self.f1[3]),
            "fg_fraction": 100.0 * n_fg / (n_fg + n_bg),
            "n_pixel_images": self.n_images,
            "n_pixels_fg": int(n_fg),
            "n_pixels_bg": int(n_bg),
            "n_pixels_ignored": self.n_ignored,
        }
        return out

    def curves(self, tau: float | None = None) -> dict[str, Any]:
        """Per-τ curves (lists over τ_l = l/1000, l = 0..1000): precision, recall, TP/FN/FP/TN
        (%), mean IoU, pooled Dice; the CAM value histograms of foreground and background
        pixels (bin l = [τ_l, τ_{l+1}), last bin = exactly 1.0); region sizes per image at
        ``tau`` (``None``: the accumulator's ``region_tau``, else this split's τ*)."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        npred = fg_ge + bg_ge
        prec = torch.where(npred > 0, fg_ge / npred.clamp_min(1), torch.full_like(npred, math.nan))
        tp = 100.0 * fg_ge / n_fg
        fp = 100.0 * bg_ge / n_bg if n_bg > 0 else torch.full_like(tp, math.nan)
        d_fg, d_bg = _dice(fg_ge, bg_ge, n_fg, n_bg)
        out: dict[str, Any] = {
            "tau": threshold_grid(dtype=torch.float64).tolist(),
            "precision": prec.tolist(),
            "recall": (fg_ge / n_fg).tolist(),
            "tp": tp.tolist(),
            "fn": (100.0 - tp).tolist(),
            "fp": fp.tolist(),
            "tn": (100.0 - fp).tolist(),
            "miou": (100.0 * _miou(fg_ge, bg_ge, n_fg, n_bg)).tolist(),
            "dice_fg": (100.0 * d_fg).tolist(),
            "dice_bg": (100.0 * d_bg).tolist(),
            "hist_fg": self.hist[1].tolist(),
            "hist_bg": self.hist[0].tolist(),
        }
        out["regions"] = self.region_sizes(tau)
        return out

    def region_sizes(self, tau: float | None = None) -> dict[str, Any]:
        """Per-image ROI size, in update order: ``true`` (fraction of valid pixels that are
        ROI) and ``pred`` (fraction of valid pixels with s ≥ τ), and the τ used."""
        if not self.track_regions:
            return {"tau": None, "true": [], "pred": []}
        if self._pred_counts:
            l_r = tau_to_index(tau) if tau is not None else int(round(self.tau_star() * N_THRESHOLDS))
            valid = torch.tensor(self._valid, dtype=torch.float64).clamp_min(1)
            pred = (torch.stack(self._pred_counts)[:, l_r].double() / valid).tolist()
            return {"tau": l_r / N_THRESHOLDS, "true": list(self._true_frac), "pred": pred}
        if tau is not None and self.region_tau is not None and tau_to_index(tau) != tau_to_index(self.region_tau):
            raise MetricError(
                f"region sizes were tracked at tau={self.region_tau}, not {tau}; build the accumulator with "
                "region_tau=None to resolve any tau at the end"
            )
        return {"tau": self.region_tau, "true": list(self._true_frac), "pred": list(self._pred_frac)}


def _miou(fg_ge: torch.Tensor, bg_ge: torch.Tensor, n_fg: float, n_bg: float) -> torch.Tensor:
    """Pooled mean IoU per τ_l of the 2-class segmentation {s ≥ τ} vs mask: (IoU_fg + IoU_bg)/2,
    a class whose IoU denominator is 0 (it is absent from mask and prediction) left out."""
    iou_fg_den = n_fg + bg_ge  # TP + FP + FN
    iou_bg_den = n_bg + (n_fg - fg_ge)  # TN + FN + FP
    iou_fg = fg_ge / iou_fg_den.clamp_min(1)
    iou_bg = (n_bg - bg_ge) / iou_bg_den.clamp_min(1)
    n_cls = (iou_fg_den > 0).double() + (iou_bg_den > 0).double()
    return (iou_fg * (iou_fg_den > 0) + iou_bg * (iou_bg_den > 0)) / n_cls.clamp_min(1)


def _dice(fg_ge: torch.Tensor, bg_ge: torch.Tensor, n_fg: float, n_bg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled Dice per τ_l: foreground 2TP/(2TP+FP+FN), background 2TN/(2TN+FN+FP)
    (Eqs. 14-15 of max-min-uncertainty, with pixels pooled over the split)."""
    tn = n_bg - bg_ge
    fn = n_fg - fg_ge
    d_fg = 2 * fg_ge / (2 * fg_ge + bg_ge + fn).clamp_min(1e-12)
    d_bg = 2 * tn / (2 * tn + fn + bg_ge).clamp_min(1e-12)
    return d_fg, d_bg


def pixel_metrics(
    cams: Any, masks: Any, ignore_index: int = IGNORE_INDEX, tau: float | None = None
) -> dict[str, float]:
    """One call on whole tensors/arrays: ``cams`` N×H×W in [0, 1], ``masks`` N×H×W uint8
    (0 / 1 / ``ignore_index``). Same numbers and keys as :class:`PixelAccumulator`."""
    acc = PixelAccumulator(ignore_index=ignore_index, track_regions=False)
    acc.update(torch.as_tensor(cams), torch.as_tensor(masks))
    return acc.compute(tau=tau)
