"""How to write a Quantizer for PT2E (``python -m tutorials.custom_quantizer``); see docs/writing_a_quantizer.md.

An imaginary accelerator, "NPU", runs int8 conv (+ relu) and linear with an int32
bias whose scale is input scale x weight scale, keeps max pool and cat in int8 with
their input's qparams, has a fixed-range sigmoid (output in [0, 1], scale 1/256),
and cannot run a transposed conv. The backend below uses the public API only
(``pt2e.quantizer``, ``observers``); the same code runs with torchao's classes.
"""

from __future__ import annotations

import torch
from torch import nn

# --- begin example backend (the docs quote this part; it stays under 100 lines) ---------------
from observers import HistogramObserver, PerChannelMinMaxObserver
from pt2e.errors import AnnotationError
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
ACT = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                       observer_or_fake_quant_ctr=HistogramObserver)
WEIGHT = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, ch_axis=0,
                          qscheme=torch.per_channel_symmetric,
                          observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
SIGMOID_OUT = FixedQParamsQuantizationSpec(dtype=torch.uint8, scale=1.0 / 256, zero_point=0,
                                           quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine)


def bias_qparams(observers):  # scale = input scale * weight scale (per output channel), zp = 0
    (s_x, _), (s_w, _) = observers[0].calculate_qparams(), observers[1].calculate_qparams()
    scale = (s_x * s_w).to(torch.float32)
    return scale, torch.zeros_like(scale, dtype=torch.int32)


class NPUQuantizer(Quantizer):
    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for node in model.graph.nodes:
            if node.target in (aten.conv2d.default, aten.linear.default):
                self._weighted(node)
            elif node.target == aten.sigmoid.default:
                annotate_input_qspec_map(node, node.args[0], ACT)
                annotate_output_qspec(node, SIGMOID_OUT)
                mark_annotated([node])
        for node in model.graph.nodes:  # after the producers: share qparams through pool/cat
            if node.target in (aten.max_pool2d.default, aten.cat.default) and not is_annotated(node):
                inputs = node.args[0] if node.target == aten.cat.default else [node.args[0]]
                annotate_input_qspec_map(node, inputs[0], ACT)
                shared = SharedQuantizationSpec((inputs[0], node))
                for other in inputs[1:]:
                    annotate_input_qspec_map(node, other, shared)
                annotate_output_qspec(node, shared)
                mark_annotated([node])
        return model

    def _weighted(self, node: torch.fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        annotate_input_qspec_map(node, x, ACT)
        annotate_input_qspec_map(node, w, WEIGHT)
        if len(node.args) > 2 and node.args[2] is not None:
            bias = DerivedQuantizationSpec(
                derived_from=[(x, node), (w, node)], derive_qparams_fn=bias_qparams,
                dtype=torch.int32, quant_min=-(2**31), quant_max=2**31 - 1,
                qscheme=torch.per_channel_symmetric, ch_axis=0)
            annotate_input_qspec_map(node, node.args[2], bias)
        users = list(node.users)  # fuse a following relu: quantize after it, not between
        tail = users[0] if len(users) == 1 and users[0].target == aten.relu.default else node
        annotate_output_qspec(tail, ACT)
        mark_annotated([node, tail])

    def validate(self, model: torch.fx.GraphModule) -> None:
        for node in model.graph.nodes:
            if node.target in (aten.conv_transpose2d.input, aten.conv_transpose1d.default):
                raise AnnotationError(
                    f"NPUQuantizer: node '{node.name}' is a transposed convolution, which the NPU "
                    "cannot run; replace it (e.g. upsample + conv) or keep the model on the CPU")
# --- end example backend ---------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return torch.sigmoid(self.fc(self.pool(y).flatten(1)))


def qdq_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantize" in str(n.target):
            counts[str(n.target).split(".")[1]] = counts.get(str(n.target).split(".")[1], 0) + 1
    return counts


def main() -> dict[str, object]:
    """Annotate, convert and measure; returns what the tutorial prints (tests check it)."""
    from pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    model = Net().eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(8)]
    exported = torch.export.export(model, (batches[0],)).module()
    prepared = prepare_pt2e(exported, NPUQuantizer())
    observed = [line.strip().split(";")[0] for line in prepared.code.splitlines()
                if "activation_post_process" in line]
    print(f"prepare_pt2e inserted {len(observed)} observer calls, e.g.:", *observed[:4], sep="\n  ")
    for b in batches:
        prepared(b)
    converted = convert_pt2e(prepared)
    counts = qdq_counts(converted)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref, out = model(x), converted(x)
    sqnr = float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))
    scales = {n.args[1] for n in converted.graph.nodes
              if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default}
    print("converted graph:", *[line.strip().split(";")[0][:120] for line in converted.code.splitlines()
                                  if "quantized_decomposed" in line][:6], "...", sep="\n  ")
    print("converted q/dq ops:", counts)
    print(f"SQNR vs float: {sqnr:.1f} dB; distinct activation scales: {len(scales)}")
    try:
        bad = torch.export.export(nn.ConvTranspose2d(3, 3, 2).eval(), (x,)).module()
        prepare_pt2e(bad, NPUQuantizer())
        refused = ""
    except AnnotationError as e:
        refused = str(e)
    print("validate() refuses:", refused)
    return {"counts": counts, "sqnr_db": sqnr, "refused": refused, "converted": converted}


if __name__ == "__main__":
    main()
