"""[reliability] data inputs a hostile but fair user gives (issue 10): synth never deletes a file
wsol did not write; masks that cannot be labels, 16-bit files, out-of-range labels, byte-order
marks and decompression bombs give one clear DataError — through the same doors a user uses
(``wsol.cli.main``, ``synthesize`` / ``ensure_dataset``, ``build_dataset``, ``verify``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.cli import main
from wsol.config import DataConfig
from wsol.data import build_dataset, check_labels, ensure_dataset, load_sample, synthesize
from wsol.data.embedded import base as embedded_base
from wsol.data.embedded import synthetic
from wsol.data.metadata import MetaEntry, read_metadata, write_class_names, write_metadata
from wsol.data.records import MaskFile, Record, RecordDataset
from wsol.data.verify import verify_dataset
from wsol.errors import ConfigError, DataError

SMALL = ["--n", "2", "--size", "16"]  # synthetic-glas: 2 train, 8 valcl, 4 test images of 16×16


def synth_cli(out: Path, *extra: str) -> int:
    return main(["data", "synth", "synthetic-glas", "--out", str(out), *SMALL, *extra])


def marker(root: Path) -> dict:
    return json.loads((root / embedded_base.MARKER).read_text())


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# ------------------------------------------------------------------------ synth / demo safety


def test_synth_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_bytes(b"precious")
    (out / "notes.txt").write_text("keep me")
    assert synth_cli(out) == 2
    assert "was not written by wsol" in capsys.readouterr().err
    with pytest.raises(DataError, match="never deletes files it did not write"):
        synthesize("synthetic-glas", out, n=2, size=16, overwrite=True)  # not even with overwrite
    assert (out / "images" / "holiday.jpg").read_bytes() == b"precious" and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["images", "notes.txt"]
    assert siblings(out) == ["mine"]  # no temporary folder left


def test_demo_refuses_a_foreign_data_root_before_training(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "thesis.tex").write_text("do not delete")
    assert main(["demo", "--data-root", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "was not written by wsol" in capsys.readouterr().err
    assert [p.name for p in root.iterdir()] == ["thesis.tex"] and not (tmp_path / "run").exists()


def test_synth_replaces_its_own_output_atomically(tmp_path):
    out = tmp_path / "sg"
    assert synth_cli(out) == 0
    first = marker(out)
    assert first["name"] == "synthetic-glas" and first["params"] == {"n": 2, "size": 16, "seed": 0}
    assert "images/train/train_00000.png" in first["files"] and "metadata/test/image_ids.txt" in first["files"]
    # the same generator with other parameters: replaced (it is wsol's own output)
    assert main(["data", "synth", "synthetic-glas", "--out", str(out), "--n", "4", "--size", "16", "--seed", "1"]) == 0
    assert marker(out)["params"] == {"n": 4, "size": 16, "seed": 1}
    assert len(list((out / "images" / "train").iterdir())) == 4
    assert siblings(out) == ["sg"]  # neither the staging folder nor the old set is left


def test_synth_refuses_its_output_once_a_user_file_is_inside(tmp_path):
    out = synthesize("synthetic-glas", tmp_path / "sg", n=2, size=16)
    mine = out / "images" / "train" / "my_annotation.png"
    mine.write_bytes(b"user")
    with pytest.raises(DataError, match=r"1 file\(s\) wsol did not write \(images/train/my_annotation\.png\)"):
        synthesize("synthetic-glas", out, n=4, size=16, overwrite=True)
    assert mine.read_bytes() == b"user" and marker(out)["params"]["n"] == 2


def test_another_generator_needs_overwrite(tmp_path):
    out = synthesize("synthetic-camelyon", tmp_path / "d", n=2, size=16)
    with pytest.raises(DataError, match="holds the embedded dataset 'synthetic-camelyon'.*overwrite"):
        synthesize("synthetic-glas", out, n=2, size=16)
    assert marker(out)["name"] == "synthetic-camelyon"
    synthesize("synthetic-glas", out, n=2, size=16, overwrite=True)
    assert marker(out)["name"] == "synthetic-glas" and json.loads((out / "dataset.json").read_text())["n"] == 2


def test_synth_cli_overwrite_flag(tmp_path, capsys):
    out = synthesize("synthetic-camelyon", tmp_path / "d", n=2, size=16)
    assert synth_cli(out) == 2  # another generator's output: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err and marker(out)["name"] == "synthetic-camelyon"
    assert synth_cli(out, "--overwrite") == 0
    assert marker(out)["name"] == "synthetic-glas"


def test_interrupted_generation_leaves_the_previous_set(tmp_path, monkeypatch):
    out = synthesize("synthetic-glas", tmp_path / "sg", n=2, size=16)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing(path, arr):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic, "write_png", failing)
    with pytest.raises(DataError, match="cannot write the dataset \\(No space left on device\\)"):
        synthesize("synthetic-glas", out, n=4, size=16)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert siblings(out) == ["sg"]


@pytest.mark.parametrize("args,pattern", [
    (["--size", "5000"], r"size=5000 is out of range; expected 1\.\.4096"),
    (["--n", "100001"], r"n=100001 is out of range; expected 1\.\.100000"),
    (["--n", "0"], r"n=0 is out of range"),
])
def test_absurd_sizes_are_refused_before_writing(tmp_path, capsys, args, pattern):
    out = tmp_path / "sg"
    assert main(["data", "synth", "synthetic-glas", "--out", str(out), *args]) == 2
    assert re.search(pattern, capsys.readouterr().err)
    assert not out.exists() and siblings(out) == []


def test_out_at_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF")
    assert synth_cli(f) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and f.read_bytes() == b"%PDF"


def test_ensure_dataset_reuses_same_parameters_and_regenerates_only_its_own(tmp_path, monkeypatch):
    root = tmp_path / "d"
    runs = []
    spec = synthetic.GLAS
    real = spec.generate
    assert real is not None

    def counting(out, n=None, size=None, seed=0):
        runs.append((n, size, seed))
        return real(out, n=n, size=size, seed=seed)

    monkeypatch.setattr(spec, "generate", counting)
    assert ensure_dataset("synthetic-glas", root, n=2, size=16) == root
    assert ensure_dataset("synthetic-glas", root, n=2, size=16, seed=0) == root  # same parameters: reused
    assert ensure_dataset("synthetic-glas", root) == root  # none given: any previous output of the generator
    assert runs == [(2, 16, 0)]
    ensure_dataset("synthetic-glas", root, n=4, size=16)  # other parameters, wsol's own output: regenerated
    assert runs == [(2, 16, 0), (4, 16, 0)] and marker(root)["params"]["n"] == 4
    (root / "metadata" / "test" / "image_ids.txt").unlink()  # a broken set of the same parameters: regenerated
    ensure_dataset("synthetic-glas", root, n=4, size=16)
    assert len(runs) == 3 and (root / "metadata" / "test" / "image_ids.txt").is_file()
    # a folder without marker but with the metadata of every split (the user's own data): used as it is
    user = tmp_path / "user"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    for split in ("train", "valcl", "valpx", "test"):
        write_metadata(user, split, [MetaEntry("x.png", 0, (4, 4))])
    assert ensure_dataset("synthetic-glas", user, n=2, size=16) == user and len(runs) == 3
    assert not (user / embedded_base.MARKER).exists()


def test_sets_written_before_the_marker_are_recognised(tmp_path):
    out = synthesize("synthetic-glas", tmp_path / "old", n=2, size=16)
    (out / embedded_base.MARKER).unlink()  # as an earlier wsol version wrote it: dataset.json only
    assert ensure_dataset("synthetic-glas", out, n=2) == out and not (out / embedded_base.MARKER).exists()
    synthesize("synthetic-glas", out, n=4, size=16)  # replaced: its top level is what wsol writes
    assert marker(out)["params"]["n"] == 4


# ------------------------------------------------------------------------------ masks (item 4)


def mask_set(root: Path, mask: np.ndarray, image: np.ndarray | None = None) -> Path:
    """One image with one mask row, in the wsolevaluation mask layout (split 'test')."""
    h, w = mask.shape[:2]
    Image.fromarray(image if image is not None else np.full((h, w, 3), 90, np.uint8)).save(root / "i.png")
    Image.fromarray(mask).save(root / "m.png")
    write_metadata(root, "test", [MetaEntry("i.png", 0, (w, h), masks=[("m.png", None)])])
    return root


def test_jpeg_artefacts_in_a_mask_are_an_error_naming_file_and_values(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    m[0, :3] = [1, 2, 3]  # what JPEG compression leaves in the background of a 0/255 mask
    mask_set(tmp_path, m)
    rec = read_metadata(tmp_path, "test")[0]
    with pytest.raises(DataError, match=r"m\.png: mask holds grey levels 0, 1, 2, 3, 255 \(2 pixel\(s\) neither 0, 1 "
                                        r"nor 255\) \(listed at .*localization\.txt:1\)"):
        load_sample(rec)
    rep = verify_dataset("wsoleval-mask", tmp_path, {"splits.train": "test", "splits.valcl": "test",
                                                     "splits.valpx": "test"})
    bad = [p for p in rep.errors if "grey levels" in p.message]
    assert bad and all(str(tmp_path / "m.png") in p.message and "localization.txt:1" in p.where for p in bad)


def test_mask_conventions_0_255_and_0_1_255(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[0] = 255
    mask_set(tmp_path, m)
    assert load_sample(read_metadata(tmp_path, "test")[0])["mask"][:, 0].tolist() == [1, 0, 0, 0]
    m[1] = 1  # with a 1 present the file is in the Sample's own convention: 1 = ROI, 255 = ignore
    mask_set(tmp_path, m)
    assert load_sample(read_metadata(tmp_path, "test")[0])["mask"][:, 0].tolist() == [255, 1, 0, 0]


# ------------------------------------------------------------------------ 16-bit files (item 5)


def test_16bit_grey_image_decodes_by_bit_depth(tmp_path):
    raw = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "i16.png")  # PIL mode I;16
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    s = load_sample(Record("a", tmp_path / "i16.png", 0))
    got = (s["image"] * 255).round().to(torch.uint8)
    assert got[0].tolist() == [[0, 1, 128, 255]] and torch.equal(got[0], got[2])  # grey: R = G = B
    # the same values written by OpenCV as uint16 read the same
    import cv2

    cv2.imwrite(str(tmp_path / "cv16.png"), raw)
    s2 = load_sample(Record("b", tmp_path / "cv16.png", 0))
    assert torch.equal(s2["image"], s["image"])


def test_16bit_masks(tmp_path):
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(img)
    Image.fromarray(np.array([[0, 65535, 0], [65535, 0, 0]], np.uint16)).save(tmp_path / "full.png")
    Image.fromarray(np.array([[0, 1, 255], [0, 0, 1]], np.uint16)).save(tmp_path / "labels.png")
    Image.fromarray(np.array([[0, 1000, 0], [0, 0, 0]], np.uint16)).save(tmp_path / "odd.png")
    s = load_sample(Record("a", img, 0, mask=MaskFile(tmp_path / "full.png")))
    assert s["mask"].tolist() == [[0, 1, 0], [1, 0, 0]]  # 65535 -> 255 (high byte) -> ROI
    s = load_sample(Record("a", img, 0, mask=MaskFile(tmp_path / "labels.png")))
    assert s["mask"].tolist() == [[0, 1, 255], [0, 0, 1]]  # label values stored at 16 bits are kept
    with pytest.raises(DataError, match=r"odd\.png: mask holds grey levels 0, 3"):
        load_sample(Record("a", img, 0, mask=MaskFile(tmp_path / "odd.png")))


# ------------------------------------------------------------------------------ labels (item 6)


def test_out_of_range_labels_are_refused_before_training_as_verify_reports_them(tmp_path):
    root = synthesize("synthetic-glas", tmp_path / "sg", n=2, size=16)
    labels = root / "metadata" / "train" / "class_labels.txt"
    rows = labels.read_text().splitlines()
    image_id = rows[1].split(",")[0]
    rows[1] = f"{image_id},7"
    labels.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        build_dataset(DataConfig(name="synthetic-glas", root=str(root), image_size=16), "train")
    msg = str(info.value)
    assert msg.startswith(f"{labels}:2: class label 7 is out of range; expected 0..1")
    assert f"label 7 of '{image_id}' in split train" in msg and "benign, malignant" in msg
    rep = verify_dataset("synthetic-glas", root)
    [p] = [p for p in rep.errors if "class label" in p.message]
    assert p.split == "train" and p.message == msg.replace(" in split train", "")  # the same check
    # the function the trainer calls, on any records
    recs = [Record("a", Path("a.png"), 1, source="list.txt:1"), Record("b", Path("b.png"), -1, source="list.txt:2")]
    with pytest.raises(DataError, match=r"^list\.txt:2: class label -1 is out of range; expected 0\.\.1"):
        check_labels(recs, 2, "train")
    check_labels(recs[:1], 2)


# ---------------------------------------------------------------------- byte-order marks (BOM)


BOM = "\ufeff"


def test_bom_in_metadata_text_files_is_accepted(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.png")
    d = tmp_path / "metadata" / "test"
    d.mkdir(parents=True)
    files = {"image_ids.txt": "a.png\nb.png\n", "class_labels.txt": "a.png,0\nb.png,1\n",
             "image_sizes.txt": "a.png,4,4\nb.png,4,4\n", "localization.txt": "a.png,0,0,2,2\nb.png,1,1,3,3\n"}
    for name, text in files.items():
        (d / name).write_text(BOM + text, encoding="utf-8")  # what Windows Notepad writes
    (tmp_path / "metadata" / "class_names.txt").write_text(BOM + "cat\ndog\n", encoding="utf-8")
    recs = read_metadata(tmp_path, "test")
    assert [r.image_id for r in recs] == ["a.png", "b.png"] and [r.label for r in recs] == [0, 1]
    assert recs[0].size == (4, 4) and recs[1].boxes.tolist() == [[1, 1, 3, 3]]
    cfg = DataConfig(name="wsoleval-box", root=str(tmp_path), image_size=4, options={"splits.train": "test"})
    ds = build_dataset(cfg, "train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2


def test_bom_in_folder_split_files_and_camelyon_csvs(tmp_path):
    from wsol.data.formats import folder
    from wsol.data.wsi.sampling import read_reference_csv, read_split_csv

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / cls / "1.png")
    (tmp_path / "splits").mkdir()
    for split, text in {"train": "cat/1.png\n", "valcl": "dog/1.png\n", "valpx": "", "test": ""}.items():
        (tmp_path / "splits" / f"{split}.txt").write_text(BOM + text, encoding="utf-8")
    assert [r.image_id for r in folder.SPEC.list_records(tmp_path, "train", {})] == ["cat/1.png"]
    (tmp_path / "reference.csv").write_text(BOM + "test_001,Tumor,Macro\ntest_002,Normal\n", encoding="utf-8")
    assert read_reference_csv(tmp_path / "reference.csv") == {"test_001": "tumor", "test_002": "normal"}
    (tmp_path / "split.csv").write_text(BOM + "slide,split\ntumor_001,train\nnormal_001,val\n", encoding="utf-8")
    assert read_split_csv(tmp_path / "split.csv") == {"tumor_001": "train", "normal_001": "valcl"}


# ------------------------------------------------------------------------- decompression bombs


@pytest.mark.parametrize("side", [12, 20])  # 144 px: PIL's warning; 400 px: PIL's error (limit 100)
def test_decompression_bomb_is_one_clear_error_in_training_and_verify(tmp_path, monkeypatch, side):
    img = np.zeros((side, side, 3), np.uint8)
    mask_set(tmp_path, np.zeros((side, side), np.uint8), img)
    write_class_names(tmp_path, ["a"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    opts = {"splits.train": "test", "splits.valcl": "test", "splits.valpx": "test"}
    ds = build_dataset(DataConfig(name="wsoleval-mask", root=str(tmp_path), image_size=8, options=opts), "train")
    with pytest.raises(DataError, match=r"i\.png: image refused as a possible decompression bomb .*MAX_IMAGE_PIXELS") \
            as info:
        ds[0]
    rep = verify_dataset("wsoleval-mask", tmp_path, opts)
    assert str(info.value) in {p.message for p in rep.errors}  # verify gives the very same message
    with pytest.raises(DataError, match="decompression bomb"):
        RecordDataset(ds.records)[0]


def test_synthesize_validates_parameter_types():
    with pytest.raises(ConfigError, match=r"size='big' must be an integer"):
        synthesize("synthetic-glas", "/nonexistent/never-written", size="big")  # type: ignore[arg-type]
