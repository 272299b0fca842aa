"""Running only the part of a model after a layer (Ablation-CAM's "head only" forwards).

:func:`split_after` traces ``model`` with ``torch.fx`` (the layer kept as one call) and cuts
its graph in two:

- the *tail*: every operation that depends on the layer's output and leads to the logits,
  as a module ``tail(layer_output, *captured)``;
- the *captured* values: what the tail also reads from before the layer (a residual input,
  an attention mask, ...), computed once per batch by ``split.capture(images)``: they do not
  depend on the layer's output, so a change of the layer's output (ablating a channel)
  leaves them as they are.

A forward with a modified layer output then costs the tail only (for ResNet-50's
``layer4``: pooling and the classifier, instead of the whole network). Models that cannot
be traced (data-dependent Python control flow, ...) or whose split does not reproduce the
model's logits give ``None``; the caller then runs the full model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

log = logging.getLogger(__name__)


class _Logits(nn.Module):
    """``model(x)`` as a logits tensor (wsol models return an object with ``.logits``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        return out if isinstance(out, (torch.Tensor, fx.Proxy)) else out.logits


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf: nn.Module):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is self.leaf or super().is_leaf_module(m, module_qualified_name)


class Split:
    """A model cut after one of its layers (see the module docstring)."""

    def __init__(self, prefix: fx.GraphModule, tail: fx.GraphModule, batched: Sequence[bool]):
        self.prefix = prefix
        self.tail = tail
        self.batched = list(batched)  # captured value i has the batch as its first dimension

    def capture(self, images: torch.Tensor) -> list[Any]:
        """The values the tail reads from before the layer, for these images."""
        if not self.batched:
            return []  # the tail reads nothing but the layer's output
        out = self.prefix(images)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def checked_capture(self, images: torch.Tensor, act: torch.Tensor, logits: torch.Tensor) -> list[Any] | None:
        """:meth:`capture`, if the tail on the layer's output ``act`` gives the model's
        ``logits`` on these images (else ``None``: run the full model)."""
        try:
            with torch.no_grad():
                captured = self.capture(images)
                if any(b and (not isinstance(c, torch.Tensor) or c.shape[:1] != images.shape[:1])
                       for c, b in zip(captured, self.batched)):
                    return None
                same = self(act, captured)
        except Exception as e:
            log.debug("split failed on this batch: %s", e)
            return None
        if not (isinstance(same, torch.Tensor) and same.shape == logits.shape
                and torch.allclose(same.float(), logits.float(), rtol=1e-4, atol=1e-5)):
            log.debug("the split does not reproduce the model's logits on this batch")
            return None
        return captured

    def select(self, captured: Sequence[Any], index: torch.Tensor) -> list[Any]:
        """The captured values of the images ``index`` (one row per modified layer output)."""
        return [c[index] if b else c for c, b in zip(captured, self.batched)]

    def __call__(self, layer_output: torch.Tensor, captured: Sequence[Any]) -> torch.Tensor:
        return self.tail(layer_output, *captured)


def _reach(start: Iterable[fx.Node], step: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """Every node reachable from ``start`` by repeated ``step`` (``start`` included)."""
    seen: set[fx.Node] = set()
    stack = list(start)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def _ancestors(nodes: Sequence[fx.Node]) -> set[fx.Node]:
    return _reach(nodes, lambda n: n.all_input_nodes)


def _descendants(node: fx.Node) -> set[fx.Node]:
    return _reach(node.users, lambda n: n.users)


def split_after(model: nn.Module, layer: nn.Module) -> Split | None:
    """Cut ``model`` after ``layer`` (``None`` when the model cannot be traced or cut there).
    Check each batch with :meth:`Split.checked_capture` before using the tail."""
    try:
        root = _Logits(model)
        graph = _LeafTracer(layer).trace(root)
        return _cut(fx.GraphModule(root, graph), graph, layer)
    except Exception as e:  # tracing is best effort: any failure means "run the full model"
        log.debug("cannot split %s after %s: %s", type(model).__name__, type(layer).__name__, e)
        return None


def _cut(gm: fx.GraphModule, graph: fx.Graph, layer: nn.Module) -> Split | None:
    calls = [n for n in graph.nodes if n.op == "call_module" and gm.get_submodule(n.target) is layer]
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(calls) != 1 or len(inputs) != 1:
        return None  # a layer called twice (or never), or a forward with several inputs
    target, (x,) = calls[0], inputs
    output = next(n for n in graph.nodes if n.op == "output")
    after = _descendants(target)
    if output not in after:
        return None
    needed = _ancestors([output])
    tail_nodes = [n for n in graph.nodes if n in after and n in needed and n is not output]
    depends_on_x = _descendants(x) | {x}
    reads = {a for n in tail_nodes + [output] for a in n.all_input_nodes} - after - {target}
    captured = sorted((n for n in reads if n in depends_on_x), key=list(graph.nodes).index)
    # what the tail reads that does not depend on the images (parameters, constants): copied
    static = _ancestors([n for n in reads if n not in depends_on_x])
    if x in static:
        return None

    tail = fx.Graph()
    env: dict[fx.Node, fx.Node] = {target: tail.placeholder("layer_output")}
    for i, n in enumerate(captured):
        env[n] = tail.placeholder(f"captured_{i}")
    for n in graph.nodes:
        if n in static or n in tail_nodes:
            env[n] = tail.node_copy(n, lambda a: env[a])
    tail.output(fx.map_arg(output.args[0], lambda a: env[a]))

    prefix = fx.Graph()
    penv: dict[fx.Node, fx.Node] = {x: prefix.placeholder(x.name)}  # the images, used or not
    keep = _ancestors(captured) - {x}
    for n in graph.nodes:
        if n in keep:
            penv[n] = prefix.node_copy(n, lambda a: penv[a])
    prefix.output(tuple(penv[n] for n in captured))
    # every captured value depends on the images: it has one row per image unless the model
    # mixes the batch (checked on the real batch by split_after)
    return Split(fx.GraphModule(gm, prefix), fx.GraphModule(gm, tail), [True] * len(captured))
