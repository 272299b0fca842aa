"""Model-agnostic top-down CAMs (survey §2.3; F-CAM §4.1): the Grad-CAM family
(GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, LayerCAM) and the score-based
family (ScoreCAM, SSCAM, ISCAM, AblationCAM).

    with GradCAM(model, "layer4") as ex:
        cams = ex(images, targets)        # B×H×W in [0, 1]; targets default to the prediction

or ``build_extractor("gradcamplusplus", model, "layer4")(images, targets)``.
"""

from wsol.explain.base import Extractor, resolve_layer
from wsol.explain.gradient import GradCAM, GradCAMPlusPlus, GradientExtractor, LayerCAM, SmoothGradCAMPlusPlus, XGradCAM
from wsol.explain.registry import EXTRACTORS, available_extractors, build_extractor
from wsol.explain.score import ISCAM, SSCAM, AblationCAM, MaskScoreExtractor, ScoreCAM, ScoreExtractor

__all__ = [
    "EXTRACTORS",
    "AblationCAM",
    "Extractor",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientExtractor",
    "ISCAM",
    "LayerCAM",
    "MaskScoreExtractor",
    "SSCAM",
    "ScoreCAM",
    "ScoreExtractor",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "available_extractors",
    "build_extractor",
    "resolve_layer",
]
