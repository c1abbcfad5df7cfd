"""What claims 9, 10 and 14 share to follow refvae's training with the PyTorch witness: the plan
of minibatches and noise drawn from one generator, and the teacher-forced comparison (the witness's
loss, gradients and optimizer update at refvae's parameters of each step).
"""
from __future__ import annotations

import numpy as np

from refvae import VAE, NoiseSource
from refvae.fast.model import fast_vae
from refvae.fast.optim import make_optimizer
from refvae.optim.rules import FlatParams
from refvae.witness.modules import grads_at, state_numpy

try:
    from validation.common import rel_tensors
except ImportError:  # run as a script from validation/
    from common import rel_tensors


def batch_plan(noise, n: int, latent_dim: int, epochs: int, batch: int):
    """``(step, idx, eps)`` of every training step, drawn from ``noise`` (a NoiseSource) in the
    order
    :func:`refvae.train.loop.train` draws them: a permutation per epoch, then minibatches of
                                                ``batch``
    rows, each with one standard-normal ``eps`` ``(B, 1, K)`` per datum."""
    step = 0
    for _ in range(epochs):
        order = noise.permutation(n)
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            yield step, idx, noise.normal((len(idx), 1, latent_dim))
            step += 1


class TeacherForced:
    """The witness (a float64 module of :mod:`refvae.witness.modules`) put at refvae's parameters
    before every step. :meth:`check` compares autograd's batch-mean loss and gradients with
    refvae's; with an ``optimizer`` (a ``torch.optim`` class name) :meth:`check_update` then takes
    torch's step from the same parameters and gradients and compares it with refvae's step. Each
    comparison keeps its largest relative difference over the steps seen."""

    def __init__(self, twin, optimizer: str | None = None, lr: float | None = None):
        import torch  # noqa: PLC0415 - the witness only

        self.twin = twin
        self.opt = (None if optimizer
                    is None else getattr(torch.optim, optimizer)(twin.parameters(), lr=lr))
        self.loss_rel = self.grad_rel = self.update_rel = 0.0
        self._before = None

    def check(self, params: dict, y, eps, *refvae_results) -> None:
        """``params`` (host arrays) are refvae's; each result has ``loss`` and host ``grads``."""
        loss, grads = grads_at(self.twin, params, y, eps)
        self._before = params
        for res in refvae_results:
            self.grad_rel = max(self.grad_rel, rel_tensors(grads, res.grads))
            self.loss_rel = max(self.loss_rel, abs(loss - res.loss) / abs(res.loss))

    def check_update(self, grads: dict, params_after: dict) -> None:
        """torch's step from the parameters of the last :meth:`check` with refvae's gradients
        ``grads`` (so that only the optimizers differ) against refvae's step to ``params_after``."""
        import torch  # noqa: PLC0415 - the witness only

        for name, p in self.twin.named_parameters():
            p.grad = torch.as_tensor(np.asarray(grads[name]), dtype=p.dtype).clone()
        self.opt.step()
        after = state_numpy(self.twin)
        theirs = {k: after[k] - self._before[k] for k in after}
        ours = {k: params_after[k] - self._before[k] for k in after}
        self.update_rel = max(self.update_rel, rel_tensors(theirs, ours))


def adam_teacher_forced(config, witness, lr: float, seed: int, data, batch: int,
                        steps: int) -> "TeacherForced":
    """The first ``steps`` steps of ``seed``'s plan (:func:`batch_plan`, one sample per datum),
    stepped by refvae's Adam on its training model's gradients, with ``witness`` (a float64 twin)
    checking the plain and the fast model and every step."""
    plain, fast = VAE(config), fast_vae(config)
    noise = NoiseSource(seed)
    flat = FlatParams.from_dict(plain.bk, plain.init_params(noise))
    opt = make_optimizer("adam", plain.bk, flat.size, lr=lr)
    teacher = TeacherForced(witness, "Adam", lr)
    for step, idx, eps in batch_plan(noise, data.n_train, plain.config.latent_dim, 1, batch):
        if step == steps:
            break
        yb = data.train[idx]
        results = [m.loss_and_grads(flat.params, yb, eps, check=False) for m in (plain, fast)]
        teacher.check(flat.to_numpy(), yb, eps, *results)
        grads = {k: plain.bk.to_numpy(v) for k, v in results[1].grads.items()}
        flat.set_grads(grads)
        opt.step(flat)
        teacher.check_update(grads, flat.to_numpy())
    return teacher
