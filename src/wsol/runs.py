"""Run folders: the one module that reads and writes them (the engine writes through it, the
report, the CLI and two-stage methods read through it; it imports no engine code).

A run folder holds everything needed to reproduce, re-evaluate and reuse a run, and needs
no access to the dataset once trained::

    RUN/config.yaml             the resolved, validated config
    RUN/run.json                class names, localisation kind, input size, normalisation,
                                the resolved absolute data root, library versions
    RUN/history.csv, RUN/tb/    one row per epoch: loss terms, lr, validation metrics
    RUN/checkpoints/<name>.pt   best_loc, best_cls (one per selection criterion), last
    RUN/eval/<column>/<split>/  metrics.json, curves.json, gallery.npz of one evaluation
    RUN/metrics.json            the test metrics of every evaluated column side by side
    RUN/report.html

Checkpoints hold tensors and plain Python values only, and are read with
``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused, never run.
Their zip CRCs are verified before loading, so a damaged file is named, not evaluated.
"""

from __future__ import annotations

import io
import json
import platform
import random
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from wsol.config import RunConfig, load_config
from wsol.errors import CheckpointError
from wsol.fileio import atomic_write_bytes, write_json

LAST = "last"
RUN_JSON = "run.json"
CONFIG = "config.yaml"
HISTORY = "history.csv"
METRICS = "metrics.json"

LocKind = Literal["mask", "box"]


# --- run.json --------------------------------------------------------------------------
@dataclass
class RunInfo:
    """What a run needs to be reused without its dataset (``RUN/run.json``)."""

    method: str
    class_names: list[str]
    loc_kind: LocKind
    image_size: int
    data_root: str
    dataset: str
    normalization: dict[str, list[float]] = field(default_factory=dict)
    selection: list[str] = field(default_factory=lambda: ["best_loc", "best_cls"])
    versions: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def versions_now() -> dict[str, str]:
        import torchvision

        from wsol import __version__

        return {"wsol": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "python": platform.python_version()}


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    write_json(Path(run_dir) / RUN_JSON, asdict(info))


def read_run_info(run_dir: Path) -> RunInfo | None:
    """``RUN/run.json``, or None for a run written before it existed."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return RunInfo(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable run description ({e}); it was not written by this wsol") from None


def load_run_config(run_dir: Path | str) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no {CONFIG}); pass the folder `wsol train` wrote")
    return load_config(path)


# --- checkpoints -----------------------------------------------------------------------
def checkpoint_path(run_dir: Path | str, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"invalid checkpoint name {name!r}; use best_loc, best_cls, last, ...")
    return Path(run_dir) / "checkpoints" / f"{name}.pt"


def available_checkpoints(run_dir: Path | str) -> list[str]:
    return sorted(p.stem for p in (Path(run_dir) / "checkpoints").glob("*.pt"))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` (tensors and plain values only), written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(run_dir: Path | str, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: CRC-checked, ``weights_only=True``."""
    path = checkpoint_path(run_dir, name)
    if not path.is_file():
        have = available_checkpoints(run_dir)
        hint = f" (found: {', '.join(have)})" if have else " — has this run been trained?"
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e}); it is damaged — retrain or use another") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint (CRC mismatch in {bad}); retrain or use another checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for anything but tensors / plain values
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: refused — the file holds more than tensors and plain values ({msg}). wsol never runs code "
            "from a checkpoint; only load checkpoints written by wsol"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(state).__name__}")
    return state


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The random states as values ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        out["loader"] = generator.get_state()
    return out


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    # checkpoints may be loaded with map_location=cuda: RNG states live on the CPU
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"].cpu())


# --- loading a trained run without its dataset -----------------------------------------
@dataclass
class LoadedRun:
    """A trained run, ready to use: its config, description, method (eval mode, on
    ``device``) with ``checkpoint`` loaded, and that checkpoint's epoch (0-based)."""

    run_dir: Path
    config: RunConfig
    info: RunInfo
    method: Any  # wsol.methods.base.Method (runs sits beside the engine; typed loosely to stay light)
    checkpoint: str
    epoch: int

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def loc_kind(self) -> LocKind:
        return self.info.loc_kind

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    @property
    def data_config(self) -> RunConfig:
        """The run's config with ``data.root`` resolved to the absolute path recorded at
        training, so evaluation works from any working directory."""
        data = self.config.data.model_copy(update={"root": self.info.data_root})
        return self.config.model_copy(update={"data": data})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device: 'cuda' requested but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def run_info_or_fallback(run_dir: Path, cfg: RunConfig, ck: dict[str, Any]) -> RunInfo:
    """``run.json``; for runs written before it existed, the class names the checkpoint holds."""
    info = read_run_info(run_dir)
    if info is not None:
        return info
    names = ck.get("class_names")
    if not names:
        raise CheckpointError(f"{run_dir}: no {RUN_JSON} and the checkpoint has no class names; retrain the run")
    from wsol.data.registry import get_dataset

    return RunInfo(method=cfg.model.method.name, class_names=list(names), loc_kind=get_dataset(cfg.data.name).loc,
                   image_size=cfg.data.image_size, data_root=str(cfg.data.root), dataset=cfg.data.name)


def load_run(run_dir: Path | str, checkpoint: str = "best_cls", device: torch.device | str | None = None) -> LoadedRun:
    """Load ``checkpoint`` of a run folder — with no access to the dataset (the class names
    and label kind come from ``run.json``). This is how ``wsol cam``, ``wsol evaluate`` and
    two-stage methods (F-CAM, NEGEV, the weight map) get a trained classifier."""
    from wsol.methods.base import build_method

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    dev = torch.device(device) if device is not None else resolve_device(cfg.device)
    ck = load_checkpoint(run_dir, checkpoint, map_location=dev)
    info = run_info_or_fallback(run_dir, cfg, ck)
    method = build_method(cfg.model.method, cfg.model.backbone, len(info.class_names))
    try:
        method.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else "no 'model' entry"
        raise CheckpointError(
            f"{checkpoint_path(run_dir, checkpoint)}: does not fit the run's method {cfg.model.method.name!r} with "
            f"{len(info.class_names)} classes ({first}); the checkpoint belongs to another run"
        ) from None
    method.to(dev).eval()
    return LoadedRun(run_dir, cfg, info, method, checkpoint, int(ck.get("epoch", -1)))


# --- evaluation outputs ----------------------------------------------------------------
def eval_dir(run_dir: Path | str, column: str, split: str) -> Path:
    """``RUN/eval/<column>/<split>``; a column is a checkpoint, optionally ``+extractor``."""
    return Path(run_dir) / "eval" / column / split


def summary_path(run_dir: Path | str, split: str) -> Path:
    """``RUN/metrics.json`` for the test split, ``RUN/metrics-<split>.json`` for others."""
    return Path(run_dir) / (METRICS if split == "test" else f"metrics-{split}.json")


def update_summary(run_dir: Path | str, split: str, columns: dict[str, dict[str, Any]]) -> Path:
    """Merge ``columns`` into the split's summary (other columns are kept, never lost)."""
    path = summary_path(run_dir, split)
    data: dict[str, Any] = {"split": split}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and old.get("split") == split:
                data = old
        except json.JSONDecodeError:
            pass  # a damaged summary is rebuilt from what is evaluated now
    data.update(columns)
    write_json(path, data)
    return path


def read_json(path: Path) -> Any:
    """A JSON file the run wrote; a damaged one is a CheckpointError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: damaged ({e}); re-run `wsol evaluate` to rewrite it") from None


# --- protecting run folders ------------------------------------------------------------
#: what wsol writes at the top of a run folder; ``--overwrite`` removes these and nothing else
RUN_FILES = (CONFIG, RUN_JSON, HISTORY, "report.html")
RUN_DIRS = ("checkpoints", "eval", "tb")
LOCK = ".wsol.lock"


def is_run_folder(path: Path | str) -> bool:
    path = Path(path)
    return (path / RUN_JSON).is_file() or ((path / CONFIG).is_file() and (path / "checkpoints").is_dir())


def prepare_run_folder(run_dir: Path | str, *, resume: bool, overwrite: bool) -> None:
    """Make ``run_dir`` ready for training, never touching a file wsol did not write:
    a new or empty folder is used; a previous run is refused unless ``resume`` (continue it)
    or ``overwrite`` (its own files are removed first); a folder holding anything else is
    refused. Temporary files a killed write left behind are removed."""
    import shutil

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run_dir {run_dir} is a file; choose a folder (run_dir=...)")
    entries = [p for p in run_dir.iterdir() if p.name != LOCK] if run_dir.is_dir() else []
    if not entries:
        return
    if not is_run_folder(run_dir):
        raise CheckpointError(
            f"run_dir {run_dir} is not empty and holds no wsol run ({', '.join(sorted(p.name for p in entries)[:5])}); "
            "wsol will not write into it — choose a new run_dir"
        )
    clean_temporaries(run_dir)
    if resume:
        return
    if not overwrite:
        raise CheckpointError(
            f"run_dir {run_dir} already holds a run; continue it with --resume, replace it with --overwrite "
            "(removes that run's own files only), or choose a new run_dir"
        )
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for p in run_dir.glob("metrics*.json"):
        p.unlink()
    for name in RUN_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)  # folders wsol created inside its own run


def clean_temporaries(run_dir: Path) -> None:
    """Remove ``.<name>.<random>.tmp`` files (wsol.fileio's atomic writes) left by a kill."""
    from wsol.fileio import TMP_SUFFIX

    for p in run_dir.rglob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink()


class RunLock:
    """Exclusive lock on a run folder while it trains (``RUN/.wsol.lock`` holds host and
    pid). A lock whose process is gone (same host) is stale and taken over."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK

    def __enter__(self) -> RunLock:
        import os
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise CheckpointError(
                    f"{self.path.parent}: another wsol process ({self.path.read_text().strip()}) is training into this "
                    "run folder; wait for it or choose another run_dir"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise CheckpointError(f"{self.path}: could not take the run folder's lock")

    def _stale(self) -> bool:
        import os
        import socket

        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        if host != socket.gethostname():
            return False  # another machine's process: cannot tell, keep it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
