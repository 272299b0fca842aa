"""``prepare_camelyon16``: the CAMELYON16-P512 patch benchmark from the challenge's slides
(survey Appendix B; max-min-uncertainty §4 "Camelyon16-P512").

Protocol, as implemented:

1. Slides are ``<name>.tif`` under ``wsi_dir`` (searched recursively); a slide with an ASAP
   annotation ``<name>.xml`` under ``annotations_dir`` is metastatic ("tumor"), one without is
   normal. Slides are split into train / valcl / test at slide level, by default keeping the
   challenge's own partition (survey §3.3.2: 270 training slides ``normal_XXX`` /
   ``tumor_XXX``, 129 test slides ``test_XXX`` with test_114 dropped), valcl drawn from the
   training slides only (per kind, ``val_fraction``); the challenge's ``reference.csv``,
   when found under ``wsi_dir`` or ``annotations_dir``, names the test slides and their
   class. ``split_csv`` (rows ``slide,split``) gives any split exactly; ``split="random"``
   re-splits every slide at random with ``fractions`` (explicit only: official test slides
   can then land in training). See :mod:`wsol.data.wsi.sampling`.
2. Every slide is cut into a non-overlapping grid of ``patch_size``² patches at level 0. A patch
   is a tissue candidate when Otsu's tissue mask at the low level ``level_tissue`` covers at
   least ``pt`` of it; the tissue fraction is checked again on the level-0 pixels.
3. Tumour slides: the metastatic fraction pm of a candidate is measured on its rasterised
   annotation; pm >= p0 keeps it. Category 1 (p0 <= pm <= p1) is kept whole; category 2
   (pm > p1) is cut down to ``n * pn`` patches by picking a histogram bin (width
   ``bin_width``) uniformly, then a patch uniformly in the bin. The text says "assume we have
   n patches in Category 1"; we read n as the number of category-1 patches of the whole split
   (all tumour slides of the set together), which is also how the authors' released sampler
   computes it (calibration "performed on the ENTIRE metastatic patches of the current set"),
   so ``n * pn`` is taken per split, rounded down.
4. Normal slides: as many normal patches as metastatic ones in the split, n_m / h per normal
   slide (h normal slides; the remainder spread at random, and the shortfall of a slide with too
   little tissue moved to the others), drawn uniformly without repetition among its tissue
   candidates, each re-checked at level 0. Their masks are all zero.
5. ``valpx`` (B-LOC selection) is ``valpx_per_class`` patches per class drawn from ``valcl``
   (survey §3.3.2: "we randomly select 5 samples per class from the validation set").

Output (``out_dir``): ``images/<slide>/<slide>_<x>_<y>.png``, ``masks/...`` (0/255 PNG),
``metadata/<split>/`` in the wsolevaluation layout, ``metadata/class_names.txt`` and
``summary.json``. Work is cached per slide in ``out_dir/.work`` so an interrupted run resumes
where it stopped; the output folders are built in ``.work/staging`` and renamed into place at
the end. A finished folder prepared with the same settings is returned as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsol.data.wsi.annotations import read_asap_xml
from wsol.data.wsi.sampling import (
    OFFICIAL_VAL_FRACTION,
    assign_splits,
    grid,
    official_part,
    official_splits,
    pick_category2,
    read_reference_csv,
    read_split_csv,
    rng_for,
    spread,
)
from wsol.data.wsi.slide import BACKENDS, SLIDE_SUFFIXES, Slide
from wsol.data.wsi.tissue import cell_fractions, otsu_threshold, saturation, tissue_mask
from wsol.errors import ConfigError, DataError
from wsol.fileio import write_json

log = logging.getLogger(__name__)

CLASS_NAMES = ("normal", "metastatic")
SPLITS = ("train", "valcl", "valpx", "test")
FORMAT_VERSION = 1
MAX_TISSUE_LEVEL_PIXELS = 64_000_000

#: ``progress(stage, done, total, name)``; stage is "scan" (tissue + tumour fractions of every
#: slide), "normal" (level-0 check of the drawn normal patches) or "write" (patch files).
Progress = Callable[[str, int, int, str], None]


@dataclass
class Summary:
    """Counts of a prepared folder. ``counts[split]`` has the keys of :attr:`KEYS`;
    ``slides[split]`` = {"tumor": [...], "normal": [...]}; ``reused``: slides whose scan came
    from the ``.work`` cache in this run (-1 when the whole folder was already complete)."""

    out_dir: Path
    counts: dict[str, dict[str, int]]
    slides: dict[str, dict[str, list[str]]]
    params: dict[str, Any] = field(default_factory=dict)
    reused: int = 0

    KEYS = ("slides_tumor", "slides_normal", "normal", "metastatic", "cat1", "cat2", "cat2_available", "total")
    COLUMNS = ("split", "tumour slides", "normal slides", "normal", "metastatic", "cat. 1", "cat. 2", "total")

    def rows(self) -> list[tuple]:
        """One row per split (in :attr:`COLUMNS` order) and a last "all" row summing train,
        valcl and test (valpx is drawn from valcl, so it is not added twice)."""
        keys = ("slides_tumor", "slides_normal", "normal", "metastatic", "cat1", "cat2", "total")
        rows = [(s, *(self.counts[s][k] for k in keys)) for s in SPLITS]
        rows.append(("all", *(sum(self.counts[s][k] for s in ("train", "valcl", "test")) for k in keys)))
        return rows

    def to_json(self) -> dict:
        return {"counts": self.counts, "slides": self.slides, "params": self.params}

    @classmethod
    def load(cls, out_dir: str | Path) -> Summary:
        path = Path(out_dir) / "summary.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(out_dir=Path(out_dir), counts=d["counts"], slides=d["slides"], params=d.get("params", {}))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a readable CAMELYON16-P512 summary ({e}); prepare the folder again") from None


# ---------------------------------------------------------------------------- helpers


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fingerprint(path: Path | None) -> list | None:
    if path is None:
        return None
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_png(path: Path, arr: np.ndarray) -> None:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise DataError(f"{path}: cannot write the patch (disk full or no permission?)")


@dataclass
class SlideInfo:
    name: str
    path: Path
    xml: Path | None

    @property
    def kind(self) -> str:
        return "tumor" if self.xml is not None else "normal"


def discover(wsi_dir: str | Path, annotations_dir: str | Path, exclude: Sequence[str] = ()) -> list[SlideInfo]:
    """Slides under ``wsi_dir`` paired with ``<name>.xml`` under ``annotations_dir``."""
    wsi_dir, annotations_dir = Path(wsi_dir), Path(annotations_dir)
    if not wsi_dir.is_dir():
        raise DataError(f"{wsi_dir}: slide folder (--wsi) not found; give the folder holding the CAMELYON16 .tif slides")
    if not annotations_dir.is_dir():
        raise DataError(f"{annotations_dir}: annotation folder (--annotations) not found; give the folder holding "
                        "the CAMELYON16 lesion annotations (tumor_001.xml, ...)")
    skip = set(exclude)
    slides: dict[str, Path] = {}
    for p in sorted(wsi_dir.rglob("*")):
        hidden = any(part.startswith(".") for part in p.relative_to(wsi_dir).parts)
        if hidden or not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        if p.stem.lower().endswith("_mask") or p.stem in skip:
            log.info("%s: skipped (%s)", p, "excluded" if p.stem in skip else "a ground-truth mask, not a slide")
            continue
        if p.stem in slides:
            raise DataError(f"{p}: slide name {p.stem!r} also used by {slides[p.stem]}; slide names must be unique")
        slides[p.stem] = p
    if not slides:
        raise DataError(f"{wsi_dir}: no slide found (looked for {', '.join(SLIDE_SUFFIXES)} files, recursively)")
    xmls: dict[str, Path] = {}
    for p in sorted(annotations_dir.rglob("*.xml")):
        if p.stem in skip:
            continue
        if p.stem in xmls:
            raise DataError(f"{p}: annotation {p.stem!r} also given by {xmls[p.stem]}; keep one")
        if p.stem not in slides:
            raise DataError(f"{p}: annotation for slide {p.stem!r}, but there is no slide {p.stem}.tif under "
                            f"{wsi_dir}; add the slide or remove the annotation")
        xmls[p.stem] = p
    out = []
    for name, path in slides.items():
        if name.lower().startswith("tumor") and name not in xmls:
            raise DataError(f"{path}: tumour slide without annotation; expected {name}.xml under {annotations_dir} "
                            f"(add it, or exclude the slide)")
        out.append(SlideInfo(name, path, xmls.get(name)))
    return out


# ------------------------------------------------------------ per-slide jobs (workers)


def _scan_slide(job: dict) -> dict:
    """Tissue candidates of a slide, and for a tumour slide every candidate with pm >= p0 that
    passes the level-0 tissue check: [x, y, tumour pixel count, level-0 tissue fraction]."""
    cache = Path(job["cache"])
    cached = _load_json(cache)
    if cached is not None and cached.get("key") == job["key"]:
        cached["cached"] = True
        return cached
    ps, pt, p0 = job["patch_size"], job["pt"], job["p0"]
    area = ps * ps
    ann = read_asap_xml(job["xml"]) if job["xml"] else None
    with Slide(job["path"], job["backend"]) as s:
        level = min(int(job["level_tissue"]), s.level_count - 1)
        lw, lh = s.level_dimensions[level]
        if lw * lh > MAX_TISSUE_LEVEL_PIXELS:
            raise DataError(f"{job['path']}: its lowest pyramid level ({level}) is {lw}×{lh} pixels, too large to "
                            "detect tissue on; the slide lacks a low-resolution pyramid — re-save it as a pyramidal "
                            "TIFF (e.g. with vips tiffsave --pyramid --tile)")
        low = s.read_level(level)
        thr = otsu_threshold(saturation(low))
        low_mask = tissue_mask(low, thr)
        width, height = s.dimensions
        xs, ys = grid(width, height, ps)
        frac = cell_fractions(low_mask, s.level_downsamples[level], xs, ys, ps) if len(xs) and len(ys) else np.zeros((0, 0))
        iy, ix = np.nonzero(frac >= pt)
        cx, cy = xs[ix], ys[iy]
        out: dict[str, Any] = {"key": job["key"], "name": job["name"], "size": [width, height], "level": level,
                               "threshold": thr, "candidates": int(len(cx))}
        if ann is None:
            out["kind"] = "normal"
            out["cells"] = np.stack([cx, cy], 1).tolist()
        else:
            out["kind"] = "tumor"
            patches = []
            touch = ann.touches(cx, cy, ps, ps)
            for x, y in zip(cx[touch].tolist(), cy[touch].tolist()):
                count = int(ann.rasterize(x, y, ps, ps).sum())
                if count / area < p0:
                    continue
                tf = float(tissue_mask(s.read(x, y, ps, ps), thr).mean())
                if tf >= pt:
                    patches.append([x, y, count, round(tf, 6)])
            out["patches"] = patches
    write_json(cache, out)
    out["cached"] = False
    return out


def _draw_normal(job: dict) -> dict:
    """The first ``quota`` tissue patches of a normal slide in a seeded random order of its
    candidates, each checked at level 0; the scan state is cached so a larger quota (or a
    re-run) continues where it stopped."""
    cache = Path(job["cache"])
    state = _load_json(cache)
    if state is None or state.get("key") != job["key"]:
        state = {"key": job["key"], "pos": 0, "accepted": []}
    cells = job["cells"]
    quota = int(job["quota"])
    if len(state["accepted"]) < quota and state["pos"] < len(cells):
        order = rng_for(job["seed"], "normal", job["name"]).permutation(len(cells))
        ps, pt, thr = job["patch_size"], job["pt"], job["threshold"]
        with Slide(job["path"], job["backend"]) as s:
            while len(state["accepted"]) < quota and state["pos"] < len(cells):
                x, y = cells[int(order[state["pos"]])]
                state["pos"] += 1
                tf = float(tissue_mask(s.read(x, y, ps, ps), thr).mean())
                if tf >= pt:
                    state["accepted"].append([x, y, round(tf, 6)])
        write_json(cache, state)
    return {"name": job["name"], "accepted": state["accepted"][:quota],
            "exhausted": len(state["accepted"]) < quota}


def _write_slide(job: dict) -> dict:
    """Write the chosen patches of one slide (image + 0/255 mask PNG) into the staging folder;
    a slide whose marker matches is skipped (resume)."""
    staging = Path(job["staging"])
    marker = staging / ".done" / f"{job['name']}.json"
    done = _load_json(marker)
    if done is not None and done.get("key") == job["key"]:
        return {"name": job["name"], "cached": True}
    img_dir, mask_dir = staging / "images" / job["name"], staging / "masks" / job["name"]
    for d in (img_dir, mask_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    ps = job["patch_size"]
    ann = read_asap_xml(job["xml"]) if job["xml"] else None
    with Slide(job["path"], job["backend"]) as s:
        for x, y, label in job["entries"]:
            stem = f"{job['name']}_{x}_{y}.png"
            _write_png(img_dir / stem, s.read(x, y, ps, ps))
            if label == 1:
                assert ann is not None
                mask = ann.rasterize(x, y, ps, ps) * np.uint8(255)
            else:
                mask = np.zeros((ps, ps), np.uint8)
            _write_png(mask_dir / stem, mask)
    write_json(marker, {"key": job["key"]})
    return {"name": job["name"], "cached": False}


def _init_worker() -> None:
    # OpenCV's own thread pool is not fork-safe; one thread per worker process is enough here
    cv2.setNumThreads(1)


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """One process pool for a whole preparation (None = run inline). Workers are forked where
    the platform allows it (Linux: no re-import of the package per worker), spawned elsewhere."""
    if workers == 1:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker)


def _run(fn: Callable[[dict], dict], jobs: list[dict], pool: ProcessPoolExecutor | None, stage: str,
         progress: Progress | None) -> list[dict]:
    """Run ``fn`` over ``jobs`` (inline without a pool); results in job order; the first
    error is raised (the caller's pool shutdown cancels what has not started)."""
    results: list[dict | None] = [None] * len(jobs)
    if progress:
        progress(stage, 0, len(jobs), "")
    if pool is None or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if progress:
                progress(stage, i + 1, len(jobs), job["name"])
        return results  # type: ignore[return-value]
    futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
    pending = set(futures)
    done_n = 0
    while pending:
        finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for f in finished:
            i = futures[f]
            results[i] = f.result()  # re-raises the worker's DataError
            done_n += 1
            if progress:
                progress(stage, done_n, len(jobs), jobs[i]["name"])
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------- driver


def _check_params(patch_size: int, level_tissue: int, pt: float, p0: float, p1: float, pn: float,
                  bin_width: float, fractions: Sequence[float], valpx_per_class: int, workers: int,
                  backend: str, split: str, val_fraction: float) -> None:
    def bad(name: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"prepare_camelyon16: {name}={value!r}; expected {expected}")

    if int(patch_size) < 8:
        raise bad("patch_size", patch_size, "an integer >= 8 (the protocol uses 512)")
    if int(level_tissue) < 0:
        raise bad("level_tissue", level_tissue, "a pyramid level >= 0 (the protocol uses 6)")
    for name, v in (("pt", pt), ("pn", pn)):
        if not 0.0 <= v <= 1.0:
            raise bad(name, v, "a fraction in [0, 1]")
    if not 0.0 < p0 <= p1 < 1.0:
        raise bad("p0, p1", (p0, p1), "0 < p0 <= p1 < 1 (the protocol uses 0.2 and 0.5)")
    if not 0.0 < bin_width <= 1.0 - p1:
        raise bad("bin_width", bin_width, f"a width in (0, 1 - p1] = (0, {1 - p1:g}] (the protocol uses 0.05)")
    if split == "random" and (len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6
                              or fractions[0] <= 0):
        raise bad("fractions", tuple(fractions), "three fractions (train, valcl, test) >= 0 summing to 1, train > 0")
    if not 0.0 <= val_fraction < 1.0:
        raise bad("val_fraction", val_fraction, "a fraction in [0, 1) of the training slides")
    if int(valpx_per_class) < 0:
        raise bad("valpx_per_class", valpx_per_class, "an integer >= 0")
    if int(workers) < 1:
        raise bad("workers", workers, "an integer >= 1")
    if backend not in BACKENDS:
        raise bad("backend", backend, f"one of {', '.join(BACKENDS)}")


SPLIT_MODES = ("official", "random", "csv")
RANDOM_FRACTIONS = (0.5, 0.18, 0.32)
#: tumour test slides without a pixel-level annotation (survey §3.3.2, footnote 7)
UNANNOTATED_TUMOUR = ("test_114",)


def _split_mode(split: str | None, split_csv: str | Path | None, fractions: Sequence[float] | None,
                val_fraction: float | None) -> str:
    """The split mode; an option that the mode would not apply is a ConfigError."""
    mode = split if split is not None else ("csv" if split_csv is not None else "official")
    if mode not in SPLIT_MODES:
        raise ConfigError(f"prepare_camelyon16: split={split!r}; expected one of {', '.join(SPLIT_MODES)} "
                          "(official: the challenge's train/test slides, survey §3.3.2)")
    if mode == "csv" and split_csv is None:
        raise ConfigError("prepare_camelyon16: split='csv' needs split_csv (rows 'slide,split')")
    if mode != "csv" and split_csv is not None:
        raise ConfigError(f"prepare_camelyon16: split_csv is given but split={mode!r}; leave split unset (or 'csv') "
                          "to use the CSV")
    if mode != "random" and fractions is not None:
        raise ConfigError(f"prepare_camelyon16: fractions apply to split='random' only (split is {mode!r}); "
                          "remove them, or ask for the random split explicitly")
    if mode != "official" and val_fraction is not None:
        raise ConfigError(f"prepare_camelyon16: val_fraction applies to split='official' only (split is {mode!r})")
    return mode


def _find_reference(*folders: Path) -> Path | None:
    found = sorted({p.resolve() for d in folders for p in Path(d).rglob("reference.csv")})
    if len(found) > 1:
        raise DataError(f"several reference.csv files found ({', '.join(map(str, found))}); keep the challenge's "
                        "testing/reference.csv only, or give the split with split_csv")
    return found[0] if found else None


def slide_splits(slides: list[SlideInfo], mode: str, seed: int, fractions: Sequence[float], val_fraction: float,
                 split_csv: Path | None, search: Sequence[Path] = ()) -> tuple[dict[str, str], str]:
    """Slide name -> "train" / "valcl" / "test" for ``mode`` (see the module docstring), and a
    line saying where the split comes from (kept in summary.json)."""
    kinds: dict[str, list[str]] = {"tumor": [], "normal": []}
    for s in slides:
        kinds[s.kind].append(s.name)
    if mode == "random":
        return assign_splits(kinds, fractions, seed), f"random by kind, fractions {tuple(fractions)}, seed {seed}"
    if mode == "csv":
        assert split_csv is not None
        table = read_split_csv(split_csv)
        missing = sorted(s.name for s in slides if s.name not in table)
        if missing:
            raise DataError(f"{split_csv}: no split for slide(s) {', '.join(missing[:10])}"
                            f"{' ...' if len(missing) > 10 else ''}; add a row 'slide,split' for each, or exclude them")
        unused = sorted(set(table) - {s.name for s in slides})
        if unused:
            log.info("%s: %d slide(s) listed but not found (%s)", split_csv, len(unused), ", ".join(unused[:5]))
        return {s.name: table[s.name] for s in slides}, f"split CSV {split_csv}"
    # official
    reference = _find_reference(*search)
    classes = read_reference_csv(reference) if reference is not None else {}
    test = {n for n in classes} | {s.name for s in slides if official_part(s.name) == "test"}
    odd = sorted(s.name for s in slides if s.name not in test and official_part(s.name) is None)
    if odd:
        raise DataError(f"slide(s) {', '.join(odd[:10])} do not follow the challenge's names (normal_XXX / tumor_XXX "
                        "for the 270 training slides, test_XXX for the test slides); give the split with split_csv "
                        "(rows 'slide,split') or ask for split='random'")
    for s in slides:
        want = classes.get(s.name)
        if s.name.lower().startswith("normal_") and s.xml is not None:
            raise DataError(f"{s.xml}: an annotation for the official normal slide {s.name}; remove it (normal "
                            "slides hold no metastasis)")
        if (want == "tumor" or (not classes and s.name in UNANNOTATED_TUMOUR)) and s.xml is None:
            raise DataError(f"{s.path}: {s.name} is a tumour test slide"
                            f"{' in ' + str(reference) if want else ''} without annotation; exclude it (the survey "
                            "drops test_114, which has no pixel-level annotation) or add its annotation")
        if want == "normal" and s.xml is not None:
            raise DataError(f"{s.xml}: {reference} says {s.name} is normal, but it has a tumour annotation; fix one "
                            "of them")
    where = f"official (test slides from {reference})" if reference is not None else \
        "official (test slides by name, test_XXX)"
    return official_splits(kinds, test, val_fraction, seed), f"{where}, valcl {val_fraction:g} of the training slides"


def prepare_camelyon16(
    wsi_dir: str | Path,
    annotations_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    patch_size: int = 512,
    level_tissue: int = 6,
    pt: float = 0.10,
    p0: float = 0.20,
    p1: float = 0.50,
    pn: float = 0.01,
    bin_width: float = 0.05,
    fractions: Sequence[float] | None = None,
    valpx_per_class: int = 5,
    exclude: Sequence[str] = ("test_114",),
    backend: str = "auto",
    workers: int = 2,
    progress: Progress | None = None,
    split: str | None = None,
    val_fraction: float | None = None,
    split_csv: str | Path | None = None,
) -> Summary:
    """Build the CAMELYON16-P512 benchmark (see the module docstring) and return its counts.

    ``split``: "official" (default; the challenge's train / test slides kept apart, valcl =
    ``val_fraction`` of the training slides per kind, default 8,858 / (24,348 + 8,858) as in
    the survey's patch counts), "csv" (``split_csv``: rows ``slide,split``; the default when
    ``split_csv`` is given) or "random" (``fractions``: share of all slides, per kind, in
    train / valcl / test, default 0.5 / 0.18 / 0.32). An option the chosen split does not
    use is a ConfigError. ``exclude``: slide names to leave out (test_114 has no pixel-level
    annotation; the survey drops it). ``level_tissue`` larger than the slide's last level
    uses the last level.
    """
    mode = _split_mode(split, split_csv, fractions, val_fraction)
    fr = tuple(float(f) for f in (fractions if fractions is not None else RANDOM_FRACTIONS)) if mode == "random" else ()
    vf = float(val_fraction if val_fraction is not None else OFFICIAL_VAL_FRACTION) if mode == "official" else 0.0
    _check_params(patch_size, level_tissue, pt, p0, p1, pn, bin_width, fr, valpx_per_class, workers, backend, mode, vf)
    cfg = Settings(int(seed), int(patch_size), int(level_tissue), float(pt), float(p0), float(p1), float(pn),
                   float(bin_width), fr, int(valpx_per_class), tuple(sorted(exclude)), backend, mode, vf)
    out_dir = Path(out_dir)
    slides = discover(wsi_dir, annotations_dir, cfg.exclude)
    split_of, split_source = slide_splits(slides, mode, cfg.seed, fr, vf, Path(split_csv) if split_csv else None,
                                          (Path(wsi_dir), Path(annotations_dir)))
    params = {"format": FORMAT_VERSION, **asdict(cfg), "split_source": split_source}
    params.pop("backend")  # both backends read the same pixels
    prints = {s.name: [_fingerprint(s.path), _fingerprint(s.xml)] for s in slides}
    run_key = _key(params, prints, sorted(split_of.items()))
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another --out")
    if (out_dir / "summary.json").is_file():
        old = Summary.load(out_dir)
        if old.params.get("key") == run_key:
            log.info("%s: already prepared with these settings", out_dir)
            old.reused = -1
            return old
    elif out_dir.is_dir() and any(p.name != ".work" for p in out_dir.iterdir()):
        raise DataError(f"{out_dir}: folder is not empty and holds no CAMELYON16-P512 summary.json; "
                        "choose an empty or new --out folder")
    (out_dir / ".work").mkdir(parents=True, exist_ok=True)
    pool = _pool(int(workers))
    try:
        return _prepare(cfg, slides, out_dir, pool, progress, {**params, "key": run_key}, prints, split_of)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Settings:
    """The settings a prepared folder depends on (see :func:`prepare_camelyon16`)."""

    seed: int
    patch_size: int
    level_tissue: int
    pt: float
    p0: float
    p1: float
    pn: float
    bin_width: float
    fractions: tuple[float, ...]
    valpx_per_class: int
    exclude: tuple[str, ...]
    backend: str
    split: str = "official"
    val_fraction: float = OFFICIAL_VAL_FRACTION


Entry = tuple[str, int, int, int]  # (slide, x, y, label) with (x, y) the level-0 corner


def _prepare(cfg: Settings, slides: list[SlideInfo], out_dir: Path, pool: ProcessPoolExecutor | None,
             progress: Progress | None, params: dict, prints: dict, split_of: dict[str, str]) -> Summary:
    work = out_dir / ".work"
    common = {"patch_size": cfg.patch_size, "pt": cfg.pt, "backend": cfg.backend}
    by_name = {s.name: s for s in slides}
    # 1. scan every slide: tissue candidates, and metastatic fractions on tumour slides
    scan_jobs = [{**common, "name": s.name, "path": str(s.path), "xml": str(s.xml) if s.xml else None,
                  "level_tissue": cfg.level_tissue, "p0": cfg.p0, "cache": str(work / "scan" / f"{s.name}.json"),
                  "key": _key(prints[s.name], cfg.patch_size, cfg.level_tissue, cfg.pt, cfg.p0, FORMAT_VERSION)}
                 for s in slides]
    scans = {r["name"]: r for r in _run(_scan_slide, scan_jobs, pool, "scan", progress)}

    # 2. the slide-level split (computed by slide_splits, see the module docstring)
    kinds: dict[str, list[str]] = {"tumor": [], "normal": []}
    for s in slides:
        kinds[s.kind].append(s.name)

    chosen: dict[str, list[Entry]] = {}
    counts = {s: dict.fromkeys(Summary.KEYS, 0) for s in SPLITS}
    slide_lists: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "valcl", "test"):
        tumour = sorted(n for n in kinds["tumor"] if split_of[n] == split)
        normal = sorted(n for n in kinds["normal"] if split_of[n] == split)
        slide_lists[split] = {"tumor": tumour, "normal": normal}
        # 3. metastatic patches: category 1 whole, category 2 calibrated
        metastatic, c = _pick_metastatic(cfg, split, tumour, scans)
        # 4. normal patches: as many as metastatic ones, spread over the split's normal slides
        normals = _pick_normal(cfg, split, normal, len(metastatic), scans, by_name, work, pool, progress)
        chosen[split] = metastatic + normals
        counts[split].update(c, slides_tumor=len(tumour), slides_normal=len(normal), normal=len(normals))

    # 5. valpx (B-LOC selection): a few patches per class from valcl
    chosen["valpx"] = _pick_valpx(cfg, chosen["valcl"])
    pm_of = {(n, x, y): c / cfg.patch_size ** 2 for n in kinds["tumor"] for x, y, c, _ in scans[n]["patches"]}
    vp = chosen["valpx"]
    slide_lists["valpx"] = {k: sorted({e[0] for e in vp if by_name[e[0]].kind == k}) for k in ("tumor", "normal")}
    counts["valpx"].update(
        slides_tumor=len(slide_lists["valpx"]["tumor"]), slides_normal=len(slide_lists["valpx"]["normal"]),
        normal=sum(1 for e in vp if e[3] == 0), metastatic=sum(1 for e in vp if e[3] == 1),
        cat1=sum(1 for n, x, y, label in vp if label == 1 and pm_of[(n, x, y)] <= cfg.p1),
        cat2=sum(1 for n, x, y, label in vp if label == 1 and pm_of[(n, x, y)] > cfg.p1),
    )
    for split in SPLITS:
        counts[split]["total"] = counts[split]["normal"] + counts[split]["metastatic"]

    # 6. write the patches and the metadata into the staging folder, then swap it into place
    summary = Summary(out_dir=out_dir, counts=counts, slides=slide_lists, params=params,
                      reused=sum(1 for r in scans.values() if r.get("cached")))
    _write_all(cfg, chosen, by_name, prints, work / "staging", pool, progress)
    _publish(work / "staging", out_dir, summary)
    log.info("%s: CAMELYON16-P512 prepared (%s)", out_dir, ", ".join(f"{s}={counts[s]['total']}" for s in SPLITS))
    return summary


def _pick_metastatic(cfg: Settings, split: str, tumour: list[str], scans: dict) -> tuple[list[Entry], dict]:
    area = cfg.patch_size ** 2
    cat1: list[tuple[str, int, int, float]] = []  # (slide, x, y, metastatic fraction)
    cat2: list[tuple[str, int, int, float]] = []
    for n in tumour:
        for x, y, c, _ in scans[n]["patches"]:
            pm = c / area
            (cat1 if pm <= cfg.p1 else cat2).append((n, x, y, pm))
    # n * pn with n = |category 1| of the split (see the module docstring), rounded down
    k = int(len(cat1) * cfg.pn + 1e-9)
    if k > len(cat2):
        log.warning("%s: %d category-2 patches asked (n*pn) but only %d exist; taking them all", split, k, len(cat2))
    idx = pick_category2(np.array([e[3] for e in cat2]), k, cfg.p1, cfg.bin_width, rng_for(cfg.seed, "category2", split))
    picked2 = [cat2[i] for i in idx]
    entries = [(n, x, y, 1) for n, x, y, _ in cat1 + picked2]
    return entries, {"cat1": len(cat1), "cat2": len(picked2), "cat2_available": len(cat2), "metastatic": len(entries)}


def _pick_normal(cfg: Settings, split: str, names: list[str], need: int, scans: dict, by_name: dict,
                 work: Path, pool: ProcessPoolExecutor | None, progress: Progress | None) -> list[Entry]:
    """``need`` normal patches spread evenly over ``names``; a slide that runs out of tissue
    patches hands its shortfall to the others (in rounds, until filled or all exhausted)."""
    quota = spread(need, names, rng_for(cfg.seed, "spread", split))
    accepted: dict[str, list] = {n: [] for n in names}
    exhausted: set[str] = set()
    for round_ in range(len(names) + 1):
        jobs = [{"patch_size": cfg.patch_size, "pt": cfg.pt, "backend": cfg.backend, "name": n,
                 "path": str(by_name[n].path), "cells": scans[n]["cells"], "threshold": scans[n]["threshold"],
                 "quota": quota[n], "seed": cfg.seed, "cache": str(work / "normal" / f"{n}.json"),
                 "key": _key(scans[n]["key"], cfg.seed)}
                for n in names if n not in exhausted and quota[n] > len(accepted[n])]
        for r in _run(_draw_normal, jobs, pool, "normal", progress):
            accepted[r["name"]] = r["accepted"]
            if r["exhausted"]:
                exhausted.add(r["name"])
        short = need - sum(len(a) for a in accepted.values())
        open_names = [n for n in names if n not in exhausted]
        if short <= 0 or not open_names:
            break
        for n, extra in spread(short, open_names, rng_for(cfg.seed, "spread", split, str(round_))).items():
            quota[n] = len(accepted[n]) + extra
    got = sum(len(a) for a in accepted.values())
    if got < need:
        log.warning("%s: %d normal patches needed but the normal slides hold only %d", split, need, got)
    return [(n, x, y, 0) for n in names for x, y, _ in accepted[n]]


def _pick_valpx(cfg: Settings, valcl: list[Entry]) -> list[Entry]:
    rng = rng_for(cfg.seed, "valpx")
    out: list[Entry] = []
    for label in (0, 1):
        cands = sorted(e for e in valcl if e[3] == label)
        take = rng.permutation(len(cands))[: cfg.valpx_per_class]
        out += [cands[i] for i in sorted(take.tolist())]
    return out


def _write_all(cfg: Settings, chosen: dict[str, list[Entry]], by_name: dict, prints: dict, staging: Path,
               pool: ProcessPoolExecutor | None, progress: Progress | None) -> None:
    from wsol.data.metadata import MetaEntry, write_class_names, write_metadata

    per_slide: dict[str, list] = {}
    for split in ("train", "valcl", "test"):
        for n, x, y, label in chosen[split]:
            per_slide.setdefault(n, []).append([int(x), int(y), int(label)])
    jobs = [{"patch_size": cfg.patch_size, "backend": cfg.backend, "name": n, "path": str(by_name[n].path),
             "xml": str(by_name[n].xml) if by_name[n].xml else None, "entries": sorted(per_slide[n]),
             "staging": str(staging), "key": _key(prints[n], sorted(per_slide[n]), cfg.patch_size, FORMAT_VERSION)}
            for n in sorted(per_slide)]
    _run(_write_slide, jobs, pool, "write", progress)
    for sub in ("images", "masks"):  # drop slides written by an earlier, different run
        (staging / sub).mkdir(parents=True, exist_ok=True)
        for child in (staging / sub).iterdir():
            if child.name not in per_slide:
                shutil.rmtree(child)
    shutil.rmtree(staging / "metadata", ignore_errors=True)
    ps = cfg.patch_size
    for split in SPLITS:
        entries = [MetaEntry(image_id=f"images/{n}/{n}_{x}_{y}.png", label=label, size=(ps, ps),
                             masks=[(f"masks/{n}/{n}_{x}_{y}.png", None)]) for n, x, y, label in sorted(chosen[split])]
        if entries:
            write_metadata(staging, split, entries)
        else:
            log.warning("split %s is empty (no slide or no patch); it is not written", split)
    write_class_names(staging, CLASS_NAMES)


def _publish(staging: Path, out_dir: Path, summary: Summary) -> None:
    """Move the finished staging folders into ``out_dir``; summary.json goes last, so a folder
    with a summary is always complete."""
    from wsol.data.metadata import replace_dir

    write_json(staging / "summary.json", summary.to_json())
    (out_dir / "summary.json").unlink(missing_ok=True)
    for sub in ("images", "masks", "metadata"):
        replace_dir(staging / sub, out_dir / sub)
    os.replace(staging / "summary.json", out_dir / "summary.json")
    shutil.rmtree(staging, ignore_errors=True)
