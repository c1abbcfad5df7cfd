"""The anomaly detector of ``--detect-anomaly`` (``detect_anomaly=True`` in the API): every
intermediate of a reverse pass, in the order computed, and the first one holding a NaN or inf.
"""
from __future__ import annotations

from ..errors import NonFiniteError


def intermediates(rp: ReversePass, estimator: str):
    """``(name, value)`` of every intermediate of :meth:`VAE.reverse_pass`, in the order
    computed."""
    fp = rp.fp
    yield from ((f"encoder head {h!r}", v) for h, v in fp.heads.items())
    yield from [("latent sample x", fp.state.x), ("decoder output", fp.dec_out),
                ("KL per datum", fp.kl),
                ("reconstruction surprisal f", fp.f), ("∂f/∂(decoder output)", fp.terms.df_do)]
    yield from ((f"gradient of {name}", value) for name, value in rp.dec_grads.items())
    yield "∂f/∂x (decoder input gradient)", rp.dec_back.d_input
    for h in fp.heads:
        yield f"{estimator} gradient of encoder head {h!r}", rp.estimator_grads[h]
        yield f"KL gradient of encoder head {h!r}", rp.kl_grads[h]
    yield from ((f"gradient of {name}", value) for name, value in rp.enc_grads.items())


def first_anomaly(bk, named_values) -> None:
    """Raise :class:`NonFiniteError` naming the first ``(name, value)`` with a NaN or inf."""
    for name, value in named_values:
        if value is not None and not bool(bk.xp.isfinite(value).all()):
            bad = int((~bk.xp.isfinite(value)).sum())
            raise NonFiniteError(f"anomaly: {name} is the first intermediate with non-finite "
                                 "values "
                                 f"({bad} of {value.size} entries are NaN or inf)")
