"""Whole-slide image reading: a thin adapter over tiffslide (default) or openslide.

Both expose the same pyramid (level 0 = full resolution); :class:`Slide` hides their small
differences and turns every failure into a :class:`DataError` that names the file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from wsol.errors import DataError

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms")
BACKENDS = ("auto", "tiffslide", "openslide")


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(
        f"{path}: cannot read the slide ({type(e).__name__}: {e}); the file is truncated or not a "
        "pyramidal slide — re-download it, or move it out of the --wsi folder"
    )


class Slide:
    """An open slide. ``read(x, y, w, h, level)`` returns an H×W×3 uint8 RGB array; ``x, y``
    are level-0 pixel coordinates of the top-left corner (the openslide convention), ``w, h``
    the size at ``level``. Regions outside the slide read as black (saturation 0 = no tissue).
    """

    def __init__(self, path: str | Path, backend: str = "auto"):
        self.path = Path(path)
        if backend not in BACKENDS:
            raise DataError(f"slide backend {backend!r} is unknown; valid: {', '.join(BACKENDS)}")
        if not self.path.is_file():
            raise DataError(f"{self.path}: slide file not found; check the --wsi folder")
        use_openslide = backend == "openslide"
        if use_openslide and importlib.util.find_spec("openslide") is None:
            raise DataError("slide backend 'openslide' needs the openslide-python package "
                            "(pip install openslide-python openslide-bin); or use the default tiffslide backend")
        try:
            if use_openslide:
                import openslide

                self._slide = openslide.OpenSlide(str(self.path))
            else:
                if importlib.util.find_spec("tiffslide") is None:
                    raise DataError("reading whole-slide images needs tiffslide: pip install 'wsol[wsi]'")
                import tiffslide

                self._slide = tiffslide.TiffSlide(str(self.path))
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in self._slide.level_dimensions)
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._slide.level_downsamples)
        except DataError:
            raise
        except Exception as e:  # any backend/decoder failure: the file is the problem
            raise _unreadable(self.path, e) from None
        self._openslide = use_openslide
        if not self.level_dimensions or min(min(d) for d in self.level_dimensions) <= 0:
            raise DataError(f"{self.path}: the slide has no readable pyramid level")

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        try:
            if self._openslide:
                arr = np.asarray(self._slide.read_region((int(x), int(y)), int(level), (int(w), int(h))).convert("RGB"))
            else:
                arr = np.asarray(self._slide.read_region((int(x), int(y)), int(level), (int(w), int(h)), as_array=True))
        except Exception as e:
            raise _unreadable(self.path, e) from None
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.shape[:2] != (h, w):
            raise DataError(f"{self.path}: read a {arr.shape[1]}×{arr.shape[0]} region at level {level} where "
                            f"{w}×{h} was asked; the slide is damaged — re-download it")
        return np.ascontiguousarray(arr)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of pyramid ``level`` as one RGB array (used at a low level only)."""
        w, h = self.level_dimensions[level]
        return self.read(0, 0, w, h, level)

    def close(self) -> None:
        try:
            self._slide.close()
        except Exception:  # closing a broken handle must not hide the real error
            pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
