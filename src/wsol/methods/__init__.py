"""WSOL methods, one module per method, registered by name.

:data:`METHODS` is filled lazily from the table below: a method's module is imported only
when its name is first used. Adding a method = one module (a ``Method`` subclass decorated
with ``@register``) plus one line here.
"""

from wsol.registry import Registry

METHODS: Registry = Registry("method", {
    "cam": "wsol.methods.cam:CAM",
    "deepmil": "wsol.methods.deepmil:DeepMIL",
    "erase": "wsol.methods.erase:Erase",
    "lse": "wsol.methods.lse:LSE",
    "max_pool": "wsol.methods.max_pool:MaxPool",
    "maxmin": "wsol.methods.maxmin:MaxMin",
    "pn": "wsol.methods.pn:PN",
    "prm": "wsol.methods.prm:PRM",
    "wildcat": "wsol.methods.wildcat:Wildcat",
}, field="model.method.name")

from wsol.methods.base import Method, MethodParams, Output, TrainState, available_methods, build_method, register  # noqa: E402

__all__ = ["METHODS", "Method", "MethodParams", "Output", "TrainState", "available_methods", "build_method", "register"]
