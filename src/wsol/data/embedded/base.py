"""What every embedded set shares: its spec (a :class:`~wsol.data.registry.DatasetSpec`
that can also write the set), the reader of the written set (the wsolevaluation metadata
layout, :mod:`wsol.data.metadata`), the last step of writing one, and the rules that keep
users' files safe.

Writing a set never deletes or overwrites a file wsol did not write:

- the set is generated into a new temporary sibling folder (``.<out>.wsol-*``) and renamed
  into place at the end (a previous set is renamed aside first and removed only after the
  swap), so ``out`` is never half-written;
- the generator writes a marker :data:`MARKER` (``out/wsol-embedded.json``: generator name,
  its parameters ``n`` / ``size`` / ``seed``, and the list of files it wrote);
- an existing ``out`` is replaced only when it is empty or a previous output of the same
  generator (any parameters) whose files are all listed in its marker; another embedded
  set's output needs ``overwrite=True``; a folder holding anything else — or a previous
  output holding files wsol did not write — is refused (DataError), whatever ``overwrite``
  says. Sets written before the marker existed (``dataset.json`` naming an embedded set,
  nothing but ``images/``, ``masks/``, ``metadata/``, ``dataset.json``) count as wsol's.

Light: no OpenCV / SciPy here (the generator modules import them).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wsol.data.metadata import (
    MetaEntry,
    metadata_dir,
    read_class_names,
    read_metadata,
    write_class_names,
    write_metadata,
)
from wsol.data.options import NoOptions
from wsol.data.problems import LocatedError
from wsol.data.records import Record
from wsol.data.registry import SPLITS, DatasetSpec
from wsol.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: the marker an embedded set's folder carries (name, parameters, files written)
MARKER = "wsol-embedded.json"
MARKER_FORMAT = 1
#: bounds on the parameters of any embedded set (a typo such as --size 40960 is refused
#: before anything is written)
MAX_SIZE = 4096
MAX_N = 100_000
#: what a set written before the marker existed holds at its top level
LEGACY_ENTRIES = {"images", "masks", "metadata", "dataset.json"}


@dataclass(eq=False)
class EmbeddedSpec(DatasetSpec):
    """A dataset wsol writes itself. ``generate(out, n=None, size=None, seed=0) -> out``
    writes it in the metadata layout into ``out``, a new or empty folder (callers go through
    :meth:`synthesize`, which adds the marker and the atomic swap); ``classes``: its class
    names (used before the set is written); ``default_n`` / ``default_size``: what
    ``n=None`` / ``size=None`` mean (so a set written with the defaults and one written with
    the same values given explicitly are recognised as equal); ``takes_n``: False for a set
    whose size follows from its source (``n`` is ignored). It takes no reader option."""

    generate: Callable[..., Path] | None = None
    classes: tuple[str, ...] = ()
    default_n: int | None = None
    default_size: int | None = None
    takes_n: bool = True

    def params(self, n: int | None = None, size: int | None = None, seed: int = 0) -> dict[str, int | None]:
        """The resolved parameters ``{"n", "size", "seed"}``; absurd values are a ConfigError."""
        out: dict[str, int | None] = {}
        for key, value, default, top in (("n", n, self.default_n, MAX_N), ("size", size, self.default_size, MAX_SIZE)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ConfigError(f"synthesize {self.name}: {key}={value!r} must be an integer")
            v = default if value is None else int(value)
            if key == "n" and not self.takes_n:
                v = None
            if v is not None and not 1 <= v <= top:
                raise ConfigError(f"synthesize {self.name}: {key}={v} is out of range; expected 1..{top} "
                                  f"({'images in the train split' if key == 'n' else 'image side in pixels'})")
            out[key] = v
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"synthesize {self.name}: seed={seed!r} must be an integer")
        out["seed"] = int(seed)
        return out

    def synthesize(self, out: str | Path, n: int | None = None, size: int | None = None, seed: int = 0,
                   overwrite: bool = False) -> Path:
        """Write the set into ``out`` safely (see the module doc) and return ``out``."""
        assert self.generate is not None, f"embedded dataset {self.name!r} has no generator"
        return write_embedded(self, Path(out), self.params(n, size, seed), overwrite)


# ------------------------------------------------------------------- what a folder holds


@dataclass
class Found:
    """What :func:`inspect_folder` found at a path. ``state``: "missing", "empty", "wsol"
    (marker), "legacy" (a set written before the marker existed) or "foreign"; ``name`` /
    ``params`` / ``files`` from the marker (``files`` None for a legacy set)."""

    state: Literal["missing", "empty", "wsol", "legacy", "foreign"]
    name: str = ""
    params: dict[str, Any] | None = None
    files: set[str] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None


def inspect_folder(out: Path) -> Found:
    """What ``out`` holds; a path that is a file or a symbolic link is a DataError."""
    if out.is_symlink():
        raise DataError(f"{out}: is a symbolic link; give the folder it points to (or a new folder) as the output")
    if not out.exists():
        return Found("missing")
    if not out.is_dir():
        raise DataError(f"{out}: exists and is a file, not a folder; give a new or empty folder as the output")
    try:
        entries = {p.name for p in out.iterdir()}
    except OSError as e:
        raise DataError(f"{out}: cannot list the folder ({e.strerror or e}); check its permissions") from None
    if not entries:
        return Found("empty")
    marker = _read_json(out / MARKER)
    if (isinstance(marker, dict) and marker.get("generator") == "wsol" and isinstance(marker.get("name"), str)
            and isinstance(marker.get("params"), dict) and isinstance(marker.get("files"), list)):
        return Found("wsol", marker["name"], marker["params"], {str(f) for f in marker["files"]})
    info = _read_json(out / "dataset.json")
    from wsol.data.registry import EMBEDDED

    if isinstance(info, dict) and info.get("name") in EMBEDDED and entries <= LEGACY_ENTRIES:
        params = {"n": info.get("n"), "size": info.get("size", info.get("patch")), "seed": info.get("seed")}
        return Found("legacy", str(info["name"]), params, None)
    return Found("foreign")


def _files_under(folder: Path) -> set[str]:
    """Relative POSIX paths of every file (and link) below ``folder``."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _shown(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def check_replaceable(out: Path, name: str, overwrite: bool) -> Found:
    """What ``out`` holds, when writing the embedded set ``name`` there is allowed (module
    doc); a DataError saying why not otherwise."""
    found = inspect_folder(out)
    if found.state == "foreign":
        raise DataError(f"{out}: folder is not empty and was not written by wsol (no {MARKER}); wsol never deletes "
                        "files it did not write: choose a new or empty folder")
    if found.state in ("wsol", "legacy") and found.name != name and not overwrite:
        raise DataError(f"{out}: holds the embedded dataset {found.name!r} written by wsol, not {name!r}; "
                        "choose another folder, or pass overwrite (--overwrite) to replace it")
    if found.state == "wsol":
        assert found.files is not None
        extra = _files_under(out) - found.files - {MARKER}
        if extra:
            raise DataError(f"{out}: holds {len(extra)} file(s) wsol did not write ({_shown(list(extra))}); move "
                            "them out of the folder (or choose another folder) — wsol never deletes them")
    return found


def params_match(found: Found, name: str, wanted: Mapping[str, Any]) -> bool:
    """Whether ``found`` is the set ``name`` with every parameter of ``wanted`` that is not
    None (None = any value)."""
    if found.state not in ("wsol", "legacy") or found.name != name or found.params is None:
        return False
    return all(v is None or found.params.get(k) == v for k, v in wanted.items())


# ------------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap(staging: Path, out: Path, found: Found) -> None:
    """Rename ``staging`` to ``out``; a previous set is renamed aside first and removed after
    the swap (kept, with a warning, if files wsol did not write appeared in it meanwhile)."""
    if found.state in ("missing", "empty"):
        if found.state == "empty":
            out.rmdir()
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.wsol-old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)
        raise
    extra = _files_under(old) - (found.files or _files_under(old)) - {MARKER}
    if extra:
        log.warning("%s: files appeared in the previous set while the new one was written (%s); the previous "
                    "set is kept in %s", out, _shown(list(extra)), old)
        return
    shutil.rmtree(old, ignore_errors=True)


def write_embedded(spec: EmbeddedSpec, out: Path, params: dict[str, Any], overwrite: bool = False) -> Path:
    """Generate ``spec`` with ``params`` into a temporary sibling of ``out``, write the marker
    and swap it into place (module doc). Returns ``out``."""
    assert spec.generate is not None
    given = Path(out)
    out = Path(os.path.abspath(out))  # "." has a name and a parent: the staging folder is a true sibling
    found = check_replaceable(out, spec.name, overwrite)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.wsol-", dir=parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make the set private
    except OSError as e:
        raise DataError(f"{out}: cannot create a folder next to it ({e.strerror or e}); choose a writable "
                        "location") from None
    try:
        spec.generate(staging, n=params["n"], size=params["size"], seed=params["seed"])
        marker = {"generator": "wsol", "format": MARKER_FORMAT, "name": spec.name, "params": params,
                  "files": sorted(_files_under(staging))}
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        _swap(staging, out, found)
    except OSError as e:
        raise DataError(f"{out}: cannot write the dataset ({e.strerror or e}); check the free space and the "
                        "permissions of the folder") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s (%s) to %s", spec.name, ", ".join(f"{k}={v}" for k, v in params.items()), out)
    return given


def require_empty(out: Path) -> Path:
    """``out`` as a new or empty folder for a generator to write into (a generator never
    writes into a folder that holds anything)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: a generator writes only into a new or empty folder; use wsol.data.synthesize "
                        "(it replaces a previous set safely)")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------------------- reading


def _read_records(name: str, root: Path, split: str, opts: NoOptions) -> list[Record]:
    if not (metadata_dir(root, split) / "image_ids.txt").is_file():
        raise LocatedError(root, f"no {name} dataset here (metadata/{split}/image_ids.txt missing); "
                                 f"generate it with `wsol data synth {name} --out {root}`")
    return read_metadata(root, split)


def _read_classes(classes: tuple[str, ...], root: Path, opts: NoOptions) -> list[str]:
    return read_class_names(root) if (root / "metadata").is_dir() else list(classes)


def embedded_spec(name: str, classes: Sequence[str], loc: Literal["mask", "box"], generate: Callable[..., Path],
                  description: str, paper: str = "", default_n: int | None = None, default_size: int | None = None,
                  takes_n: bool = True) -> EmbeddedSpec:
    """The spec of an embedded set, read back by the metadata reader."""
    return EmbeddedSpec(name=name, read_records=functools.partial(_read_records, name),
                        read_classes=functools.partial(_read_classes, tuple(classes)), loc=loc,
                        description=description, paper=paper, Options=NoOptions, generate=generate,
                        classes=tuple(classes), default_n=default_n, default_size=default_size, takes_n=takes_n)


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write an H×W (grey) or H×W×3 (RGB) uint8 array as PNG."""
    import cv2

    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise LocatedError(path, "cannot write image")


def finish_set(out: Path, entries: Mapping[str, list[MetaEntry]], classes: Sequence[str],
               info: dict[str, Any]) -> None:
    """Write the metadata of every split, the class names and ``dataset.json`` into ``out``
    (whose ``images/`` and ``masks/`` the generator has written)."""
    for split in SPLITS:
        write_metadata(out, split, entries[split])
    write_class_names(out, classes)
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
