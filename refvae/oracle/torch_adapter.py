"""``check_torch``: the oracle on a live PyTorch model in one call (ORACLE.md, "One call").

The user's forward pass runs as their training code runs it (``loss_fn(model, y)``), under a
context that records the noise they draw (``torch.randn/randn_like/rand/rand_like/normal``,
``Tensor.normal_/uniform_``, hence ``Normal``, ``MultivariateNormal`` and
``RelaxedOneHotCategorical.rsample``, and ``Gumbel.rsample``; ``generator=`` draws included) and,
through forward hooks on the modules the name map names, the encoder heads, the latent sample (the
input of the decoder's first layer) and the decoder output. Their backward gives the gradients;
refvae computes its own numbers by hand (:func:`refvae.oracle.check`); torch is imported here only,
lazily, and never computes refvae's side. The model, its ``.grad`` fields, the RNG state and the
autograd mode are left as they were found.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import numpy as np

from ..backend import get_backend
from ..errors import ConfigError, RefvaeError
from ..math.latent.categorical import gumbel_from_uniform
from ..math.vae import VAE
from .core import TOLERANCES, OracleMismatch, check
from .inputs import API_MAP_HINT, CLI_MAP_HINT, host, load_config
from .layouts import Layout, rename, split_sizes
from .torch_modules import config_from_modules, decoder_ends

FUNCTIONS = ("randn", "randn_like", "rand", "rand_like", "normal")
METHODS = ("normal_", "uniform_")
KINDS = {"randn": "normal", "randn_like": "normal", "rand": "uniform", "rand_like": "uniform"}


def _is(value, number) -> bool:
    try:
        import torch
        return bool(torch.all(torch.as_tensor(value) == number))
    except (TypeError, ValueError, RuntimeError):
        return False


def _kind(name: str, args, kwargs) -> str:
    """``normal``, ``uniform`` (standard draws the oracle can use) or ``other``."""
    if name in KINDS:
        return KINDS[name]
    first, second = ("mean", "std") if name in ("normal", "normal_") else ("from", "to")
    low = args[0] if args else kwargs.get(first, 0.0)
    high = args[1] if len(args) > 1 else kwargs.get(second, 1.0)
    if name == "normal_" and not args:
        low, high = kwargs.get("mean", 0.0), kwargs.get("std", 1.0)
    standard = _is(low, 0.0) and _is(high, 1.0)
    return ("normal" if "normal" in name else "uniform") if standard else "other"


@contextmanager
def record_draws(torch):
    """Within the block, every draw of ``torch.randn/randn_like/rand/rand_like/normal``,
    ``Tensor.normal_/uniform_`` (what ``torch.distributions``' ``Normal``, ``MultivariateNormal``
    and ``RelaxedOneHotCategorical`` call) and ``Gumbel.rsample`` (recorded whole, standardised)
    is recorded as ``(name, kind, a detached copy)``; ``generator=`` draws too, and every
    generator seen is restored on exit, as are the patched functions."""
    draws, generators, depth = [], {}, [0]
    originals = {name: getattr(torch, name) for name in FUNCTIONS}
    methods = {name: getattr(torch.Tensor, name) for name in METHODS}
    gumbel = torch.distributions.Gumbel.rsample

    def recorded(name, fn):
        @functools.wraps(fn)
        def draw(*args, **kwargs):
            gen = kwargs.get("generator")
            if gen is not None and id(gen) not in generators:
                generators[id(gen)] = (gen, gen.get_state())
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            rest = args[1:] if name in METHODS else args
            draws.append((name, _kind(name, rest, kwargs), out.detach().clone()))
            return out
        return draw

    def gumbel_rsample(dist, sample_shape=torch.Size()):
        depth[0] += 1
        try:
            out = gumbel(dist, sample_shape)
        finally:
            depth[0] -= 1
        if not depth[0]:
            draws.append(("Gumbel.rsample", "gumbel",
                          ((out - dist.loc) / dist.scale).detach().clone()))
        return out

    try:
        for name, fn in originals.items():
            setattr(torch, name, recorded(name, fn))
        for name, fn in methods.items():
            setattr(torch.Tensor, name, recorded(name, fn))
        torch.distributions.Gumbel.rsample = gumbel_rsample
        yield draws
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        for name, fn in methods.items():
            setattr(torch.Tensor, name, fn)
        torch.distributions.Gumbel.rsample = gumbel
        for gen, state in generators.values():
            gen.set_state(state)


def noise_from_draws(draws, vae, n: int) -> np.ndarray:
    """The oracle's noise array from the recorded draws: one draw per sample of shape
    ``(N, *per-sample noise)`` (``(N, K)``; ``(N, K, C)`` or, K = 1, ``(N, C)``) stacked along the
    samples axis, or one draw with that axis; uniforms become Gumbel noise for categorical
    latents."""
    per = tuple(vae.latent.noise_shape(n, 1)[2:])
    gaussian = vae.latent.noise_name == "eps"
    kinds = ("normal",) if gaussian else ("uniform", "gumbel")
    seen = ", ".join(f"{'' if '.' in f else 'torch.'}{f} {tuple(a.shape)}"
                     + ("" if k in kinds else f" ({k})") for f, k, a in draws) or "nothing"
    what = "standard normal" if gaussian else "uniform or standard Gumbel"
    expected = (f"{what} noise of shape (N, {', '.join(map(str, per))}) = {(n,) + per} per sample "
                + ("(torch.randn_like, Normal(...).rsample, ...)" if gaussian
                   else "(torch.rand_like, RelaxedOneHotCategorical(...).rsample, Gumbel.rsample, "
                        "...)")
                + f" or one draw of shape (N, L, {', '.join(map(str, per))})")
    arrays = []
    for f, k, a in draws:
        if k not in kinds:
            continue
        arr = host(a, "a recorded draw").astype(np.float64)
        if k == "uniform":
            arr = get_backend("numpy").to_numpy(gumbel_from_uniform(get_backend("numpy"), arr))
        arrays.append(arr)
    if len(arrays) != len(draws) or not arrays:
        raise ConfigError(f"check_torch: the forward pass drew {seen}; expected {expected}. Draw "
                          "the "
                          "noise inside the forward pass; an alias imported with 'from torch "
                          "import "
                          "randn_like' is not seen")
    one = per[1:] if len(per) > 1 and per[0] == 1 else per   # K = 1: (N, C) is a sample too
    if (len(arrays) == 1 and arrays[0].ndim == len(per) + 2 and arrays[0].shape[:1]
        + arrays[0].shape[2:] == (n,) + per):
        return arrays[0]
    if all(a.shape in ((n,) + per, (n,) + one) for a in arrays):
        return np.stack([a.reshape((n,) + per) for a in arrays], axis=1)
    raise ConfigError(f"check_torch: the forward pass drew {seen}; expected {expected}")


def draw_dtypes(draws) -> set:
    """The dtypes of the recorded draws, as NumPy names (``float32``, ``float64``)."""
    return {str(a.dtype).replace("torch.", "") for _, _, a in draws}


def _targets(model, vae, layout: Layout) -> dict:
    """``{their module name: [(what to record, where, split sizes or None)]}`` for the modules the
    name map sends to refvae's heads and decoder layers."""
    # a head with a head activation: the module's output precedes it, so it is not recorded
    acts = dict(vae.config.head_activations)
    heads = {f"encoder.{h}": h for h, _ in vae.latent.heads() if h not in acts}
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
            todo.append(("x", vae.config.condition_dim, None))   # [x, c]: x is recorded
        if ours == last:
            todo.append(("decoder_out", None, None))
        if todo:
            targets[name] = todo
    return targets


def _hook(record: dict, heads: dict, todo):
    def hook(module, inputs, output):
        for what, parts, sizes in todo:
            if what == "x":
                x = inputs[0][..., :inputs[0].shape[-1] - parts] if parts else inputs[0]
                record.setdefault("x", []).append(x.detach().clone())
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


EXTRAS = ("kl", "reconstruction", "kl_per_datum", "reconstruction_per_datum", "x", "decoder_out")


def split_extras(returned) -> tuple:
    """The hook for more exports: ``loss_fn`` may return ``{"loss": loss, "kl_per_datum": ...,
    "heads/mean": ..., "x": ...}`` (any of :data:`EXTRAS` and ``heads/<name>``, detached here; they
    replace what the forward hooks recorded) instead of the loss alone."""
    if not isinstance(returned, dict):
        return returned, {}
    unknown = [k for k in returned if k != "loss" and k not in EXTRAS
               and not str(k).startswith("heads/")]
    if unknown or "loss" not in returned:
        raise ConfigError("check_torch: loss_fn returned a dict; it must hold 'loss' and "
                          "optionally "
                          f"{', '.join(EXTRAS)} or heads/<name>"
                          + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else ""))
    return returned["loss"], {k: v.detach() if hasattr(v, "detach") else v
                              for k, v in returned.items() if k != "loss"}


def run_torch(model, loss_fn, y, vae, layout: Layout) -> tuple:
    """Run the user's forward and backward: ``(params, noise, theirs)`` as host arrays or tensors;
    the model's ``.grad`` fields, the RNG state and the autograd mode are restored afterwards."""
    import torch
    params = dict(model.named_parameters())
    saved = {k: p.grad for k, p in params.items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                and torch.cuda.is_initialized() else None)
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
        loss, extras = split_extras(loss)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ConfigError("check_torch: loss_fn(model, y) must return the scalar loss tensor "
                              "your training "
                              f"code calls .backward() on, got {type(loss).__name__}"
                              + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                                 else ""))
        with torch.enable_grad():
            loss.backward()
        missing = [k for k, p in params.items() if p.grad is None]
        if missing:
            raise ConfigError("check_torch: "
                              f"parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              "got no gradient (.grad is None after backward): it does not reach "
                              "the loss "
                              "(a layer computed but unused, a wrong head, a detach) or has "
                              "requires_grad=False")
        theirs = {"loss": loss.detach().reshape(()), **_intermediates(record, torch), **extras,
                  **{f"grad/{k}": p.grad.detach().clone() for k, p in params.items()}}
        values = {k: p.detach() for k, p in params.items()}
        n = y.shape[0]
        return values, noise_from_draws(draws, vae, n), theirs, draw_dtypes(draws)
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
                backend: str = "numpy", modules=None, condition=None, scale: float = 1.0):
    """Check a live PyTorch model in one call: ``loss_fn(model, y)`` returns the scalar loss exactly
    as the user's training code computes it (for pytorch/examples' VAE: ``recon, mu, logvar =
    model(y); return loss_function(recon, y, mu, logvar)``). Returns the
    :class:`~refvae.oracle.OracleReport`; ``y`` may have any shape ``(N, ...)`` (it is flattened to
    ``(N, D)`` for refvae). Without a config it is read from the model's ``nn.Sequential``
    encoder and decoder and its Gaussian heads (:mod:`refvae.oracle.torch_modules`; ``modules``
    passes that reader's options: ``encoder``, ``decoder``, ``emission``, ``alpha``,
    ``data_shape``). A conditional VAE's ``condition`` ``c`` ``(N, condition_dim)`` is passed
    here (``loss_fn`` feeds it to the model itself); ``scale`` is the objective's factor."""
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
    params, noise, theirs, dtypes = run_torch(model, loss_fn, y, vae, lay)
    y_host = host(y, "y").reshape(y.shape[0], -1)
    batch = {"y": y_host, vae.latent.noise_name: noise}
    if condition is not None:
        batch["condition"] = host(condition, "condition")
    try:
        report = check(cfg, params, batch, theirs, estimator=estimator, reduction=reduction,
                       temperature=temperature, rtol=rtol, atol=atol, backend=backend, layout=lay,
                       scale=scale)
    except RefvaeError as exc:  # the advice in Python's words, not the CLI's
        if CLI_MAP_HINT not in str(exc):
            raise
        raise type(exc)(str(exc).replace(CLI_MAP_HINT, API_MAP_HINT)) from None
    model_dtype = {str(p.dtype).replace("torch.", "") for p in params.values()}
    if not report.passed and "float64" in model_dtype and dtypes - {"float64"} and rtol is None:
        loose = check(cfg, params, batch, theirs, estimator=estimator, reduction=reduction,
                      temperature=temperature, rtol=TOLERANCES["float32"]["rtol"],
                      atol=TOLERANCES["float32"]["atol"], backend=backend, layout=lay,
                      scale=scale)
        likely = "the likely cause: everything passes at float32's tolerances" if loose.passed \
            else "it may explain part of the difference"
        report.hints.insert(0, f"your noise was drawn in {', '.join(sorted(dtypes - {'float64'}))} "
                            f"inside a float64 model ({likely}): draw it in the model's dtype "
                            "(torch.randn_like(std), or dtype=mu.dtype)")
    return report


def assert_torch_matches(model, loss_fn, y, config=None, **kwargs):
    """:func:`check_torch`, raising :class:`~refvae.oracle.OracleMismatch` with the report when
    any tensor fails."""
    report = check_torch(model, loss_fn, y, config, **kwargs)
    if not report.passed:
        raise OracleMismatch(str(report))
    return report
