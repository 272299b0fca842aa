"""CAMELYON16-P512 preparation (survey Appendix B) on tiny pyramidal TIFFs and ASAP XMLs
written here, with counts worked out by hand, plus the camelyon16-p512 reader round-trip.

Fixture (every slide 1024×1024 at level 0, levels 1024/512/256/128, patch 128 -> 8×8 grid):

tumor_001: pink tissue on rows 0-5, white glass on rows 6-7; cell (row 2, col 5) is "dotted"
(one pink pixel in 64: all pink at the low level, 1.6% tissue at level 0). Tumour regions:
  A  rows 1-2, cols 1-3 (pm = 1), minus an exclusion on cell (1, 1)  -> 5 cells pm = 1
  B  39 of the 128 rows of every cell of row 4                      -> 8 cells pm = 0.305 (cat. 1)
  C  96 of the 128 rows of cols 0-3 of row 3                        -> 4 cells pm = 0.75
  D  13 rows of row 5                                               -> pm = 0.10 < p0, dropped
  E  rows 6-7 (no tissue)                                           -> dropped by the tissue test
  F  the dotted cell (pm = 1)                                       -> dropped by the level-0 re-check
  so category 1 = 8 and category 2 holds 9 (5 at pm 1, 4 at pm 0.75); with pn = 0.5,
  n·pn = 4 are kept: 12 metastatic patches.
normal_001: pink rows 0-3 (32 tissue cells). normal_002: 4 pink cells (row 0, cols 0-3) and
4 dotted cells (row 1, cols 0-3). 12 normal patches are spread 6 + 6; normal_002 only has 4
real tissue patches, so its shortfall of 2 goes to normal_001: 8 + 4.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsol.data.records import EMPTY_MASK, RecordDataset
from wsol.data.registry import get_dataset
from wsol.data.wsi import Slide, prepare_camelyon16
from wsol.errors import DataError

PS = 128
PINK = (230, 150, 200)
# the random slide split (explicit since the official split became the default): every slide in train
FAST = dict(patch_size=PS, level_tissue=6, pn=0.5, split="random", fractions=(1.0, 0.0, 0.0), workers=1)


def write_slide(path: Path, img: np.ndarray) -> None:
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), subifds=3, photometric="rgb")
        for k in (2, 4, 8):
            tw.write(np.ascontiguousarray(img[::k, ::k]), tile=(128, 128), subfiletype=1, photometric="rgb")


def canvas() -> np.ndarray:
    return np.full((1024, 1024, 3), 255, np.uint8)


def pink(img: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> None:
    img[r0 * PS:r1 * PS, c0 * PS:c1 * PS] = PINK


def dotted(img: np.ndarray, r: int, c: int) -> None:
    cell = img[r * PS:(r + 1) * PS, c * PS:(c + 1) * PS]
    cell[:] = 255
    cell[::8, ::8] = PINK  # what a ::8 subsampled level sees: all pink


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def asap(regions) -> str:
    body = []
    for i, (group, pts) in enumerate(regions):
        coords = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts))
        body.append(f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
                    f"<Coordinates>{coords}</Coordinates></Annotation>")
    return "<ASAP_Annotations><Annotations>" + "".join(body) + "</Annotations></ASAP_Annotations>"


TUMOUR_REGIONS = [
    ("Tumor", rect(128, 128, 511, 383)),   # A
    ("_2", rect(128, 128, 255, 255)),      # exclusion of cell (1, 1)
    ("_0", rect(0, 512, 1023, 550)),       # B: 39 rows of row 4
    ("_1", rect(0, 384, 511, 479)),        # C: 96 rows of row 3, cols 0-3
    ("Tumor", rect(0, 640, 1023, 652)),    # D: 13 rows of row 5
    ("Tumor", rect(0, 768, 1023, 1023)),   # E: no tissue
    ("Tumor", rect(640, 256, 767, 383)),   # F: the dotted cell
]


def tumour_image() -> np.ndarray:
    img = canvas()
    pink(img, 0, 6, 0, 8)
    dotted(img, 2, 5)
    return img


def normal_images() -> tuple[np.ndarray, np.ndarray]:
    n1 = canvas()
    pink(n1, 0, 4, 0, 8)
    n2 = canvas()
    pink(n2, 0, 1, 0, 4)
    for c in range(4):
        dotted(n2, 1, c)
    return n1, n2


def make_dataset(root: Path, n_tumour: int = 1, n_normal: int = 2) -> tuple[Path, Path]:
    wsi, ann = root / "slides", root / "annotations"
    (wsi / "tumor").mkdir(parents=True)
    (wsi / "normal").mkdir()
    ann.mkdir()
    t = tumour_image()
    for i in range(1, n_tumour + 1):
        write_slide(wsi / "tumor" / f"tumor_{i:03d}.tif", t)
        (ann / f"tumor_{i:03d}.xml").write_text(asap(TUMOUR_REGIONS))
    n1, n2 = normal_images()
    for i in range(1, n_normal + 1):
        write_slide(wsi / "normal" / f"normal_{i:03d}.tif", n1 if i % 2 else n2)
    return wsi, ann


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def xy(image_id: str) -> tuple[str, int, int]:
    stem = Path(image_id).stem
    name, x, y = stem.rsplit("_", 2)
    return name, int(x), int(y)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    wsi, ann = make_dataset(root)
    events = []
    summary = prepare_camelyon16(wsi, ann, root / "out", seed=0, **FAST, progress=lambda *a: events.append(a))
    return root, summary, events


def test_category_counts_match_hand_count(prepared):
    root, summary, events = prepared
    out = root / "out"
    c = summary.counts["train"]
    assert (c["cat1"], c["cat2"], c["cat2_available"], c["metastatic"], c["normal"], c["total"]) == (8, 4, 9, 12, 12, 24)
    assert summary.slides["train"] == {"tumor": ["tumor_001"], "normal": ["normal_001", "normal_002"]}
    assert all(summary.counts[s]["total"] == 0 for s in ("valcl", "valpx", "test"))
    assert json.loads((out / "summary.json").read_text())["counts"] == summary.counts

    ids = read_lines(out / "metadata" / "train" / "image_ids.txt")
    labels = dict(line.split(",") for line in read_lines(out / "metadata" / "train" / "class_labels.txt"))
    assert len(ids) == 24 and len(set(ids)) == 24
    meta = [(xy(i), int(labels[i])) for i in ids]
    tum = {(x, y) for (n, x, y), lab in meta if lab == 1}
    assert all(n == "tumor_001" for (n, _, _), lab in meta if lab == 1)
    row4 = {(c * PS, 4 * PS) for c in range(8)}
    pm1 = {(c * PS, r * PS) for r in (1, 2) for c in (1, 2, 3)} - {(PS, PS)}
    pm75 = {(c * PS, 3 * PS) for c in range(4)}
    assert row4 <= tum and len(tum - row4) == 4 and (tum - row4) <= (pm1 | pm75)
    # dropped: the excluded cell, the dotted cell (level-0 re-check), pm 0.10, no-tissue rows
    assert (PS, PS) not in tum and (5 * PS, 2 * PS) not in tum
    assert not any(y >= 5 * PS for _, y in tum)

    per_slide = {}
    for (n, x, y), lab in meta:
        if lab == 0:
            per_slide.setdefault(n, []).append((x, y))
    assert {k: len(v) for k, v in per_slide.items()} == {"normal_001": 8, "normal_002": 4}
    assert all(y < 4 * PS for _, y in per_slide["normal_001"])
    assert sorted(per_slide["normal_002"]) == [(c * PS, 0) for c in range(4)]  # never a dotted cell

    sizes = read_lines(out / "metadata" / "train" / "image_sizes.txt")
    assert all(line.endswith(f",{PS},{PS}") for line in sizes)
    loc = read_lines(out / "metadata" / "train" / "localization.txt")
    assert all(line.count(",") == 2 and line.endswith(",") for line in loc)  # empty ignore path
    assert (out / "metadata" / "class_names.txt").read_text().split() == ["normal", "metastatic"]
    assert not (out / ".work" / "staging").exists()
    stages = {e[0] for e in events}
    assert stages == {"scan", "normal", "write"}
    assert ("scan", 3, 3) in {e[:3] for e in events}


def test_patch_pixels_and_masks(prepared):
    root, _, _ = prepared
    out = root / "out"
    with Slide(root / "slides" / "tumor" / "tumor_001.tif") as s:
        for line in read_lines(out / "metadata" / "train" / "localization.txt"):
            image_id, mask_rel, _ = line.split(",")
            name, x, y = xy(image_id)
            img = np.asarray(Image.open(out / image_id))
            mask = np.asarray(Image.open(out / mask_rel))
            assert img.shape == (PS, PS, 3) and mask.shape == (PS, PS)
            assert set(np.unique(mask).tolist()) <= {0, 255}
            if name == "tumor_001":
                np.testing.assert_array_equal(img, s.read(x, y, PS, PS))
                pm = (mask > 0).mean()
                expect = 39 / 128 if y == 4 * PS else (0.75 if y == 3 * PS else 1.0)
                assert pm == pytest.approx(expect)
            else:
                assert mask.max() == 0


def test_reader_round_trip(prepared):
    root, _, _ = prepared
    out = root / "out"
    spec = get_dataset("camelyon16-p512")
    assert spec.loc == "mask" and spec.class_names(out, {}) == ["normal", "metastatic"]
    records = spec.list_records(out, "train", {})
    assert len(records) == 24
    ds = RecordDataset(records)
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, PS, PS) and 0.0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1.0
        assert s["mask"].shape == (PS, PS) and s["mask"].dtype.is_floating_point is False
        frac = float(s["mask"].float().mean())
        if s["label"] == 0:
            assert records[i].mask is EMPTY_MASK and frac == 0.0
        else:
            assert frac >= 0.2 and set(s["mask"].unique().tolist()) <= {0, 1}
        seen.add(s["label"])
    assert seen == {0, 1}
    with pytest.raises(DataError, match="split 'valcl' is empty"):
        spec.list_records(out, "valcl", {})
    with pytest.raises(DataError, match="not a prepared CAMELYON16-P512 folder"):
        spec.list_records(root / "slides", "train", {})


def test_second_run_returns_finished_folder(prepared):
    root, summary, _ = prepared
    again = prepare_camelyon16(root / "slides", root / "annotations", root / "out", seed=0, **FAST)
    assert again.reused == -1 and again.counts == summary.counts
    assert [tuple(r) for r in again.rows()] == summary.rows()
    assert summary.rows()[0] == ("train", 1, 2, 12, 12, 8, 4, 24)
    assert summary.rows()[-1][0] == "all" and len(summary.rows()[0]) == len(summary.COLUMNS)


def test_wsi_level_split_deterministic_and_worker_independent(tmp_path):
    wsi, ann = make_dataset(tmp_path, n_tumour=4, n_normal=4)
    kw = dict(patch_size=PS, level_tissue=6, pn=0.5, valpx_per_class=2, split="random")
    a = prepare_camelyon16(wsi, ann, tmp_path / "a", seed=7, workers=1, **kw)
    b = prepare_camelyon16(wsi, ann, tmp_path / "b", seed=7, workers=2, **kw)
    for split in ("train", "valcl", "valpx", "test"):
        for f in ("image_ids.txt", "class_labels.txt", "localization.txt"):
            assert (tmp_path / "a" / "metadata" / split / f).read_text() == (tmp_path / "b" / "metadata" / split / f).read_text()
    assert a.counts == b.counts and a.slides == b.slides
    # 4 slides per kind shared 0.5 / 0.18 / 0.32 -> 2 / 0.72 / 1.28 -> 2 / 1 / 1
    for kind in ("tumor", "normal"):
        assert [len(a.slides[s][kind]) for s in ("train", "valcl", "test")] == [2, 1, 1]
    owner = {}
    for split in ("train", "valcl", "test"):
        for name in a.slides[split]["tumor"] + a.slides[split]["normal"]:
            assert name not in owner
            owner[name] = split
        for line in read_lines(tmp_path / "a" / "metadata" / split / "image_ids.txt"):
            assert owner[xy(line)[0]] == split  # every patch of a slide is in that slide's split
        c = a.counts[split]
        # per split: category 1 = 8 per tumour slide, category 2 = floor(n·pn) of the split,
        # normal = as many as metastatic unless the split's normal slides hold fewer tissue
        # patches (odd-numbered normal slides have 32, even-numbered ones 4)
        assert c["cat1"] == 8 * len(a.slides[split]["tumor"])
        assert c["cat2"] == int(c["cat1"] * 0.5) and c["metastatic"] == c["cat1"] + c["cat2"]
        capacity = sum(32 if int(n[-3:]) % 2 else 4 for n in a.slides[split]["normal"])
        assert c["normal"] == min(c["metastatic"], capacity)
    valcl = set(read_lines(tmp_path / "a" / "metadata" / "valcl" / "image_ids.txt"))
    valpx = read_lines(tmp_path / "a" / "metadata" / "valpx" / "image_ids.txt")
    assert set(valpx) <= valcl and a.counts["valpx"]["normal"] == a.counts["valpx"]["metastatic"] == 2


class Crash(Exception):
    pass


def test_interrupted_run_resumes_and_output_is_atomic(tmp_path):
    wsi, ann = make_dataset(tmp_path)
    out = tmp_path / "out"

    def crash_on_write(stage, done, total, name):
        if stage == "write" and done == 1:
            raise Crash()

    with pytest.raises(Crash):
        prepare_camelyon16(wsi, ann, out, seed=0, **FAST, progress=crash_on_write)
    assert sorted(p.name for p in out.iterdir()) == [".work"]  # nothing half-written in place
    scan_cache = out / ".work" / "scan" / "tumor_001.json"
    stamp = scan_cache.stat().st_mtime_ns
    time.sleep(0.01)
    summary = prepare_camelyon16(wsi, ann, out, seed=0, **FAST)
    assert summary.reused == 3 and scan_cache.stat().st_mtime_ns == stamp
    assert summary.counts["train"]["total"] == 24
    fresh = prepare_camelyon16(wsi, ann, tmp_path / "fresh", seed=0, **FAST)
    assert read_lines(out / "metadata" / "train" / "image_ids.txt") == \
        read_lines(tmp_path / "fresh" / "metadata" / "train" / "image_ids.txt")
    assert fresh.reused == 0


def test_bad_inputs_name_the_file(tmp_path):
    wsi, ann = make_dataset(tmp_path)
    out = tmp_path / "out"
    # annotation for a slide that does not exist
    (ann / "tumor_042.xml").write_text(asap(TUMOUR_REGIONS))
    with pytest.raises(DataError, match="tumor_042.xml: annotation for slide 'tumor_042'"):
        prepare_camelyon16(wsi, ann, out, **FAST)
    (ann / "tumor_042.xml").unlink()
    # an annotation that does not parse
    good = (ann / "tumor_001.xml").read_text()
    (ann / "tumor_001.xml").write_text(good[:50])
    with pytest.raises(DataError, match=r"tumor_001.xml:1:\d+: the annotation XML does not parse"):
        prepare_camelyon16(wsi, ann, out, **FAST)
    (ann / "tumor_001.xml").write_text(good)
    # a tumour slide without its annotation
    (ann / "tumor_001.xml").rename(tmp_path / "moved.xml")
    with pytest.raises(DataError, match="tumor_001.tif: tumour slide without annotation"):
        prepare_camelyon16(wsi, ann, out, **FAST)
    (tmp_path / "moved.xml").rename(ann / "tumor_001.xml")
    # an unreadable slide
    bad = wsi / "normal" / "normal_002.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(DataError, match="normal_002.tif: cannot read the slide"):
        prepare_camelyon16(wsi, ann, out, **FAST)
    assert not (out / "summary.json").exists() and not (out / "metadata").exists()
    # missing folders, no slides
    with pytest.raises(DataError, match="slide folder"):
        prepare_camelyon16(tmp_path / "nope", ann, out, **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no slide found"):
        prepare_camelyon16(tmp_path / "empty", ann, out, **FAST)
    # an --out folder with foreign content is refused
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    os.remove(bad)
    with pytest.raises(DataError, match="not empty"):
        prepare_camelyon16(wsi, ann, tmp_path / "busy", **FAST)
