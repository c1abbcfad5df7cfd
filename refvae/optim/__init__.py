"""Optimizers: the update rules (:mod:`~refvae.optim.rules`), their state and its checkpoint
form (:mod:`~refvae.optim.state`), and learning-rate schedules (:mod:`~refvae.optim.schedules`).
The fast path of each rule is in :mod:`refvae.fast.optim`; the training loop picks it.
"""
