"""A self-contained demonstration that the MLP's derivatives are right (``refvae gradcheck``)."""
from __future__ import annotations

from ..backend import BACKENDS, NoiseSource, get_backend
from ..gradcheck import check_gradients, check_hessian
from ..math.activations import ACTIVATIONS
from ..math.mlp import MLP
from ..util import budget
from ..util.checked import cli_int
from .train_args import one_of


def gradcheck_demo(activation="tanh", hidden=(16, 8), seed=0, backend="numpy", out=None) -> bool:
    """Random decoder MLP with a Gaussian surprisal ``½||o − y||²`` on a ``(N, L, K)`` batch:
    checks parameter gradients (every entry), the input gradient, and the exact input Hessian
    (full and diagonal) against central differences; prints the reports."""
    bk = get_backend(backend, "float64")
    noise = NoiseSource(seed)
    k, d = 3, 5
    sizes = (k, *hidden, d)
    n_params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    # the parameters, their gradients and the float64 copies the differences perturb, and each
    # layer's activations for the (4, 2) batch
    budget.check("--hidden (the MLP's parameters and their copies)",
                 8 * (6 * n_params + 16 * sum(sizes)), "use smaller --hidden widths")
    mlp = MLP.build("decoder", k, hidden, [("out", d)], activation)
    params = mlp.init_params(noise, bk)
    x = noise.normal((4, 2, k), bk)
    y = noise.normal((4, 2, d), bk)

    def loss(p, xx=x):
        o, _ = mlp.forward(bk, p, xx)
        return bk.to_float(0.5 * ((o - y) ** 2).sum())

    def input_grad(xx):
        o, cache = mlp.forward(bk, params, xx)
        return mlp.backward(bk, params, cache, o - y).d_input

    o, cache = mlp.forward(bk, params, x)
    back = mlp.backward(bk, params, cache, o - y)
    reports = [
        check_gradients(loss, params, back.grads),
        check_hessian(input_grad, x, mlp.input_hessian(bk, params, cache, back, 1.0, full=True),
                      name="input Hessian (full)"),
        check_hessian(input_grad, x, mlp.input_hessian(bk, params, cache, back, 1.0),
                      name="input Hessian (diagonal)"),
    ]
    for report in reports:
        print(report, file=out)
    ok = all(r.passed for r in reports)
    print(f"MLP {k}-{'-'.join(map(str, hidden))}-{d} ({activation}): {'PASS' if ok else 'FAIL'}",
          file=out)
    return ok


def _cmd_gradcheck(args) -> int:
    return 0 if gradcheck_demo(args.activation, args.hidden, args.seed, args.backend) else 1


def register(sub) -> None:
    """``refvae gradcheck``."""
    p = sub.add_parser("gradcheck", help="check the MLP's hand-derived gradients and input Hessian "
                                         "against central finite differences")
    p.add_argument("--activation", default="tanh", metavar=one_of(ACTIVATIONS),
                   help="hidden activation (default: tanh)")
    p.add_argument("--hidden", type=cli_int(1), nargs="*", default=[16, 8],
                   help="hidden layer widths (default: 16 8)")
    p.add_argument("--seed", type=cli_int(0), default=0, help="random seed (default: 0)")
    p.add_argument("--backend", default="numpy", metavar=one_of(BACKENDS),
                   help="array library (default: numpy)")
    p.set_defaults(func=_cmd_gradcheck)
