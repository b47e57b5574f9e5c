"""Run a ``.pte`` program in ExecuTorch's runtime from Python.

The runtime's ``Method`` does not keep its ``Program`` alive:
``Runtime.get().load_program(buf).load_method("forward")`` lets the program be
garbage-collected, after which calls fail and then segfault. :class:`ExecuTorchRunner`
holds the buffer, the program and the method together for as long as it lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pt2e.errors import Pt2eError

__all__ = ["ExecuTorchRunner", "ExecuTorchLoadError"]


class ExecuTorchLoadError(Pt2eError, RuntimeError):
    """ExecuTorch's runtime refused to load a program or method."""


class ExecuTorchRunner:
    """Load a ``.pte`` (bytes or file) once and call one of its methods like a function.

    ``runner(*inputs)`` returns the single output tensor, or a tuple when the
    method returns several; the outputs are copies the caller owns. Usually made
    by :meth:`lowering.ExecuTorchProgram.runner`, or implicitly by calling the
    program. Bytes that are not a ``.pte`` are refused with a
    :class:`ExecuTorchLoadError`:

    >>> ExecuTorchRunner(b"not a program")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowering.executorch_runtime.ExecuTorchLoadError: ExecuTorch could not load the .pte (13 bytes): ...
    """

    def __init__(self, pte: bytes | str | Path, method: str = "forward") -> None:
        from executorch.runtime import Runtime

        # the buffer, program and method are kept together on purpose (see module docstring)
        self._buffer = Path(pte).read_bytes() if isinstance(pte, (str, Path)) else bytes(pte)
        try:
            self._program = Runtime.get().load_program(self._buffer)
        except RuntimeError as e:
            raise ExecuTorchLoadError(
                f"ExecuTorch could not load the .pte ({len(self._buffer)} bytes): {e}. Pass the "
                "bytes of a serialized program (ExecuTorchProgram.buffer, or a .pte file path)"
            ) from e
        if method not in self._program.method_names:
            raise ExecuTorchLoadError(
                f"the .pte has no method '{method}' (it has {sorted(self._program.method_names)}); "
                "pass one of those as method="
            )
        try:
            loaded = self._program.load_method(method)
        except RuntimeError as e:
            raise ExecuTorchLoadError(
                f"ExecuTorch could not load method '{method}' of the .pte ({e}); a delegate "
                "rejected its serialized graph. Lower with lowering.to_executorch(..., check=True) "
                "to get the offending node named"
            ) from e
        if loaded is None:
            raise ExecuTorchLoadError(f"ExecuTorch returned no method for '{method}'")
        self._method = loaded
        self.method_name = method

    @property
    def method_names(self) -> set[str]:
        """The methods the loaded program offers."""
        return set(self._program.method_names)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Run the method on ``inputs`` (tensors) and return its output(s)."""
        outputs: Sequence[Any] = self._method.execute(list(inputs))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
