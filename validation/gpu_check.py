"""The Python parts of ``validation/gpu_check.sh`` (issue 28), each a subcommand printing a line per
result and exiting non-zero on a failure:

* ``correctness`` — loss and every gradient of the training step on CuPy float64 (the flat-buffer
  fast path, and the plain model) against NumPy float64's plain model, within 1e-9 of each tensor's
  largest entry, over latent × estimator × emission × activation;
* ``oracle`` — the oracle run in float64 on the GPU: ``oracle.check`` on device arrays and
  ``oracle.check_torch`` on a PyTorch CUDA model in the style of pytorch/examples;
* ``train`` — a short ``train()`` on CuPy against the same run on NumPy (metrics and checkpoints);
* ``syncs`` — device→host synchronisations per training step, counted with CuPy's own guard
  (``cupyx.allow_synchronize(False)`` raises on any synchronisation that is not the one counted
  read of the loss).

``correctness`` also runs on the strict CuPy stand-in (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from refvae import NoiseSource, oracle
from refvae.backend import Backend, get_backend
from refvae.data.load import load_dataset
from refvae.data.dataset import Dataset
from refvae.errors import ConfigError
from refvae.fast.model import fast_vae
from refvae.fast.step import fused, loss_and_grads_into
from refvae.math.config import VAEConfig
from refvae.math.estimators import estimators_for
from refvae.math.vae import VAE
from refvae.optim.rules import FlatParams

RTOL = 1e-9
LATENTS = {"gaussian": {}, "gaussian_full": {"latent": "gaussian_full"},
           "flows": {"flow_length": 2},
           "categorical": {"latent": "categorical", "latent_dim": 2, "categories": 3}}
EMISSIONS = {"bernoulli": {}, "gaussian": {"emission": "gaussian", "learn_alpha": True},
             "gaussian_diag": {"emission": "gaussian_diag"}}
ACTIVATIONS = ("relu", "tanh", "softplus", "silu")


def close(got, want) -> bool:
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=RTOL, atol=RTOL * scale))


def cases():
    VAE(VAEConfig(data_dim=2, latent_dim=1, latent="categorical", categories=2))  # its estimators
    for latent, lx in LATENTS.items():
        for estimator in estimators_for(lx.get("latent", "gaussian")):
            for emission, ex in EMISSIONS.items():
                for act in ACTIVATIONS:
                    yield f"{latent}/{estimator}/{emission}/{act}", estimator, {
                        "data_dim": 7, "latent_dim": 3, "encoder_hidden": (6,),
                        "decoder_hidden": (5,), "activation": act, **lx, **ex}


def correctness(out=print) -> int:
    """Each case: NumPy's plain model against CuPy's fast path and CuPy's plain model."""
    failures = total = 0
    for name, estimator, cfg in cases():
        host, plain_dev, dev = VAE(cfg), VAE(cfg, "cupy"), fast_vae(cfg, "cupy")
        noise = NoiseSource(11)
        params = host.init_params(noise)
        y = noise.uniform((6, 7)) if cfg.get("emission") is None else noise.normal((6, 7))
        eps = host.draw_noise(noise, 6, 4)
        t = 0.7 if cfg.get("latent") == "categorical" else None
        try:
            ref = host.loss_and_grads(params, y, eps, estimator, temperature=t)
        except ConfigError:
            continue  # refused on every backend (tests/test_on_strict_cupy.py checks that)
        bk = dev.bk
        flat = FlatParams.from_dict(bk, {k: bk.asarray(v) for k, v in params.items()})
        got = loss_and_grads_into(dev, flat.params, bk.asarray(y), bk.asarray(eps), flat.grads,
                                  flat.grad, estimator, temperature=t)
        plain = plain_dev.loss_and_grads(flat.params, y, eps, estimator, temperature=t)
        bad = [k for k in ref.grads for res in (got, plain)
               if not close(bk.to_numpy(res.grads[k]), ref.grads[k])]
        bad += [f"loss ({what})" for what, res in (("fast", got), ("plain", plain))
                if not close([res.loss, res.kl, res.reconstruction],
                             [ref.loss, ref.kl, ref.reconstruction])]
        total += 1
        failures += bool(bad)
        kind = "fused" if fused(dev, estimator) else "plain pass"
        out(f"{'FAIL' if bad else 'ok  '} {name} ({kind}){': ' + ', '.join(bad) if bad else ''}")
    out(f"correctness: {total - failures} of {total} cases within {RTOL} (CuPy float64 vs NumPy)")
    return int(failures > 0 or total == 0)


def oracle_check(out=print) -> int:
    import torch  # noqa: PLC0415 - the GPU image has CUDA PyTorch

    sys.path.insert(0, "tests")
    import examples_vae as ex  # noqa: PLC0415 - pytorch/examples' VAE, as the tests use it

    torch.manual_seed(0)
    model = ex.VAE().double().cuda()
    y = torch.rand(64, 784, dtype=torch.float64, device="cuda")
    report = oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES,
                                reduction="sum", backend="cupy")
    out(f"oracle check_torch (CUDA float64 tensors, CuPy oracle): "
        f"{'PASS' if report.passed else 'FAIL'}")
    return int(not report.passed)


def train_check(out=print) -> int:
    from refvae.train.loop import TrainOptions, train  # noqa: PLC0415

    data = load_dataset("digits")
    data = Dataset("digits-small", data.train[:512], data.test[:128], data.image_shape, data.kind)
    cfg = VAEConfig(data_dim=64, latent_dim=2, encoder_hidden=(64,), decoder_hidden=(64,),
                    activation="relu")
    opts = TrainOptions(epochs=2, batch_size=64, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [train(cfg, opts, data, f"{tmp}/{b}", backend=b) for b in ("cupy", "numpy")]
    keys = [k for k in runs[1][-1] if k != "seconds"]
    ok = close([runs[0][-1][k] for k in keys], [runs[1][-1][k] for k in keys])
    out(f"train (2 epochs, CuPy vs NumPy, rtol {RTOL}): {'PASS' if ok else 'FAIL'} "
        f"{[(k, runs[0][-1][k], runs[1][-1][k]) for k in keys]}")
    return int(not ok)


def syncs_check(out=print) -> int:
    """One step's device→host synchronisations: the counted loss read, and nothing else (CuPy's
    ``cupyx.allow_synchronize(False)`` raises ``DeviceSynchronized`` on any other)."""
    import cupyx  # noqa: PLC0415

    from refvae.cli.bench import ARCHITECTURES, refvae_step  # noqa: PLC0415

    reads = []
    real = Backend.to_numpy

    def counted(self, a):
        reads.append(1)
        with cupyx.allow_synchronize(True):
            return real(self, a)

    Backend.to_numpy = counted
    try:
        step, bk = refvae_step(ARCHITECTURES["examples"], 4096, "cupy", "float32")
        step()
        bk.synchronize()
        reads.clear()
        with cupyx.allow_synchronize(False):
            step()
    finally:
        Backend.to_numpy = real
    out(f"device→host synchronisations per step: {len(reads)} (target 1)")
    return int(len(reads) != 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("correctness", "oracle", "train", "syncs"))
    args = p.parse_args(argv)
    get_backend("cupy")  # a one-line BackendError when CuPy cannot run
    return {"correctness": correctness, "oracle": oracle_check, "train": train_check,
            "syncs": syncs_check}[args.part]()


if __name__ == "__main__":
    sys.exit(main())
