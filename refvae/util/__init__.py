"""What every command needs around the mathematics: file writing and reading gates
(:mod:`~refvae.util.files`, :mod:`~refvae.util.inputs`), the memory budget
(:mod:`~refvae.util.budget`), checked numbers (:mod:`~refvae.util.checked`), the model's input
gates (:mod:`~refvae.util.gates`), the anomaly detector (:mod:`~refvae.util.anomaly`) and
progress display (:mod:`~refvae.util.progress`). Nothing here imports the mathematics.
"""
