"""Post-processing of CAMs: dense-CRF refinement (Krähenbühl & Koltun 2011)."""

from wsol.postprocess.crf import PRESETS, DenseCRFParams, dense_crf, resolve_params

__all__ = ["PRESETS", "DenseCRFParams", "dense_crf", "resolve_params"]
