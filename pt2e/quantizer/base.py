"""The :class:`Quantizer` contract backend authors implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from .spec import EdgeOrNode

__all__ = ["Quantizer"]


class Quantizer(ABC):
    """Describe a backend's quantization rules by annotating an exported graph.

    ``prepare_pt2e`` calls, in order: :meth:`transform_for_annotation`,
    :meth:`annotate`, :meth:`validate`, then builds one observer per sharing group
    and hands them to :meth:`prepare_obs_or_fq_callback` before inserting them.

    A minimal quantizer that quantizes every ``relu``'s input and output:

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> from pt2e.quantizer import QuantizationSpec, annotate_input_qspec_map, annotate_output_qspec
    >>> class ReluQuantizer(Quantizer):
    ...     def annotate(self, model):
    ...         spec = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
    ...                                 qscheme=torch.per_tensor_affine,
    ...                                 observer_or_fake_quant_ctr=MinMaxObserver)
    ...         for n in model.graph.nodes:
    ...             if n.target == torch.ops.aten.relu.default:
    ...                 annotate_input_qspec_map(n, n.args[0], spec)
    ...                 annotate_output_qspec(n, spec)
    ...         return model
    ...     def validate(self, model):
    ...         pass
    >>> ReluQuantizer().transform_for_annotation("model")
    'model'
    """

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Rewrite the graph before annotation (e.g. decompose an op). Default: unchanged."""
        return model

    @abstractmethod
    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Write ``quantization_annotation`` entries into ``node.meta``; return the model."""

    @abstractmethod
    def validate(self, model: torch.fx.GraphModule) -> None:
        """Raise if the annotated graph is something the backend cannot run."""

    def prepare_obs_or_fq_callback(
        self,
        model: torch.fx.GraphModule,
        edge_or_node_to_obs_or_fq: dict[EdgeOrNode, Any],
    ) -> None:
        """Adjust the observers once created, before they are inserted (optional).

        ``edge_or_node_to_obs_or_fq`` maps every annotated edge and node to its
        observer; edges in one sharing group map to the same instance. The dict may
        be modified in place.
        """
        return None
