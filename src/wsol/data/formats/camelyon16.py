"""CAMELYON16-P512: the patch benchmark of the survey (Appendix B) as prepared on disk by
``wsol data prepare camelyon16`` (:func:`wsol.data.wsi.prepare_camelyon16`).

The prepared folder is in the wsolevaluation metadata layout (``metadata/<split>/...``, paths
relative to the folder), with splits train / valcl / valpx / test and classes 0 = normal,
1 = metastatic. Normal patches have an all-zero mask: their records carry ``EMPTY_MASK`` so
the (all-zero) mask file is not decoded.
"""

from __future__ import annotations

from pathlib import Path

from wsol.data.metadata import metadata_dir, read_metadata
from wsol.data.options import NoOptions
from wsol.data.problems import LocatedError
from wsol.data.records import EMPTY_MASK, Record
from wsol.data.registry import DatasetSpec

NAME = "camelyon16-p512"
CLASS_NAMES = ["normal", "metastatic"]


def _check_root(root: Path, split: str) -> None:
    prepare = (f"prepare it with `wsol data prepare camelyon16 --wsi SLIDES --annotations XMLS --out {root}` "
               "(CAMELYON16 slides and lesion annotations, downloaded under the challenge's terms)")
    if not (root / "summary.json").is_file():
        raise LocatedError(root, f"not a prepared CAMELYON16-P512 folder (no summary.json); {prepare}")
    if not (metadata_dir(root, split) / "image_ids.txt").is_file():
        raise LocatedError(metadata_dir(root, split), f"split {split!r} is empty in this prepared folder (no slide "
                                                      f"or no patch fell in it; see {root / 'summary.json'}); use more slides or other "
                                                      "split fractions and prepare again")


def list_camelyon16(root: Path, split: str, opts: NoOptions) -> list[Record]:
    _check_root(root, split)
    records = read_metadata(root, split, require_localization=True)
    for rec in records:
        if rec.label not in (0, 1):
            raise LocatedError(rec.source, f"label {rec.label} is not a CAMELYON16-P512 class "
                                           "(0 = normal, 1 = metastatic)")
        if rec.label == 0:
            # a normal patch has no metastatic pixel: an all-zero mask, not decoded
            rec.mask = EMPTY_MASK
    return records


def camelyon16_class_names(root: Path, opts: NoOptions) -> list[str]:
    return list(CLASS_NAMES)


SPEC = DatasetSpec(
    name=NAME, read_records=list_camelyon16, read_classes=camelyon16_class_names, loc="mask",
    description="CAMELYON16 512×512 patches (normal / metastatic, pixel masks) prepared from the challenge's "
                "slides by `wsol data prepare camelyon16`",
    paper="wsol-histology-survey (Rony et al.), §3.3.2 and Appendix B; max-min-uncertainty §4 (Camelyon16-P512)",
)
