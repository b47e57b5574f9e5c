"""The three calls of the PT2E flow: ``prepare_pt2e``, ``prepare_qat_pt2e``, ``convert_pt2e``.

Same names, arguments and defaults as ``torchao.quantization.pt2e.quantize_pt2e``.

"""

from __future__ import annotations

import logging
from typing import Any

from torch.fx import GraphModule

from .batchnorm import fold_bn_into_preceding_op
from .calibration import warn_calibration_problems
from .capture import check_exported, install_input_check
from .convert import duplicate_dequantize_per_user, port_dequantize_metadata, replace_observers
from .errors import ArgumentTypeError, PipelineStateError
from .fold import drop_unused_attributes, fold_constant_quantize
from .graph import remove_dead_code
from .prepare import (
    control_flow_bodies,
    insert_observers,
    never_observed,
    observer_nodes,
    remove_observers,
)
from .qat import fold_qat_conv_bn, simulate_qat_conv_bn
from .quantizer.base import Quantizer
from .reference_representation import rewrite_to_reference_representation
from .sharing import SharingGroups, collect_qspecs, create_observers
from .train_eval import disallow_exported_model_train_eval
from .untie import untie_shared_bias, untie_shared_conv1d_weight

__all__ = ["prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e"]

log = logging.getLogger(__name__)

# model.meta keys recording how far along the pipeline a model is
PREPARED_FLAG = "_pt2e_prepared"
CONVERTED_FLAG = "_pt2e_converted"


def _check_not_prepared(model: GraphModule, where: str) -> None:
    if model.meta.get(CONVERTED_FLAG):
        raise PipelineStateError(
            f"{where} got a model that convert_pt2e already converted; prepare the original "
            "exported model instead"
        )
    if model.meta.get(PREPARED_FLAG) or observer_nodes(model):
        raise PipelineStateError(
            f"{where} got a model that is already prepared (it contains observers); "
            "calibrate it and call convert_pt2e, or export the float model again to re-prepare"
        )


def _prepare(model: Any, quantizer: Quantizer, is_qat: bool) -> GraphModule:
    where = "prepare_qat_pt2e" if is_qat else "prepare_pt2e"
    model = check_exported(model, where)
    if not isinstance(quantizer, Quantizer) and not callable(getattr(quantizer, "annotate", None)):
        raise ArgumentTypeError(
            f"{where} expects a Quantizer as its second argument, got {type(quantizer).__name__}; "
            "pass an instance of a pt2e.quantizer.Quantizer subclass (or any object with an "
            "annotate(model) method)"
        )
    _check_not_prepared(model, where)
    install_input_check(model)
    original_meta = dict(model.meta)
    remove_dead_code(model)
    if not is_qat:
        fold_bn_into_preceding_op(model)
    model = quantizer.transform_for_annotation(model)
    quantizer.annotate(model)
    quantizer.validate(model)
    if is_qat:
        simulate_qat_conv_bn(model)
    groups = SharingGroups(collect_qspecs(model))
    obs_map = create_observers(groups, is_qat=is_qat)
    quantizer.prepare_obs_or_fq_callback(model, obs_map)
    inserted = insert_observers(model, obs_map)
    log.info("%s: %d observers for %d annotated edges/outputs", where, inserted, len(obs_map))
    model.meta.update(original_meta)
    model.meta[PREPARED_FLAG] = "qat" if is_qat else "ptq"
    # cond / while_loop / scan bodies are GraphModules of their own: prepare each like
    # top-level code (torchao does so for while_loop and scan in PTQ). Not in QAT, as
    # torchao: training runs cond/scan bodies traced, which fake quantizers do not survive
    bodies = [(n, b) for n, b in control_flow_bodies(model)
              if any(node.op == "call_function" for node in b.graph.nodes)] if not is_qat else []
    for name, body in bodies:
        setattr(model, name, _prepare(body, quantizer, is_qat))
    if bodies:
        _freeze_parameters(model)
    return disallow_exported_model_train_eval(model)


def _freeze_parameters(model: GraphModule) -> None:
    # cond/scan run a body eagerly only when no operand needs grad; otherwise they trace
    # it, and observers (data-dependent) and q/dq constants cannot be traced
    for p in model.parameters():
        p.requires_grad_(False)


def prepare_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Annotate ``model`` with ``quantizer`` and insert observers for calibration.

    ``model`` is ``torch.export.export(m, args).module()``. Eval-mode batch norms are
    folded into the conv/linear before them, dead code is dropped, then the quantizer
    annotates the graph and one observer is inserted per sharing group. Run
    calibration data through the returned model, then call :func:`convert_pt2e`.

    >>> import torch
    >>> from pt2e.quantizer import (QuantizationSpec, Quantizer,
    ...     annotate_input_qspec_map, annotate_output_qspec)
    >>> from observers import MinMaxObserver
    >>> class ReluQuantizer(Quantizer):
    ...     def annotate(self, model):
    ...         spec = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
    ...             qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
    ...         for n in model.graph.nodes:
    ...             if n.target == torch.ops.aten.relu.default:
    ...                 annotate_input_qspec_map(n, n.args[0], spec)
    ...                 annotate_output_qspec(n, spec)
    ...         return model
    ...     def validate(self, model): pass
    >>> gm = torch.export.export(torch.nn.ReLU(), (torch.randn(4),)).module()
    >>> prepared = prepare_pt2e(gm, ReluQuantizer())
    >>> _ = prepared(torch.randn(4))                  # calibrate
    >>> converted = convert_pt2e(prepared)
    >>> [n.target.__name__ for n in converted.graph.nodes if n.op == "call_function"]
    ['quantize_per_tensor.default', 'dequantize_per_tensor.default', 'relu.default', 'quantize_per_tensor.default', 'dequantize_per_tensor.default']
    """
    return _prepare(model, quantizer, is_qat=False)


def prepare_qat_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Like :func:`prepare_pt2e`, but inserts fake quantizers for quantization-aware training.

    Conv + batch norm pairs are rewritten so the weight is fake-quantized as it will
    be after folding, while batch norm keeps updating its statistics. Train the
    returned model, switch with :func:`pt2e.move_exported_model_to_eval`, then
    :func:`convert_pt2e` folds batch norm for good.

    >>> import torch
    >>> from pt2e import move_exported_model_to_eval
    >>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    >>> x = torch.randn(2, 3, 8, 8)
    >>> gm = torch.export.export(m.train(), (x,)).module()
    >>> q = X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config(is_qat=True))
    >>> prepared = prepare_qat_pt2e(gm, q)
    >>> prepared(x).sum().backward()                      # a training step's backward
    >>> converted = convert_pt2e(move_exported_model_to_eval(prepared))
    >>> any("batch_norm" in str(n.target) for n in converted.graph.nodes)
    False
    """
    return _prepare(model, quantizer, is_qat=True)


def convert_pt2e(
    model: GraphModule,
    use_reference_representation: bool = False,
    fold_quantize: bool = True,
) -> GraphModule:
    """Replace observers with ``quantized_decomposed`` quantize/dequantize ops.

    With ``fold_quantize=True`` weights become integer constants followed by a
    dequantize; with ``False`` they stay float constants followed by quantize and
    dequantize. ``use_reference_representation=True`` rewrites supported q/dq
    patterns into explicit integer arithmetic.

    >>> import torch
    >>> from pt2e import prepare_pt2e
    >>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    >>> x = torch.randn(2, 8)
    >>> gm = torch.export.export(torch.nn.Linear(8, 4), (x,)).module()
    >>> prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config()))
    >>> _ = prepared(x)                                   # calibrate
    >>> converted = convert_pt2e(prepared)
    >>> sorted({b.dtype for b in converted.buffers()} & {torch.int8})  # weight folded to int8
    [torch.int8]
    """
    for name, value in (("use_reference_representation", use_reference_representation),
                        ("fold_quantize", fold_quantize)):
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"convert_pt2e({name}={value!r}): expected True or False")
    model = check_exported(model, "convert_pt2e")
    if model.meta.get(CONVERTED_FLAG):
        raise PipelineStateError("convert_pt2e got a model that is already converted")
    if not model.meta.get(PREPARED_FLAG) and not observer_nodes(model):
        raise PipelineStateError(
            "convert_pt2e expects the model returned by prepare_pt2e / prepare_qat_pt2e "
            "(after calibration); this model has no observers"
        )
    original_meta = dict(model.meta)
    # bodies first, as torchao does, so no pass below meets a body's stale observer
    for name, body in control_flow_bodies(model):
        if not body.meta.get(PREPARED_FLAG):
            continue
        if never_observed(body):
            log.warning("convert_pt2e: calibration never ran control-flow body '%s'; it stays "
                        "float (calibrate with inputs that take every branch to quantize it)", name)
            remove_observers(body)
            continue
        setattr(model, name, convert_pt2e(body, use_reference_representation, fold_quantize))
        _freeze_parameters(model)
    fold_qat_conv_bn(model)
    warn_calibration_problems(model)
    replace_observers(model)
    duplicate_dequantize_per_user(model)
    port_dequantize_metadata(model)
    if fold_quantize:
        fold_constant_quantize(model)
    if use_reference_representation:
        rewrite_to_reference_representation(model)
    untie_shared_bias(model)  # a bias shared by two layers gets one int32 scale downstream
    untie_shared_conv1d_weight(model)  # ExecuTorch's XNNPACK unsqueezes a conv1d weight in place
    remove_dead_code(model, recompile=False)
    drop_unused_attributes(model)
    model.graph.lint()
    model.recompile()
    model.meta.update(original_meta)
    model.meta.pop(PREPARED_FLAG, None)
    model.meta[CONVERTED_FLAG] = True
    return disallow_exported_model_train_eval(model)
