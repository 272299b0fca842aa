"""Hostile-but-fair inputs, each through the door a user takes (the CLI or the public API):
no code from checkpoints, no user file deleted, run folders protected, damaged files named,
silently wrong numbers turned into clear errors."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.cli import main
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.trainer import Trainer
from wsol.errors import CheckpointError, ConfigError, DataError, WSOLError


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdata") / "synthetic-glas"
    synthesize("synthetic-glas", root, n=8, size=32, seed=3)
    return root


def _cfg(root, run_dir, epochs=1, extra=()):
    return load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=32", f"run_dir={run_dir}",
        "model.method.name=cam", f"optim.epochs={epochs}", "optim.batch_size=8", "eval.batch_size=16",
        "eval.gallery=1", *extra,
    ])


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rruns") / "cam"
    Trainer(_cfg(tiny_data, run_dir)).fit()
    return run_dir


class _Payload:
    """Pickles to a call of os.system that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(ckpt: Path, marker: Path) -> None:
    state = torch.load(ckpt, weights_only=True)
    state["evil"] = _Payload(marker)
    buf = io.BytesIO()
    torch.save(state, buf, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    ckpt.write_bytes(buf.getvalue())


@pytest.mark.parametrize("door", ["evaluate", "cam", "resume"])
def test_checkpoint_with_pickled_code_is_refused(run, tiny_data, tmp_path, capsys, door):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    marker = tmp_path / "PWNED"
    for name in ("best_loc", "best_cls", "last"):
        _plant(victim / "checkpoints" / f"{name}.pt", marker)
    img = next(p for p in sorted(tiny_data.rglob("*.png")) if "mask" not in str(p))
    if door == "evaluate":
        rc = main(["evaluate", str(victim), "--split", "valpx"])
    elif door == "cam":
        rc = main(["cam", str(victim), str(img), "--out", str(tmp_path / "cams")])
    else:
        rc = main(["train", "-c", str(victim / "config.yaml"), "--resume", "--no-eval"])
    assert rc == 2
    assert not marker.exists(), "code from a checkpoint ran"
    assert "refused" in capsys.readouterr().err


def test_damaged_checkpoint_is_named(run, tmp_path, capsys):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    ck = victim / "checkpoints" / "best_cls.pt"
    with zipfile.ZipFile(ck) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    data = bytearray(ck.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 64, start + 128):
        data[i] ^= 0xFF
    ck.write_bytes(bytes(data))
    assert main(["evaluate", str(victim), "--checkpoint", "best_cls", "--split", "valpx"]) == 2
    err = capsys.readouterr().err
    assert "best_cls.pt" in err and "damaged" in err


def test_evaluating_another_split_keeps_the_test_summary(run, tmp_path):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    assert main(["evaluate", str(victim), "--checkpoint", "best_cls"]) == 0
    test_before = json.loads((victim / "metrics.json").read_text())
    assert main(["evaluate", str(victim), "--checkpoint", "last", "--split", "valpx"]) == 0
    assert json.loads((victim / "metrics.json").read_text()) == test_before
    assert "last" in json.loads((victim / "metrics-valpx.json").read_text())


def test_extractor_columns_do_not_overwrite_each_other(run, tmp_path):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    assert main(["evaluate", str(victim), "--extractor", "gradcam"]) == 0
    summary = json.loads((victim / "metrics.json").read_text())
    assert {"best_loc+gradcam", "best_cls+gradcam"} <= set(summary)
    assert (victim / "eval" / "best_loc+gradcam" / "test" / "metrics.json").is_file()
    assert (victim / "eval" / "best_cls+gradcam" / "test" / "metrics.json").is_file()


def test_output_files_respect_the_umask(run, tmp_path):
    old = os.umask(0o022)
    try:
        from wsol.fileio import atomic_write_text

        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert (run / "checkpoints" / "last.pt").stat().st_mode & 0o044, "checkpoints readable by the group/others"


def test_strict_config_types(tmp_path):
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(None, ["optim.epochs=true"])


def test_unknown_checkpoint_name_lists_the_found_ones(run, capsys):
    assert main(["evaluate", str(run), "--checkpoint", "nope"]) == 2
    assert "best_cls" in capsys.readouterr().err


def test_errors_are_wsol_errors():
    assert issubclass(CheckpointError, WSOLError) and issubclass(DataError, WSOLError)
    assert np is not None and Image is not None


def test_training_into_an_existing_run_is_refused_then_overwritten(run, tiny_data, tmp_path):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(_cfg(tiny_data, victim)).fit()
    (victim / "eval" / "old").mkdir(parents=True)
    Trainer(_cfg(tiny_data, victim), overwrite=True).fit()
    assert not (victim / "eval" / "old").exists() and (victim / "run.json").is_file()


def test_a_folder_of_user_files_is_never_written(tiny_data, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.yaml").write_text("my own notes\n")
    for overwrite in (False, True):
        with pytest.raises(CheckpointError, match="holds no wsol run"):
            Trainer(_cfg(tiny_data, user), overwrite=overwrite).fit()
    assert (user / "config.yaml").read_text() == "my own notes\n"


def test_a_live_lock_refuses_a_second_trainer_and_a_stale_one_is_taken_over(run, tiny_data, tmp_path):
    import socket

    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    (victim / ".wsol.lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # this very process: alive
    with pytest.raises(CheckpointError, match="another wsol process"):
        Trainer(_cfg(tiny_data, victim, epochs=2)).fit(resume=True)
    (victim / ".wsol.lock").write_text(f"{socket.gethostname()} 999999999")  # no such process: stale
    (victim / ".last.pt.abc123.tmp").write_bytes(b"half")  # a killed write's leftover
    Trainer(_cfg(tiny_data, victim, epochs=2)).fit(resume=True)
    assert not (victim / ".wsol.lock").exists() and not list(victim.rglob("*.tmp"))


def test_resume_refuses_fewer_epochs_and_works_after_the_folder_moves(run, tiny_data, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert main(["train", "-c", str(moved / "config.yaml"), "--resume", "--no-eval", "--set", "optim.epochs=2"]) == 0
    assert (moved / "history.csv").read_text().count("\n") == 3  # header + 2 epochs, written in the moved folder
    with pytest.raises(CheckpointError, match="can only extend"):
        Trainer(_cfg(tiny_data, moved, epochs=1)).fit(resume=True)


def test_cam_outputs_of_same_named_inputs_do_not_collide(run, tiny_data, tmp_path):
    img = next(p for p in sorted(tiny_data.rglob("*.png")) if "mask" not in str(p))
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(img, tmp_path / d / "x.png")
    assert main(["cam", str(run), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                 "--out", str(tmp_path / "cams")]) == 0
    assert sorted(p.name for p in (tmp_path / "cams").glob("*_heatmap.png")) == ["a_x_heatmap.png", "b_x_heatmap.png"]


def test_square_brackets_in_messages_survive(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "scan[b]01")]) == 2
    assert "scan[b]01" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; covered by the ENOSPC case below")
def test_read_only_run_folder_is_one_line(run, tmp_path, capsys):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    for p in [victim, *victim.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        assert main(["evaluate", str(victim), "--split", "valpx"]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        for p in [victim, *victim.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_full_disk_is_a_clear_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from wsol import fileio

    (tmp_path / "keep.json").write_text("old")

    def full(fd, *a, **k):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fdopen", full)
    with pytest.raises(WSOLError, match="keep.json: the disk is full"):
        fileio.atomic_write_text(tmp_path / "keep.json", "new")
    assert (tmp_path / "keep.json").read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{'abcdefghi'[i]}: &{'abcdefghi'[i]} [" + ", ".join([f"*{'abcdefghi'[i - 1]}"] * 9) + "]")
    lines.append("seed: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert len(bomb.read_bytes()) < 1000
    assert main(["train", "-c", str(bomb)]) == 2
    err = capsys.readouterr().err
    assert "aliases" in err and len(err) < 500
