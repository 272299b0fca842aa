"""The CAMELYON16 slide split (survey §3.3.2 and App. B): by default the challenge's 270
training / 129 test slides stay apart and valcl comes from the training slides only; the
challenge's reference.csv or a split CSV is read when given; the random split is explicit."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_camelyon_prepare import PS, TUMOUR_REGIONS, asap, normal_images, tumour_image, write_slide
from wsol.data.wsi import prepare_camelyon16
from wsol.data.wsi.sampling import OFFICIAL_VAL_FRACTION, assign_splits, official_splits
from wsol.errors import ConfigError, DataError

KW = dict(patch_size=PS, level_tissue=6, pn=0.5, workers=1)


def challenge_names() -> tuple[dict[str, list[str]], set[str]]:
    """The challenge's 399 slides by kind (160 normal + 110 tumour training slides; 129 test
    slides, 49 of them tumour, test_114 dropped) and the set of test slides."""
    test = [f"test_{i:03d}" for i in range(1, 131) if i != 114]
    tumour_test = set(test[:49])
    kinds = {"normal": [f"normal_{i:03d}" for i in range(1, 161)] + [t for t in test if t not in tumour_test],
             "tumor": [f"tumor_{i:03d}" for i in range(1, 111)] + sorted(tumour_test)}
    return kinds, set(test)


def test_official_split_never_trains_on_a_test_slide():
    kinds, test = challenge_names()
    split = official_splits(kinds, test, OFFICIAL_VAL_FRACTION, seed=0)
    assert {n for n, s in split.items() if s == "test"} == test and len(test) == 129
    train_pool = {n for names in kinds.values() for n in names} - test
    assert len(train_pool) == 270 and {n for n, s in split.items() if s != "test"} == train_pool
    valcl = {n for n, s in split.items() if s == "valcl"}
    # 8,858 / (24,348 + 8,858) = 0.2668 of each kind's training slides: 160 -> 43, 110 -> 29
    assert sum(n.startswith("normal") for n in valcl) == 43 and sum(n.startswith("tumor") for n in valcl) == 29
    assert split == official_splits(kinds, test, OFFICIAL_VAL_FRACTION, seed=0)
    other = official_splits(kinds, test, OFFICIAL_VAL_FRACTION, seed=1)
    assert {n for n, s in other.items() if s == "valcl"} != valcl and \
        {n for n, s in other.items() if s == "test"} == test
    # the random split (the former default) puts official test slides into training
    rand = assign_splits(kinds, (0.5, 0.18, 0.32), seed=0)
    assert sum(rand[n] != "test" for n in test) > 60


def write_slides(root: Path, names: dict[str, bool]) -> tuple[Path, Path]:
    """Slides ``name -> is tumour`` (tumour slides get the fixture's annotation)."""
    wsi, ann = root / "slides", root / "annotations"
    wsi.mkdir(parents=True)
    ann.mkdir()
    n1, _ = normal_images()
    t = tumour_image()
    for name, tumour in names.items():
        write_slide(wsi / f"{name}.tif", t if tumour else n1)
        if tumour:
            (ann / f"{name}.xml").write_text(asap(TUMOUR_REGIONS))
    return wsi, ann


SLIDES = {"tumor_001": True, "normal_001": False, "normal_002": False, "test_001": True, "test_002": False}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cam_split")
    wsi, ann = write_slides(root, SLIDES)
    return root, wsi, ann


def test_prepare_keeps_the_official_partition_by_default(slides):
    root, wsi, ann = slides
    summary = prepare_camelyon16(wsi, ann, root / "out", seed=0, val_fraction=0.0, **KW)
    assert summary.slides["test"] == {"tumor": ["test_001"], "normal": ["test_002"]}
    assert summary.slides["train"] == {"tumor": ["tumor_001"], "normal": ["normal_001", "normal_002"]}
    assert summary.params["split"] == "official" and "test slides by name" in summary.params["split_source"]
    # the default valcl share draws from the training slides only (2 normal -> 1; 1 tumour -> 0)
    default = prepare_camelyon16(wsi, ann, root / "out2", seed=0, **KW)
    assert default.slides["test"] == summary.slides["test"]
    assert len(default.slides["valcl"]["normal"]) == 1 and default.slides["valcl"]["tumor"] == []
    assert set(default.slides["valcl"]["normal"]) <= {"normal_001", "normal_002"}


def test_reference_csv_names_the_test_slides_and_is_checked(tmp_path):
    wsi, ann = write_slides(tmp_path, {"tumor_001": True, "normal_001": False, "test_001": True,
                                       "test_002": False, "test_003": False})
    (wsi / "reference.csv").write_text("test_001,Tumor,Macro\ntest_002,Normal\ntest_003,Tumor,Micro\n")
    with pytest.raises(DataError, match=r"test_003\.tif: test_003 is a tumour test slide in .*reference\.csv "
                                        r"without annotation; exclude it"):
        prepare_camelyon16(wsi, ann, tmp_path / "out", **KW)
    s = prepare_camelyon16(wsi, ann, tmp_path / "out", exclude=("test_003",), val_fraction=0.0, **KW)
    assert s.slides["test"] == {"tumor": ["test_001"], "normal": ["test_002"]}
    assert "reference.csv" in s.params["split_source"]


def test_split_csv_and_explicit_random_split(slides, tmp_path):
    root, wsi, ann = slides
    csv = tmp_path / "split.csv"
    csv.write_text("slide,split\ntumor_001,train\ntest_001,valid\nnormal_001,train\nnormal_002,test\ntest_002,val\n")
    s = prepare_camelyon16(wsi, ann, tmp_path / "csv", split_csv=csv, **KW)
    assert s.params["split"] == "csv"
    assert s.slides["valcl"] == {"tumor": ["test_001"], "normal": ["test_002"]}
    assert s.slides["test"] == {"tumor": [], "normal": ["normal_002"]}
    csv.write_text("tumor_001,train\n")
    with pytest.raises(DataError, match=r"split\.csv: no split for slide\(s\) normal_001, normal_002, test_001"):
        prepare_camelyon16(wsi, ann, tmp_path / "csv2", split_csv=csv, **KW)
    csv.write_text("tumor_001,training\n")
    with pytest.raises(DataError, match=r"split\.csv:1: expected 'slide,split'"):
        prepare_camelyon16(wsi, ann, tmp_path / "csv2", split_csv=csv, **KW)
    r = prepare_camelyon16(wsi, ann, tmp_path / "rand", split="random", fractions=(0.5, 0.0, 0.5), seed=0, **KW)
    assert r.params["split"] == "random" and "random by kind" in r.params["split_source"]


@pytest.mark.parametrize("kw,pattern", [
    (dict(fractions=(0.5, 0.2, 0.3)), "fractions apply to split='random' only"),
    (dict(split="random", val_fraction=0.2), "val_fraction applies to split='official' only"),
    (dict(split="random", split_csv="x.csv"), "split_csv is given but split='random'"),
    (dict(split="csv"), "split='csv' needs split_csv"),
    (dict(split="stratified"), "split='stratified'; expected one of official, random, csv"),
    (dict(val_fraction=1.0), r"val_fraction=1\.0; expected a fraction in \[0, 1\)"),
])
def test_options_the_split_would_not_apply_are_errors(slides, tmp_path, kw, pattern):
    _, wsi, ann = slides
    with pytest.raises(ConfigError, match=pattern):
        prepare_camelyon16(wsi, ann, tmp_path / "out", **KW, **kw)
    assert not (tmp_path / "out").exists()


def test_official_split_needs_the_challenge_names(tmp_path):
    wsi, ann = write_slides(tmp_path, {"tumor_001": True, "lymph_node_7": False})
    with pytest.raises(DataError, match="lymph_node_7 do not follow the challenge's names.*split_csv.*random"):
        prepare_camelyon16(wsi, ann, tmp_path / "out", **KW)
    (tmp_path / "t114").mkdir()
    wsi2, ann2 = write_slides(tmp_path / "t114", {"tumor_001": True, "test_114": False})
    with pytest.raises(DataError, match="test_114 is a tumour test slide without annotation; exclude it"):
        prepare_camelyon16(wsi2, ann2, tmp_path / "out", exclude=(), **KW)
