"""Atomic file output (bottom layer, usable everywhere): write to a temp file in the same
folder, then rename — an interrupted write never leaves a half-written file behind. Files
get the mode an ordinary ``open()`` would give them (0666 minus the umask), not
``mkstemp``'s private 0600, so colleagues on a shared server can read reports and runs."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from wsol.errors import WSOLError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically. A folder that cannot be written (read-only,
    no permission, disk full) is a :class:`~wsol.errors.WSOLError` naming the path; the
    temporary file is removed, the previous file (if any) is left as it was."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno or 0, e.strerror or str(e))
        raise WSOLError(f"cannot write {path}: {why}; free space or choose a writable folder") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):  # numpy arrays / scalars, torch tensors
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _finite(x: Any) -> Any:
    """NaN / inf (undefined metrics, e.g. F1- of a split without background) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: Path | str, obj: Any) -> None:
    """Strict JSON (no NaN tokens: undefined values are written as null), atomically."""
    obj = json.loads(json.dumps(obj, default=_jsonable))  # numpy/torch -> plain Python
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, allow_nan=False))
