"""WSOL methods, one module per method, registered by name.

:data:`METHODS` is filled lazily from the table below: a method's module is imported only
when its name is first used. Adding a method = one module (a ``Method`` subclass decorated
with ``@register``) plus one line here.
"""

from wsol.registry import Registry

METHODS: Registry = Registry("method", {
    "acol": "wsol.methods.acol:ACoL",
    "adl": "wsol.methods.adl:ADL",
    "cam": "wsol.methods.cam:CAM",
    "cutmix": "wsol.methods.cutmix:CutMix",
    "deepmil": "wsol.methods.deepmil:DeepMIL",
    "erase": "wsol.methods.erase:Erase",
    "fcam": "wsol.methods.fcam:FCAM",
    "has": "wsol.methods.has:HaS",
    "lse": "wsol.methods.lse:LSE",
    "max_pool": "wsol.methods.max_pool:MaxPool",
    "maxmin": "wsol.methods.maxmin:MaxMin",
    "minmax_entropy": "wsol.methods.minmax_entropy:MinMaxEntropy",
    "negev": "wsol.methods.negev:NEGEV",
    "pn": "wsol.methods.pn:PN",
    "prm": "wsol.methods.prm:PRM",
    "siamese": "wsol.methods.siamese:Siamese",
    "spg": "wsol.methods.spg:SPG",
    "tscam": "wsol.methods.tscam:TSCAM",
    "unet": "wsol.methods.unet:UNet",
    "weightmap": "wsol.methods.weightmap:WeightMap",
    "weightmap_siamese": "wsol.methods.weightmap_siamese:WeightMapSiamese",
    "wildcat": "wsol.methods.wildcat:Wildcat",
}, field="model.method.name")

from wsol.methods.base import Method, MethodParams, Output, TrainState, available_methods, build_method, register  # noqa: E402

__all__ = ["METHODS", "Method", "MethodParams", "Output", "TrainState", "available_methods", "build_method", "register"]
