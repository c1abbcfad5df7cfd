"""A whole epoch of ``refvae train`` against a PyTorch training loop of the same model (issue 28).

    python -m validation.bench_epoch                     # examples widths, batch 128, both dtypes

The step alone (``refvae bench``) leaves out what an epoch also does. Both sides here do all of
it: shuffle, slice each batch, draw the noise, take the step (loss, gradients, Adam), check the
loss and gradients for NaN, sum the epoch's metrics, evaluate the test split, and write the
metrics and an atomic checkpoint (refvae: :func:`refvae.train.loop.train` with one epoch, timed
as a whole; PyTorch: the loop of pytorch/examples' VAE with a ``torch.save`` of the model and
optimizer to a temporary file renamed into place). The data are a fixed random binary set of
MNIST's width; the two engines take alternating turns and the ratio is the median of the turns'
ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from validation.common import table_text
except ImportError:  # pragma: no cover - run as a script from validation/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from validation.common import table_text

from refvae.cli.bench import ARCHITECTURES
from refvae.data.dataset import Dataset
from refvae.math.config import VAEConfig
from refvae.train.loop import TrainOptions, train


def binary_data(n_train: int, n_test: int, dim: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    y = (rng.random((n_train + n_test, dim)) < 0.3).astype(np.float64)
    return Dataset("bench", y[:n_train], y[n_train:], kind="binary")


def refvae_epoch(config: dict, data: Dataset, batch: int, dtype: str, threads: int):
    """A closure: one epoch of :func:`refvae.train.loop.train` into a fresh folder."""
    cfg = VAEConfig(**config, activation="relu", emission="bernoulli")
    options = TrainOptions(epochs=1, batch_size=batch, progress=False, threads=threads)

    def epoch() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, options, data, Path(tmp) / "run", dtype=dtype)

    return epoch


def torch_epoch(config: dict, data: Dataset, batch: int, dtype: str, threads: int):
    """A closure: one epoch of a PyTorch training loop of the same model (the witness's
    :func:`refvae.witness.modules.make_vae`), checkpoint and metrics included."""
    import torch  # noqa: PLC0415 - the peer only

    from refvae.witness.modules import make_vae  # noqa: PLC0415

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    train_y = torch.as_tensor(data.train, dtype=dt)
    test_y = torch.as_tensor(data.test, dtype=dt)
    k = config["latent_dim"]

    def epoch() -> None:
        model = make_vae({**config, "activation": "relu", "emission": "bernoulli"}, seed=0).to(dt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sums = torch.zeros(3, dtype=dt)
        n = len(train_y)
        order = torch.randperm(n)
        for start in range(0, n, batch):
            y = train_y[order[start:start + batch]]
            opt.zero_grad(set_to_none=True)
            kl, rec = model.neg_elbo(y, torch.randn(len(y), k, dtype=dt))
            loss = (kl + rec).sum() / len(y)
            loss.backward()
            finite = torch.isfinite(loss) and all(torch.isfinite(p.grad).all()
                                                  for p in model.parameters())
            if not finite:
                raise FloatingPointError("diverged")
            opt.step()
            sums += torch.stack([loss.detach() * len(y), kl.detach().sum(), rec.detach().sum()])
        with torch.no_grad():
            kl, rec = model.neg_elbo(test_y, torch.randn(len(test_y), k, dtype=dt))
        record = {"train_loss": float(sums[0]) / n, "test_neg_elbo": float((kl + rec).mean())}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "metrics.jsonl").write_text(json.dumps(record) + "\n")
            part = Path(tmp) / "checkpoint.pt.part"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, part)
            os.replace(part, Path(tmp) / "checkpoint.pt")

    return epoch


def compare(arch: str = "examples", batch: int = 128, dtype: str = "float32", threads: int = 2,
            n_train: int = 12800, n_test: int = 500, turns: int = 3) -> dict:
    """Median epoch seconds of both engines over ``turns`` alternating turns (after one untimed
    epoch each), and the median of the turns' ratios."""
    config = ARCHITECTURES[arch]
    data = binary_data(n_train, n_test, config["data_dim"])
    engines = [refvae_epoch(config, data, batch, dtype, threads),
               torch_epoch(config, data, batch, dtype, threads)]
    for run in engines:
        run()
    times: list[list[float]] = [[], []]
    for _ in range(turns):
        for run, record in zip(engines, times):
            time.sleep(0.25)
            t0 = time.perf_counter()
            run()
            record.append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(*times)]
    return {"arch": arch, "batch": batch, "dtype": dtype, "threads": threads, "rows": n_train,
            "refvae_s": statistics.median(times[0]), "torch_s": statistics.median(times[1]),
            "ratio": statistics.median(ratios)}


def rows_text(results: list[dict]) -> str:
    return table_text(["arch", "batch", "dtype", "threads", "rows", "refvae s", "PyTorch s",
                       "ratio"],
                      [[r["arch"], r["batch"], r["dtype"], r["threads"], r["rows"],
                        f"{r['refvae_s']:.2f}", f"{r['torch_s']:.2f}", f"{r['ratio']:.2f}×"]
                       for r in results])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["examples"], choices=sorted(ARCHITECTURES))
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--rows", type=int, default=12800)
    p.add_argument("--turns", type=int, default=3)
    args = p.parse_args(argv)
    results = []
    for arch in args.arch:
        for threads in args.threads:
            for dtype in args.dtype:
                r = compare(arch, 128, dtype, threads, args.rows, turns=args.turns)
                print(f"{arch} {dtype} threads {threads}: refvae {r['refvae_s']:.2f} s, "
                      f"PyTorch {r['torch_s']:.2f} s, ratio {r['ratio']:.2f}×", flush=True)
                results.append(r)
    print(rows_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
