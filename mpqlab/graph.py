"""Which layers to quantize, which stay at 8 bits, and which BatchNorm follows each conv: read from the graph.

``torch.fx`` traces the model's ``forward`` into a graph of calls; conv, linear and BatchNorm modules
stay single nodes (leaves), so their order in the graph is the order in which they run. From it:

    layers     every Conv2d/Linear call, in execution order (a module called twice counts once)
    first      the layers that read the input image with no conv/linear in between (kept at 8 bits)
    last       the layers whose output reaches the model's output with no conv/linear after them (8 bits)
    bn_after   {conv: bn} for every BatchNorm2d whose only input is a conv's output, and that
               conv's only consumer

No names are guessed, so ``layer1.0.downsample.0 -> layer1.0.downsample.1`` (ResNet) and
``features.1.conv.0.0 -> features.1.conv.0.1`` (MobileNetV2) are found like ``dw3.conv -> dw3.bn``.
LIMPQ (Tang et al., ECCV 2022) keeps the first and last layers at 8 bits and searches the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx
from torch import nn

from mpqlab.errors import GraphError

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerGraph:
    layers: list  # conv/linear names in execution order
    first: list  # layers fed by the input image
    last: list  # layers feeding the output
    bn_after: dict  # {conv name: name of the BatchNorm that normalises its output}

    @property
    def fixed(self) -> list:
        """First and last layers, in execution order (LIMPQ keeps them at 8 bits)."""
        return [n for n in self.layers if n in self.first or n in self.last]

    @property
    def searchable(self) -> list:
        return [n for n in self.layers if n not in self.first and n not in self.last]


class _LeafTracer(torch.fx.Tracer):
    """Keeps convs, linears and every BatchNorm (ours included) as single nodes; traces through the rest."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if isinstance(m, (*QUANTIZABLE, nn.modules.batchnorm._BatchNorm)) or _is_switchable_bn(m):
            return True
        return super().is_leaf_module(m, qualified_name)


def _is_switchable_bn(m: nn.Module) -> bool:
    from mpqlab.limpq.joint import SwitchableBatchNorm2d  # joint imports this module: import late

    return isinstance(m, SwitchableBatchNorm2d)


def trace(model: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``model.forward`` (conv/linear/BatchNorm as leaves), or GraphError saying why not."""
    try:
        return _LeafTracer().trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, ... on data-dependent Python control flow
        raise GraphError(
            f"torch.fx could not trace {type(model).__name__}.forward ({type(err).__name__}: {err}). "
            "mpqlab finds the layers to quantize from the graph; make the forward traceable (no Python "
            "branches on tensor values) or wrap the untraceable part in a module and pass its class to "
            "torch.fx.wrap.") from None


def _kind(node: torch.fx.Node, modules: dict) -> str:
    if node.op != "call_module":
        return "other"
    m = modules[node.target]
    if isinstance(m, QUANTIZABLE):
        return "layer"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) or _is_switchable_bn(m):
        return "bn"
    return "other"


def _reads_shape(node: torch.fx.Node) -> bool:
    """``x.shape``, ``x.size()`` or ``x.dim()``: a node that reads a tensor's shape, not its values."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("shape",), ("ndim",))


def _reaches(start_nodes, step, stop) -> set:
    """Nodes reached from ``start_nodes`` along ``step(node)``, not walking past nodes where ``stop`` is true."""
    seen, todo = set(), list(start_nodes)
    while todo:
        node = todo.pop()
        for nxt in step(node):
            if nxt not in seen:
                seen.add(nxt)
                if not stop(nxt):
                    todo.append(nxt)
    return seen


def layer_graph(model: nn.Module) -> LayerGraph:
    """Trace ``model`` and return its quantizable layers, first/last layers and conv -> BatchNorm pairs."""
    graph = trace(model)
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    layers = list(dict.fromkeys(n.target for n in nodes if _kind(n, modules) == "layer"))
    if not layers:
        raise GraphError(f"{type(model).__name__} has no Conv2d or Linear layer in its forward: nothing to quantize")

    def is_layer(node):
        return _kind(node, modules) == "layer"

    def stops_forward(node):  # x.shape / x.size() carry the batch size, not the image, to what follows
        return is_layer(node) or _reads_shape(node)

    inputs = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    first = {n.target for n in _reaches(inputs, lambda n: n.users, stops_forward) if is_layer(n)}
    last = {n.target for n in _reaches(outputs, lambda n: n.all_input_nodes, is_layer) if is_layer(n)}
    bn_after = {}
    for node in nodes:
        if _kind(node, modules) != "bn" or len(node.all_input_nodes) != 1:
            continue
        (source,) = node.all_input_nodes
        if is_layer(source) and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1:
            bn_after.setdefault(source.target, node.target)
    return LayerGraph(layers=layers, first=[n for n in layers if n in first], last=[n for n in layers if n in last],
                      bn_after=bn_after)
