"""torchao's convert-time FX passes, for quantizer code that runs them itself.

``convert_pt2e`` already does both; these classes wrap the same functions in the
FX pass contract (``PassBase``: call it on a ``GraphModule``, get a
``PassResult``) so code written against torchao, which imports
``DuplicateDQPass`` / ``PortNodeMetaForQDQ`` from its quantizer package, runs
unchanged.

>>> import torch
>>> from torch.fx.passes.infra.pass_base import PassBase
>>> issubclass(DuplicateDQPass, PassBase) and issubclass(PortNodeMetaForQDQ, PassBase)
True
"""

from __future__ import annotations

from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["DuplicateDQPass", "PortNodeMetaForQDQ"]


class DuplicateDQPass(PassBase):
    """Give each annotated consumer of a shared dequantize its own copy.

    Before / after (``conv`` and ``add`` both annotated)::

        q -> dq -> conv           q -> dq   -> conv
               \\-> add               \\-> dq_1 -> add

    Dynamic ``choose_qparams -> q -> dq`` chains stay shared. ``modified`` says
    whether a copy was made. Example (a graph built by hand):

    >>> import torch
    >>> from pt2e.quantizer import QuantizationAnnotation, Q_ANNOTATION_KEY
    >>> qd = torch.ops.quantized_decomposed
    >>> g = torch.fx.Graph()
    >>> x = g.placeholder("x")
    >>> q = g.call_function(qd.quantize_per_tensor.default, (x, 0.1, 0, 0, 255, torch.uint8))
    >>> dq = g.call_function(qd.dequantize_per_tensor.default, (q, 0.1, 0, 0, 255, torch.uint8))
    >>> a = g.call_function(torch.ops.aten.relu.default, (dq,))
    >>> b = g.call_function(torch.ops.aten.neg.default, (dq,))
    >>> for n in (a, b):
    ...     n.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={dq: None})
    >>> _ = g.output((a, b))
    >>> gm = torch.fx.GraphModule(torch.nn.Module(), g)
    >>> DuplicateDQPass()(gm).modified
    True
    >>> sum(n.target == qd.dequantize_per_tensor.default for n in gm.graph.nodes)
    2
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        """Run :func:`pt2e.convert.duplicate_dequantize_per_user` and recompile."""
        # imported here: pt2e.convert imports this package (annotation accessors)
        from ..convert import duplicate_dequantize_per_user

        made = duplicate_dequantize_per_user(graph_module)
        if made:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, bool(made))


class PortNodeMetaForQDQ(PassBase):
    """Port metadata onto quantize/dequantize nodes, as torchao's pass of that name.

    For each node with a valid annotation, the dequantize on each quantized
    input edge (plus ``choose_qparams`` and quantize on a dynamic edge) takes the
    node's :data:`~pt2e.graph.USER_META_KEYS` (``quantization_tag``), and so does
    the quantize on its quantized output; a weight's dequantize also takes its
    consumer's module stack. ``modified`` says whether any node received metadata.

    >>> import torch
    >>> from pt2e.quantizer import QuantizationAnnotation, Q_ANNOTATION_KEY
    >>> qd = torch.ops.quantized_decomposed
    >>> g = torch.fx.Graph()
    >>> x = g.placeholder("x")
    >>> q = g.call_function(qd.quantize_per_tensor.default, (x, 0.1, 0, 0, 255, torch.uint8))
    >>> dq = g.call_function(qd.dequantize_per_tensor.default, (q, 0.1, 0, 0, 255, torch.uint8))
    >>> relu = g.call_function(torch.ops.aten.relu.default, (dq,))
    >>> relu.meta["quantization_tag"] = "block1"
    >>> relu.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={x: object()})
    >>> _ = g.output(relu)
    >>> gm = torch.fx.GraphModule(torch.nn.Module(), g)
    >>> PortNodeMetaForQDQ()(gm).modified, dq.meta["quantization_tag"]
    (True, 'block1')
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        """Run :func:`pt2e.convert.port_dequantize_metadata`."""
        from ..convert import port_dequantize_metadata

        return PassResult(graph_module, port_dequantize_metadata(graph_module) > 0)
