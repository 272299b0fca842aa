"""verify_dataset: all problems at once, each with file and line, and the count table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_formats_cub import write_cub
from test_formats_glas import write_glas
from wsol.data.records import Record
from wsol.data.registry import DATASETS, DatasetSpec, register_dataset
from wsol.data.verify import verify_dataset


def test_clean_glas_passes_with_counts(tmp_path):
    write_glas(tmp_path)
    rep = verify_dataset("glas", tmp_path)
    assert rep.ok and rep.problems == []
    assert rep.split_counts() == {"train": 18, "valcl": 6, "valpx": 6, "test": 5}
    rows = {(r.split, r.class_name): r for r in rep.rows}
    assert rows[("valcl", "benign")].images == 3 and rows[("valcl", "malignant")].images == 3
    assert rows[("test", "benign")].images == 3 and rows[("test", "malignant")].images == 2  # testA_1,3 testB_2
    assert rows[("train", "(all)")].with_mask == 18 and rows[("train", "(all)")].with_boxes == 0
    assert rep.checked == 35


def test_every_broken_file_is_reported_with_its_line(tmp_path):
    write_glas(tmp_path)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "testA_1_anno.bmp")  # mask of another size
    data = (tmp_path / "testA_2.bmp").read_bytes()
    (tmp_path / "testA_2.bmp").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "testB_1.bmp").unlink()  # missing
    (tmp_path / "testB_2_anno.bmp").write_bytes(b"garbage")  # undecodable mask
    rep = verify_dataset("glas", tmp_path)
    assert not rep.ok
    by_line = {p.where.rsplit(":", 1)[1]: p for p in rep.errors}
    assert sorted(by_line) == ["26", "27", "29", "30"]  # Grade.csv lines of testA_1, testA_2, testB_1, testB_2
    assert all(p.where.endswith(f"Grade.csv:{ln}") and p.split == "test" for ln, p in by_line.items())
    assert "mask is 16×8" in by_line["26"].message
    assert "testA_2.bmp" in by_line["27"].message and "truncated" in by_line["27"].message
    assert "image file not found" in by_line["29"].message
    assert "testB_2_anno.bmp" in by_line["30"].message
    assert rep.split_counts()["test"] == 5  # the table still counts every listed image


def test_metadata_problems_reported_once_each(tmp_path):
    write_cub(tmp_path)
    lab = (tmp_path / "image_class_labels.txt").read_text().splitlines()
    lab[2] = "3 300"
    lab[8] = "9"
    (tmp_path / "image_class_labels.txt").write_text("\n".join(lab) + "\n")
    rep = verify_dataset("cub", tmp_path)
    # line 9 lost its class column, so images.txt:9 (image 9) has no class either
    assert sorted(p.where.rsplit("/", 1)[1] for p in rep.errors) == [
        "image_class_labels.txt:3", "image_class_labels.txt:9", "images.txt:9"]
    assert all(p.split == "" for p in rep.errors)  # every split fails the same way: reported once
    assert not rep.warnings


@pytest.fixture()
def dummy(tmp_path: Path):
    """A dataset registered by someone else, with record-level faults of every kind."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(img)

    def rec(i, label=0, **kw):
        return Record(image_id=i, image_path=img, label=label, source=f"meta.txt:{i}", **kw)

    splits = {
        "train": [rec("1"), rec("1"), rec("2", label=5)],
        "valcl": [rec("3", boxes=np.array([[0, 0, 13, 4]]))],
        "valpx": [rec("4")],
        "test": [rec("2", boxes=np.array([[0, 0, 12, 10]])), rec("5", size=(10, 10), boxes=np.zeros((1, 4)))],
    }
    spec = register_dataset(DatasetSpec("test-verify-dummy", lambda root, split, opt: splits[split],
                                        lambda root, opt: ["x", "y"], loc="box"))
    yield spec
    DATASETS.remove(spec.name)  # Registry has no public removal: undo the registration


def test_any_registered_dataset(dummy, tmp_path):
    rep = verify_dataset(dummy.name, tmp_path)
    msgs = [(p.split, p.where, p.message) for p in rep.errors]
    text = "\n".join(m for _, _, m in msgs)
    assert ("train", "meta.txt:1") in {(s, w) for s, w, _ in msgs} and "appears twice in split train" in text
    assert "label 5 of '2' is outside 0..1" in text
    assert "box [0.0, 0.0, 13.0, 4.0] is outside the 12×10 image" in text
    assert "image is 12×10 but the metadata says 10×10" in text
    assert "1 image(s) in both train and test: 2" in text
    assert len(rep.errors) == 5
    assert [(p.split, p.where) for p in rep.warnings] == [("valpx", "meta.txt:4")]  # valpx without mask or box
    assert rep.split_counts() == {"train": 3, "valcl": 1, "valpx": 1, "test": 2}
    assert {(r.split, r.class_name, r.images) for r in rep.rows if r.split == "train"} == {
        ("train", "x", 2), ("train", "(all)", 3)}  # label 5 counts in the total only
