"""The mathematics of §8.2, one module per topic: activations and the MLP
(:mod:`~refvae.math.activations`, :mod:`~refvae.math.mlp`), emissions
(:mod:`~refvae.math.emission`), recognition models (:mod:`refvae.math.latent`), gradient
estimators (:mod:`~refvae.math.estimators`), the VAE's loss and gradients
(:mod:`~refvae.math.vae`) and the evaluation objectives (:mod:`~refvae.math.objectives`), with
the interfaces between them stated in :mod:`~refvae.math.protocols`. The chapter's equations in
the chapter's order, each with its function: docs/DERIVATIONS.md#reading-path-for-students.

Plain formulas only: every module computes through the backend ``bk`` (``bk.xp``, ``bk.special``)
and imports nothing from the speed kernels (:mod:`refvae.fast`), threads, files or the CLI.
"""
