"""``check_torch``: the oracle on a live PyTorch model in one call (ORACLE.md, "One call").

The user's forward pass runs as their training code runs it (``loss_fn(model, y)``), under a
context that records the draws of ``torch.randn``, ``torch.randn_like``, ``torch.rand`` and
``torch.rand_like`` (uniforms become Gumbel noise for categorical latents) and, through forward
hooks on the modules the name map names, the encoder heads, the latent sample (the input of the
decoder's first layer) and the decoder output. Their backward gives the gradients; refvae computes
its own numbers by hand (:func:`refvae.oracle.check`); torch is imported here only, lazily, and
never computes refvae's side. The model, its ``.grad`` fields, the RNG state and the autograd mode
are left as they were found.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import numpy as np

from ..backend import get_backend
from ..errors import ConfigError, ShapeError
from ..math.latent.categorical import gumbel_from_uniform
from ..math.vae import VAE
from .core import OracleMismatch, check
from .inputs import API_MAP_HINT, CLI_MAP_HINT, host, load_config
from .layouts import Layout, rename, split_sizes
from .torch_modules import config_from_modules, decoder_ends

NORMAL, UNIFORM = ("randn", "randn_like"), ("rand", "rand_like")


@contextmanager
def record_draws(torch):
    """Within the block, every ``torch.randn/randn_like/rand/rand_like`` call is recorded as
    ``(function name, a detached copy of the draw)``; the functions are restored on exit."""
    draws, originals = [], {name: getattr(torch, name) for name in NORMAL + UNIFORM}

    def recorded(name, fn):
        @functools.wraps(fn)
        def draw(*args, **kwargs):
            out = fn(*args, **kwargs)
            draws.append((name, out.detach().clone()))
            return out
        return draw

    try:
        for name, fn in originals.items():
            setattr(torch, name, recorded(name, fn))
        yield draws
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def noise_from_draws(draws, vae, n: int) -> np.ndarray:
    """The oracle's noise array from the recorded draws: one draw per sample of shape
    ``(N, *per-sample noise)`` stacked along the samples axis, or one draw with that axis."""
    per = tuple(vae.latent.noise_shape(n, 1)[2:])
    kind, fns = ("standard normal", NORMAL) if vae.latent.noise_name == "eps" else ("uniform", UNIFORM)
    seen = ", ".join(f"torch.{f} {tuple(a.shape)}" for f, a in draws) or "nothing"
    expected = (f"{kind} noise of shape (N, {', '.join(map(str, per))}) = {(n,) + per} per sample "
                f"(torch.{fns[1]} or torch.{fns[0]}) or one draw of shape (N, L, {', '.join(map(str, per))})")
    arrays = [host(a, "a recorded draw").astype(np.float64) for f, a in draws if f in fns]
    if len(arrays) != len(draws) or not arrays:
        raise ConfigError(f"check_torch: the forward pass drew {seen}; expected {expected}. Draw the "
                          "noise inside the forward pass with torch.randn_like/randn (rand_like/rand for "
                          "Gumbel noise); a torch.Generator or an alias imported with 'from torch import' "
                          "is not seen")
    if len(arrays) == 1 and arrays[0].shape[:1] + arrays[0].shape[2:] == (n,) + per and arrays[0].ndim == len(per) + 2:
        noise = arrays[0]
    elif all(a.shape == (n,) + per for a in arrays):
        noise = np.stack(arrays, axis=1)
    else:
        raise ConfigError(f"check_torch: the forward pass drew {seen}; expected {expected}")
    if kind == "uniform":
        noise = get_backend("numpy").to_numpy(gumbel_from_uniform(get_backend("numpy"), noise))
    return noise


def _targets(model, vae, layout: Layout) -> dict:
    """``{their module name: [(what to record, where, split sizes or None)]}`` for the modules the
    name map sends to refvae's heads and decoder layers."""
    heads = {f"encoder.{h}": h for h, _ in vae.latent.heads()}
    first, last = decoder_ends(vae)
    shapes = vae.param_shapes()
    targets = {}
    for name, _ in model.named_modules():
        if not name:
            continue
        if name in layout.split:
            parts = layout.split[name]
            if all(p in heads for p in parts):
                targets[name] = [("heads", parts, split_sizes(parts, "bias", shapes, name))]
            continue
        ours = rename(name, layout.name_map)
        todo = []
        if ours in heads:
            todo.append(("heads", [ours], None))
        if ours == first:
            todo.append(("x", None, None))
        if ours == last:
            todo.append(("decoder_out", None, None))
        if todo:
            targets[name] = todo
    return targets


def _hook(record: dict, heads: dict, todo):
    def hook(module, inputs, output):
        for what, parts, sizes in todo:
            if what == "x":
                record.setdefault("x", []).append(inputs[0].detach().clone())
            elif what == "decoder_out":
                out = output.flatten(-3) if output.ndim >= 4 else output   # an image: (N, C·H·W)
                record.setdefault("decoder_out", []).append(out.detach().clone())
            else:
                chunks = [output] if sizes is None else output.split(sizes, dim=-1)
                for part, chunk in zip(parts, chunks):
                    record.setdefault(f"heads/{heads[part]}", []).append(chunk.detach().clone())
    return hook


def _intermediates(record: dict, torch) -> dict:
    """One array per recorded quantity; a module called once per sample is stacked along L."""
    out = {}
    for key, values in record.items():
        if key.startswith("heads/"):
            out[key] = values[0]
        else:
            out[key] = values[0] if len(values) == 1 else torch.stack(values, dim=1)
    return out


def run_torch(model, loss_fn, y, vae, layout: Layout) -> tuple:
    """Run the user's forward and backward: ``(params, noise, theirs)`` as host arrays or tensors;
    the model's ``.grad`` fields, the RNG state and the autograd mode are restored afterwards."""
    import torch
    params = dict(model.named_parameters())
    saved = {k: p.grad for k, p in params.items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    heads = {f"encoder.{h}": h for h, _ in vae.latent.heads()}
    record, handles = {}, []
    try:
        for p in params.values():
            p.grad = None
        targets = _targets(model, vae, layout)
        for name, module in model.named_modules():
            todo = targets.get(name)
            if todo:
                handles.append(module.register_forward_hook(_hook(record, heads, todo)))
        with torch.enable_grad(), record_draws(torch) as draws:
            loss = loss_fn(model, y)
        for h in handles:
            h.remove()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ConfigError("check_torch: loss_fn(model, y) must return the scalar loss tensor your training "
                              f"code calls .backward() on, got {type(loss).__name__}"
                              + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
        with torch.enable_grad():
            loss.backward()
        missing = [k for k, p in params.items() if p.grad is None]
        if missing:
            raise ConfigError(f"check_torch: parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              "got no gradient (.grad is None after backward): it does not reach the loss "
                              "(a layer computed but unused, a wrong head, a detach) or has requires_grad=False")
        theirs = {"loss": loss.detach().reshape(()), **_intermediates(record, torch),
                  **{f"grad/{k}": p.grad.detach().clone() for k, p in params.items()}}
        values = {k: p.detach() for k, p in params.items()}
        n = y.shape[0]
        return values, noise_from_draws(draws, vae, n), theirs
    finally:
        for h in handles:
            h.remove()
        for k, p in params.items():
            p.grad = saved[k]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def check_torch(model, loss_fn, y, config=None, *, name_map=None, reduction: str = "mean",
                estimator=None, layout=None, split=None, temperature=None, rtol=None, atol=None,
                backend: str = "numpy", modules=None):
    """Check a live PyTorch model in one call: ``loss_fn(model, y)`` returns the scalar loss exactly
    as the user's training code computes it (for pytorch/examples' VAE: ``recon, mu, logvar =
    model(y); return loss_function(recon, y, mu, logvar)``). Returns the
    :class:`~refvae.oracle.OracleReport`; ``y`` may have any shape ``(N, ...)`` (it is flattened to
    ``(N, D)`` for refvae). Without a config it is read from the model's ``nn.Sequential``
    encoder and decoder and its Gaussian heads (:mod:`refvae.oracle.torch_modules`; ``modules``
    passes that reader's options: ``encoder``, ``decoder``, ``emission``, ``alpha``,
    ``data_shape``)."""
    try:
        import torch  # noqa: F401, PLC0415 - the user's model is a PyTorch module
    except ImportError as exc:
        raise ModuleNotFoundError(
            "check_torch needs PyTorch, which is not installed: pip install torch (the CPU build "
            "is enough: pip install torch --index-url https://download.pytorch.org/whl/cpu), or "
            "pip install 'refvae[torch]'", name="torch") from exc
    if config is None:
        config, name_map = config_from_modules(model, y, name_map, **(modules or {}))
    cfg = load_config(config)
    vae = VAE(cfg)
    lay = Layout.make(name_map, layout, split)
    params, noise, theirs = run_torch(model, loss_fn, y, vae, lay)
    y_host = host(y, "y").reshape(y.shape[0], -1)
    batch = {"y": y_host, vae.latent.noise_name: noise}
    try:
        return check(cfg, params, batch, theirs, estimator=estimator, reduction=reduction,
                     temperature=temperature, rtol=rtol, atol=atol, backend=backend, layout=lay)
    except ShapeError as exc:  # the advice in Python's words, not the CLI's
        if CLI_MAP_HINT not in str(exc):
            raise
        raise ShapeError(str(exc).replace(CLI_MAP_HINT, API_MAP_HINT)) from None


def assert_torch_matches(model, loss_fn, y, config=None, **kwargs):
    """:func:`check_torch`, raising :class:`~refvae.oracle.OracleMismatch` with the report when
    any tensor fails."""
    report = check_torch(model, loss_fn, y, config, **kwargs)
    if not report.passed:
        raise OracleMismatch(str(report))
    return report
