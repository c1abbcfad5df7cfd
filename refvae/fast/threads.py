"""Process-wide settings for speed on the CPU: the host allocator, the BLAS thread count, and the
cores this process may use.

Both change the whole process, so the library never applies them on import: the ``refvae`` command
does for its own process, :class:`~refvae.fast.parallel.Workers` limits BLAS for its lifetime, and a
user may call them in theirs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager


def tune_host_allocator() -> bool:
    """Keep large NumPy temporaries on glibc's heap instead of fresh ``mmap`` pages.

    A training step allocates and frees many arrays of a few hundred kB to a few MB. glibc serves
    each from new ``mmap``-ed pages, so every step pays page faults for memory it just returned.
    Raising ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD`` keeps those pages mapped between steps.
    Returns whether it took effect (``False`` where the C library is not glibc).
    """
    import ctypes  # noqa: PLC0415 - host-side process setting
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return (bool(libc.mallopt(m_mmap_threshold, 1 << 30))
                and bool(libc.mallopt(m_trim_threshold, 1 << 31)))
    except (OSError, AttributeError):
        return False


def _blas_libraries() -> list:
    """threadpoolctl's controllers of every BLAS loaded in this process (OpenBLAS, MKL, BLIS:
    NumPy's and SciPy's copies), in load order."""
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - scans the loaded libraries

    return ThreadpoolController().select(user_api="blas").lib_controllers


def blas_threads(n: int | None = None) -> int | None:
    """The thread count of the BLAS behind NumPy; with ``n``, set it (for every BLAS loaded) and
    return the previous count. ``None`` where threadpoolctl finds no BLAS: then nothing is
    changed."""
    libraries = _blas_libraries()
    if not libraries:
        return None
    previous = int(libraries[0].num_threads)
    if n is not None:
        for lib in libraries:
            lib.set_num_threads(int(n))
    return previous


@contextmanager
def blas_thread_limit(n: int):
    """Within the block the BLAS behind NumPy runs ``n`` threads per call (a no-op where
    :func:`blas_threads` finds none); the previous count is restored after it."""
    previous = blas_threads(n)
    try:
        yield previous
    finally:
        if previous is not None:
            blas_threads(previous)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity): ``refvae train --threads auto``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
