"""WSOL methods, one module per method; importing this package registers them all."""

from wsol.methods import cam  # noqa: F401
from wsol.methods.base import METHODS, Method, Output, TrainState, available_methods, build_method, register

__all__ = ["METHODS", "Method", "Output", "TrainState", "available_methods", "build_method", "register"]
