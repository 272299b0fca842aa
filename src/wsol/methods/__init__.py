"""WSOL methods, one module per method; importing this package registers them all."""

from wsol.methods import cam  # noqa: F401
from wsol.methods import deepmil  # noqa: F401
from wsol.methods import erase  # noqa: F401
from wsol.methods import lse  # noqa: F401
from wsol.methods import max_pool  # noqa: F401
from wsol.methods import maxmin  # noqa: F401
from wsol.methods import pn  # noqa: F401
from wsol.methods import prm  # noqa: F401
from wsol.methods import wildcat  # noqa: F401
from wsol.methods.base import METHODS, Method, Output, TrainState, available_methods, build_method, register

__all__ = ["METHODS", "Method", "Output", "TrainState", "available_methods", "build_method", "register"]
