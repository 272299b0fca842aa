"""The generic Registry: lazy tables, duplicate names, unknown names, description; and the
import-time promise (importing a light module loads no reader, method or plotting code)."""

import subprocess
import sys

import pytest

from wsol.errors import ConfigError
from wsol.registry import Registry


def test_registry_lazy_entry_loads_on_first_use():
    reg = Registry("thing", {"json-dumps": "json:dumps"})
    assert reg.names() == ["json-dumps"] and "json-dumps" in reg
    import json

    assert reg.get("json-dumps") is json.dumps


def test_registry_rejects_a_second_object_under_a_taken_name():
    reg = Registry("thing")

    @reg.register("a")
    def first():
        """First one.

        More text."""

    reg.add("a", first)  # the same object again is fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", lambda: None)
    assert reg.describe("a") == "First one."


def test_registry_unknown_name_lists_the_valid_ones():
    reg = Registry("method", {"b": "json:dumps"}, field="model.method.name")
    reg.add("a", object())
    with pytest.raises(ConfigError, match=r"model.method.name: unknown method 'z'; valid: a, b"):
        reg.get("z")


def test_registry_wrong_table_line_is_named():
    reg = Registry("thing", {"x": "json:no_such_attr"})
    with pytest.raises(ConfigError, match="wrong registry line"):
        reg.get("x")


def test_importing_light_modules_stays_light():
    code = (
        "import sys, wsol, wsol.data.sample, wsol.methods, wsol.registry, wsol.config, wsol.cli\n"
        "heavy = [m for m in ('cv2', 'scipy', 'matplotlib', 'timm', 'tensorboard', 'wsol.methods.cam',"
        " 'wsol.data.formats.glas', 'wsol.engine.trainer') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at start-up: {out}"
