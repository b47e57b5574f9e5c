"""Which module a graph node came from, and filters built on it.

``torch.export`` records, for every node, the stack of modules it was traced
through in ``node.meta["nn_module_stack"]``: ``{key: (module_path, module_type)}``
from outermost to innermost. Backend quantizers use these filters for their
``set_module_name`` / ``set_module_type`` configurations.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.fx import Node

# module_stack is public here (torchao users import it with the filters); it lives
# in pt2e.graph, the one place that reads a node's module metadata
from ..graph import module_stack, qualified_type_name

__all__ = [
    "module_stack",
    "get_module_name_filter",
    "get_module_type_filter",
    "get_not_module_type_or_name_filter",
]


def get_module_name_filter(module_name: str) -> Callable[[Node], bool]:
    """A predicate: was ``node`` traced inside the module at ``module_name`` (or below it)?

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.sub = torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.sub(x)
    >>> gm = torch.export.export(M(), (torch.randn(1, 2),)).module()
    >>> f = get_module_name_filter("sub")
    >>> [n.name for n in gm.graph.nodes if n.op == "call_function" and f(n)]
    ['linear']
    """
    def _filter(node: Node) -> bool:
        return any(
            path == module_name or path.startswith(module_name + ".")
            for path, _ in module_stack(node)
        )

    return _filter


def get_module_type_filter(tp: type | Callable) -> Callable[[Node], bool]:
    """A predicate: was ``node`` traced inside a module of type ``tp``?

    Only the innermost module of that type counts, as in torchao.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()),
    ...                          (torch.randn(1, 2),)).module()
    >>> f = get_module_type_filter(torch.nn.ReLU)
    >>> [n.name for n in gm.graph.nodes if n.op == "call_function" and f(n)]
    ['relu']
    """
    wanted = qualified_type_name(tp)

    def _filter(node: Node) -> bool:
        return any(t == wanted for _, t in module_stack(node))

    return _filter


def get_not_module_type_or_name_filter(
    tp_list: list[type | Callable], module_name_list: list[str]
) -> Callable[[Node], bool]:
    """A predicate that is true for nodes in none of the given module types or names.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> gm = torch.export.export(m, (torch.randn(1, 2),)).module()
    >>> f = get_not_module_type_or_name_filter([torch.nn.ReLU], [])
    >>> [n.name for n in gm.graph.nodes if n.op == "call_function" and f(n)]
    ['linear']
    """
    filters = [get_module_type_filter(tp) for tp in tp_list] + [
        get_module_name_filter(m) for m in module_name_list
    ]

    def _filter(node: Node) -> bool:
        return not any(f(node) for f in filters)

    return _filter
