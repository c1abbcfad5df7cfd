"""Speed, opt-in and proven equal: fused kernels, row shards, threads and allocator tuning.

Nothing in :mod:`refvae.math` imports from here. Each fast kernel names the plain function it
replaces, and a test asserts that the two agree (``tests/test_fast_*.py``).
"""
