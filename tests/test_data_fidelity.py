"""[fidelity] masks decoded exactly as the reference (issue 18): OpenImages ignore regions
(wsolevaluation ``evaluation.get_mask``), masks read like OpenCV's IMREAD_GRAYSCALE (alpha
ignored), and reader options that are misspelt or not applied are errors — on fixtures in the
reference's own layout, written here."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from wsol.cli import main
from wsol.data.metadata import MetaEntry, read_metadata, write_class_names, write_metadata
from wsol.data.records import MaskFile, Record, gray_levels, load_sample, open_image
from wsol.data.registry import DATASETS, validate_options
from wsol.data.verify import verify_dataset
from wsol.errors import ConfigError, DataError

RESIZE = 224  # wsolevaluation's _RESIZE_LENGTH: a 224² fixture makes its resize the identity


def reference_get_mask(mask_root: Path, mask_paths: list[str], ignore_path: str) -> np.ndarray:
    """wsolevaluation/evaluation.py ``get_mask`` (clovaai/wsolevaluation), re-implemented with
    the same OpenCV calls: instances OR-ed (> 0.5), ignore = ignore box minus the foreground."""
    def load(p: str) -> np.ndarray:
        m = np.float32(cv2.imread(str(mask_root / p), cv2.IMREAD_GRAYSCALE))
        return cv2.resize(m, (RESIZE, RESIZE), interpolation=cv2.INTER_NEAREST)

    fg = np.stack([load(p) > 0.5 for p in mask_paths]).any(axis=0)
    ignore = np.logical_and(load(ignore_path) > 0.5, np.logical_not(fg))
    return fg.astype(np.uint8) + 255 * ignore.astype(np.uint8)


@pytest.fixture()
def openimages(tmp_path: Path) -> Path:
    """OpenImages layout of wsolevaluation: ``metadata/test/localization.txt`` rows
    ``image_id,mask_path,ignore_path`` (one row per instance, the same ignore file), masks
    0/255 PNG. Two instances; the ignore box covers part of instance 1 and background."""
    (tmp_path / "test" / "cls").mkdir(parents=True)
    (tmp_path / "masks" / "cls").mkdir(parents=True)
    Image.fromarray(np.full((RESIZE, RESIZE, 3), 120, np.uint8)).save(tmp_path / "test/cls/3b3b.jpg")
    m1 = np.zeros((RESIZE, RESIZE), np.uint8)
    m1[40:120, 30:110] = 255  # 80×80 = 6400 px
    m2 = np.zeros((RESIZE, RESIZE), np.uint8)
    m2[150:200, 150:210] = 255  # 50×60 = 3000 px
    ign = np.zeros((RESIZE, RESIZE), np.uint8)
    ign[80:140, 60:180] = 255  # box over the lower-right quarter of instance 1 and background
    for name, arr in (("3b3b_m1.png", m1), ("3b3b_m2.png", m2), ("3b3b_ignore.png", ign)):
        Image.fromarray(arr).save(tmp_path / "masks" / "cls" / name)
    d = tmp_path / "metadata" / "test"
    d.mkdir(parents=True)
    (d / "image_ids.txt").write_text("test/cls/3b3b.jpg\n")
    (d / "class_labels.txt").write_text("test/cls/3b3b.jpg,0\n")
    (d / "image_sizes.txt").write_text(f"test/cls/3b3b.jpg,{RESIZE},{RESIZE}\n")
    (d / "localization.txt").write_text("test/cls/3b3b.jpg,masks/cls/3b3b_m1.png,masks/cls/3b3b_ignore.png\n"
                                        "test/cls/3b3b.jpg,masks/cls/3b3b_m2.png,masks/cls/3b3b_ignore.png\n")
    return tmp_path


def test_ignore_region_minus_foreground_as_wsolevaluation(openimages: Path):
    rec = read_metadata(openimages, "test")[0]
    ours = load_sample(rec)["mask"].numpy()
    ref = reference_get_mask(openimages, ["masks/cls/3b3b_m1.png", "masks/cls/3b3b_m2.png"],
                             "masks/cls/3b3b_ignore.png")
    np.testing.assert_array_equal(ours, ref)
    # by hand: every foreground pixel counts (6400 + 3000), the ignore box minus instance 1
    # (60×120 - 40×50 overlap = 5200) is ignored
    assert int((ours == 1).sum()) == 6400 + 3000 and int((ours == 255).sum()) == 60 * 120 - 40 * 50
    assert (ours[80:120, 60:110] == 1).all()  # foreground inside the ignore box still counts


def test_single_mask_row_with_ignore_file(openimages: Path):
    d = openimages / "metadata" / "test"
    (d / "localization.txt").write_text("test/cls/3b3b.jpg,masks/cls/3b3b_m1.png,masks/cls/3b3b_ignore.png\n")
    rec = read_metadata(openimages, "test")[0]
    assert isinstance(rec.mask, MaskFile) and rec.mask.ignore is not None
    ours = load_sample(rec)["mask"].numpy()
    np.testing.assert_array_equal(ours, reference_get_mask(openimages, ["masks/cls/3b3b_m1.png"],
                                                           "masks/cls/3b3b_ignore.png"))
    assert int((ours == 1).sum()) == 6400


# ------------------------------------------------------------------ grey levels as OpenCV reads


def test_constant_rgba_mask_is_background(tmp_path: Path):
    """wsolevaluation's constant-mask fixtures: RGBA, grey 0, alpha 255 -> all background."""
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "const.png")
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "i.png")
    assert cv2.imread(str(tmp_path / "const.png"), cv2.IMREAD_GRAYSCALE).max() == 0  # the reference's reading
    s = load_sample(Record("a", tmp_path / "i.png", 0, mask=MaskFile(tmp_path / "const.png")))
    assert s["mask"].sum() == 0 and s["mask"].shape == (6, 5)
    # a white object on a transparent background: the object is the ROI, alpha plays no part
    rgba[1:3, 1:4, :3] = 255
    rgba[..., 3] = 0
    rgba[1:3, 1:4, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "obj.png")
    s = load_sample(Record("a", tmp_path / "i.png", 0, mask=MaskFile(tmp_path / "obj.png")))
    assert s["mask"].sum() == 6 and s["mask"][1:3, 1:4].eq(1).all()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "L"])
def test_grey_levels_equal_opencv_imread_grayscale(tmp_path: Path, mode: str):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    im = Image.fromarray(rgba, "RGBA") if mode in ("RGBA", "LA") else Image.fromarray(rgba[..., :3], "RGB")
    im = im.convert(mode)
    path = tmp_path / f"m_{mode}.png"
    im.save(path)
    ours, sixteen = open_image(path, "mask", None, lambda i: gray_levels(i, path))
    np.testing.assert_array_equal(ours, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    assert not sixteen


def test_colour_mask_is_refused_with_its_values(tmp_path: Path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2, :2] = (255, 0, 0)  # red on black: luminance 76, not a label
    Image.fromarray(rgb).save(tmp_path / "red.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(DataError, match=r"red\.png: mask holds grey levels 0, 76 \(4 pixel"):
        load_sample(Record("a", tmp_path / "i.png", 0, mask=MaskFile(tmp_path / "red.png")))


def test_glas_instance_maps_keep_their_documented_mapping(tmp_path: Path):
    inst = np.zeros((4, 4), np.uint8)
    inst[0, 0], inst[1, 1], inst[2, 2] = 1, 7, 200  # instance ids, not grey levels
    Image.fromarray(inst).save(tmp_path / "anno.bmp")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "i.bmp")
    s = load_sample(Record("a", tmp_path / "i.bmp", 0, mask=MaskFile(tmp_path / "anno.bmp", kind="instances")))
    assert s["mask"].tolist() == (inst > 0).astype(np.uint8).tolist()
    with pytest.raises(DataError, match="grey levels 0, 1, 7, 200"):  # as a binary mask it is refused
        load_sample(Record("a", tmp_path / "i.bmp", 0, mask=MaskFile(tmp_path / "anno.bmp")))


# ------------------------------------------------------------------- mask-size message (item 10)


def test_size_message_leads_with_the_mask_that_disagrees(openimages: Path):
    small = np.zeros((RESIZE // 2, RESIZE // 2), np.uint8)
    Image.fromarray(small).save(openimages / "masks" / "cls" / "3b3b_m1.png")  # the first row's mask is wrong
    rec = read_metadata(openimages, "test")[0]
    m1, m2 = (str(openimages / "masks" / "cls" / f"3b3b_{k}.png") for k in ("m1", "m2"))
    with pytest.raises(DataError) as info:
        load_sample(rec)
    assert str(info.value).startswith(f"{m1}: mask is 112×112 but {m2} is 224×224, as is the image")
    write_class_names(openimages, ["x"])
    rep = verify_dataset("wsoleval-mask", openimages, {"splits.train": "test", "splits.valcl": "test",
                                                      "splits.valpx": "test"})
    assert [p.message for p in rep.errors if "mask is" in p.message] == [str(info.value)]


# ------------------------------------------------------------------------- reader options (10)


@pytest.mark.parametrize("name", sorted(DATASETS.names()))
def test_misspelt_option_is_an_error_for_every_reader(tmp_path: Path, capsys, name: str):
    with pytest.raises(ConfigError, match=r"data\.options: sed: unknown key"):
        validate_options(name, {"sed": 1})
    assert main(["data", "verify", name, str(tmp_path), "--option", "sed=1"]) == 1
    err = capsys.readouterr().err
    assert "data.options" in err and "sed: unknown key" in err


def test_nested_dotted_option_misspelt_or_applied(tmp_path: Path, capsys):
    for i, split in enumerate(("train", "val", "test")):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
        write_metadata(tmp_path, split, [MetaEntry(f"{i}.png", 0, (4, 4), boxes=[[0, 0, 2, 2]])])
    assert main(["data", "verify", "wsoleval-box", str(tmp_path), "--option", "splits.valcl=val",
                 "--option", "splits.valpx=val"]) == 0
    capsys.readouterr()
    assert main(["data", "verify", "wsoleval-box", str(tmp_path), "--option", "splits.vlcl=val"]) == 1
    assert "splits.vlcl: unknown key" in capsys.readouterr().err


def test_options_that_would_not_be_applied_are_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^data\.options: val_fraction is not applied: it applies to split=minmax"):
        validate_options("glas", {"val_fraction": 0.3})  # the default split is survey
    assert validate_options("glas", {"split": "minmax", "val_fraction": 0.3}).val_fraction == 0.3
    with pytest.raises(ConfigError, match="num_classes is not applied: class_names are given"):
        validate_options("wsoleval-box", {"class_names": ["a", "b"], "num_classes": 2})
    # wsoleval: num_classes while metadata/class_names.txt lists the classes
    write_class_names(tmp_path, ["a", "b"])
    with pytest.raises(ConfigError, match=r"num_classes: not applied, .*class_names\.txt lists the classes"):
        DATASETS.get("wsoleval-box").class_names(tmp_path, {"num_classes": 3})
    # folder: the seeded-split options with user-given split files
    from wsol.data.formats import folder

    root = tmp_path / "f"
    (root / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "cat" / "1.png")
    (root / "splits").mkdir()
    for split in ("train", "valcl", "valpx", "test"):
        (root / "splits" / f"{split}.txt").write_text("cat/1.png\n" if split == "train" else "")
    assert len(folder.SPEC.list_records(root, "train", {})) == 1
    with pytest.raises(ConfigError, match=r"data\.options: seed, test_fraction not applied: .*user-given split files"):
        folder.SPEC.list_records(root, "train", {"seed": 3, "test_fraction": 0.5})


def test_sixteen_bit_mask_through_a_reader(tmp_path: Path):
    """A 16-bit 0/65535 mask in the wsolevaluation layout reads like its 8-bit twin."""
    m = np.zeros((5, 6), np.uint16)
    m[1:3, 2:5] = 65535
    Image.fromarray(m).save(tmp_path / "m16.png")
    Image.fromarray((m // 257).astype(np.uint8)).save(tmp_path / "m8.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "i.png")
    write_metadata(tmp_path, "test", [MetaEntry("i.png", 0, (6, 5), masks=[("m16.png", None)])])
    a = load_sample(read_metadata(tmp_path, "test")[0])["mask"]
    b = load_sample(Record("b", tmp_path / "i.png", 0, mask=MaskFile(tmp_path / "m8.png")))["mask"]
    assert torch.equal(a, b) and int(a.sum()) == 6
