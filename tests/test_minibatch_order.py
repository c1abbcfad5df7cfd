"""The training loop's minibatch order: a fresh permutation of the training rows every epoch,
fixed by the seed (a loop that never shuffles, or reuses one order, fails here)."""
import numpy as np

from refvae import train as train_module
from refvae.config import VAEConfig
from refvae.data import Dataset
from refvae.train import TrainOptions, train

N_ROWS, EPOCHS = 10, 3


def _orders(monkeypatch, tmp_path, seed):
    y = np.random.default_rng(7).normal(size=(N_ROWS, 2))
    row_of = {r.tobytes(): i for i, r in enumerate(y)}
    visited = []
    loop = train_module.parallel              # the module whose loss_and_grads the loop calls
    real = loop.loss_and_grads

    def recording(model, workers, params, batch, *args, **kwargs):
        visited.extend(row_of[np.asarray(r).tobytes()] for r in batch)
        return real(model, workers, params, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "loss_and_grads", recording)
    config = VAEConfig(data_dim=2, latent_dim=1, encoder_hidden=[2], decoder_hidden=[2], emission="gaussian")
    train(config, TrainOptions(epochs=EPOCHS, batch_size=3, seed=seed, progress=False),
          Dataset("rows", y, y[:2]), tmp_path / f"run{seed}-{len(list(tmp_path.iterdir()))}")
    return [visited[e * N_ROWS:(e + 1) * N_ROWS] for e in range(EPOCHS)]


def test_each_epoch_is_a_new_permutation(monkeypatch, tmp_path):
    orders = _orders(monkeypatch, tmp_path, seed=0)
    assert all(sorted(o) == list(range(N_ROWS)) for o in orders)
    assert len({tuple(o) for o in orders}) == EPOCHS          # successive epochs differ
    assert orders[0] != list(range(N_ROWS))                   # and the first is shuffled too


def test_the_seed_fixes_the_order(monkeypatch, tmp_path):
    assert _orders(monkeypatch, tmp_path, seed=3) == _orders(monkeypatch, tmp_path, seed=3)
    assert _orders(monkeypatch, tmp_path, seed=3) != _orders(monkeypatch, tmp_path, seed=4)
