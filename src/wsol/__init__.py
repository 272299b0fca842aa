"""wsol: weakly-supervised object localization toolkit."""

from wsol.errors import CheckpointError, ConfigError, DataError, MetricError, WSOLError

__version__ = "0.1.0"

__all__ = ["WSOLError", "ConfigError", "DataError", "MetricError", "CheckpointError", "__version__"]
