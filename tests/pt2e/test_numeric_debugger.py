"""pt2e.numeric_debugger: handles are unique and survive every transformation; comparisons."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from support.models import MLP, ConvBN
from support.reference_quantizer import ReferenceQuantizer
from torch import nn

from pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from pt2e.errors import ArgumentTypeError
from pt2e.numeric_debugger import (
    CUSTOM_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    NodeSourceDebugInfo,
    bfs_trace_with_node_process,
    compare_results,
    debug_key,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
)
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

X = torch.randn(4, 16)
IMG = torch.randn(2, 3, 8, 8)


def _x86() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range()))


def _handles(model) -> dict[str, int]:
    """node name -> handle, every graph (branches included)."""
    out: dict[str, int] = {}

    def visit(node):
        h = (node.meta.get(CUSTOM_KEY) or {}).get(NUMERIC_DEBUG_HANDLE_KEY)
        if h is not None:
            out[f"{id(node.graph)}:{node.name}"] = h

    bfs_trace_with_node_process(model, visit)
    return out


def _stamped(model: nn.Module, *args) -> torch.export.ExportedProgram:
    ep = torch.export.export(model, args)
    generate_numeric_debug_handle(ep)
    return ep


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.a(x).relu(), lambda x: self.b(x), (x,))


def test_handles_are_unique_including_cond_branches():
    ep = _stamped(Branchy(), torch.randn(2, 4))
    handles = list(_handles(ep).values())
    assert len(handles) == len(set(handles))
    # the three ops inside the two branches are numbered too
    assert len(handles) >= 3 + 3


def test_pass_added_node_gets_a_fresh_unique_handle():
    ep = _stamped(MLP(), X)
    gm = ep.module()
    before = _handles(gm)
    relu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default)
    with gm.graph.inserting_after(relu):
        neg = gm.graph.call_function(torch.ops.aten.neg.default, (relu,))
    generate_numeric_debug_handle(gm)
    after = _handles(gm)
    new = after.pop(f"{id(gm.graph)}:{neg.name}")
    assert after == before  # nothing renumbered
    assert new == max(before.values()) + 1


@pytest.mark.parametrize("transform", ["deepcopy", "re_export", "run_decompositions"])
def test_handles_survive_graph_transformations(transform):
    ep = _stamped(MLP(), X)
    original = {n.name: debug_key(n) for n in ep.graph.nodes if n.op == "call_function"}
    if transform == "deepcopy":
        new = copy.deepcopy(ep.module()).graph
    elif transform == "re_export":
        new = torch.export.export(ep.module(), (X,)).graph
    else:
        new = ep.run_decompositions().graph
    keys = [debug_key(n) for n in new.nodes if n.op == "call_function"]
    assert None not in keys
    assert set(keys) == set(original.values())  # every op kept its handle, none invented
    if transform != "run_decompositions":  # decompositions map several nodes to one handle
        assert {n.name: debug_key(n) for n in new.nodes if n.op == "call_function"} == original


def _check_converted(converted, original: dict[str, int]) -> None:
    handles = _handles(converted)
    assert set(handles.values()) <= set(original.values()), "a stage invented a handle"
    by_name = {k.split(":", 1)[1]: v for k, v in handles.items()}
    for name, h in original.items():
        if name in by_name:  # nodes that still exist kept their own handle
            assert by_name[name] == h, name


@pytest.mark.parametrize("flow", ["ptq", "qat"])
def test_handles_survive_prepare_and_convert(flow):
    if flow == "ptq":
        ep = _stamped(MLP(), X)
        gm = ep.module()
        original = {k.split(":", 1)[1]: v for k, v in _handles(gm).items()}
        prepared = prepare_pt2e(gm, ReferenceQuantizer())
        prepared(X)
    else:
        ep = _stamped(ConvBN().train(), IMG)
        gm = ep.module()
        original = {k.split(":", 1)[1]: v for k, v in _handles(gm).items()}
        prepared = prepare_qat_pt2e(gm, ReferenceQuantizer(is_qat=True))
        prepared(IMG)
        prepared = move_exported_model_to_eval(prepared)
    _check_converted(prepared, original)
    _check_converted(convert_pt2e(prepared), original)


def test_logs_and_compares_inside_cond_branches():
    ep = _stamped(Branchy(), torch.randn(2, 4))
    float_gm = ep.module()
    logged = prepare_for_propagation_comparison(float_gm)
    assert not any(type(m).__name__ == "OutputLogger" for m in float_gm.modules())
    with torch.no_grad():
        logged(torch.ones(2, 4))
    results = extract_results_from_loggers(logged)
    names = {v[0] for v in results.values()}
    assert {"linear", "relu"} <= names  # the taken branch's ops
    summaries = compare_results(results, results)
    assert all(torch.isinf(s.results[0].sqnr) for s in summaries.values()
               if isinstance(s.results[0].sqnr, torch.Tensor))


def test_without_handles_keys_are_node_sources_like_torchao():
    gm = torch.export.export(MLP(), (X,)).module()
    keys = [debug_key(n) for n in gm.graph.nodes if debug_key(n) is not None]
    assert keys and all(isinstance(k, NodeSourceDebugInfo) for k in keys)
    assert [k.name for k in keys] == ["linear", "relu", "linear_1"]


class Planted(nn.Module):
    """Two independent heads; ``bad`` sees an input with one huge outlier channel."""

    def __init__(self):
        super().__init__()
        self.good1, self.good2, self.bad = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
        scale = torch.ones(16)
        scale[0] = 1000.0
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.bad.weight[:, 0] = 0.0  # the outlier dominates the range, not the output

    def forward(self, x):
        return self.good2(torch.relu(self.good1(x))), self.bad(x * self.scale)


def test_compare_results_ranks_the_planted_bad_layer_first():
    ep = _stamped(Planted().eval(), X)
    float_gm = copy.deepcopy(ep.module())
    prepared = prepare_pt2e(ep.module(), _x86())
    for _ in range(4):
        prepared(torch.randn(4, 16))
    quantized = convert_pt2e(prepared)
    ref, act = (prepare_for_propagation_comparison(m) for m in (float_gm, quantized))
    x = torch.randn(4, 16)
    ref(x), act(x)
    summaries = compare_results(extract_results_from_loggers(ref),
                                extract_results_from_loggers(act))
    ranked = sorted(summaries.values(), key=lambda s: float(s.results[0].sqnr))
    assert ranked[0].ref_module_stack == "bad"
    assert float(ranked[0].results[0].sqnr) < 10.0 < float(ranked[1].results[0].sqnr)


def test_errors_name_what_to_pass():
    with pytest.raises(ArgumentTypeError, match="ExportedProgram"):
        generate_numeric_debug_handle(MLP())
    with pytest.raises(ArgumentTypeError, match="GraphModule"):
        prepare_for_propagation_comparison(MLP())


_SIGNATURES = """
import inspect, json, sys
mod = __import__(sys.argv[1], fromlist=["x"])
names = ["generate_numeric_debug_handle", "prepare_for_propagation_comparison",
         "extract_results_from_loggers", "compare_results", "bfs_trace_with_node_process"]
out = {n: [(p.name, repr(p.default), str(p.kind)) for p in
           inspect.signature(getattr(mod, n)).parameters.values()] for n in names}
dbg = __import__(sys.argv[2], fromlist=["x"])
out["OutputLogger"] = [p.name for p in inspect.signature(dbg.OutputLogger).parameters.values()]
out["keys"] = [mod.CUSTOM_KEY, mod.NUMERIC_DEBUG_HANDLE_KEY, mod.FROM_NODE_KEY]
out["fields"] = {c: list(dbg.__dataclass_fields__ if False else getattr(dbg, c).__dataclass_fields__)
                 for c in ["NodeAccuracySummary", "QuantizationComparisonResult"]}
print(json.dumps(out))
"""


def _signatures(package: str, debugger: str) -> dict:
    # torchao changes Inductor's config on import: never in this process
    out = subprocess.run([sys.executable, "-c", _SIGNATURES, package, debugger],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_api_matches_torchao_names_arguments_and_defaults():
    pytest.importorskip("torchao")
    ours = _signatures("pt2e", "pt2e.numeric_debugger")
    theirs = _signatures("torchao.quantization.pt2e", "torchao.quantization.pt2e._numeric_debugger")
    assert ours == theirs
