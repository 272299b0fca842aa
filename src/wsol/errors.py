"""Error types. Every error a user can cause is a :class:`WSOLError` whose message says
what was wrong (file, line, field), what was expected, and how to fix it."""

from __future__ import annotations


class WSOLError(Exception):
    """Base class of all user-facing wsol errors."""


class ConfigError(WSOLError):
    """A configuration value is missing, unknown or of the wrong type."""


class DataError(WSOLError):
    """A dataset file is missing, corrupt or inconsistent."""


class MetricError(WSOLError):
    """Inputs to a metric violate its contract (NaN CAM, no foreground pixel, ...)."""


class CheckpointError(WSOLError):
    """A run folder or checkpoint is missing or incompatible."""
