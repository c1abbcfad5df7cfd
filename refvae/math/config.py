"""The model configuration: the architecture fields of ORACLE.md's ``config.json`` (format 1).

Every field is validated on construction; a missing, unknown or invalid field is a
:class:`~refvae.errors.ConfigError` naming the field and what it accepts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .emission import EMISSIONS
from ..util import budget
from ..errors import ConfigError
from ..util.checked import checked
from .latent.categorical import KL_KINDS as CATEGORICAL_KL
from .activations import ACTIVATIONS
from .latent.gaussian import KL_FORMS, SCALE_HEADS
from . import networks

FORMAT = 1          # the MLP's format; format 2 adds the layer lists (refvae.math.networks)
LATENTS = ("gaussian", "gaussian_full", "categorical")
REQUIRED = ("data_dim", "latent_dim")
# Fields added after format 1's first release: written only when they differ from their default,
# so a format-1 file stays as it was
# (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning).
LATER_DEFAULTS = (("scale_head", "logvar"), ("scale_floor", 0.0), ("head_activations", ()),
                  ("kl", "analytic"), ("condition_dim", 0))


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a VAE (ORACLE.md). ``encoder_hidden``/``decoder_hidden`` may be empty
    (linear maps). ``alpha`` is the fixed variance of the ``gaussian`` emission, or the initial
    value of the learned one (``learn_alpha``). ``categories`` is the number of classes of each
    of the ``latent_dim`` variables when ``latent == "categorical"``; its KL term is the analytic
    KL of the discrete distributions (``categorical_kl = "analytic"``) or, for relaxed samples, the
    one-sample relaxed KL of Maddison et al. 2017 against a concrete prior at ``prior_temperature``
    (``"relaxed"``; default: the sampling temperature).

    Model forms (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning):
    ``scale_head`` is how the ``gaussian`` latent's head ``logvar`` gives the scale υ (``logvar``,
    ``log_std``, ``softplus_std``, ``softplus_var``; ``scale_floor`` ≥ 0 is added by the softplus
    forms); ``head_activations`` maps an encoder head to an activation applied to it elementwise
    (a dict in JSON, kept as sorted ``(head, activation)`` pairs); ``kl`` is ``analytic`` or
    ``monte_carlo`` for the Gaussian latents (a planar flow's KL is Monte Carlo under either);
    ``condition_dim`` C > 0 makes the VAE conditional: ``[y, c]`` enters the encoder and ``[x, c]``
    the decoder."""

    data_dim: int
    latent_dim: int
    encoder_hidden: tuple = (400,)
    decoder_hidden: tuple = (400,)
    activation: str = "relu"
    latent: str = "gaussian"
    emission: str = "bernoulli"
    alpha: float = 1.0
    learn_alpha: bool = False
    categories: int | None = None
    categorical_kl: str = "analytic"
    prior_temperature: float | None = None
    flow_length: int = 0
    scale_head: str = "logvar"
    scale_floor: float = 0.0
    head_activations: tuple = ()
    kl: str = "analytic"
    condition_dim: int = 0
    # format 2: sequential networks (refvae.math.networks; docs/ORACLE.md)
    data_shape: tuple | None = None
    encoder_layers: tuple | None = None
    decoder_layers: tuple | None = None
    decoder_heads: str | None = None
    format: int | None = None   # 1 or 2; inferred from the fields used when not given

    def __post_init__(self):
        _positive_int("data_dim", self.data_dim)
        _positive_int("latent_dim", self.latent_dim)
        for name in ("encoder_hidden", "decoder_hidden"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"config field {name!r} must be a list of layer widths, "
                                  f"got {value!r}")
            widths = tuple(_positive_int(f"{name} entry", w) for w in value)
            object.__setattr__(self, name, widths)
        for name, choices in (("activation", ACTIVATIONS), ("latent", LATENTS),
                              ("emission", EMISSIONS),
                              ("categorical_kl", CATEGORICAL_KL)):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"config field {name!r} must be a string, one of "
                                  f"{', '.join(choices)}; got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"config field 'activation' is {self.activation!r}; "
                              f"choose one of {', '.join(ACTIVATIONS)}")
        if self.latent not in LATENTS:
            raise ConfigError(f"config field 'latent' is {self.latent!r}; choose one "
                              f"of {', '.join(LATENTS)}")
        if self.emission not in EMISSIONS:
            raise ConfigError(f"config field 'emission' is {self.emission!r}; "
                              f"choose one of {', '.join(EMISSIONS)}")
        checked(self.alpha, "config field 'alpha'", minimum=0, open_min=True)
        if not isinstance(self.learn_alpha, bool):
            raise ConfigError("config field 'learn_alpha' must be true or false, "
                              f"got {self.learn_alpha!r}")
        for name, (applies, where) in FIELD_APPLIES.items():
            # alpha is kept (not refused) in a config: config.json always records it
            if name != "alpha" and getattr(self, name) != _DEFAULTS[name] and not applies(self):
                raise ConfigError(f"config field {name!r} applies only to {where}")
        if self.latent == "categorical":
            if self.categories is None:
                raise ConfigError("latent 'categorical' needs the field 'categories' (classes per "
                                  "variable)")
            _positive_int("categories", self.categories, minimum=2)
        if self.categorical_kl not in CATEGORICAL_KL:
            raise ConfigError(f"config field 'categorical_kl' is {self.categorical_kl!r}; "
                              f"choose one of {', '.join(CATEGORICAL_KL)}")
        if self.categorical_kl != "analytic" and self.latent != "categorical":
            raise ConfigError("config field 'categorical_kl' applies only to latent 'categorical'")
        if self.prior_temperature is not None:
            if self.categorical_kl != "relaxed":
                raise ConfigError("config field 'prior_temperature' applies only to categorical_kl "
                                  "'relaxed'")
            checked(self.prior_temperature, "config field 'prior_temperature'", minimum=0,
                    open_min=True)
        _positive_int("flow_length", self.flow_length, minimum=0)
        self._check_forms()
        networks.normalise(self)
        if self.format == 2:
            if self.condition_dim:
                raise ConfigError("config field 'condition_dim' applies only to MLP networks "
                                  "(format 1); layer lists take no condition")
            networks.check_networks(self, self._encoder_width(), self._emission_heads())
        budget.check("the model's parameters, gradients and optimizer state",
                     8 * 4 * self.n_params(),
                     "use smaller widths or dimensions")

    def _check_forms(self) -> None:
        """The model-form fields, each refused in one line."""
        for name, choices in (("scale_head", SCALE_HEADS), ("kl", KL_FORMS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(f"config field {name!r} is {value!r}; "
                                  f"choose one of {', '.join(choices)}")
        if self.scale_head != "logvar" and self.latent != "gaussian":
            raise ConfigError(f"config field 'scale_head' applies only to latent 'gaussian' (the "
                              f"{self.latent} latent has its own scale parameterization)")
        floor = checked(self.scale_floor, "config field 'scale_floor'", minimum=0)
        object.__setattr__(self, "scale_floor", float(floor))
        if floor and not self.scale_head.startswith("softplus"):
            raise ConfigError("config field 'scale_floor' applies only to scale_head "
                              "'softplus_std' or 'softplus_var'")
        if self.kl != "analytic" and self.latent == "categorical":
            raise ConfigError("config field 'kl' applies only to the Gaussian latents; a "
                              "categorical latent's KL is chosen by 'categorical_kl'")
        _positive_int("condition_dim", self.condition_dim, minimum=0)
        acts = self.head_activations
        pairs = acts.items() if isinstance(acts, dict) else acts
        if isinstance(acts, (str, bytes)) or not hasattr(pairs, "__iter__"):
            raise ConfigError(f"config field 'head_activations' must map encoder heads to "
                              f"activations, got {acts!r}")
        pairs = [tuple(p) if isinstance(p, (tuple, list)) else (p,) for p in pairs]
        heads = [h for h, _ in self.encoder_heads()]
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in heads:
                raise ConfigError(f"config field 'head_activations' names {pair[0]!r}, not an "
                                  f"encoder head of this model; choose among {', '.join(heads)}")
            if not isinstance(pair[1], str) or pair[1] not in ACTIVATIONS:
                raise ConfigError(f"config field 'head_activations' gives head {pair[0]!r} the "
                                  f"activation {pair[1]!r}; choose one of {', '.join(ACTIVATIONS)}")
        object.__setattr__(self, "head_activations", tuple(sorted(dict(pairs).items())))

    def encoder_heads(self) -> list[tuple[str, int]]:
        """The encoder's heads ``(name, width)`` in order (those of :func:`make_latent`'s model)."""
        k, t = self.latent_dim, self.flow_length
        if self.latent == "categorical":
            return [("logits", k * (self.categories or 1))]
        if self.latent == "gaussian_full":
            return [("mean", k), ("scale_tril", k * (k + 1) // 2)]
        flow = [("flow_u", t * k), ("flow_w", t * k), ("flow_b", t)] if t else []
        return [("mean", k), ("logvar", k), *flow]

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        """Build from a ``config.json`` mapping; unknown fields are an error (a typo must not be
        silently ignored)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(map(repr, unknown))}; "
                              f"known fields: {', '.join(sorted(known))}")
        networks.refuse_both(d)
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"config is missing the field(s) {', '.join(map(repr, missing))}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_hidden"] = list(self.encoder_hidden)
        d["decoder_hidden"] = list(self.decoder_hidden)
        d["head_activations"] = dict(self.head_activations)
        for name, default in (("categories", None), ("categorical_kl", "analytic"),
                              ("prior_temperature", None), *LATER_DEFAULTS):
            if d[name] == default or (name == "head_activations" and not d[name]):
                d.pop(name)
        return networks.format2_dict(self, d)

    def n_params(self) -> int:
        """An upper estimate of the number of parameters (weights and biases of both networks)."""
        heads = self._encoder_width()
        if self.format == 2:
            return sum(map(networks.n_params, networks.check_networks(
                self, heads, self._emission_heads()))) + 1
        out = self.data_dim * (2 if self.emission == "gaussian_diag" else 1) + 1
        n, c = 0, self.condition_dim
        for widths, first, last in ((self.encoder_hidden, self.data_dim + c, heads),
                                    (self.decoder_hidden, self.decoder_in + c, out)):
            sizes = (first, *widths, last)
            n += sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
        return n

    def _encoder_width(self) -> int:
        return sum(width for _, width in self.encoder_heads())

    def _emission_heads(self) -> list:
        return [("out", self.data_dim)] + ([("logvar", self.data_dim)]
                                           if self.emission == "gaussian_diag" else [])

    def activation_sizes(self) -> tuple[list, list]:
        """Per-datum sizes of the intermediates the encoder and the decoder keep
        (:func:`refvae.math.networks.activation_sizes`)."""
        if self.format == 1:
            return list(self.encoder_hidden), list(self.decoder_hidden)
        enc, dec = networks.check_networks(self, self._encoder_width(), self._emission_heads())
        return networks.activation_sizes(enc), networks.activation_sizes(dec)

    def batch_bytes(self, rows: int, samples: int = 1, estimator=None) -> int:
        """The bytes a pass over ``rows`` data with ``samples`` each takes at most: the networks'
        activations and caches (:meth:`activation_sizes`), and every term of the latent and the
        ``estimator`` that grows faster than K — the full-covariance latent's per-datum K×K
        factor, its inverse and their gradients, and Price's per-sample Hessians (float64
        entries, twice for the temporaries)."""
        k = self.latent_dim * (self.categories or 1)
        enc, dec = self.activation_sizes()
        per_sample = 2 * self.data_dim + 4 * k + sum(dec) * 3
        per_row = 2 * self.data_dim + self.condition_dim + sum(enc) * 3 + 4 * k
        if self.latent == "gaussian_full":
            per_row += 4 * k * k                 # L, its inverse, and their gradients
            if estimator == "price":
                per_sample += 2 * k * k          # each sample's K×K Hessian and its product
        elif estimator == "price":
            per_sample += 2 * k                  # the diagonal Hessian
        return 8 * 2 * int(rows) * (per_row + int(samples) * per_sample)

    def check_batch(self, field: str, rows: int, samples: int = 1, estimator=None) -> None:
        """Refuse (:class:`~refvae.errors.BudgetError`) a pass over ``rows`` data with ``samples``
        each that would not fit the memory budget (:meth:`batch_bytes`)."""
        budget.check(field, self.batch_bytes(rows, samples, estimator),
                     f"use a smaller {field.split()[0]}"
                     + (" or latent_dim (the full-covariance latent keeps K×K per datum)"
                        if self.latent == "gaussian_full" else ""))

    @property
    def decoder_in(self) -> int:
        """Width of the decoder's input: K, or K·C for a categorical latent (flattened
        one-hots)."""
        return self.latent_dim * (self.categories or 1)


# The fields that apply to some models only: field -> (applies(config), where). A field that does
# not apply is refused (by VAEConfig when it differs from its default, except alpha, which every
# config.json records; by the CLI when its flag is given at all) instead of being silently ignored.
FIELD_APPLIES = {
    "alpha": (lambda c: c.emission == "gaussian", "emission 'gaussian'"),
    "learn_alpha": (lambda c: c.emission == "gaussian", "emission 'gaussian'"),
    "categories": (lambda c: c.latent == "categorical", "latent 'categorical'"),
    "flow_length": (lambda c: c.latent == "gaussian", "latent 'gaussian'"),
}
_DEFAULTS = {"alpha": 1.0, "learn_alpha": False, "categories": None, "flow_length": 0}


def check_fields_apply(config: "VAEConfig", given) -> None:
    """Refuse a field in ``given`` (names the user set, e.g. by a CLI flag) that does not apply to
    ``config`` (:data:`FIELD_APPLIES`), named as its flag."""
    for name in given:
        if name in FIELD_APPLIES and not FIELD_APPLIES[name][0](config):
            raise ConfigError(f"--{name.replace('_', '-')} applies only to "
                              f"{FIELD_APPLIES[name][1]}, not to this model (emission "
                              f"{config.emission!r}, latent {config.latent!r}); drop it or change "
                              "the model")


def _positive_int(name, value, minimum: int = 1) -> int:
    return checked(value, f"config field {name!r}", integer=True, minimum=minimum)
