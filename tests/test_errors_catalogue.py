"""Runs every row of docs/errors.md through the command line: each bad input gives the
documented message (and exit code), so the catalogue cannot rot."""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from wsol.cli import main
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("id", "---"):
            msg = re.fullmatch(r"`(.*)`", cells[3])
            assert msg, f"docs/errors.md row {cells[0]}: the message must be one `code` excerpt"
            rows.append((cells[0], msg.group(1)))
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("catalogue")
    root = synthesize("synthetic-glas", base / "data", n=8, size=32, seed=5)
    run = base / "run"
    cfg = load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=32", f"run_dir={run}",
        "model.method.name=cam", "optim.epochs=2", "optim.batch_size=8", "eval.batch_size=16", "eval.gallery=1",
    ])
    Trainer(cfg).fit()
    img = next(p for p in sorted(root.rglob("*.png")) if "mask" not in str(p))
    return {"base": base, "root": root, "run": run, "img": img}


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_run(w, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(w["run"], dst)
    return dst


def _cfg_file(w, tmp: Path, run_dir: Path) -> Path:
    p = tmp / "cfg.yaml"
    p.write_text(f"data: {{name: synthetic-glas, root: {w['root']}, image_size: 32}}\nrun_dir: {run_dir}\n"
                 "optim: {epochs: 1, batch_size: 8}\n")
    return p


def ckpt_code(w, tmp):
    run = _copy_run(w, tmp)
    for ck in (run / "checkpoints").glob("*.pt"):
        state = torch.load(ck, weights_only=True)
        state["evil"] = _Payload(tmp / "PWNED")
        buf = io.BytesIO()
        torch.save(state, buf, pickle_protocol=pickle.DEFAULT_PROTOCOL)
        ck.write_bytes(buf.getvalue())
    return ["evaluate", str(run)]


def ckpt_damaged(w, tmp):
    run = _copy_run(w, tmp)
    ck = run / "checkpoints" / "best_cls.pt"
    with zipfile.ZipFile(ck) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(ck.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 64, start + 128):
        data[i] ^= 0xFF
    ck.write_bytes(bytes(data))
    return ["evaluate", str(run), "--checkpoint", "best_cls"]


def run_locked(w, tmp):
    run = _copy_run(w, tmp)
    (run / ".wsol.lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    return ["train", "-c", str(run / "config.yaml"), "--resume", "--no-eval", "--set", "optim.epochs=3"]


def run_user_files(w, tmp):
    mine = tmp / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    return ["train", "-c", str(_cfg_file(w, tmp, mine)), "--overwrite", "--no-eval"]


def verify_truncated(w, tmp):
    root = tmp / "data"
    shutil.copytree(w["root"], root)
    victim = sorted((root / "images" / "test").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    return ["data", "verify", "synthetic-glas", str(root)]


def _bomb(tmp):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    (tmp / "bomb.yaml").write_text("\n".join(lines) + "\nseed: *i\n")
    return ["train", "-c", str(tmp / "bomb.yaml")]


SETUPS: dict[str, Callable] = {
    "ckpt-code": ckpt_code,
    "ckpt-damaged": ckpt_damaged,
    "ckpt-unknown": lambda w, t: ["evaluate", str(w["run"]), "--checkpoint", "nope"],
    "not-a-run": lambda w, t: ["evaluate", str(t)],
    "run-exists": lambda w, t: ["train", "-c", str(_cfg_file(w, t, w["run"])), "--no-eval"],
    "run-user-files": run_user_files,
    "run-locked": run_locked,
    "resume-fewer": lambda w, t: ["train", "-c", str(_copy_run(w, t) / "config.yaml"), "--resume", "--no-eval",
                                  "--set", "optim.epochs=1"],
    "resume-other-config": lambda w, t: ["train", "-c", str(_copy_run(w, t) / "config.yaml"), "--resume",
                                         "--no-eval", "--set", "optim.lr=0.5"],
    "cfg-missing": lambda w, t: ["train", "-c", str(t / "nope.yaml")],
    "cfg-yaml": lambda w, t: (t.joinpath("bad.yaml").write_text("optim: [1, 2\n"), ["train", "-c", str(t / "bad.yaml")])[1],
    "cfg-alias-bomb": lambda w, t: _bomb(t),
    "cfg-strict": lambda w, t: ["train", "--set", "optim.epochs=true"],
    "cfg-unknown-key": lambda w, t: ["train", "--set", "optim.lrr=0.1"],
    "cfg-method": lambda w, t: ["train", "--set", "model.method.name=camm"],
    "cfg-method-param": lambda w, t: ["train", "--set", "model.method.params.bogus=1"],
    "cfg-data-option": lambda w, t: ["train", "--set", "data.options.bogus=1"],
    "cfg-backbone": lambda w, t: ["train", "--set", "model.backbone.name=resnet7"],
    "cam-target": lambda w, t: ["cam", str(w["run"]), str(w["img"]), "--out", str(t / "c"), "--target", "nope"],
    "cam-layer": lambda w, t: ["evaluate", str(w["run"]), "--layer", "backbone.layer4"],
    "brackets": lambda w, t: ["evaluate", str(t / "scan[b]01")],
    "synth-unknown": lambda w, t: ["data", "synth", "nope", "--out", str(t / "x")],
    "verify-truncated": verify_truncated,
}
EXIT = {"verify-truncated": 1}


def test_every_row_has_a_setup_and_every_setup_a_row():
    ids = [i for i, _ in _rows()]
    assert len(ids) == len(set(ids)), "duplicate ids in docs/errors.md"
    assert set(ids) == set(SETUPS), (set(ids) ^ set(SETUPS))


@pytest.mark.parametrize("row,message", _rows(), ids=[i for i, _ in _rows()])
def test_catalogue_row(world, tmp_path, capsys, row, message):
    argv = SETUPS[row](world, tmp_path)
    rc = main(argv)
    out = capsys.readouterr()
    text = " ".join((out.err + out.out).split())
    assert rc == EXIT.get(row, 2), (rc, text[-500:])
    assert " ".join(message.split()) in text, text[-800:]
    assert not (tmp_path / "PWNED").exists()
    assert not list(tmp_path.rglob("*.tmp"))
