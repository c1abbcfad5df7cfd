"""The library's own exception types.

Every bad input is answered by one of these with a one-line message that names the problem and
the fix; the CLI prints that line and exits with code 2 instead of showing a traceback.
"""


class RefvaeError(Exception):
    """Base class of every error refvae raises on purpose."""


class ConfigError(RefvaeError, ValueError):
    """An unknown option, a missing or invalid config field."""


class ShapeError(RefvaeError, ValueError):
    """An array whose shape does not fit the model or the other arrays."""


class DataError(RefvaeError, ValueError):
    """Data that are empty, non-finite, or outside the emission's support; unreadable data files."""


class CheckpointError(RefvaeError, OSError):
    """A checkpoint or output file that is missing, truncated, corrupt, or cannot be written."""


class BackendError(RefvaeError, RuntimeError):
    """A backend that cannot be used here (CuPy not installed, no GPU)."""


class NonFiniteError(RefvaeError, FloatingPointError):
    """A NaN or infinity where the mathematics gives a finite number (divergence, bad input)."""


class GradcheckError(RefvaeError, AssertionError):
    """Analytic and finite-difference derivatives disagree; the message is the full report."""


class BudgetError(RefvaeError, MemoryError):
    """A size from the input (a width, a sample count, an array header) beyond the memory budget."""


def name_mismatch(missing, extra) -> str:
    """``"missing a, b; unexpected c"``: the shared wording for tensor sets that do not match."""
    parts = []
    if missing:
        parts.append(f"missing {', '.join(map(str, missing))}")
    if extra:
        parts.append(f"unexpected {', '.join(map(str, extra))}")
    return "; ".join(parts)


def shape_mismatch(name: str, got, expected) -> str:
    """``"<name> has shape (a, b), expected (b, a) (transposed? …)"`` — the transpose hint is
    given when the shape is the reverse of the expected one (a weight exported as ``(in, out)``)."""
    got, expected = tuple(got), tuple(expected)
    hint = " (transposed? weights are (out, in) as in PyTorch)" \
        if len(expected) == 2 and got[::-1] == expected and got != expected else ""
    return f"{name} has shape {got}, expected {expected}{hint}"



def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
