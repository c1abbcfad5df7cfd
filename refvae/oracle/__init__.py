"""The oracle: check another implementation's VAE loss and gradients against refvae (ORACLE.md).

A user writes, from their own code, the architecture (``config.json``), the parameters
(``params.npz``: PyTorch ``state_dict`` names and layout, or a nested tree with ``layout="in_out"``
kernels, fused heads split by ``split``), the batch and the base noise their model drew
(``batch.npz``), and their loss and gradients (``theirs.npz``: ``loss``, ``kl``,
``reconstruction``, ``kl_per_datum``, ``reconstruction_per_datum``, the intermediates
``heads/<name>``, ``x``, ``decoder_out`` — all optional — and ``grad/<parameter name>`` for
every parameter). refvae computes the same quantities with
:meth:`refvae.math.vae.VAE.loss_and_grads` and compares them tensor by tensor; a failing report
carries a diagnosis.

Python API (every argument may be a path or the object itself; arrays may be NumPy arrays, CPU or
GPU PyTorch tensors, CuPy or JAX arrays)::

    from . import assert_matches, check_torch
    assert_matches("config.json", model.state_dict(), {"y": y, "eps": eps},
                   {**{f"grad/{n}": p.grad for n, p in model.named_parameters()}, "loss": loss},
                   reduction="sum")
    report = check_torch(model, loss_fn, y, "config.json", name_map=..., reduction="sum")

:func:`check_unbiased` asks whether a stochastic gradient estimator is unbiased. Files are read with
``allow_pickle=False``; every unusable input is a one-line :class:`~refvae.errors.RefvaeError`.
"""
from .core import (GRAD, PER_DATUM, SCALARS, TOLERANCES, OracleMismatch, OracleReport,
                   OracleResult, assert_matches, check, compare, compute, compute_inputs,
                   write_npz)
from .example import write_example
from .inputs import (FORMAT, OracleInputs, default_estimator, load_config, load_inputs, load_npz,
                     parse_name_map)
from .layouts import LAYOUTS, Layout, flatten, parse_split, rename
from .torch_adapter import assert_torch_matches, check_torch
from .unbiased import UnbiasedReport, check_unbiased

__all__ = ["FORMAT", "GRAD", "LAYOUTS", "PER_DATUM", "SCALARS", "TOLERANCES", "Layout",
           "OracleInputs",
           "OracleMismatch", "OracleReport", "OracleResult", "UnbiasedReport", "assert_matches",
           "assert_torch_matches", "check", "check_torch", "check_unbiased", "compare", "compute",
           "compute_inputs", "default_estimator", "flatten", "load_config", "load_inputs",
           "load_npz",
           "parse_name_map", "parse_split", "rename", "write_example", "write_npz"]
