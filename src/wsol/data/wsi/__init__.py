"""Whole-slide images: slide reading (tiffslide / openslide), ASAP XML tumour annotations,
Otsu tissue detection, and the CAMELYON16-P512 patch protocol (survey Appendix B)."""

from wsol.data.wsi.annotations import Annotations, read_asap_xml
from wsol.data.wsi.prepare import CLASS_NAMES, Progress, Summary, discover, prepare_camelyon16
from wsol.data.wsi.slide import Slide

__all__ = ["Annotations", "read_asap_xml", "CLASS_NAMES", "Progress", "Summary", "discover", "prepare_camelyon16", "Slide"]
