"""One small reference quantizer for tests, built on the public API only.

It annotates the graph the way a typical int8 backend does, so pipeline tests can
check exact q/dq structure without depending on a real backend's rules.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

from observers import (
    FakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
    annotate_input_qspec_map,
    annotate_output_qspec,
    is_annotated,
    mark_annotated,
)

aten = torch.ops.aten
WEIGHTED = {
    aten.linear.default: "linear",
    aten.conv1d.default: "conv",
    aten.conv2d.default: "conv",
    aten.conv_transpose2d.input: "conv_transpose",
}
SHARED_OPS = {aten.cat.default, aten.max_pool2d.default, aten.flatten.using_ints,
              aten.reshape.default, aten.view.default, aten.adaptive_avg_pool2d.default}
BINARY = {aten.add.Tensor, aten.mul.Tensor, aten.matmul.default, aten.bmm.default}
UNARY = {aten.relu.default, aten.hardtanh.default, aten.gelu.default}


class ReferenceQuantizer(Quantizer):
    """uint8 activations, int8 symmetric weights (per channel by default), float bias.

    Options: ``dynamic`` (linear only, run-time activation qparams), ``is_qat``
    (fake quantizers), ``derived_bias`` (int32 bias with scale = act * weight),
    ``observer`` (activation observer class).
    """

    def __init__(self, *, per_channel: bool = True, dynamic: bool = False, is_qat: bool = False,
                 derived_bias: bool = False, observer=MinMaxObserver, only=None):
        self.per_channel = per_channel
        self.dynamic = dynamic
        self.is_qat = is_qat
        self.derived_bias = derived_bias
        self.only = only  # optional predicate on nodes
        act_ctr = observer
        w_ctr = PerChannelMinMaxObserver if per_channel else MinMaxObserver
        if is_qat:
            act_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
            w_ctr = FakeQuantize.with_args(
                observer=MovingAveragePerChannelMinMaxObserver if per_channel
                else MovingAverageMinMaxObserver)
        if dynamic:
            self.act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                                        qscheme=torch.per_tensor_affine, is_dynamic=True,
                                        observer_or_fake_quant_ctr=PlaceholderObserver)
        else:
            self.act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                                        qscheme=torch.per_tensor_affine,
                                        observer_or_fake_quant_ctr=act_ctr)
        self.weight = QuantizationSpec(
            dtype=torch.int8, quant_min=-127, quant_max=127,
            qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
            ch_axis=0, observer_or_fake_quant_ctr=w_ctr)

    def _ok(self, n: Node) -> bool:
        return n.op == "call_function" and not is_annotated(n) and (self.only is None or self.only(n))

    def annotate(self, model):
        for n in model.graph.nodes:
            if not self._ok(n):
                continue
            if n.target in WEIGHTED:
                self._weighted(n)
            elif self.dynamic:
                continue
            elif n.target in SHARED_OPS:
                self._shared(n)
            elif n.target in BINARY:
                for a in n.args[:2]:
                    if isinstance(a, Node):
                        annotate_input_qspec_map(n, a, self.act)
                annotate_output_qspec(n, self.act)
                mark_annotated([n])
            elif n.target in UNARY:
                annotate_input_qspec_map(n, n.args[0], self.act)
                annotate_output_qspec(n, self.act)
                mark_annotated([n])
            elif n.target == aten.sigmoid.default:
                annotate_input_qspec_map(n, n.args[0], self.act)
                annotate_output_qspec(n, FixedQParamsQuantizationSpec(
                    dtype=torch.uint8, scale=1.0 / 256.0, zero_point=0, quant_min=0,
                    quant_max=255, qscheme=torch.per_tensor_affine))
                mark_annotated([n])
        return model

    def _weighted(self, n: Node) -> None:
        x, w = n.args[0], n.args[1]
        annotate_input_qspec_map(n, x, self.act)
        annotate_input_qspec_map(n, w, self.weight)
        bias = n.args[2] if len(n.args) > 2 else None
        if isinstance(bias, Node) and self.derived_bias:
            def derive(obs):
                s_a, _ = obs[0].calculate_qparams()
                s_w, _ = obs[1].calculate_qparams()
                scale = (s_a * s_w).to(torch.float32)
                return scale, torch.zeros_like(scale, dtype=torch.int32)
            qscheme = torch.per_channel_symmetric if self.per_channel else torch.per_tensor_symmetric
            annotate_input_qspec_map(n, bias, DerivedQuantizationSpec(
                derived_from=[(x, n), (w, n)], derive_qparams_fn=derive, dtype=torch.int32,
                quant_min=-(2**31), quant_max=2**31 - 1, qscheme=qscheme, ch_axis=0))
        if not self.dynamic:
            annotate_output_qspec(n, self.act)
        mark_annotated([n])

    def _shared(self, n: Node) -> None:
        first = n.args[0]
        inputs = list(first) if isinstance(first, (list, tuple)) else [first]
        head = inputs[0]
        annotate_input_qspec_map(n, head, self.act)
        shared = SharedQuantizationSpec((head, n))
        for other in inputs[1:]:
            annotate_input_qspec_map(n, other, shared)
        if n.target is not operator.getitem:
            annotate_output_qspec(n, shared)
        mark_annotated([n])

    def validate(self, model):
        pass


class LinearSpecQuantizer(Quantizer):
    """Annotates every linear with the given activation spec (``None``: weight only) and
    weight spec; for tests of observer/spec kinds the reference quantizer does not build."""

    def __init__(self, act: QuantizationSpec | None, weight: QuantizationSpec) -> None:
        self.act, self.weight = act, weight

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for n in model.graph.nodes:
            if n.target == aten.linear.default:
                if self.act is not None:
                    annotate_input_qspec_map(n, n.args[0], self.act)
                annotate_input_qspec_map(n, n.args[1], self.weight)
                mark_annotated([n])
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass
