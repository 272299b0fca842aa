"""`wsol data ...` and `wsol methods` from the command line."""

from wsol.cli import main


def test_data_synth_then_verify_then_corrupt(tmp_path, capsys):
    root = tmp_path / "sg"
    assert main(["data", "synth", "synthetic-glas", "--out", str(root), "--n", "8", "--size", "32"]) == 0
    assert main(["data", "verify", "synthetic-glas", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no error" in out and "train" in out
    # truncate one image: verify names it and exits non-zero
    victim = sorted((root / "images" / "test").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    assert main(["data", "verify", "synthetic-glas", str(root)]) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "error" in err


def test_data_list_and_methods(capsys):
    assert main(["data", "list"]) == 0
    assert "synthetic-glas" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "cam" in capsys.readouterr().out


def test_unknown_dataset_lists_valid_names(tmp_path, capsys):
    assert main(["data", "synth", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "synthetic-glas" in capsys.readouterr().err
