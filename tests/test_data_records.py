"""Record's one mask field (file + ignore file, decoder, empty, none) decodes to the Sample
contract, and data errors say where they are."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.problems import Collector, DataProblems, LocatedError, located
from wsol.data.records import EMPTY_MASK, MaskDecoder, MaskFile, Record, load_sample
from wsol.errors import DataError


def png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    m = np.zeros((3, 4), np.uint8)
    m[0, :2] = 255  # a 0/255 mask: 255 is ROI (other grey levels are refused, see test_data_reliability)
    ign = np.zeros((3, 4), np.uint8)
    ign[:, 3] = 1
    return {"image": png(tmp_path / "i.png", np.full((3, 4, 3), 51, np.uint8)), "mask": png(tmp_path / "m.png", m),
            "ignore": png(tmp_path / "g.png", ign), "small": png(tmp_path / "s.png", np.zeros((2, 2), np.uint8))}


def test_every_mask_source_decodes_to_0_1_255(files):
    rec = Record("a", files["image"], 1, source="meta.txt:3")
    cases = {
        None: None,
        EMPTY_MASK: [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        MaskFile(files["mask"]): [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        MaskFile(files["mask"], files["ignore"]): [[1, 1, 0, 255], [0, 0, 0, 255], [0, 0, 0, 255]],
        MaskDecoder(lambda: np.eye(3, 4, dtype=np.uint8)): np.eye(3, 4).tolist(),
    }
    for src, want in cases.items():
        rec.mask = src
        s = load_sample(rec)
        assert rec.has_mask == (src is not None)
        assert torch.allclose(s["image"], torch.full((3, 3, 4), 0.2))
        if want is None:
            assert "mask" not in s
        else:
            assert s["mask"].dtype == torch.uint8 and s["mask"].tolist() == want


def test_files_named_by_a_record(files):
    rec = Record("a", files["image"], 0, mask=MaskFile(files["mask"], files["ignore"]))
    assert rec.files() == [files["image"], files["mask"], files["ignore"]]
    rec.mask = MaskDecoder(lambda: np.zeros((3, 4), np.uint8))
    assert rec.files() == [files["image"]]


def test_mask_errors_name_the_file_and_the_line(files):
    rec = Record("a", files["image"], 0, mask=MaskFile(files["small"]), source="meta.txt:3")
    with pytest.raises(LocatedError, match=r"s\.png: mask is 2×2 \(W×H\) but image .*i\.png is 4×3 \(listed at "
                                           r"meta\.txt:3\); masks must have the image's size") as e:
        load_sample(rec)
    assert e.value.where == str(files["small"])
    rec.mask = MaskFile(files["mask"], files["small"])
    with pytest.raises(LocatedError, match=r"s\.png: ignore mask is 2×2 but image is 4×3 \(listed at meta\.txt:3\)"):
        load_sample(rec)
    rec.mask = MaskDecoder(lambda: np.zeros((2, 2), np.uint8))
    with pytest.raises(LocatedError, match=r"^mask: mask is 2×2 \(W×H\) but image"):
        load_sample(rec)
    rec.mask = MaskFile(files["image"].with_name("gone.png"))
    with pytest.raises(DataError, match=r"gone\.png: mask file not found \(listed at meta\.txt:3\)"):
        load_sample(rec)


def test_located_errors_and_problems():
    e = LocatedError(Path("a/b.txt:4"), "expected 2 columns, found 3")
    assert str(e) == "a/b.txt:4: expected 2 columns, found 3" and e.where == "a/b.txt:4"
    assert isinstance(e, DataError) and str(pickle.loads(pickle.dumps(e))) == str(e)
    bad = Collector()
    bad.raise_if_any()  # nothing collected: no error
    bad.add("f.txt:1", "one")
    bad.add_error(LocatedError("f.txt:7", "two"))
    with pytest.raises(DataProblems) as info:
        bad.raise_if_any()
    assert str(info.value) == "2 problem(s) in the dataset metadata:\n  f.txt:1: one\n  f.txt:7: two"
    assert located(info.value, "root") == [("f.txt:1", "f.txt:1: one"), ("f.txt:7", "f.txt:7: two")]
    assert located(DataError("no place"), "root") == [("root", "no place")]
    single = Collector()
    single.add("x", "only")
    with pytest.raises(DataProblems, match="^x: only$"):
        single.raise_if_any()
