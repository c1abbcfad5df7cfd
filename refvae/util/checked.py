"""The one check for a number that comes from outside: a config field, an option, a CLI flag.

:func:`checked` accepts a value only when it has the right type (a bool is never a number, an
integer field never takes 2.5), is finite, and lies in its range; anything else is one
:class:`~refvae.errors.ConfigError` line naming the field, what it accepts and what it got.
:func:`cli_int` and :func:`cli_float` are the same check as ``argparse`` types.
"""
from __future__ import annotations

import argparse
import math
from numbers import Integral, Real

from ..errors import ConfigError

# Python's own int(str) refuses more than 4300 digits with a ValueError; no refvae number comes
# near this many.
MAX_DIGITS = 30


def _describe(integer: bool, minimum, maximum, open_min: bool) -> str:
    noun = "integer" if integer else "finite number"
    if maximum is None and minimum == (0 if open_min or not integer else 1):
        return f"a positive {noun}"
    if maximum is None and minimum == 0:
        return f"a non-negative {noun}"
    what = f"an {noun}" if integer else f"a {noun}"
    if minimum is not None:
        what += f" {'>' if open_min else '≥'} {minimum:{'d' if integer else 'g'}}"
    if maximum is not None:
        what += f"{' and' if minimum is not None else ''} ≤ {maximum:{'d' if integer else 'g'}}"
    return what


def checked(value, name: str, *, integer: bool = False, minimum=None, maximum=None,
            open_min: bool = False, none: bool = False, error=ConfigError):
    """``value`` as an ``int`` (``integer=True``) or a ``float``, or ``error`` in one line.

    ``minimum``/``maximum`` bound it (``open_min``: strictly above ``minimum``); ``none=True``
    lets ``None`` through unchanged. NaN, infinities, bools, strings and, for an integer field,
    non-integral numbers are refused.
    """
    if value is None and none:
        return None
    want = _describe(integer, minimum, maximum, open_min)
    ok_type = isinstance(value, Integral) if integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise error(f"{name} must be {want}, got {shown} (a {type(value).__name__})")
    if not integer and not math.isfinite(value):
        raise error(f"{name} must be {want}, got {value!r}")
    value = int(value) if integer else float(value)
    below = minimum is not None and (value <= minimum if open_min else value < minimum)
    if below or (maximum is not None and value > maximum):
        raise error(f"{name} must be {want}, got {value!r}")
    return value


def _cli(integer: bool, minimum, maximum, open_min: bool):
    def parse(text: str):
        try:
            if len(text) > MAX_DIGITS:
                raise ValueError
            return checked(int(text) if integer else float(text), "", integer=integer,
                           minimum=minimum, maximum=maximum, open_min=open_min, error=ValueError)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_describe(integer, minimum, maximum, open_min)}, "
                f"got {text!r}") from None

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse


def cli_int(minimum=None, maximum=None):
    """An ``argparse`` type: an integer in ``[minimum, maximum]``."""
    return _cli(True, minimum, maximum, False)


def cli_float(minimum=None, maximum=None, *, open_min: bool = False):
    """An ``argparse`` type: a finite number in its range (``open_min``: strictly above)."""
    return _cli(False, minimum, maximum, open_min)
