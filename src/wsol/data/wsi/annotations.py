"""Tumour annotations of CAMELYON16 in the ASAP XML format, rasterised per patch.

Layout::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="61258.8" Y="103717.0" />
            ...

Groups "Tumor", "_0", "_1" (and CAMELYON17's "metastases") are metastatic regions; "_2",
"Exclusion" (and "normal") are regions carved out of them (e.g. normal tissue inside a
tumour outline). Coordinates are level-0 pixels; like the challenge's own tooling we round
vertices to the nearest pixel and rasterise with a filled polygon (boundary pixels included).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from wsol.errors import DataError

log = logging.getLogger(__name__)

POSITIVE_GROUPS = ("tumor", "_0", "_1", "metastases")
NEGATIVE_GROUPS = ("_2", "exclusion", "normal")
AREA_TYPES = ("polygon", "spline", "rectangle")
POINT_TYPES = ("dot", "pointset", "measurement")


@dataclass
class Annotations:
    """Polygons (each K×2 float, columns X, Y at level 0) and their bounding boxes."""

    path: Path
    positive: list[np.ndarray] = field(default_factory=list)
    negative: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pos_int = [np.rint(p).astype(np.int64) for p in self.positive]
        self._neg_int = [np.rint(p).astype(np.int64) for p in self.negative]
        self._pos_box = _boxes(self._pos_int)
        self._neg_box = _boxes(self._neg_int)

    def touches(self, x: np.ndarray, y: np.ndarray, w: int, h: int) -> np.ndarray:
        """Which of the level-0 regions (x, y, w, h) meet the bounding box of a tumour polygon."""
        x = np.asarray(x)[:, None]
        y = np.asarray(y)[:, None]
        b = self._pos_box
        if len(b) == 0:
            return np.zeros(x.shape[0], bool)
        hit = (x <= b[None, :, 2]) & (x + w - 1 >= b[None, :, 0]) & (y <= b[None, :, 3]) & (y + h - 1 >= b[None, :, 1])
        return cast(np.ndarray, hit.any(axis=1))

    def rasterize(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The h×w uint8 tumour mask (1 = metastatic) of the level-0 region at (x, y)."""
        mask = np.zeros((h, w), np.uint8)
        for polys, boxes, value in ((self._pos_int, self._pos_box, 1), (self._neg_int, self._neg_box, 0)):
            for poly, b in zip(polys, boxes):
                if b[0] > x + w - 1 or b[2] < x or b[1] > y + h - 1 or b[3] < y:
                    continue
                pts = (poly - np.array([x, y])).astype(np.int32)
                cv2.fillPoly(mask, [pts], value)
        return mask


def _boxes(polys: list[np.ndarray]) -> np.ndarray:
    if not polys:
        return np.zeros((0, 4), np.int64)
    return np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in polys], np.int64)


def _number(text: str | None, path: Path, name: str, attr: str) -> float:
    # some exported CAMELYON XMLs write a decimal comma ("1234,5")
    try:
        v = float(str(text).replace(",", "."))
    except ValueError:
        raise DataError(f"{path}: annotation {name!r}: coordinate {attr}={text!r} is not a number; "
                        "expected <Coordinate Order=.. X=.. Y=../> with numeric X and Y") from None
    if not np.isfinite(v):
        raise DataError(f"{path}: annotation {name!r}: coordinate {attr}={text!r} is not finite")
    return v


def read_asap_xml(path: str | Path) -> Annotations:
    """Parse an ASAP annotation file into positive (tumour) and negative (exclusion) polygons."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(f"{path}:{line}:{col}: the annotation XML does not parse ({e}); "
                        "re-download the CAMELYON16 lesion annotations or fix the file") from None
    if root.tag != "ASAP_Annotations":
        raise DataError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations> "
                        "(the CAMELYON16 lesion annotation format written by ASAP)")
    positive: list[np.ndarray] = []
    negative: list[np.ndarray] = []
    for i, a in enumerate(root.iterfind("./Annotations/Annotation")):
        name = a.get("Name", f"#{i}")
        group = (a.get("PartOfGroup") or "").strip()
        kind = (a.get("Type") or "polygon").strip().lower()
        if kind in POINT_TYPES:
            log.debug("%s: annotation %r of type %s has no area; skipped", path, name, kind)
            continue
        if kind not in AREA_TYPES:
            raise DataError(f"{path}: annotation {name!r} has Type={a.get('Type')!r}; expected one of "
                            f"{', '.join(t.capitalize() for t in AREA_TYPES)}")
        if group.lower() in POSITIVE_GROUPS:
            target = positive
        elif group.lower() in NEGATIVE_GROUPS:
            target = negative
        else:
            raise DataError(
                f"{path}: annotation {name!r} has PartOfGroup={group!r}; expected a tumour group "
                f"({', '.join(POSITIVE_GROUPS)}) or an exclusion group ({', '.join(NEGATIVE_GROUPS)}), "
                "case-insensitive; rename the group in ASAP"
            )
        coords = a.findall("./Coordinates/Coordinate")
        pts: list[tuple[float, float, float]] = []
        for c in coords:
            order = c.get("Order")
            pts.append((
                _number(order, path, name, "Order") if order is not None else float(len(pts)),
                _number(c.get("X"), path, name, "X"),
                _number(c.get("Y"), path, name, "Y"),
            ))
        if len(pts) < 3:
            raise DataError(f"{path}: annotation {name!r} has {len(pts)} coordinate(s); a region needs at least 3 "
                            "<Coordinate> elements — delete it in ASAP or complete it")
        arr = np.array(sorted(pts), dtype=np.float64)[:, 1:]
        target.append(arr)
    if not positive:
        raise DataError(f"{path}: no tumour polygon (PartOfGroup one of {', '.join(POSITIVE_GROUPS)}); "
                        "a slide with an annotation file is treated as metastatic — remove the file for a normal slide")
    return Annotations(path, positive, negative)
