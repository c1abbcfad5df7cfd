"""PNG figures of a trained model: prior samples, reconstructions, loss curves, and for a
two-dimensional latent space the test set's latent means and a manifold traversal
(Kingma & Welling 2014, Fig. 4). Host-side plotting with matplotlib (an optional dependency).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np  # host side: images are assembled on the host for plotting
from scipy.stats import norm

from .backend import NoiseSource
from .errors import ConfigError


def _plt():
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("figures need matplotlib: pip install 'refvae[train]'") from exc
    return plt


def _tile(images: np.ndarray, shape, cols: int) -> np.ndarray:
    """Images ``(n, D)`` -> one mosaic of ``cols`` columns (a one-pixel gap between tiles)."""
    rows_img, cols_img = shape
    n = images.shape[0]
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (rows_img + 1) - 1, cols * (cols_img + 1) - 1))
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (rows_img + 1):r * (rows_img + 1) + rows_img,
               c * (cols_img + 1):c * (cols_img + 1) + cols_img] = images[i].reshape(shape)
    return canvas


def _save_image(canvas, path, title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6 * canvas.shape[0] / canvas.shape[1]))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def decoded_means(model, params, x) -> np.ndarray:
    """E[y|x] for latent inputs ``x`` ``(n, K_in)``, on the host, clipped to [0, 1] for display."""
    o, _ = model.decode(params, model.bk.asarray(x))
    return np.clip(model.bk.to_numpy(model.emission.mean(model.bk, o)), 0.0, 1.0)


def prior_inputs(model, noise: NoiseSource, n: int):
    """Decoder inputs drawn from the prior p(x) (N(0, I), or uniform one-hots when categorical)."""
    return model.latent.prior_sample(noise, n, model.bk)


def sample_grid(model, params, path, n: int = 64, seed: int = 0, image_shape=None):
    mean = decoded_means(model, params, prior_inputs(model, NoiseSource(seed), n))
    _save_image(_tile(mean, image_shape, int(math.sqrt(n)) or 1), path, "samples from the prior (means)")


def reconstructions(model, params, y, path, seed: int = 0, image_shape=None, n: int = 32):
    """Inputs (odd columns) beside the decoded mean of one posterior sample (even columns)."""
    y = y[:n]
    eps = model.draw_noise(NoiseSource(seed), y.shape[0], 1)
    fp = model.forward(params, model.bk.asarray(y), eps, model.latent.evaluation_estimator)
    rec = np.clip(model.bk.to_numpy(model.emission.mean(model.bk, fp.dec_out[:, 0])), 0.0, 1.0)
    pairs = np.stack([y, rec], axis=1).reshape(-1, y.shape[1])
    _save_image(_tile(pairs, image_shape, 16), path, "inputs | reconstructions")


def loss_curves(history, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train (negative ELBO)")
    if history and "test_neg_elbo" in history[0]:
        ax.plot(epochs, [r["test_neg_elbo"] for r in history], label="test (negative ELBO)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datum")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def latent_means(model, params, y, path, labels=None):
    plt = _plt()
    heads, _ = model.encode(params, model.bk.asarray(y))
    nu = model.bk.to_numpy(heads["mean"])
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(nu[:, 0], nu[:, 1], s=4, c=labels, cmap="tab10" if labels is not None else None)
    if labels is not None:
        fig.colorbar(sc, ax=ax)
    ax.set_xlabel("ν₁")
    ax.set_ylabel("ν₂")
    ax.set_title("latent means of the test set")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def manifold(model, params, path, image_shape, steps: int = 15):
    """Decoded means on a grid of the inverse normal CDF over (0, 1)² (Kingma & Welling, Fig. 4)."""
    u = norm.ppf(np.linspace(0.5 / steps, 1 - 0.5 / steps, steps))
    grid = np.array([[a, b] for b in u[::-1] for a in u])
    _save_image(_tile(decoded_means(model, params, grid), image_shape, steps), path,
                "learned manifold")


def make_figures(model, params, data, out_dir, history, seed: int = 0) -> list[Path]:
    """Every figure that applies to this model and data; returns the paths written."""
    out = Path(out_dir)
    written = []
    if history:
        loss_curves(history, out / "loss.png")
        written.append(out / "loss.png")
    shape = getattr(data, "image_shape", None)
    test = data.test if getattr(data, "test", None) is not None and len(data.test) else data.train
    if shape is not None:
        sample_grid(model, params, out / "samples.png", seed=seed, image_shape=shape)
        reconstructions(model, params, test, out / "reconstructions.png", seed=seed, image_shape=shape)
        written += [out / "samples.png", out / "reconstructions.png"]
    if model.config.latent == "gaussian" and model.config.latent_dim == 2:
        latent_means(model, params, test, out / "latent.png", getattr(data, "test_labels", None))
        written.append(out / "latent.png")
        if shape is not None:
            manifold(model, params, out / "manifold.png", shape)
            written.append(out / "manifold.png")
    return written
