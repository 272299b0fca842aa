"""MAXMIN: max-min uncertainty (Belharbi et al., max-min-uncertainty-histology.txt §2, Alg. 1).

Two networks of the same architecture (§3.3, footnote 4: two ResNet-18s):

- **localizer M** = backbone + WILDCAT head. Its class maps are combined into one
  foreground map ``M+ = Σ_k p̂_s(k|X)·map_k`` (the posterior-weighted sum that makes the
  winning-class selection differentiable, §3.3), upsampled bilinearly to the image size and
  min-max normalised **per image**, then pseudo-binarised, ``M+ := sigmoid(ω·(M+ − σ))``
  (Eq. 12); ``M− = 1 − M+``. M also classifies the full image (the auxiliary
  cross-entropy ``H(p, p̂_s)`` of Fig. 2).
- **classifier C** = backbone + WILDCAT head, fed ``X+ = X⊙M+`` and ``X− = X⊙M−``.
  ``share_backbone=True`` makes C use M's backbone (its head stays its own); §3.3 says
  "M and C share the same pre-trained backbone" and Table 3's parameter count (11.34 M,
  about one ResNet-18) agrees, while footnote 4 speaks of two ResNet-18s — both are offered.

Training loss (Eq. 7, plus the auxiliary term of Fig. 2), every term returned by name:

    fg_ce    H(p, p̂+)                                   Eq. 3
    bg_reg   λ·R(p̂−), R = −H(p̂−) (EEM, Eq. 8) or H(q, p̂−) (SEM, Eq. 9)
    size_fg  ψ_t(−s+)   } extended log-barrier on −s± ≤ 0; equals −(1/t)·log s± (Eq. 7)
    size_bg  ψ_t(−s−)   } while s± ≥ 1/t²
    loc_ce   H(p, p̂_s)                                  Fig. 2 (localizer's own loss)
    total    sum of the above
    fg_size  mean s+ (fraction of the image; a diagnostic, detached, not in ``total``)

Size terms: ``s± = Σ_z M±(z)`` (Eqs. 10-11) divided by the number of pixels (a fraction),
so the barrier's linear extension acts below ``1/t²`` of the image instead of below a
fraction of a pixel; the log term then differs from the paper's by the constant
``(1/t)·log|Ω|`` and has the same gradient (see ``wsol.losses.size``). The paper writes the
size term as the plain log-barrier; the extended form (Kervadec et al.) is used so that an
empty region costs a finite amount. ``t = min(t0·factor^epoch, t_max)`` is set from the epoch
by :meth:`MaxMin.on_epoch_start`.

Inference (Alg. 1, test): one pass of M gives the mask, C classifies ``X+``.
:meth:`MaxMin.localize` returns the graded ``M+`` before the sigmoid (PxAP needs graded
maps); :meth:`MaxMin.localize_binary` returns the mask binarised at 0.5
(``sigmoid(ω(M+−σ)) ≥ 0.5`` ⇔ ``M+ ≥ σ``) for the F1+/F1- scores. ``M+`` is the method's own
class-agnostic foreground (posterior-weighted), so ``targets`` does not change it.

Defaults are the paper's GlaS settings (§3.3): WILDCAT 5 modalities, kmax 0.3, kmin 0,
dropout 0.1, λ = 1e-7, σ = 0.15, ω = 5, t0 = 5, ×1.01/epoch, t_max = 10.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from wsol.cams import minmax_normalize, to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.losses import BarrierSchedule, absolute_size_constraint, region_size, uncertainty_regularizer
from wsol.methods.base import Method, Output, TrainState, register
from wsol.methods.wildcat import WildcatParams
from wsol.nn.backbones import build_backbone
from wsol.nn.pooling import WildcatHead


class GlasWildcatParams(WildcatParams):
    """WILDCAT head with max-min-uncertainty §3.3's GlaS defaults (shared by maxmin, pn, erase)."""

    modalities: int = Field(5, ge=1, description="class-related modalities per class (§3.3 GlaS: 5; CAMELYON16: 4)")
    kmax: int | float = Field(0.3, description="k+ as a fraction (float) or a count (int) (§3.3 GlaS: 0.3)")
    kmin: int | float | None = Field(0, description="k- (same forms; 0 = no min term) (§3.3 GlaS: 0)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the class maps (§3.3 GlaS: 0.1)")


def build_wildcat(p: WildcatParams, in_channels: int, num_classes: int) -> WildcatHead:
    return WildcatHead(
        in_channels, num_classes, modalities=p.modalities, kmax=p.kmax, kmin=p.kmin, alpha=p.alpha, dropout=p.dropout
    )


class MaxMinParams(GlasWildcatParams):
    regularizer: Literal["eem", "sem", "none"] = Field(
        "sem", description="background term R: eem = −H(p̂−) (Eq. 8), sem = H(q, p̂−) (Eq. 9), none = FG only"
    )
    reg_weight: float = Field(1e-7, ge=0, description="λ of Eq. 7 (§3.3: 1e-7)")
    size_constraint: bool = Field(True, description="absolute size constraints (ASC) of Eq. 7 on s+ and s−")
    sigma: float = Field(0.15, ge=0, le=1, description="σ of Eq. 12 (threshold of the pseudo-binary mask)")
    omega: float = Field(5.0, gt=0, description="ω of Eq. 12 (sigmoid sharpness)")
    t0: float = Field(5.0, gt=0, description="initial log-barrier t (§3.3 GlaS: 5, CAMELYON16: 10)")
    t_factor: float = Field(1.01, ge=1, description="t multiplied by this each epoch (GlaS 1.01, CAMELYON16 1.1)")
    t_max: float = Field(10.0, gt=0, description="cap on t (GlaS 10, CAMELYON16 30)")
    normalize_size: bool = Field(True, description="sizes s± as fractions of the image (False: pixel counts)")
    aux_weight: float = Field(1.0, ge=0, description="weight of the localizer's own cross-entropy H(p, p̂_s)")
    share_backbone: bool = Field(False, description="C reuses M's backbone (own head); False = two backbones")

    @model_validator(mode="after")
    def _check_t(self):
        if self.t_max < self.t0:
            raise ValueError(f"t_max ({self.t_max}) must be >= t0 ({self.t0})")
        return self


def foreground_map(maps: torch.Tensor, loc_logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Graded ``M+`` (B×H×W in [0, 1]): ``Σ_k softmax(loc_logits)_k · maps_k`` (§3.3), upsampled
    bilinearly to ``size`` and min-max normalised per image (each image on its own range)."""
    post = F.softmax(loc_logits, dim=1)
    fg = torch.einsum("bc,bchw->bhw", post, maps)
    fg = F.interpolate(fg[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalize(fg)


def pseudo_binary(fg: torch.Tensor, omega: float, sigma: float) -> torch.Tensor:
    """Eq. 12: ``sigmoid(ω·(M+ − σ))``, ≈ 1 where ``M+ > σ`` and ≈ 0 elsewhere."""
    return torch.sigmoid(omega * (fg - sigma))


def maxmin_terms(
    labels: torch.Tensor,
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor | None,
    loc_logits: torch.Tensor,
    mask: torch.Tensor,
    t: float,
    regularizer: Literal["eem", "sem", "none"] = "sem",
    reg_weight: float = 1e-7,
    size_constraint: bool = True,
    normalize_size: bool = True,
    aux_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Named terms of Eq. 7 (+ the localizer's cross-entropy) from the logits of C on X+
    (``pos_logits``) and X− (``neg_logits``, unused when ``regularizer='none'``), the
    localizer's logits on X and the pseudo-binary mask ``M+`` (B×H×W). ``total`` is the sum
    of all terms but the ``fg_size`` diagnostic."""
    terms: dict[str, torch.Tensor] = {"fg_ce": F.cross_entropy(pos_logits, labels)}  # Eq. 3
    if regularizer != "none":
        if neg_logits is None:
            raise ValueError(f"regularizer {regularizer!r} needs the classifier's logits on X−")
        terms["bg_reg"] = reg_weight * uncertainty_regularizer(neg_logits, regularizer)  # Eqs. 8-9
    if size_constraint:
        # Eq. 7 size terms via ψ_t on −s+ ≤ 0 and −s− ≤ 0, s± of Eqs. 10-11
        terms["size_fg"], terms["size_bg"] = absolute_size_constraint(mask, t, normalize=normalize_size)
    terms["loc_ce"] = aux_weight * F.cross_entropy(loc_logits, labels)  # Fig. 2, auxiliary
    terms["total"] = cast(torch.Tensor, sum(terms.values()))
    terms["fg_size"] = region_size(mask.detach(), normalize=True).mean()
    return terms


@register
class MaxMin(Method):
    name = "maxmin"
    Params = MaxMinParams
    backbone_prefixes = ("backbone.", "cls_backbone.")

    def __init__(self, params: MaxMinParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        if num_classes < 2:
            raise ConfigError(f"maxmin: the dataset has {num_classes} class(es); the uncertainty terms need >= 2")
        self.backbone = build_backbone(backbone)
        self.head = build_wildcat(params, self.backbone.out_channels, num_classes)
        self.cls_backbone = None if params.share_backbone else build_backbone(backbone)
        self.cls_head = build_wildcat(params, self.backbone.out_channels, num_classes)
        self.schedule = BarrierSchedule(params.t0, params.t_factor, params.t_max)
        self.t = self.schedule.t_at(0)

    # --- the two networks --------------------------------------------------------------
    def localizer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M on the full image: ``(logits B×C, class maps B×C×h×w)``."""
        return self.head(self.backbone(images))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """C's logits B×C on (masked) images."""
        trunk: nn.Module = self.backbone if self.cls_backbone is None else self.cls_backbone
        logits, _ = self.cls_head(trunk(images))
        return logits

    def masks(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass of M: ``loc_logits``, ``maps``, graded ``fg`` (M+ before Eq. 12) and the
        pseudo-binary ``mask`` (Eq. 12), both B×H×W."""
        loc_logits, maps = self.localizer(images)
        fg = foreground_map(maps, loc_logits, tuple(images.shape[-2:]))
        mask = pseudo_binary(fg, self.params.omega, self.params.sigma)
        return {"loc_logits": loc_logits, "maps": maps, "fg": fg, "mask": mask}

    # --- Method contract ------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Output:
        m = self.masks(images)
        logits = self.classify(images * m["mask"][:, None])  # Alg. 1 (test): C on X+
        extras = {"fg": m["fg"], "mask": m["mask"], "loc_logits": m["loc_logits"]}
        return Output(logits=logits, maps=m["maps"], extras=extras)

    def on_epoch_start(self, epoch: int) -> None:
        self.t = self.schedule.t_at(epoch)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        images, labels = batch.images, batch.labels
        p = self.params
        m = self.masks(images)  # Alg. 1 lines 1-2
        mask = m["mask"]
        pos_logits = self.classify(images * mask[:, None])  # lines 3-4: X+ = X⊙M+
        neg_logits = self.classify(images * (1.0 - mask)[:, None]) if p.regularizer != "none" else None
        return maxmin_terms(
            labels, pos_logits, neg_logits, m["loc_logits"], mask, self.t,
            regularizer=p.regularizer, reg_weight=p.reg_weight, size_constraint=p.size_constraint,
            normalize_size=p.normalize_size, aux_weight=p.aux_weight,
        )

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Graded ``M+`` (before Eq. 12) as a CAM; ``targets`` is not used (see module doc)."""
        return to_cam(self.masks(images)["fg"])

    @property
    def binary_threshold(self) -> float:
        """M+ ≥ σ ⇔ the Eq. 12 mask ≥ 0.5: the evaluator scores F1± of the graded M+ at σ,
        which is the F1 of the paper's binary mask."""
        return float(self.params.sigma)

    def localize_binary(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The pseudo-binary mask of Eq. 12 thresholded at 0.5, as a 0/1 float B×H×W."""
        return (self.masks(images)["mask"] >= 0.5).float()
