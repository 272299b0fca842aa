"""The data layer's structure: light imports, no import cycle, the dataset / embedded
registries, and typed reader options (one error format, dotted overrides, descriptions)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

import wsol.data
from wsol.data.embedded.base import EmbeddedSpec, embedded_spec
from wsol.data.metadata import MetaEntry, write_metadata
from wsol.data.options import describe_options, nest_options
from wsol.data.registry import (
    DATASETS,
    EMBEDDED,
    DatasetSpec,
    describe_dataset,
    get_dataset,
    register_dataset,
    validate_options,
)
from wsol.errors import ConfigError, DataError

DATA_DIR = Path(wsol.data.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(DATA_DIR)], prefix="wsol.data."))
HEAVY = ("cv2", "scipy", "skimage")
READERS = ("wsol.data.formats.", "wsol.data.embedded.synthetic", "wsol.data.embedded.ihc", "wsol.data.wsi")


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_light_imports_load_no_reader_opencv_or_scipy():
    code = (
        "import sys, importlib\n"
        "out = []\n"
        "for mod in ('wsol.data.sample', 'wsol.data', 'wsol.data.registry'):\n"
        "    importlib.import_module(mod)\n"
        f"    bad = [m for m in sys.modules if m in {HEAVY!r} or m.startswith({READERS!r})]\n"
        "    out.append(mod + '=' + ','.join(sorted(bad)))\n"
        "print(';'.join(out))\n"
    )
    assert _fresh(code) == "wsol.data.sample=;wsol.data=;wsol.data.registry="


def test_every_module_imports_in_a_fresh_interpreter():
    """One interpreter imports every module of wsol.data in turn (each alone: the slow test below)."""
    assert len(MODULES) > 20 and "wsol.data.embedded.synthetic" in MODULES and "wsol.data.metadata" in MODULES
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES) + "print('ok')"
    assert _fresh(code) == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first(module):
    assert _fresh(f"import {module}; print('ok')") == "ok"


def _module_imports(path: Path, name: str) -> set[str]:
    """wsol.data modules imported at module level (TYPE_CHECKING blocks and function bodies excluded)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else []:
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - sub.level + 1] + ([base] if base else []))
                out.add(base)
                out |= {f"{base}.{a.name}" for a in sub.names}
    return {m for m in out if m in MODULES or m == "wsol.data"}


def test_no_import_cycle_between_data_modules():
    graph = {}
    for m in MODULES:
        rel = Path(*m.split(".")[2:])
        path = DATA_DIR / rel / "__init__.py" if (DATA_DIR / rel).is_dir() else DATA_DIR / rel.with_suffix(".py")
        # importing a module first runs its parent package's __init__ (a package importing its own
        # submodules is fine: such edges are left out)
        parent = m.rsplit(".", 1)[0]
        graph[m] = {n for n in _module_imports(path, m) if n != m and not n.startswith(m + ".")} | {parent}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}"
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            visit(n, stack + [m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])
    assert "wsol.data.metadata" in graph["wsol.data.embedded.synthetic"]
    assert not any(n.startswith("wsol.data.formats") for n in graph["wsol.data.embedded.synthetic"])


def test_registries_hold_typed_specs_with_described_options():
    assert set(EMBEDDED.names()) == {"ihc-dab", "synthetic-camelyon", "synthetic-cub", "synthetic-glas"}
    assert set(EMBEDDED.names()) < set(DATASETS.names())
    for name in DATASETS.names():
        spec = get_dataset(name)
        assert spec.name == name and spec.loc in ("mask", "box")
        assert isinstance(spec, EmbeddedSpec) == (name in EMBEDDED)
        assert issubclass(spec.Options, BaseModel) and spec.Options.model_config.get("extra") == "forbid"
        assert all(row.description for row in describe_dataset(name)), name
        spec.validate({})  # every option has a default


@pytest.mark.parametrize("name", ["glas", "cub", "folder", "wsoleval-box", "camelyon16-p512", "synthetic-glas",
                                  "ihc-dab"])
def test_misspelt_option_is_an_error_for_every_reader(name):
    with pytest.raises(ConfigError, match=rf"^data\.options: sead: unknown key \(got 1\); valid keys for dataset "
                                          rf"'{name}': "):
        validate_options(name, {"sead": 1})


def test_option_errors_have_one_format_and_name_the_field():
    with pytest.raises(ConfigError, match=r"^data\.options: seed: Input should be a valid integer.* \(got 'x'\)$"):
        validate_options("glas", {"seed": "x"})
    with pytest.raises(ConfigError, match=r"^data\.options: val_fraction: Input should be less than 1 \(got 1\.5\)$"):
        validate_options("cars", {"val_fraction": 1.5})
    with pytest.raises(ConfigError, match=r"^data\.options: split: unknown GlaS split 'x'; valid: survey, minmax "):
        validate_options("glas", {"split": "x"})
    with pytest.raises(ConfigError, match=r"data\.options: splits\.valc: unknown key \(got 'val'\); valid keys for "
                                          r"dataset 'wsoleval-box' in splits: test, train, valcl, valpx$"):
        validate_options("wsoleval-box", {"splits.valc": "val"})
    opts = validate_options("cub5", {"seed": 3})
    assert opts.seed == 3 and opts.classes == [19, 99, 108, 171, 178] and opts.val_fraction == 0.2
    assert validate_options("cub5", opts) is opts  # a validated model passes through


def test_dotted_keys_nest_before_validation():
    assert nest_options({"a.b": 1, "a": {"c": 2}, "d": 3, "a.e.f": 4}) == {"a": {"b": 1, "c": 2, "e": {"f": 4}}, "d": 3}
    with pytest.raises(ConfigError, match=r"'seed\.x' sets a key below 'seed', which is a value"):
        nest_options({"seed": 1, "seed.x": 2})
    with pytest.raises(ConfigError, match="malformed key 'a..b'"):
        nest_options({"a..b": 1})
    opts = validate_options("wsoleval-box", {"splits.valcl": "val", "splits": {"valpx": "val"}, "images": "img"})
    assert opts.splits.model_dump() == {"train": "train", "valcl": "val", "valpx": "val", "test": "test"}
    assert opts.images == "img"


def test_describe_dataset_lists_fields_types_defaults():
    rows = {r.field: r for r in describe_dataset("glas")}
    assert list(rows) == ["seed", "valpx_per_class", "split_dir", "val_fraction", "split"]
    assert rows["split"][:3] == ("split", "Literal['survey', 'minmax']", "survey")
    assert rows["val_fraction"][1:3] == ("float (>= 0.0, < 1.0)", 0.2)
    assert rows["valpx_per_class"][1:3] == ("int (>= 0)", 3)  # GlaS: 3 per class (survey §3.3.1)
    assert rows["split_dir"][1:3] == ("str | None", None)
    box = {r.field: r for r in describe_dataset("wsoleval-box")}
    assert box["splits.valcl"][1:3] == ("str", "valcl") and "splits" not in box
    assert describe_dataset("synthetic-glas") == [] == describe_options(get_dataset("camelyon16-p512").Options)


def test_register_dataset_rejects_a_taken_name():
    other = DatasetSpec("glas", lambda root, split, opt: [], lambda root, opt: [], loc="mask")
    with pytest.raises(ValueError, match="dataset 'glas' is already registered"):
        register_dataset(other)  # a lazily registered name, not loaded yet in a fresh process
    spec = DatasetSpec("test-registry-dup", lambda root, split, opt: [], lambda root, opt: ["a"], loc="box")
    try:
        assert register_dataset(spec) is spec and register_dataset(spec) is spec  # the same spec again is fine
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(DatasetSpec("test-registry-dup", spec.read_records, spec.read_classes, loc="box"))
        assert get_dataset("test-registry-dup").class_names("/nowhere") == ["a"]
    finally:
        DATASETS.remove(spec.name)  # Registry has no public removal: undo the registration


def _tiny_generator(out, n=None, size=None, seed=0) -> Path:
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), seed, np.uint8)).save(out / "img/a.png")
    for split in ("train", "valcl", "valpx", "test"):
        write_metadata(out, split, [MetaEntry("img/a.png", 0, (4, 4))])
    return out


def test_user_embedded_set_is_synthesised_and_read_back(tmp_path):
    spec = embedded_spec("test-embedded-tiny", ["only"], "box", _tiny_generator, "one grey image")
    register_dataset(spec)
    try:
        assert EMBEDDED.get(spec.name) is spec and spec.name in wsol.data.embedded_datasets()
        with pytest.raises(ConfigError, match=r"data\.options: x: unknown key"):
            get_dataset(spec.name).list_records(tmp_path, "train", {"x": 1})
        with pytest.raises(DataError, match=r"no test-embedded-tiny dataset here \(metadata/train/image_ids"
                                                  r"\.txt missing\); generate it with `wsol data synth "
                                                  r"test-embedded-tiny"):
            get_dataset(spec.name).list_records(tmp_path / "missing", "train")
        assert get_dataset(spec.name).class_names(tmp_path / "d") == ["only"]  # not written yet: the spec's
        root = wsol.data.synthesize(spec.name, tmp_path / "d", seed=7)
        recs = get_dataset(spec.name).list_records(root, "test")
        assert [r.image_id for r in recs] == ["img/a.png"] and not recs[0].has_mask
        assert get_dataset(spec.name).class_names(root) == ["0"]  # written, without class_names.txt: from labels
        assert int(wsol.data.load_sample(recs[0])["image"][0, 0, 0] * 255 + 0.5) == 7
    finally:
        DATASETS.remove(spec.name)
        EMBEDDED.remove(spec.name)
