"""Elementwise kernels that run as one launch on a GPU and as the same formula in NumPy on the CPU.

An :class:`Elementwise` pairs CUDA C (compiled by ``cupy.ElementwiseKernel`` on first use, with
``--fmad=false`` so that no multiply and add are contracted into one rounding) with a NumPy function
that makes the same operations on the same operands in the same order. The NumPy function is what
the CPU runs, so the CPU's numbers are those of the plain operations it replaces, bit for bit; the
strict CuPy stand-in of the test suite runs it too, as the kernel's Python equivalent
(``tests/strict_cupy``: one device operation per call), so that every fused kernel is checked equal
to the plain formula there (``tests/test_fast_kernels.py``); ``validation/gpu_check.sh`` checks the
CUDA C against NumPy on a GPU.

Calling convention: every argument is given, inputs first, then the outputs (arrays the caller
allocated, possibly views; an output may also be read, for in-place updates). Scalars are passed
as NumPy scalars of the arrays' dtype (``T``), so that the GPU and NumPy round them alike.
"""
from __future__ import annotations

from typing import Callable

# Compiler options of every kernel: no fused multiply-add (each operation rounds as NumPy's does).
OPTIONS = ("--fmad=false",)

# Every kernel by name (the strict CuPy stand-in registers their NumPy equivalents from here).
KERNELS: dict[str, "Elementwise"] = {}


class Elementwise:
    """One elementwise kernel: ``in_params``/``out_params`` in ``cupy.ElementwiseKernel``'s syntax
    (``"T a, T b"``), ``cuda`` its body, ``numpy`` ``(xp, *inputs, *outputs) -> None`` the same
    formula writing into the outputs."""

    def __init__(self, name: str, in_params: str, out_params: str, cuda: str, numpy: Callable):
        if name in KERNELS:
            raise ValueError(f"an elementwise kernel named {name!r} already exists")
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.cuda, self.numpy = cuda, numpy
        self.n_in = len(in_params.split(","))
        self.n_out = len(out_params.split(","))
        self._compiled: dict = {}
        KERNELS[name] = self

    def __call__(self, bk, *args) -> None:
        if len(args) != self.n_in + self.n_out:
            raise TypeError(f"kernel {self.name}: expected {self.n_in} inputs and {self.n_out} "
                            f"outputs, got {len(args)} arguments")
        if bk.name != "cupy":
            self.numpy(bk.xp, *args)
            return
        kernel = self._compiled.get(id(bk.xp))
        if kernel is None:
            kernel = bk.xp.ElementwiseKernel(self.in_params, self.out_params, self.cuda, self.name,
                                             options=OPTIONS)
            self._compiled[id(bk.xp)] = kernel
        kernel(*args)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Elementwise({self.name!r})"


def scalar(bk, value):
    """``value`` as a scalar of the backend's dtype (what a ``T`` parameter receives)."""
    return bk.dtype(value)
