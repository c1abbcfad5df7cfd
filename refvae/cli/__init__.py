"""The ``refvae`` command: :mod:`~refvae.cli.main` dispatches to one module per command
(``train``/``evaluate``/``sample``: :mod:`~refvae.cli.train`; ``oracle``; ``data``; ``gradcheck``;
``bench``).
"""
