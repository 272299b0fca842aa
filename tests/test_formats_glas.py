"""GlaS reader on a tiny fixture in the Warwick contest layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.formats import glas
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import ConfigError, DataError

N_PER_CLASS = 12  # survey: round(12 * 18/85) = 3 held out per class; minmax: round(12 * 0.2) = 2


def _anno(i: int) -> np.ndarray:
    a = np.zeros((16, 16), np.uint8)
    a[2:6, 2 + i % 5:8 + i % 5] = 1  # gland 1
    a[10:14, 9:13] = 2  # gland 2 (instance ids > 1 are glands too)
    return a


def write_glas(root: Path) -> dict[str, int]:
    """12 benign + 12 malignant training images, testA (3) and testB (2); returns name -> label."""
    root.mkdir(parents=True, exist_ok=True)
    labels: dict[str, int] = {}
    names = [f"train_{k}" for k in range(1, 2 * N_PER_CLASS + 1)] + [f"testA_{k}" for k in (1, 2, 3)] + \
        [f"testB_{k}" for k in (1, 2)]
    rng = np.random.default_rng(0)
    lines = ["name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for i, n in enumerate(names):
        lab = i % 2
        labels[n] = lab
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{n}.bmp")
        Image.fromarray(_anno(i)).save(root / f"{n}_anno.bmp")
        lines.append(f"{n},{i // 4}, {glas.CLASSES[lab]}, {'healthy' if lab == 0 else 'adenomatous'}")
    (root / "Grade.csv").write_text("\n".join(lines) + "\n")
    return labels


@pytest.fixture()
def glas_root(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "Warwick QU Dataset (Released 2016_07_08)"
    return root, write_glas(root)


def test_survey_split_counts_and_round_trip(glas_root):
    root, labels = glas_root
    spec = get_dataset("glas")
    recs = {s: spec.list_records(root, s, {}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 18, "valcl": 6, "valpx": 6, "test": 5}
    ids = {s: {r.image_id for r in rs} for s, rs in recs.items()}
    assert ids["valpx"] <= ids["valcl"] and not ids["train"] & ids["valcl"]
    assert ids["test"] == {"testA_1", "testA_2", "testA_3", "testB_1", "testB_2"}
    assert sum(labels[i] for i in ids["valcl"]) == 3  # stratified: 3 per class
    ds = RecordDataset(recs["train"], class_names=spec.class_names(root, {}))
    for k in range(len(ds)):
        s = ds[k]
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert s["label"] == labels[s["image_id"]]
        i = int(s["image_id"].split("_")[1]) - 1
        assert torch.equal(s["mask"], torch.from_numpy((_anno(i) > 0).astype(np.uint8)))
    assert spec.class_names(root, {}) == ["benign", "malignant"]


def test_split_files_written_then_read_back(glas_root):
    root, _ = glas_root
    spec = get_dataset("glas")
    first = [r.image_id for r in spec.list_records(root, "train", {"seed": 3})]
    folder = root / "splits" / "glas-survey-px3_seed3"
    assert sorted((folder / "train.txt").read_text().split()) == sorted(first)
    # edited split files are read back as they are (the split is what the files say)
    (folder / "train.txt").write_text("train_1\ntrain_2\n")
    assert [r.image_id for r in spec.list_records(root, "train", {"seed": 3})] == ["train_1", "train_2"]
    other = [r.image_id for r in spec.list_records(root, "train", {"seed": 4})]
    assert other != first and len(other) == len(first)
    (folder / "valcl.txt").write_text("train_1\ntrain_99\n")
    with pytest.raises(DataError, match=r"valcl\.txt:2: unknown image id 'train_99'"):
        spec.list_records(root, "valcl", {"seed": 3})


def test_minmax_split_and_parent_folder(glas_root, tmp_path):
    root, _ = glas_root
    # data.root may be the parent of the contest folder
    recs = {s: glas.SPEC.list_records(tmp_path, s, {"split": "minmax", "valpx_per_class": 1}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 20, "valcl": 4, "valpx": 2, "test": 5}
    assert (root / "splits" / "glas-minmax-val0.2-px1_seed0" / "test.txt").is_file()


def test_real_size_split_counts():
    """The contest's 85 training images (37 benign, 48 malignant) -> 67 / 18 (survey §3.3.1)."""
    rows = [(f"train_{k}", int(k > 37), "") for k in range(1, 86)] + [(f"testA_{k}", k % 2, "") for k in range(80)]
    s = glas._compute_splits(rows, glas.Options())
    assert (len(s["train"]), len(s["valcl"]), len(s["valpx"]), len(s["test"])) == (67, 18, 6, 80)
    m = glas._compute_splits(rows, glas.Options(split="minmax"))
    assert (len(m["train"]), len(m["valcl"])) == (68, 17)  # 80/20 of 85: 7 + 10 held out


def test_malformed_grade_csv_reports_every_line(glas_root):
    root, _ = glas_root
    lines = (root / "Grade.csv").read_text().splitlines()
    lines[3] = "train_3,1, unknown, x"
    lines[5] = "../evil,1, benign, x"
    lines[6] = "train_6"
    (root / "Grade.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        glas.SPEC.list_records(root, "train", {})
    msg = str(e.value)
    assert "Grade.csv:4: grade 'unknown'" in msg
    assert "Grade.csv:6: path '../evil.bmp' escapes" in msg
    assert "Grade.csv:7: 1 column(s)" in msg
    assert len(e.value.problems) == 3


def test_missing_column_and_bad_option(glas_root):
    root, _ = glas_root
    text = (root / "Grade.csv").read_text().replace("grade (GlaS)", "stage").replace(
        "grade (Sirinukunwattana et al. 2015)", "other")
    (root / "Grade.csv").write_text(text)
    with pytest.raises(DataError, match=r"Grade\.csv:1: missing column\(s\) grade \(GlaS\)"):
        glas.SPEC.list_records(root, "train", {})
    with pytest.raises(ConfigError, match="unknown GlaS split 'x'"):
        glas.SPEC.list_records(root, "train", {"split": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        glas.SPEC.list_records(root, "train", {"sead": 1})


def test_bad_files_give_precise_errors(glas_root):
    root, _ = glas_root
    recs = {r.image_id: r for r in glas.SPEC.list_records(root, "test", {})}
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "testA_1_anno.bmp")  # mask of another size
    data = (root / "testA_2.bmp").read_bytes()
    (root / "testA_2.bmp").write_bytes(data[: len(data) // 2])  # truncated image
    (root / "testB_1.bmp").unlink()  # missing image
    ds = RecordDataset([recs["testA_1"], recs["testA_2"], recs["testB_1"]])
    with pytest.raises(DataError, match=r"testA_1_anno\.bmp: mask is 16×8 \(W×H\) but image .* is 16×16 "
                                        r"\(listed at .*Grade\.csv:26\)"):
        ds[0]
    with pytest.raises(DataError, match=r"testA_2\.bmp: cannot decode image .*Grade\.csv:27"):
        ds[1]
    with pytest.raises(DataError, match=r"testB_1\.bmp: image file not found \(listed at .*Grade\.csv:29\)"):
        ds[2]


def test_no_grade_file(tmp_path):
    with pytest.raises(DataError, match="Grade.csv: GlaS grade file not found"):
        glas.SPEC.list_records(tmp_path, "train", {})


def test_build_dataset_and_collate(glas_root):
    from wsol.config import DataConfig
    from wsol.data.registry import build_dataset
    from wsol.data.sample import collate

    root, _ = glas_root
    ds = build_dataset(DataConfig(name="glas", root=str(root), image_size=32), "valpx")
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (6, 3, 32, 32) and batch.masks.shape == (6, 32, 32)
    assert batch.has_mask.all() and sorted(batch.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert set(batch.masks.unique().tolist()) <= {0, 1}
