"""Claim 14: a small convolutional VAE on MNIST (config format 2), trained by refvae and by an
independent PyTorch twin, ends alike; claim 9's paired design (:mod:`validation.teacher`).

The model: encoder ``Conv2d(1→4, 4, stride 2, pad 1) → ReLU → Conv2d(4→8, 4, 2, 1) → ReLU
→ Flatten`` with linear heads (K = 4); decoder ``Linear(4→392) → ReLU → Unflatten(8, 7, 7)
→ ConvTranspose2d(8→4, 4, 2, 1) → ReLU → ConvTranspose2d(4→1, 4, 2, 1)`` whose output is
the Bernoulli logits (``decoder_heads: "body"``); greyscale MNIST in [0, 1], Adam 1e-3.

1. Equivalence: for each seed refvae trains with its own loop (:func:`refvae.train.loop.train`,
   float64, its training model) and the twin (:func:`refvae.witness.conv.make_conv_vae`: torch's
   ``nn.Conv2d``/``nn.ConvTranspose2d``, float32, autograd, ``torch.optim.Adam``) from the same
   initial parameters on the same minibatches with the same noise; both test losses use the same
   noise. The 99.9 % t-interval of the mean paired difference must lie inside ±1 nat (the band of
   claim 9: paired runs differ through arithmetic only; a wrong term moves the loss by nats).
2. Teacher-forced: along the first steps of one seed's plan the float64 twin at refvae's
   parameters gives the same batch loss and gradients as refvae's plain and training models, and
   ``torch.optim.Adam`` fed refvae's gradients takes refvae's step, within 1e-10 relative.
3. The float64 twin's test loss at refvae's trained parameters equals refvae's reported one.
"""
from __future__ import annotations

import tempfile

import numpy as np

from refvae import NoiseSource
from refvae.fast.model import fast_vae
from refvae.math.config import VAEConfig
from refvae.train.loop import TrainOptions, load_run, train
from refvae.witness import torch_or_none
from refvae.witness.conv import make_conv_vae
from refvae.witness.modules import PlanTrainer, load_refvae_params, mean_neg_elbo

try:
    from validation.claim09_pytorch_examples import (eval_noise, paired_failures, paired_interval,
                                                   witness_scores)
    from validation.common import Claim, Context, main, skipped
    from validation.mnist_models import greyscale_mnist, single_threaded
    from validation.teacher import TeacherForced, adam_teacher_forced, batch_plan
except ImportError:  # pragma: no cover - run as a script from validation/
    from claim09_pytorch_examples import (eval_noise, paired_failures, paired_interval,
                                          witness_scores)
    from common import Claim, Context, main, skipped
    from mnist_models import greyscale_mnist, single_threaded
    from teacher import TeacherForced, adam_teacher_forced, batch_plan

TITLE = "A convolutional VAE on MNIST (config format 2): refvae and a PyTorch twin train it alike"
SOURCE = ("the convolutional VAE of popular PyTorch repositories (Conv2d encoder, linear Gaussian "
          "heads, ConvTranspose2d decoder), at a size two cores train in seconds")
FULL_MODE = "about 10 min (5,000/1,000 MNIST, 2 epochs, 5 paired seeds); estimated"
LATENT, BATCH, LR = 4, 64, 1e-3
SPEC = {
    "data_dim": 784, "latent_dim": LATENT, "data_shape": [1, 28, 28], "decoder_heads": "body",
    "encoder_layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 4, "stride": 2, "padding": 1},
        {"type": "relu"},
        {"type": "conv2d", "out_channels": 8, "kernel_size": 4, "stride": 2, "padding": 1},
        {"type": "relu"}, {"type": "flatten"}],
    "decoder_layers": [
        {"type": "linear", "out_features": 392}, {"type": "relu"},
        {"type": "unflatten", "shape": [8, 7, 7]},
        {"type": "conv_transpose2d", "out_channels": 4, "kernel_size": 4, "stride": 2,
         "padding": 1}, {"type": "relu"},
        {"type": "conv_transpose2d", "out_channels": 1, "kernel_size": 4, "stride": 2,
         "padding": 1}, {"type": "flatten"}]}
CONFIG = VAEConfig.from_dict(SPEC)
MARGIN, CONFIDENCE, TOL = 1.0, 0.999, 1e-10
TEACHER_STEPS = 3


def setting(quick: bool) -> dict:
    """Quick (≤ 60 s on two cores): 768/500 images, one epoch (12 steps), 3 paired seeds."""
    return dict(n_train=768, n_test=500, epochs=1, seeds=3) if quick else \
        dict(n_train=5000, n_test=1000, epochs=2, seeds=5)


def run(ctx: Context) -> Claim:
    s = setting(ctx.quick)
    data = greyscale_mnist(ctx, s["n_train"], s["n_test"])
    if data is None:
        return skipped(TITLE, SOURCE, "no MNIST (IDX files) in the data directory")
    torch = torch_or_none()
    if torch is None:
        return skipped(TITLE, SOURCE, "PyTorch is not installed (the twin)")
    with single_threaded():
        return _run(ctx, s, data, torch)


def refvae_run(seed: int, data, epochs: int) -> tuple[float, dict]:
    options = TrainOptions(epochs=epochs, batch_size=BATCH, lr=LR, optimizer="adam", seed=seed,
                           progress=False)
    with tempfile.TemporaryDirectory(prefix="refvae-claim14-") as out:
        final = [r["test_neg_elbo"] for r in train(CONFIG, options, data, out)][-1]
        _, params, _ = load_run(out)
    return final, {k: np.asarray(v) for k, v in params.items()}


def twin_run(torch, vae, seed: int, data, epochs: int) -> float:
    """The float32 twin from refvae's initial parameters, on refvae's minibatches and noise."""
    noise = NoiseSource(seed)
    twin = make_conv_vae(SPEC, dtype=torch.float32)
    load_refvae_params(twin, {k: vae.bk.to_numpy(v) for k, v in vae.init_params(noise).items()})
    trainer = PlanTrainer(twin, "adam", LR)
    for _, idx, eps in batch_plan(noise, data.n_train, LATENT, epochs, BATCH):
        trainer.step(data.train[idx], eps)
    return mean_neg_elbo(twin, data.test, eval_noise(vae, seed, epochs, data.n_test))


def teacher_forced(torch, data, seed: int) -> TeacherForced:
    """The first :data:`TEACHER_STEPS` steps of ``seed``'s plan, stepped by refvae's Adam on its
    training model's gradients, with the witness checking both refvae models and the step."""
    witness = make_conv_vae(SPEC, dtype=torch.float64)
    return adam_teacher_forced(CONFIG, witness, LR, seed, data, BATCH, TEACHER_STEPS)


def _run(ctx: Context, s: dict, data, torch) -> Claim:
    vae = fast_vae(CONFIG)
    seeds = [ctx.seed + i for i in range(s["seeds"])]
    runs = [refvae_run(seed, data, s["epochs"]) for seed in seeds]
    ref = np.array([r for r, _ in runs])
    twin = np.array([twin_run(torch, vae, seed, data, s["epochs"]) for seed in seeds])
    scorer = make_conv_vae(SPEC, dtype=torch.float64)
    witness, score_rel = witness_scores(scorer, vae, seeds, runs, ref, data, s["epochs"])
    teacher = teacher_forced(torch, data, ctx.seed)
    diff = ref - twin
    lo, hi = paired_interval(diff)
    failed = paired_failures(lo, hi, score_rel, teacher, MARGIN, TOL)
    scale = (f"{data.n_train} train / {data.n_test} test, {s['epochs']} epoch(s), batch {BATCH}, "
             f"{len(seeds)} paired seeds")
    rows = [[seed, ref[i], twin[i], diff[i], witness[i]] for i, seed in enumerate(seeds)]
    return Claim(
        TITLE, SOURCE, not failed,
        f"{scale}. Final test loss: refvae {ref.mean():.3f}, the float32 PyTorch twin "
        f"{twin.mean():.3f}; refvae − twin {diff.mean():+.4f} nats, {CONFIDENCE:.1%} interval "
        f"[{lo:+.4f}, {hi:+.4f}]. The float64 twin's loss at refvae's trained parameters equals "
        f"refvae's to {score_rel:.1e} relative. Teacher-forced over {TEACHER_STEPS} Adam steps: "
        f"losses {teacher.loss_rel:.1e}, gradients {teacher.grad_rel:.1e}, Adam steps "
        f"{teacher.update_rel:.1e} relative" + (f"; failed: {', '.join(failed)}" if failed else ""),
        threshold=(f"the {CONFIDENCE:.1%} t-interval of the mean paired difference inside "
                   f"±{MARGIN:g} nat; the twin's score of refvae's parameters and the "
                   f"teacher-forced losses, gradients and Adam steps within {TOL:g} relative"),
        tables=[("Final test loss per seed (nats per datum, the same test noise in every column)",
                 ["seed", "refvae", "PyTorch twin (float32)", "refvae − twin",
                  "twin (float64) at refvae's parameters"], rows)])


if __name__ == "__main__":
    raise SystemExit(main(run))
