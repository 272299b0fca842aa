"""Embedded datasets: sets wsol writes itself (procedural ``synthetic-*`` sets in
:mod:`~wsol.data.embedded.synthetic`, ``ihc-dab`` built from scikit-image's IHC image in
:mod:`~wsol.data.embedded.ihc`), in the wsolevaluation metadata layout, and read back like
real data. They are registered in :data:`wsol.data.registry.EMBEDDED` (and in ``DATASETS``)
by the table there; this package imports no generator (no OpenCV / SciPy) until a set is
used.
"""

from __future__ import annotations

from pathlib import Path

from wsol.data.metadata import has_metadata
from wsol.data.registry import DATASETS, EMBEDDED, get_dataset
from wsol.errors import ConfigError, DataError

__all__ = ["EMBEDDED", "embedded_datasets", "ensure_dataset", "has_metadata", "synthesize"]


def embedded_datasets() -> list[str]:
    """Names of the datasets :func:`synthesize` can write."""
    return EMBEDDED.names()


def synthesize(name: str, out: str | Path, n: int | None = None, size: int | None = None, seed: int = 0) -> Path:
    """Write the embedded dataset ``name`` into ``out``. ``n``: number of training images
    (other splits scale from it); ``size``: image side."""
    if name not in EMBEDDED:
        valid = ", ".join(embedded_datasets())
        what = "dataset that cannot be synthesised" if name in DATASETS else "unknown dataset"
        raise ConfigError(f"{what} {name!r}; embedded datasets (valid): {valid}")
    spec = EMBEDDED.get(name)
    assert spec.generate is not None
    return spec.generate(out, n=n, size=size, seed=seed)


def ensure_dataset(name: str, root: str | Path) -> Path:
    """``root`` holding the embedded dataset ``name``: synthesised with defaults when its
    metadata is missing, left as is otherwise."""
    root = Path(root)
    if not has_metadata(root):
        spec = get_dataset(name)
        if spec.synthesize is None:
            raise DataError(f"{root}: no metadata for dataset {name!r}, which cannot be synthesised; "
                            "point data.root at the prepared dataset")
        spec.synthesize(root)
    return root
