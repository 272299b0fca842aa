import pytest

from wsol.cli import main
from wsol.config import load_config
from wsol.errors import ConfigError
from wsol.methods.base import build_method


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.5\nmodel:\n  method: {name: cam}\n")
    cfg = load_config(p, ["optim.epochs=3", "data.augment.hflip=false", "model.method.params={}"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 3 and cfg.data.augment.hflip is False


def test_several_files_merge_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("optim: {lr: 0.1, epochs: 4}\n")
    b.write_text("optim: {lr: 0.2}\n")
    cfg = load_config([a, b])
    assert cfg.optim.lr == 0.2 and cfg.optim.epochs == 4


@pytest.mark.parametrize(
    "text, needle",
    [
        ("optim:\n  lrr: 0.1\n", "optim.lrr: unknown key"),
        ("optim:\n  epochs: many\n", "optim.epochs"),
        ("optim: [1, 2\n", "line"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg
    assert "\n" not in msg


def test_override_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["optim.lr"])
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\n")
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        load_config(p, ["seed.x=1"])
    with pytest.raises(ConfigError, match="seed: Input should be a valid integer"):
        load_config(None, ["seed.x=1"])


def test_unknown_method_lists_valid_names():
    # rejected when the config loads (not later, when the model is built)
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; valid: .*cam"):
        load_config(None, ["model.method.name=nope"])


def test_unknown_method_param_is_rejected():
    with pytest.raises(ConfigError, match=r"model.method.params \(cam\): bogus: unknown key"):
        load_config(None, ["model.method.params={bogus: 1}"])
    cfg = load_config(None, [])
    cfg.model.method.params = {"bogus": 1}  # assigned after loading: build_method still checks
    with pytest.raises(ConfigError, match=r"bogus: unknown key"):
        build_method(cfg.model.method, cfg.model.backbone, 2)


def test_unknown_dataset_option_and_backbone_are_rejected_at_load():
    with pytest.raises(ConfigError, match=r"data.options"):
        load_config(None, ["data.options={bogus: 1}"])
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet7'; valid: .*resnet18"):
        load_config(None, ["model.backbone.name=resnet7"])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("optim:\n  lrr: 0.1\n", "optim.lrr: unknown key"),
        ("optim:\n  epochs: x\n", "optim.epochs"),
        ("model:\n  method: {name: nope}\n", "unknown method 'nope'"),
    ],
)
def test_cli_prints_one_readable_line(tmp_path, capsys, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code = main(["train", "--config", str(p), "--set", f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    assert code == 2
    assert needle in out.err and "Traceback" not in out.err + out.out
    assert len([ln for ln in out.err.strip().splitlines() if ln.strip()]) <= 3  # one line, maybe soft-wrapped
