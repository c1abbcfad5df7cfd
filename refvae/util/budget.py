"""The memory budget: every size that comes from input is checked here before it is allocated.

The budget is ``--max-memory`` (CLI), else ``$REFVAE_MAX_MEMORY``, else 80 % of the memory the
machine has available when first asked. :func:`check` refuses a request above it with one
:class:`~refvae.errors.BudgetError` line naming the field, the bytes and the budget, so a config
width of 10⁹, an IDX header claiming 5·10⁶ images or ``--samples 10⁷`` fail before NumPy
tries.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager

from ..errors import BudgetError, ConfigError

ENV = "REFVAE_MAX_MEMORY"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_limit: int | None = None


def parse_size(text) -> int:
    """``"512M"``, ``"4G"``, ``"1.5T"`` or a plain byte count as bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m or len(str(text)) > 30:
        raise ConfigError(f"memory size {text!r} is not a size; give bytes or a number with K, M, "
                          "G "
                          "or T, e.g. 4G")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise ConfigError(f"memory size {text!r} is zero; give a positive size, e.g. 4G")
    return n


def available_bytes() -> int:
    """The memory available to a new allocation (``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def limit() -> int:
    """The budget in bytes."""
    global _limit
    if _limit is None:
        env = os.environ.get(ENV)
        try:
            _limit = parse_size(env) if env else int(0.8 * available_bytes())
        except ConfigError as exc:
            raise ConfigError(f"${ENV}: {exc}; or unset it") from None
    return _limit


def set_limit(size) -> int:
    """Set the budget (bytes, or a size string such as ``"4G"``; ``None``: back to the default)."""
    global _limit
    _limit = None if size is None else (size if isinstance(size, int) else parse_size(size))
    return limit()


@contextmanager
def limited(size):
    """Within the block the budget is ``size`` (``None``: unchanged); the previous one after it."""
    global _limit
    saved = _limit
    if size is not None:
        set_limit(size)
    try:
        yield
    finally:
        _limit = saved


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check(field: str, nbytes, hint: str = "") -> None:
    """Refuse ``nbytes`` (for ``field``) when it exceeds the budget."""
    nbytes = int(nbytes)
    if nbytes > limit():
        fix = hint or "use a smaller value"
        raise BudgetError(f"{field} would take {human(nbytes)} ({nbytes} bytes), more than the "
                          f"memory budget of {human(limit())}; {fix}, or raise the budget with "
                          f"--max-memory (or ${ENV})")


def check_array(field: str, shape, itemsize: int = 8, copies: int = 1, hint: str = "") -> None:
    """:func:`check` for ``copies`` arrays of ``shape`` with ``itemsize``-byte entries."""
    check(field, math.prod(int(s) for s in shape) * int(itemsize) * int(copies), hint)
