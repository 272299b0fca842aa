"""Data errors that say where they are, so ``wsol data verify`` reports each problem with its
place without re-reading message text.

- :class:`LocatedError`: one problem at one place (``where``: "file:line", a file or a
  folder); its message is ``"where: what"``;
- :class:`DataProblems`: several problems found in one pass over a metadata file, raised at
  once (:class:`Collector` gathers them).
"""

from __future__ import annotations

from pathlib import Path

from wsol.errors import DataError


class LocatedError(DataError):
    """A problem at ``where`` ("file:line", a file or a folder); ``what``: what was wrong,
    what was expected and how to fix it. ``str(e) == f"{where}: {what}"``."""

    def __init__(self, where: str | Path, what: str):
        self.where = str(where)
        self.what = what
        super().__init__(f"{self.where}: {what}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.where, self.what))


class DataProblems(DataError):
    """Several problems found in one pass over a metadata file; ``problems`` lists each
    (a :class:`LocatedError`: "file:line: what was wrong; expected ...; fix ...")."""

    def __init__(self, problems: list[LocatedError]):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the dataset metadata:\n  " if len(self.problems) > 1 else ""
        super().__init__(head + "\n  ".join(str(p) for p in self.problems))

    def __reduce__(self):
        return (type(self), (self.problems,))


class Collector:
    """Gathers line-level problems; :meth:`raise_if_any` raises them all at once."""

    def __init__(self) -> None:
        self.problems: list[LocatedError] = []

    def add(self, where: str | Path, what: str) -> None:
        self.problems.append(LocatedError(where, what))

    def add_error(self, e: LocatedError) -> None:
        """Keep a raised :class:`LocatedError` (e.g. from :func:`safe_join`) and go on."""
        self.problems.append(e)

    def raise_if_any(self) -> None:
        if self.problems:
            raise DataProblems(self.problems)


def located(e: BaseException, default: str) -> list[tuple[str, str]]:
    """(where, message) of each problem an error carries; ``default`` for an error that does
    not say where it is."""
    if isinstance(e, DataProblems):
        return [(p.where, str(p)) for p in e.problems]
    return [(getattr(e, "where", None) or default, str(e))]
