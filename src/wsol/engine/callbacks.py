"""Progress hooks of the engine (light: no torch). The CLI subclasses :class:`Callbacks`
to draw progress bars; the Python API takes any subclass (e.g. for a notebook)."""

from __future__ import annotations


class Callbacks:
    """Progress hooks; the CLI subclasses this to draw progress bars. All no-ops here."""

    def on_stage(self, name: str, total: int) -> None:
        """A stage (``train epoch k`` / ``valcl`` / ``valpx`` / ``test``) of ``total`` images starts."""

    def on_advance(self, n: int) -> None:
        """``n`` more images of the current stage are done."""

    def on_epoch_end(self, row: dict[str, float]) -> None:
        """An epoch's row of history (loss terms, lr, validation metrics)."""
