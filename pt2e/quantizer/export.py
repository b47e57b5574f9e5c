"""Export helpers quantizer code imports from torchao: wrap a callable, tell an exported model.

>>> import torch
>>> m = WrapperModule(torch.nn.functional.relu)
>>> gm = torch.export.export(m, (torch.randn(3),)).module()
>>> model_is_exported(gm), model_is_exported(m)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule

__all__ = ["WrapperModule", "model_is_exported"]


class WrapperModule(torch.nn.Module):
    """An ``nn.Module`` whose ``forward`` calls ``fn``, so a plain function can be exported.

    >>> import torch
    >>> WrapperModule(lambda x, y=1: x + y)(torch.ones(2), y=2)
    tensor([3., 3.])
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` with the arguments given."""
        return self.fn(*args, **kwargs)


def model_is_exported(m: torch.nn.Module) -> bool:
    """Whether ``m`` came from ``torch.export``: a ``GraphModule`` whose nodes carry
    ``val`` metadata (a ``symbolic_trace`` graph, or a plain module, does not).

    >>> import torch
    >>> model_is_exported(torch.fx.symbolic_trace(torch.nn.ReLU()))
    False
    """
    return isinstance(m, GraphModule) and any("val" in n.meta for n in m.graph.nodes)
