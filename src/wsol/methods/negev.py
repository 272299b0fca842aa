"""NEGEV: negative evidence (Belharbi et al., MIDL 2022, "Negative evidence matters in
interpretable histology image classification"; wsol-histology-survey.txt §2.2.1).

F-CAM's architecture (:mod:`wsol.methods.fcam`: the classifier's encoder, a U-Net decoder
to S = [S¹ background, S² foreground], seeds sampled from a CAM) with two changes:

- **negative evidence**: every pixel of an image whose label is in ``negative_classes``
  (a class whose images hold no ROI: CAMELYON16's ``normal``; not GlaS's ``benign``, whose
  glands are ROIs) is trained to background, the full cross-entropy H(0, S_p) averaged
  over those images' pixels (the code's ``NegativeSamplesNegev``, weight 1). When some class
  is negative, the seeds and size terms use the other images only (the code's
  ``apply_negative_samples = False`` on sets with negative samples);
- **joint training**: the classifier keeps training with its cross-entropy
  (``freeze_classifier: false``, the code's default ``freeze_cl: False``), initialised from
  the ``best_cls`` checkpoint of the classifier run (``negev_ptretrained_cl_cp``), while the
  seed CAMs come from a frozen copy of its ``best_loc`` checkpoint
  (``negev_ptretrained_loc_cp``: ``seed_checkpoint``). With ``classifier: null`` (trained
  from scratch) the seeds come from the classifier being trained, in eval mode.

Named terms: ``cls_ce``, ``seed_ce``, ``negative_ce`` (+ ``crf``, ``size_bg``/``size_fg``
when enabled), ``total``, and the ``fg_size`` diagnostic — see :mod:`wsol.methods.fcam`.

Defaults follow the NEGEV code (github.com/sbelharbi/negev, ``dlib/configure/config.py``,
``dlib/process/instantiators.py:get_negev_loss``, ``dlib/learning/train_wsol.py:_get_sl``):

- seeds: its threshold seeder (``MBSeederSLNEGEV`` = F-CAM's ``MBSeederSLFCAMS``) with the
  values it is built with (``sl_min = sl_max = 10``, ``sl_min_p = 0.2``, ``sl_fg_erode_k = 11``
  once, ``sl_ksz = 1``): 10 foreground pixels drawn from the Otsu region of the uint8 CAM
  eroded by 11×11, 10 background pixels from its 20 % lowest pixels. (The config also lists
  ``sl_ng_min_ext = sl_ng_max_ext = 1000``, "the extent of pixels to consider"; no seeder the
  code builds for NEGEV reads them. ``seeds.fg_extent`` / ``seeds.bg_extent`` give that
  variant: draw among the k highest / lowest pixels.)
- CRF and size terms off (``crf_ng`` and ``max_sizepos_ng`` default False, and the README's
  GlaS command leaves them off); when enabled they take F-CAM's values (λ = 2e-9, σ 15/100;
  t0 = 1, ×1.01, t_max = 10).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.methods._seeds import SeedParams
from wsol.methods.base import register
from wsol.methods.fcam import FCAM, FCAMParams


def negev_seeds() -> SeedParams:
    """The NEGEV code's threshold seeder (see the module docstring)."""
    return SeedParams(fg_count=10, bg_count=10, bg_fraction=0.2, fg_erode=11, dilate=1, quantize=True)


class NEGEVParams(FCAMParams):
    freeze_classifier: bool = Field(False, description="false: the classifier trains jointly (NEGEV code default)")
    seed_checkpoint: str | None = Field(
        "best_loc", description="checkpoint of the classifier run the seed CAMs come from (code: best_loc)")
    seeds: SeedParams = Field(default_factory=negev_seeds, description="seed sampling (NEGEV code's threshold seeder)")
    crf_weight: float = Field(0.0, ge=0, description="λ of the CRF term (code: off; 2e-9 when on)")
    size_constraint: bool = Field(False, description="absolute size constraints (code: off)")
    negative_classes: list[int | str] = Field(
        default_factory=list, description="classes whose images hold no ROI (ids or names): all pixels -> background")
    negative_weight: float = Field(1.0, ge=0, description="weight of the negative-evidence term (code: 1)")


@register
class NEGEV(FCAM):
    name = "negev"
    Params = NEGEVParams
    #: the classifier is initialised from B-CL (``negev_ptretrained_cl_cp``)
    default_checkpoint: ClassVar[str] = "best_cls"
    #: the contract test trains from scratch (``classifier: null``) with class 0 negative
    contract_params: ClassVar[dict[str, Any]] = {"classifier": None, "classifier_method": "cam",
                                                 "negative_classes": [0]}
    negative_ids: torch.Tensor

    def __init__(self, params: NEGEVParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        ids = [self._class_id(c) for c in params.negative_classes]
        if len(set(ids)) == num_classes:
            raise ConfigError(f"negev: negative_classes {params.negative_classes} covers every class; "
                              "at least one class must hold ROIs")
        self.register_buffer("negative_ids", torch.tensor(sorted(set(ids)), dtype=torch.long), persistent=False)

    def _class_id(self, c: int | str) -> int:
        if isinstance(c, int):
            if not 0 <= c < self.num_classes:
                raise ConfigError(f"negev: negative class id {c} is not in [0, {self.num_classes - 1}]")
            return c
        if self.class_names is None:
            raise ConfigError(f"negev: negative class {c!r} given by name but the class names are unknown "
                              "(classifier: null); give class ids, e.g. negative_classes: [0]")
        if c not in self.class_names:
            raise ConfigError(f"negev: unknown negative class {c!r}; classes: {', '.join(self.class_names)}")
        return self.class_names.index(c)

    def negative(self, labels: torch.Tensor) -> torch.Tensor:
        """Images whose label is a negative class (B bool)."""
        return torch.isin(labels, self.negative_ids.to(labels.device))

    def positive(self, labels: torch.Tensor) -> torch.Tensor:
        return ~self.negative(labels)

    def extra_terms(self, seg: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        neg = self.negative(labels)
        if not neg.any():
            return {"negative_ce": seg.sum() * 0.0}
        target = torch.zeros((int(neg.sum()), *seg.shape[-2:]), dtype=torch.long, device=seg.device)
        # NEGEV negative evidence: H(0, S_p) for every pixel p of a negative image (mean)
        return {"negative_ce": self.params.negative_weight * F.cross_entropy(seg[neg].float(), target)}
