"""Training: the loop and its checkpoints (:mod:`~refvae.train.loop`), run directories, their lock
and staging (:mod:`~refvae.train.rundir`), and the figures of a run (:mod:`~refvae.train.figures`).
"""
