"""Data: loading by name or path (:mod:`~refvae.data.load`), the data-set container
(:mod:`~refvae.data.dataset`) and the file formats read (:mod:`~refvae.data.formats`).
"""
