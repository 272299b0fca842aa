"""Unit checks of the WSI building blocks: ASAP XML, rasterisation, tissue fractions, and the
protocol's sampling rules (survey Appendix B), with numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsol.data.wsi.annotations import read_asap_xml
from wsol.data.wsi.sampling import assign_splits, grid, pick_category2, pm_bins, rng_for, split_counts, spread
from wsol.data.wsi.tissue import cell_fractions, otsu_threshold, saturation, tissue_mask
from wsol.errors import DataError


def asap(*regions: tuple[str, str, list[tuple[float, float]]]) -> str:
    body = []
    for i, (group, kind, pts) in enumerate(regions):
        coords = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts))
        body.append(f'<Annotation Name="Annotation {i}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
                    f"<Coordinates>{coords}</Coordinates></Annotation>")
    return ('<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>' + "".join(body) +
            "</Annotations>\n<AnnotationGroups /></ASAP_Annotations>\n")


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_rasterize_rectangle_with_exclusion(tmp_path):
    f = tmp_path / "tumor_001.xml"
    f.write_text(asap(("Tumor", "Polygon", rect(10, 20, 29, 59)), ("_2", "Polygon", rect(10, 20, 19, 29))))
    ann = read_asap_xml(f)
    assert len(ann.positive) == 1 and len(ann.negative) == 1
    m = ann.rasterize(0, 0, 64, 64)
    # 20 × 40 pixels (boundaries included) minus the 10 × 10 exclusion
    assert m.dtype == np.uint8 and m.sum() == 20 * 40 - 100
    assert m[20:30, 10:20].sum() == 0 and m[30, 10] == 1
    # the same region seen from a patch whose corner is at (16, 32): columns 16..29, rows 32..59
    assert ann.rasterize(16, 32, 16, 32).sum() == 14 * 28
    assert ann.rasterize(100, 100, 16, 16).sum() == 0
    hit = ann.touches(np.array([0, 30, 100]), np.array([16, 16, 100]), 16, 16)
    assert hit.tolist() == [True, False, False]


def test_xml_order_attribute_and_decimal_comma(tmp_path):
    f = tmp_path / "a.xml"
    # coordinates listed out of order; Order gives the polygon; "3,0" is a decimal comma
    f.write_text(asap(("_0", "Polygon", [(0, 0), (3, 0), (3, 3), (0, 3)])).replace(
        'Order="1" X="3" Y="0"', 'Order="3" X="0" Y="3,0"').replace('Order="3" X="0" Y="3"', 'Order="1" X="3" Y="0"'))
    ann = read_asap_xml(f)
    assert ann.positive[0].tolist() == [[0, 0], [3, 0], [3, 3], [0, 3]]


@pytest.mark.parametrize("text, expect", [
    ("<ASAP_Annotations><Annotations><Annotation", ":1:"),
    ("<Other />", "expected <ASAP_Annotations>"),
    (asap(("Stroma", "Polygon", rect(0, 0, 5, 5))), "PartOfGroup='Stroma'"),
    (asap(("Tumor", "Polygon", [(0, 0), (5, 5)])), "has 2 coordinate(s)"),
    (asap(("Tumor", "Polygon", rect(0, 0, 5, 5))).replace('X="5"', 'X="abc"', 1), "X='abc' is not a number"),
    (asap(("_2", "Polygon", rect(0, 0, 5, 5))), "no tumour polygon"),
])
def test_bad_xml_names_file_and_problem(tmp_path, text, expect):
    f = tmp_path / "tumor_009.xml"
    f.write_text(text)
    with pytest.raises(DataError) as e:
        read_asap_xml(f)
    assert str(f) in str(e.value) and expect in str(e.value)


def test_tissue_threshold_and_cell_fractions():
    rgb = np.full((8, 8, 3), 255, np.uint8)
    rgb[:, :4] = (230, 150, 200)  # left half pink tissue, right half white glass
    sat = saturation(rgb)
    assert sat[0, 0] == (230 - 150) * 255 // 230 and sat[0, 7] == 0
    thr = otsu_threshold(sat)
    assert thr is not None and 0 <= thr < sat[0, 0]
    mask = tissue_mask(rgb, thr)
    assert mask[:, :4].all() and not mask[:, 4:].any()
    assert otsu_threshold(saturation(np.full((4, 4, 3), 255, np.uint8))) is None
    # level-0 cells of 16 px on a mask downsampled 4×: cell x=0 -> low columns 0..3 (all
    # tissue), x=8 -> columns 2..5 (half), x=16 -> columns 4..7 (none)
    fr = cell_fractions(mask, 4.0, np.array([0, 8, 16]), np.array([0]), 16)
    assert fr.shape == (1, 3) and fr[0].tolist() == [1.0, 0.5, 0.0]


def test_grid_is_non_overlapping_and_inside():
    xs, ys = grid(1000, 600, 256)
    assert xs.tolist() == [0, 256, 512] and ys.tolist() == [0, 256]


def test_split_counts_by_hand():
    assert split_counts(6, (0.5, 0.18, 0.32)) == [3, 1, 2]
    assert split_counts(10, (0.5, 0.2, 0.3)) == [5, 2, 3]
    assert split_counts(2, (0.5, 0.18, 0.32)) == [1, 0, 1]  # too few slides for three splits
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]  # every split with a share gets a slide
    assert split_counts(4, (1.0, 0.0, 0.0)) == [4, 0, 0]


def test_assign_splits_stratified_and_seeded():
    slides = {"tumor": [f"tumor_{i:03d}" for i in range(10)], "normal": [f"normal_{i:03d}" for i in range(6)]}
    a = assign_splits(slides, (0.5, 0.2, 0.3), seed=3)
    assert a == assign_splits(slides, (0.5, 0.2, 0.3), seed=3)
    for kind, n in (("tumor", [5, 2, 3]), ("normal", [3, 1, 2])):
        got = [sum(1 for s in slides[kind] if a[s] == sp) for sp in ("train", "valcl", "test")]
        assert got == n
    assert any(assign_splits(slides, (0.5, 0.2, 0.3), seed=s) != a for s in range(4, 8))


def test_pm_bins():
    pm = np.array([0.5001, 0.55, 0.5999, 0.75, 0.97, 1.0])
    assert pm_bins(pm, 0.5, 0.05).tolist() == [0, 1, 1, 5, 9, 9]


def test_category2_picks_bins_uniformly_not_patches():
    # one patch alone in bin [0.60, 0.65), 99 patches in [0.95, 1]. Picking 2 patches, a bin at
    # a time: the lone patch is picked with probability 1/2 + 1/2 · 1/2 = 3/4; picking patches
    # uniformly would give 2/100.
    pm = np.array([0.62] + [1.0] * 99)
    hits = 0
    for seed in range(400):
        idx = pick_category2(pm, 2, 0.5, 0.05, rng_for(seed, "t"))
        assert len(idx) == 2 and len(set(idx.tolist())) == 2
        hits += int(0 in idx)
    assert 0.68 < hits / 400 < 0.82
    # asking for more than exist takes them all, once each
    assert pick_category2(np.array([0.7, 0.9, 0.9]), 5, 0.5, 0.05, rng_for(0)).tolist() == [0, 1, 2]
    assert pick_category2(np.array([0.7]), 0, 0.5, 0.05, rng_for(0)).tolist() == []


def test_spread_is_even():
    q = spread(10, ["a", "b", "c"], rng_for(0))
    assert sum(q.values()) == 10 and sorted(q.values()) == [3, 3, 4]
    assert spread(4, ["a", "b"], rng_for(1)) == {"a": 2, "b": 2}
    assert spread(5, [], rng_for(1)) == {}
