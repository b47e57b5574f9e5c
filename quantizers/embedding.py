"""EmbeddingQuantizer: weight-only, per-row uint8 embedding tables (torchao's ``EmbeddingQuantizer``).

Each row of an ``nn.Embedding`` / ``F.embedding`` table gets its own float scale and
float zero point (``torch.per_channel_affine_float_qparams`` on axis 0, uint8); the
indices and the looked-up activations stay as they are. After ``convert_pt2e`` the
table is stored as uint8 and dequantized in front of ``aten.embedding``.

It quantizes embeddings only, so it is meant to run first in a
:class:`~pt2e.quantizer.ComposableQuantizer`, before a backend quantizer that takes
the convolutions and linear layers (every other node stays free for it):

>>> import torch
>>> from pt2e.quantizer import ComposableQuantizer, get_annotation
>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)).eval()
>>> gm = torch.export.export(m, (torch.tensor([[1, 2]]),)).module()
>>> x86 = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
>>> _ = ComposableQuantizer([EmbeddingQuantizer(), x86]).annotate(gm)
>>> [n.name for n in gm.graph.nodes if get_annotation(n) is not None]
['embedding', 'linear']

Same class, methods and module-level :func:`get_embedding_operators_config` as
torchao; built on the shared engine (:class:`~quantizers.engine.TableQuantizer`),
so :meth:`EmbeddingQuantizer.report` lists what stayed float.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch.fx import GraphModule

from observers import PerChannelMinMaxObserver
from pt2e.quantizer import (
    OperatorConfig,
    OperatorPatternType,
    QuantizationConfig,
    QuantizationSpec,
    annotate_input_qspec_map,
    mark_annotated,
)

from .annotators import AnnotationContext
from .engine import TableQuantizer
from .patterns import Match, PatternTable

__all__ = [
    "EmbeddingQuantizer",
    "get_embedding_operators_config",
    "EMBEDDING_PATTERNS",
]

EMBEDDING_OPS = frozenset({torch.ops.aten.embedding.default})
EMBEDDING_PATTERNS = PatternTable()


@functools.lru_cache
def _embedding_config() -> QuantizationConfig:
    # one object, so configs returned by the classmethods compare equal to each other
    weight = QuantizationSpec(
        dtype=torch.uint8,
        qscheme=torch.per_channel_affine_float_qparams,
        ch_axis=0,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12),
    )
    return QuantizationConfig(None, None, weight, None)


def _operators() -> list[OperatorPatternType]:
    return [[torch.nn.Embedding], [F.embedding]]


def get_embedding_operators_config() -> OperatorConfig:
    """The embedding recipe: uint8 per-row weights with float qparams, nothing else quantized.

    A fresh copy on every call (as torchao's), so callers may modify it.

    >>> cfg = get_embedding_operators_config()
    >>> cfg.config.weight.dtype, cfg.config.weight.qscheme, cfg.config.input_activation
    (torch.uint8, torch.per_channel_affine_float_qparams, None)
    >>> len(cfg.operators)
    2
    """
    return copy.deepcopy(OperatorConfig(config=_embedding_config(), operators=_operators()))


@EMBEDDING_PATTERNS.register(name="embedding", anchor=EMBEDDING_OPS, priority=1)
def _annotate_embedding(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    """``aten.embedding(weight, indices)``: quantize the table edge only."""
    node = match.anchor
    table = node.args[0]
    weight = config.weight  # not get_weight_qspec: that accepts symmetric schemes only (as torchao's)
    if weight is None or not isinstance(table, torch.fx.Node):
        return
    annotate_input_qspec_map(node, table, weight)
    mark_annotated([node])


class EmbeddingQuantizer(TableQuantizer):
    """Quantize every ``aten.embedding`` table to uint8, one scale and zero point per row.

    Takes no arguments, as torchao's; the recipe is :func:`get_embedding_operators_config`.

    >>> import torch
    >>> from pt2e import convert_pt2e, prepare_pt2e
    >>> m = torch.nn.Embedding(6, 3).eval()
    >>> idx = torch.tensor([0, 5])
    >>> gm = prepare_pt2e(torch.export.export(m, (idx,)).module(), EmbeddingQuantizer())
    >>> _ = gm(idx)
    >>> q = convert_pt2e(gm)
    >>> bool((q(idx) - m(idx)).abs().max() < 0.02)
    True
    """

    patterns = EMBEDDING_PATTERNS

    def __init__(self) -> None:
        super().__init__()
        self._set_global(_embedding_config())

    @classmethod
    def get_supported_quantization_configs(cls) -> list[QuantizationConfig]:
        """The one embedding config."""
        return [op.config for op in cls.get_supported_operators()]

    @classmethod
    def get_supported_operator_for_quantization_config(
        cls, quantization_config: QuantizationConfig
    ) -> list[OperatorPatternType]:
        """The operator patterns ``quantization_config`` applies to (``[]`` for any other config)."""
        for op in cls.get_supported_operators():
            if op.config == quantization_config:
                return list(op.operators)
        return []

    @classmethod
    def get_supported_operators(cls) -> list[OperatorConfig]:
        """The embedding config with its operator patterns (``nn.Embedding``, ``F.embedding``)."""
        return [OperatorConfig(config=_embedding_config(), operators=_operators())]

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """No rewrite is needed before annotation."""
        return model
