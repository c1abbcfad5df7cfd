"""Figures: each one written at its expected pixel size, reconstructions as labelled rows, the loss
figure with markers and its KL/reconstruction panel, latent means coloured by class with a legend,
and per-epoch snapshots."""
import struct

import numpy as np
import pytest

from refvae.train import figures
from refvae.cli.main import main
from refvae.data.load import Dataset, load_dataset
from refvae.math.vae import VAE
from test_data import _mnist_dir

pytest.importorskip("matplotlib")


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def image_data(shape, n_train=40, n_test=30, seed=0):
    rng = np.random.default_rng(seed)
    d = shape[0] * shape[1]
    return Dataset("toy", rng.random((n_train, d)), rng.random((n_test, d)), shape, "greyscale",
                   train_labels=np.arange(n_train) % 3, test_labels=np.arange(n_test) % 3)


def model_for(dim):
    model = VAE({"data_dim": dim, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": [5],
                 "activation": "tanh"})
    return model, model.init_params(0)


HISTORY = [{"epoch": 1, "train_loss": 9.0, "train_kl": 1.0, "train_reconstruction": 8.0,
            "test_neg_elbo": 9.5, "test_kl": 1.1, "test_reconstruction": 8.4}]


@pytest.fixture
def closed(monkeypatch):
    """The matplotlib figures refvae closes, kept for inspection."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    return kept


def test_every_figure_has_its_pixel_size(tmp_path, closed):
    """8×8 images: a mosaic is enlarged to at least 800 px wide by a whole factor (143 px of 16
    tiles → ×6), plus a 20 × 50 px margin for the title, 110 px more on the left for row
    labels."""
    model, params = model_for(64)
    written = figures.make_figures(model, params, image_data((8, 8)), tmp_path, HISTORY)
    assert {p.name: png_size(p) for p in written} == {
        "loss.png": (1100, 400),
        "samples.png": (71 * 12 + 20, 71 * 12 + 50),            # 8 × 8 tiles of 8 px, 1 px gaps
        "reconstructions.png": (143 * 6 + 130, 17 * 6 + 50),  # 16 inputs above 16 reconstructions
        "latent.png": (600, 600),
        "manifold.png": (134 * 6 + 130, 134 * 6 + 150),          # 15 × 15 tiles, axes
    }
    loss = closed[0]
    total, parts = loss.axes
    assert [line.get_marker() for line in total.lines] == ["o", "s"]  # one epoch is still visible
    assert [line.get_label() for line in parts.lines] == ["KL (train)", "KL (test)",
                                                          "reconstruction (train)",
                                                          "reconstruction (test)"]
    recon = closed[2].axes[0]
    assert [t.get_text() for t in recon.get_yticklabels()] == ["input", "reconstruction"]
    legend = closed[3].axes[0].get_legend()
    assert legend.get_title().get_text() == "class" and [t.get_text() for t
                                                         in legend.get_texts()] == ["0", "1", "2"]


def test_mnist_sized_reconstructions_are_legible(tmp_path):
    model, params = model_for(784)
    figures.reconstructions(model, params, image_data((28, 28)).test, tmp_path / "r.png",
                            image_shape=(28, 28))
    # 28 px tiles shown at 56 px
    assert png_size(tmp_path / "r.png") == (463 * 2 + 130, 57 * 2 + 50)


def test_latent_without_labels_has_no_legend(tmp_path, closed):
    model, params = model_for(64)
    figures.latent_means(model, params, image_data((8, 8)).test, tmp_path / "l.png")
    assert closed[0].axes[0].get_legend() is None


def test_labels_are_loaded(tmp_path):
    pytest.importorskip("sklearn")
    digits = load_dataset("digits")
    assert digits.test_labels.shape == (digits.n_test,
                                        ) and set(digits.train_labels) == set(range(10))
    _mnist_dir(tmp_path / "m", n_train=5, n_test=3)
    mnist = load_dataset(tmp_path / "m")
    assert (mnist.train_labels.tolist() == [0, 1, 2, 3, 4] and mnist.test_labels.tolist()
            == [0, 1, 2])


def test_figures_every_writes_snapshots(tmp_path):
    path = tmp_path / "d.npz"
    data = image_data((3, 4))
    np.savez(path, train=data.train, test=data.test, image_shape=np.array([3, 4]))
    assert main(["train", "--data", str(path), "--epochs", "3", "--batch-size", "20",
                 "--latent-dim", "2",
                 "--encoder-hidden", "4", "--decoder-hidden", "4", "--quiet", "--figures-every",
                 "2",
                 "--out", str(tmp_path / "run")]) == 0
    snaps = sorted(p.name for p in (tmp_path / "run" / "epochs").iterdir())
    assert snaps == ["epoch-0002-reconstructions.png", "epoch-0002-samples.png"]
    assert (png_size(tmp_path / "run" / "epochs" / snaps[0])
            == png_size(tmp_path / "run" / "reconstructions.png"))
