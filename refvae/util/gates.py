"""The gates of the model's inputs at the API boundary: parameters, batch, noise and the data's
support, each refused in one line naming the input and the fix (:class:`~refvae.errors.DataError`,
:class:`~refvae.errors.ShapeError`, :class:`~refvae.errors.NonFiniteError`). The mathematics
(:mod:`refvae.math`) trusts its inputs; :meth:`refvae.math.vae.VAE.loss_and_grads` calls these
first unless its caller has already checked.
"""
from __future__ import annotations

from ..backend import DeviceNoise, NoiseSource, array_module
from . import budget
from .checked import checked
from ..errors import (ConfigError, DataError, NonFiniteError, ShapeError, name_mismatch,
                      shape_mismatch)

# The support of each emission of refvae.math.emission (None: the real line).
SUPPORT = {"bernoulli": (0.0, 1.0), "gaussian": None, "gaussian_diag": None}


def numeric(bk, a, what: str):
    """``a`` as an array of the working dtype, or a DataError naming ``what`` (strings, objects)."""
    try:
        return bk.asarray(a)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not numeric ({exc}); pass an array of numbers") from None


def check_draw(model, source, n, samples) -> tuple[int, int]:
    """The arguments of :meth:`VAE.draw_noise <refvae.math.vae.VAE.draw_noise>`: a refvae noise
    source, ``n ≥ 0`` data and ``samples ≥ 1``, within the memory budget; returns
    ``(n, samples)``."""
    if not isinstance(source, (NoiseSource, DeviceNoise)):
        raise ConfigError(f"draw_noise needs a refvae NoiseSource, got "
                          f"{type(source).__name__}; pass NoiseSource(seed)")
    n = checked(n, "draw_noise n (data)", integer=True, minimum=0)
    samples = checked(samples, "draw_noise samples", integer=True, minimum=1)
    budget.check_array("the noise (n × samples × latent width)",
                       (n, samples, model.config.decoder_in), 8, hint="draw fewer at once")
    return n, samples


def check_params(model, params: dict) -> dict:
    """Names, shapes and finiteness of ``params`` for ``model``; returns them as arrays of the
    working dtype."""
    shapes = model.param_shapes()
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise ShapeError(f"parameters do not match the config: {name_mismatch(missing, extra)}")
    out = {}
    for name, shape in shapes.items():
        arr = numeric(model.bk, params[name], f"parameter {name}")
        if tuple(arr.shape) != tuple(shape):
            raise ShapeError("parameter " + shape_mismatch(name, arr.shape, shape))
        if not bool(model.bk.xp.isfinite(arr).all()):
            raise NonFiniteError(f"parameter {name} contains NaN or inf")
        out[name] = arr
    return out


def check_batch(model, y, noise):
    """``y`` ``(N, D)`` finite and in the emission's support; noise shaped for the latent kind."""
    c, latent = model.config, model.latent
    y = numeric(model.bk, y, "y")
    if y.ndim != 2 or y.shape[1] != c.data_dim:
        raise ShapeError(f"y has shape {tuple(y.shape)}, expected (N, {c.data_dim})")
    check_support(y, c.emission, "y")
    noise = numeric(model.bk, noise, f"noise {latent.noise_name!r}")
    expected = latent.noise_shape(y.shape[0], noise.shape[1] if noise.ndim > 1 else 0)
    if noise.ndim != len(expected) or tuple(noise.shape) != tuple(expected) or noise.shape[1] < 1:
        pattern = "(N, L, " + ", ".join(map(str, latent.noise_shape(0, 0)[2:])) + ")"
        raise ShapeError(f"noise {latent.noise_name!r} has shape {tuple(noise.shape)}, expected "
                         f"{pattern} for latent {c.latent!r} and N = {y.shape[0]}")
    if not bool(model.bk.xp.isfinite(noise).all()):
        raise DataError(f"noise {latent.noise_name!r} contains NaN or inf")
    return y, noise


def check_condition(model, condition, n: int):
    """The conditional VAE's condition ``c``: ``(N, condition_dim)``, numeric and finite, given
    exactly when ``condition_dim`` > 0 (``None`` otherwise); returned as a working-dtype array."""
    c = model.config.condition_dim
    if condition is None:
        if c:
            raise ShapeError(f"this VAE is conditional (condition_dim {c}): pass condition, an "
                             f"(N, {c}) array")
        return None
    if not c:
        raise ShapeError("condition given, but this VAE takes none (condition_dim 0)")
    condition = numeric(model.bk, condition, "condition")
    if condition.ndim != 2 or tuple(condition.shape) != (n, c):
        raise ShapeError(f"condition has shape {tuple(condition.shape)}, expected ({n}, {c})")
    if not bool(model.bk.xp.isfinite(condition).all()):
        raise DataError("condition contains NaN or inf")
    return condition


def _first_index(mask, shape) -> tuple[int, int]:
    xp = array_module(mask)
    flat = int(xp.argmax(mask.reshape(-1)))
    return divmod(flat, shape[1])


def check_support(y, emission: str, name: str = "data") -> None:
    """Check that ``y`` (``(n, D)``, host or device) is valid data for ``emission``.

    Every emission needs a non-empty array of finite values; ``bernoulli`` also needs every value
    in [0, 1]. Raises :class:`~refvae.errors.DataError` naming the count and the first bad entry.
    """
    if emission not in SUPPORT:
        raise ConfigError(f"unknown emission {emission!r}; choose one of {', '.join(SUPPORT)}")
    xp = array_module(y)
    y = xp.asarray(y)
    shape = tuple(y.shape)
    if len(shape) != 2:
        raise ShapeError(f"{name} has shape {shape}; give a 2-D array with one datum per row")
    if 0 in shape:
        raise DataError(f"{name} is empty (shape {shape}); check the file or the split")
    bad = ~xp.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        r, c = _first_index(bad, shape)
        raise DataError(f"{name} has {n_bad} non-finite values (NaN or inf), first at row {r}, "
                        f"column {c}; remove or impute them")
    if emission == "bernoulli":
        out = (y < 0) | (y > 1)
        n_out = int(out.sum())
        if n_out:
            r, c = _first_index(out, shape)
            raise DataError(f"bernoulli emission needs {name} in [0, 1] (its support), but values "
                            f"outside [0, 1] occur: {n_out} values lie outside, first at row {r}, "
                            f"column {c} (value {float(y[r, c]):g}); "
                            "rescale to [0, 1] (8-bit images: divide by 255) or use a gaussian "
                            "emission")
