"""PNG figures of a trained model: prior samples, reconstructions, loss curves, and for a
two-dimensional latent space the test set's latent means and a manifold traversal
(Kingma & Welling 2014, Fig. 4). Host-side plotting with matplotlib (an optional dependency).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np  # host side: images are assembled on the host for plotting
from scipy.stats import norm

from ..backend import NoiseSource
from ..errors import ConfigError


MATPLOTLIB_MISSING = ("figures need matplotlib, which is not installed: pip install "
                      "'refvae[train]', "
                      "or pass --no-figures")
TARGET_WIDTH = 800  # image mosaics are enlarged by a whole factor to at least this many pixels
MARGIN = {"left": 10, "right": 10, "top": 40, "bottom": 10}  # pixels around a mosaic
LABEL_WIDTH = 110  # more on the left for row labels
AXES_MARGIN = {"left": 110, "bottom": 100}  # more for the tick labels and titles of manifold.png
DPI = 100


def require_matplotlib() -> None:
    """A one-line ConfigError now, before any training, when figures cannot be drawn."""
    _plt()


def _plt():
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(MATPLOTLIB_MISSING) from exc
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


def _left(labelled: bool) -> int:
    return MARGIN["left"] + (LABEL_WIDTH if labelled else 0)


def mosaic_pixels(canvas_shape, labelled: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG that :func:`_save_image` writes for a mosaic: each
    mosaic pixel enlarged ``ceil(TARGET_WIDTH / width)`` times, plus the margins (wider on the
    left when rows are ``labelled``)."""
    h, w = canvas_shape
    scale = max(1, math.ceil(TARGET_WIDTH / w))
    return (w * scale + _left(labelled) + MARGIN["right"],
            h * scale + MARGIN["top"] + MARGIN["bottom"])


def _save_image(canvas, path, title, row_labels=None):
    """The mosaic at a whole-number enlargement, titled; ``row_labels`` as ``{row_index: text}``
    at the left of those rows of tiles (row index in mosaic pixels, centre of the row)."""
    plt = _plt()
    left = _left(bool(row_labels))
    width, height = mosaic_pixels(canvas.shape, bool(row_labels))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes([left / width, MARGIN["bottom"] / height,
                       1 - (left + MARGIN["right"]) / width,
                       1 - (MARGIN["top"] + MARGIN["bottom"]) / height])
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks(list(row_labels or {}), list((row_labels or {}).values()))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, y=1 - 8 / height, va="top")
    _save(plt, fig, path)


def _save(plt, fig, path) -> None:
    """Write the figure atomically: a full disk leaves the previous file, not a truncated PNG."""
    from ..util.files import atomic_write  # noqa: PLC0415

    path = Path(path)
    if not path.suffix:  # as matplotlib names it
        path = path.with_name(path.name + ".png")
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format=path.suffix[1:]), "figure")
    except ValueError as exc:  # a format matplotlib cannot write
        raise ConfigError(f"cannot write figure {path}: {exc}; use a .png name") from exc
    finally:
        plt.close(fig)


def decoded_means(model, params, x, clip: bool = True, condition=None) -> np.ndarray:
    """E[y|x] (a conditional VAE's E[y|x, c]) for latent inputs ``x`` ``(n, K_in)`` and the
    condition ``c`` ``(n, C)``, on the host, clipped to [0, 1] for display (``clip=False``: as
    they are)."""
    o, _ = model.decode(params, model.bk.asarray(x), _device(model, condition))
    mean = model.bk.to_numpy(model.emission.mean(model.bk, o))
    return np.clip(mean, 0.0, 1.0) if clip else mean


def _device(model, condition):
    return None if condition is None else model.bk.asarray(condition)


def prior_inputs(model, noise: NoiseSource, n: int):
    """Decoder inputs drawn from the prior p(x) (N(0, I), or uniform one-hots when categorical)."""
    return model.latent.prior_sample(noise, n, model.bk)


def sample_grid(model, params, path, n: int = 64, seed: int = 0, image_shape=None,
                condition=None, title: str = "samples from the prior (means)"):
    """``n`` prior draws decoded (given ``condition`` ``(n, C)`` for a conditional VAE)."""
    mean = decoded_means(model, params, prior_inputs(model, NoiseSource(seed), n),
                         condition=condition)
    _save_image(_tile(mean, image_shape, int(math.sqrt(n)) or 1), path, title)


def reconstructions(model, params, y, path, seed: int = 0, image_shape=None, n: int = 16,
                    condition=None):
    """A row of ``n`` inputs above the row of their reconstructions (the decoded mean of one
    posterior sample each), labelled."""
    y = y[:n]
    eps = model.draw_noise(NoiseSource(seed), y.shape[0], 1)
    fp = model.forward(params, model.bk.asarray(y), eps, model.latent.evaluation_estimator,
                       condition=None if condition is None else _device(model, condition[:n]))
    rec = np.clip(model.bk.to_numpy(model.emission.mean(model.bk, fp.dec_out[:, 0])), 0.0, 1.0)
    rows_img = image_shape[0]
    canvas = _tile(np.concatenate([y, rec]), image_shape, y.shape[0])
    _save_image(canvas, path, "reconstructions of test data",
                {(rows_img - 1) / 2: "input", rows_img + 1 + (rows_img - 1) / 2: "reconstruction"})


def loss_curves(history, path):
    """Negative ELBO per epoch (train and test), and beside it its two parts, the KL term and the
    reconstruction term; every epoch is marked, so one epoch is a visible point."""
    plt = _plt()
    fig, (total, parts) = plt.subplots(1, 2, figsize=(11, 4), dpi=DPI)
    epochs = [r["epoch"] for r in history]
    test = bool(history) and "test_neg_elbo" in history[0]
    total.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if test:
        total.plot(epochs, [r["test_neg_elbo"] for r in history], "s--", label="test")
    total.set_title("negative ELBO")
    for key, label, colour in (("kl", "KL", "C2"), ("reconstruction", "reconstruction", "C3")):
        parts.plot(epochs, [r[f"train_{key}"] for r in history], "o-", color=colour,
                   label=f"{label} (train)")
        if test:
            parts.plot(epochs, [r[f"test_{key}"] for r in history], "s--", color=colour,
                       label=f"{label} (test)")
    parts.set_title("its two terms")
    for ax in (total, parts):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("nats per datum")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(plt, fig, path)


def latent_means(model, params, y, path, labels=None, condition=None):
    """The encoder means of ``y`` in the plane, coloured by class with a legend when ``labels``."""
    plt = _plt()
    heads, _ = model.encode(params, model.bk.asarray(y), _device(model, condition))
    nu = model.bk.to_numpy(heads["mean"])
    fig, ax = plt.subplots(figsize=(6, 6), dpi=DPI)
    if labels is None:
        ax.scatter(nu[:, 0], nu[:, 1], s=4)
    else:
        labels = np.asarray(labels)
        for i, c in enumerate(np.unique(labels)):
            sel = labels == c
            ax.scatter(nu[sel, 0], nu[sel, 1], s=4, color=plt.cm.tab10(i % 10), label=str(c))
        ax.legend(title="class", markerscale=3, loc="upper right", fontsize="small")
    ax.set_xlabel("ν₁")
    ax.set_ylabel("ν₂")
    ax.set_title("latent means of the test set")
    fig.tight_layout()
    _save(plt, fig, path)


def manifold(model, params, path, image_shape, steps: int = 15):
    """Decoded means on a grid of the inverse normal CDF over (0, 1)² (Kingma & Welling, Fig. 4),
    with axes in latent coordinates, as latent.png's: each tile is labelled with the value of its
    latent point (the grid is even in probability, so the ticks are not evenly spaced)."""
    plt = _plt()
    u = norm.ppf(np.linspace(0.5 / steps, 1 - 0.5 / steps, steps))
    grid = np.array([[a, b] for b in u[::-1] for a in u])
    canvas = _tile(decoded_means(model, params, grid), image_shape, steps)
    rows_img, cols_img = image_shape
    width, height = mosaic_pixels(canvas.shape)  # the mosaic as the others, with room for axes
    width, height = width + AXES_MARGIN["left"], height + AXES_MARGIN["bottom"]
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    left, bottom = MARGIN["left"] + AXES_MARGIN["left"], MARGIN["bottom"] + AXES_MARGIN["bottom"]
    ax = fig.add_axes([left / width, bottom / height, 1 - (left + MARGIN["right"]) / width,
                       1 - (bottom + MARGIN["top"]) / height])
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    every = range(0, steps, 2)
    ax.set_xticks([i * (cols_img + 1) + (cols_img - 1) / 2 for i in every],
                  [f"{u[i]:.2f}" for i in every], rotation=90)
    ax.set_yticks([i * (rows_img + 1) + (rows_img - 1) / 2 for i in every],
                  [f"{u[::-1][i]:.2f}" for i in every])
    ax.set_xlabel("z₁ (latent coordinate: the ν₁ axis of latent.png)")
    ax.set_ylabel("z₂ (the ν₂ axis of latent.png)")
    fig.suptitle("learned manifold: decoded means at Φ⁻¹ of an even grid in (0, 1)²",
                 y=1 - 8 / height, va="top")
    _save(plt, fig, path)


def _eval_split(data):
    """The test split and its labels, or the training split where there is no test split."""
    if getattr(data, "test", None) is not None and len(data.test):
        return data.test, getattr(data, "test_labels", None)
    return data.train, getattr(data, "train_labels", None)


def _eval_condition(model, data, n: int | None = None):
    """A conditional VAE's condition of the split :func:`_eval_split` picks (None otherwise);
    with ``n``, its first rows repeated to ``n`` rows (the conditions of the sample figures)."""
    if not model.config.condition_dim:
        return None
    test = getattr(data, "test", None) is not None and len(data.test)
    c = getattr(data, "test_condition" if test else "train_condition", None)
    return c if n is None or c is None else np.resize(c, (n, c.shape[1]))


SAMPLES_GIVEN = "samples given the first conditions of the test data (means)"


def make_figures(model, params, data, out_dir, history, seed: int = 0) -> list[Path]:
    """Every figure that applies to this model and data; returns the paths written."""
    out = Path(out_dir)
    written = []
    if history:
        loss_curves(history, out / "loss.png")
        written.append(out / "loss.png")
    shape = getattr(data, "image_shape", None)
    test, labels = _eval_split(data)
    cond, conditional = _eval_condition(model, data), bool(model.config.condition_dim)
    if shape is not None:
        sample_grid(model, params, out / "samples.png", seed=seed, image_shape=shape,
                    condition=_eval_condition(model, data, 64),
                    **({"title": SAMPLES_GIVEN} if conditional else {}))
        reconstructions(model, params, test, out / "reconstructions.png", seed=seed,
                        image_shape=shape, condition=cond)
        written += [out / "samples.png", out / "reconstructions.png"]
    if model.config.latent == "gaussian" and model.config.latent_dim == 2:
        latent_means(model, params, test, out / "latent.png", labels, cond)
        written.append(out / "latent.png")
        if shape is not None and not conditional:  # a manifold per condition: not drawn
            manifold(model, params, out / "manifold.png", shape)
            written.append(out / "manifold.png")
    return written


def snapshot(model, params, data, directory, epoch: int, seed: int = 0) -> list[Path]:
    """``epoch-NNNN-samples.png`` and ``epoch-NNNN-reconstructions.png`` in ``directory`` (image
    data only; the same prior draws every epoch, so the snapshots show the model changing)."""
    shape = getattr(data, "image_shape", None)
    if shape is None:
        return []
    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    paths = [directory / f"epoch-{epoch:04d}-samples.png",
             directory / f"epoch-{epoch:04d}-reconstructions.png"]
    conditional = bool(model.config.condition_dim)
    sample_grid(model, params, paths[0], seed=seed, image_shape=shape,
                condition=_eval_condition(model, data, 64),
                **({"title": SAMPLES_GIVEN} if conditional else {}))
    reconstructions(model, params, _eval_split(data)[0], paths[1], seed=seed, image_shape=shape,
                    condition=_eval_condition(model, data))
    return paths
