"""Post-processing of CAMs: dense-CRF refinement (Krähenbühl & Koltun 2011), as a function
(:func:`dense_crf`) and as a localiser wrapper for evaluation (:class:`CRFLocalizer`)."""

from wsol.postprocess.crf import PRESETS, DenseCRFParams, dense_crf, resolve_params
from wsol.postprocess.localizer import CRFLocalizer, crf_tag, with_crf

__all__ = ["PRESETS", "CRFLocalizer", "DenseCRFParams", "crf_tag", "dense_crf", "resolve_params", "with_crf"]
