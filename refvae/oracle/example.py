"""``refvae oracle example``: a complete, valid set of oracle files for a small model."""
from __future__ import annotations

import os

import numpy as np

from ..util import inputs
from ..backend import NoiseSource
from ..errors import ConfigError
from ..util.files import ensure_writable_dir, save_json
from ..math.vae import VAE
from .core import compute, write_npz
from .inputs import FORMAT, load_config


def write_example(directory, *, latent: str = "gaussian", emission: str = "bernoulli",
                  learn_alpha: bool = False, categories: int | None = None,
                  estimator: str | None = None,
                  reduction: str = "mean", temperature: float | None = None, n: int = 4,
                  samples: int = 2,
                  seed: int = 0, flow_length: int = 0, overwrite: bool = False) -> dict:
    """Write a complete, valid set of oracle files for a small model into ``directory``:
    ``config.json``, ``params.npz``, ``batch.npz`` and ``theirs.npz`` (refvae's own result, in the
    format a user's exporter writes); ``flow_length`` planar flows follow a Gaussian latent (their
    amortized heads ``encoder.flow_u/w/b``). Returns ``{file role: path}``.

    ``directory`` must be new or empty (a user's own ``config.json`` or ``params.npz`` there is
    never replaced) unless ``overwrite``, which replaces those four files and nothing else."""
    if not overwrite and inputs.is_dir(directory, "output folder", ConfigError) \
            and any(os.scandir(directory)):
        raise ConfigError(f"--out {inputs.show(directory)} is not empty; give a new or empty "
                          "folder "
                          "for the example's config.json, params.npz, batch.npz and theirs.npz, or "
                          "pass --overwrite to replace those four files")
    if latent == "categorical":  # the default estimator relaxes the sample: it needs a temperature
        categories = 3 if categories is None else categories
        temperature = 0.5 if temperature is None else temperature
    spec = {"format": FORMAT, "data_dim": 6, "latent_dim": 2, "encoder_hidden": [5],
            "decoder_hidden": [5], "activation": "tanh", "latent": latent, "emission": emission,
            "alpha": 1.0, "learn_alpha": learn_alpha}
    if categories is not None:
        spec["categories"] = categories
    if flow_length:
        spec["flow_length"] = flow_length
    config = load_config(spec)
    vae = VAE(config)
    noise = NoiseSource(seed)
    params = {k: vae.bk.to_numpy(v) for k, v in vae.init_params(noise).items()}
    y = noise.uniform((n, config.data_dim))
    if emission == "bernoulli":
        y = np.round(y)
    batch = {"y": y, vae.latent.noise_name: vae.bk.to_numpy(vae.draw_noise(noise, n, samples))}
    if temperature is not None:
        batch["temperature"] = np.asarray(float(temperature))
    result = compute(config, params, batch, estimator=estimator, reduction=reduction)
    ensure_writable_dir(directory)
    paths = {role: os.path.join(os.fspath(directory), f"{role}.{ext}")
             for role,
             ext in (("config", "json"), ("params", "npz"), ("batch", "npz"), ("theirs", "npz"))}
    save_json(paths["config"], config.to_dict())
    write_npz(paths["params"], params)
    write_npz(paths["batch"], batch)
    write_npz(paths["theirs"], result.arrays())
    return paths
