"""Benchmark suites (``wsol bench``): the papers' comparisons — methods × backbones ×
extractors, the U-Net upper bound, the FSL, All-ones and centre baselines — run through
the normal engine, resumably, into paper-shaped tables, figures and one HTML page.

- :mod:`wsol.bench.suites`: the suite schema (``configs/suites/*.yaml``) and loader;
- :mod:`wsol.bench.runner`: planning and running the grid (:func:`run_suite`);
- :mod:`wsol.bench.baselines`: All-ones and Center-Gaussian localisers;
- :mod:`wsol.bench.complexity`: #params and inference time per image;
- :mod:`wsol.bench.tables`, :mod:`wsol.bench.figures`, :mod:`wsol.bench.outputs`: the outputs;
- :mod:`wsol.bench.cli`: the ``wsol bench`` sub-app.
"""

from __future__ import annotations


def ensure_registered() -> None:
    """Register the methods this package brings (the U-Net baseline), whether or not the
    lazy method table lists them yet."""
    import wsol.methods.unet  # noqa: F401  (registers "unet")


__all__ = ["ensure_registered"]
