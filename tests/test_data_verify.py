"""verify_dataset builds structured Problems from located errors, and nested reader options
given as dotted keys (``--option splits.valcl=val``) reach the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsol.cli import main
from wsol.data.metadata import MetaEntry, write_class_names, write_metadata
from wsol.data.verify import Problem, verify_dataset


@pytest.fixture()
def box_root(tmp_path: Path) -> Path:
    """wsolevaluation layout with the metadata split folders train / val / test (no valcl, valpx)."""
    for i in range(4):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rows = {"train": [0, 1], "val": [2], "test": [3]}
    for split, ids in rows.items():
        write_metadata(tmp_path, split, [MetaEntry(f"{i}.png", i % 2, (8, 6), boxes=[[1, 1, 5, 4]]) for i in ids])
    write_class_names(tmp_path, ["a", "b"])
    return tmp_path


def test_dotted_split_options_are_applied(box_root):
    rep = verify_dataset("wsoleval-box", box_root, {"splits.valcl": "val", "splits.valpx": "val"})
    assert rep.ok and rep.problems == [] and rep.checked == 5  # valpx repeats valcl's one image
    assert rep.split_counts() == {"train": 2, "valcl": 1, "valpx": 1, "test": 1}
    nested = verify_dataset("wsoleval-box", box_root, {"splits": {"valcl": "val", "valpx": "val"}})
    assert nested.split_counts() == rep.split_counts()
    missing = str(box_root / "metadata" / "valcl" / "image_ids.txt")
    plain = verify_dataset("wsoleval-box", box_root)  # without the map valcl / valpx do not exist
    assert [(p.severity, p.split, p.where) for p in plain.errors] == [
        ("error", "valcl", missing), ("error", "valpx", missing.replace("valcl", "valpx"))]
    assert plain.errors[0].message.startswith(f"{missing}: file not found")


def test_cli_verify_takes_dotted_options(box_root, capsys):
    assert main(["data", "verify", "wsoleval-box", str(box_root), "--option", "splits.valcl=val",
                 "--option", "splits.valpx=val"]) == 0
    assert "no error" in capsys.readouterr().out
    assert main(["data", "verify", "wsoleval-box", str(box_root), "--option", "splits.valcl=val"]) == 1
    assert "valpx" in capsys.readouterr().err


def test_bad_options_are_one_problem_at_data_options(box_root):
    rep = verify_dataset("wsoleval-box", box_root, {"splits.valc": "val"})
    assert [(p.severity, p.split, p.where) for p in rep.problems] == [("error", "", "data.options")]
    assert rep.problems[0].message.startswith("data.options: splits.valc: unknown key (got 'val')")
    assert rep.checked == 0 and rep.split_counts() == {"train": 0, "valcl": 0, "valpx": 0, "test": 0}


def test_problems_sit_where_the_checks_put_them(box_root):
    (box_root / "2.png").write_bytes(b"not a png")  # a record-level problem: at the record's line
    rows = (box_root / "metadata" / "test" / "localization.txt").read_text().replace("3.png,1,1,5,4", "3.png,1,1,9,4")
    (box_root / "metadata" / "test" / "localization.txt").write_text(rows)  # a metadata problem: at its line
    rep = verify_dataset("wsoleval-box", box_root, {"splits.valcl": "val", "splits.valpx": "val"})
    meta = box_root / "metadata"
    got = [(p.severity, p.split, p.where, p.image_id) for p in rep.problems]
    assert got == [("error", "test", f"{meta / 'test' / 'localization.txt'}:1", ""),
                   ("error", "valcl", f"{meta / 'val' / 'image_ids.txt'}:1", "2.png")]
    assert "box (1.0, 1.0, 9.0, 4.0) is outside the 8×6 image" in rep.problems[0].message
    assert "2.png: corrupt file" in rep.problems[1].message and "(listed at " in rep.problems[1].message
    assert all(isinstance(p, Problem) for p in rep.problems)
