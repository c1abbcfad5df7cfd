"""Two-dimensional convolution, its adjoint and pooling, by summing over kernel offsets.

docs/DERIVATIONS.md#convolution: with stride ``s``, padding ``p`` and dilation ``d`` (per axis),
kernel tap ``(i, j)`` of output position ``(h, w)`` reads padded input row ``s·h + d·i`` and
column ``s·w + d·j``, i.e. unpadded ``(s·h + d·i − p, s·w + d·j − p)``. For one tap the
rows read by all ``h`` are the strided slice ``d·i : d·i + s·(H_out − 1) + 1 : s``, so a
convolution is a sum over the ``kh·kw`` taps of a channel-mixing matrix product on one strided view
of the padded input; the adjoint adds the same products back into the same views (no two positions
of one view coincide, so ``+=`` on a view is exact on NumPy and CuPy alike). No ``as_strided``, no
index arrays. For speed the taps' views are copied side by side into one matrix
(``(M·H_out·W_out, kh·kw·C)``, "im2col") so that one matrix product serves every tap, in the
forward map, the adjoint and the weight gradient alike; the sum over taps is then inside that
product.

Arrays are NCHW, ``(M, C, H, W)``; ``w`` is ``(O, C, kh, kw)`` as in ``nn.Conv2d``. Every function
takes the backend ``bk`` and uses ``bk.xp`` only.
"""
from __future__ import annotations


def conv_out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution: ``⌊(n + 2p − d(k − 1) − 1)/s⌋ + 1`` (PyTorch's
    formula)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose_out_size(n: int, k: int, s: int, p: int, d: int, op: int) -> int:
    """Output length of a transposed convolution: ``(n − 1)s − 2p + d(k − 1) + op + 1``."""
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


def _tap(i: int, j: int, out_hw, stride, dilation) -> tuple[slice, slice]:
    """The rows and columns of the padded input that tap ``(i, j)`` reads for every output."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return (slice(dh * i, dh * i + sh * (ho - 1) + 1, sh),
            slice(dw * j, dw * j + sw * (wo - 1) + 1, sw))


def _taps(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def _pad_hw(xp, x, padding, value=0.0):
    """Pad the last two axes of ``x`` by ``padding = (ph, pw)`` on both sides with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    return xp.pad(x, widths, mode="constant", constant_values=value)


def _buffer_hw(in_hw, out_hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """A padded size that holds the padded input and every tap's view (output padding or a
    floor in the output size can leave either one the larger)."""
    return tuple(max(n + 2 * p, d * (k - 1) + s * (o - 1) + 1)
                 for n, p, d, k, s, o in zip(in_hw, padding, dilation, kernel, stride, out_hw))


# ----- convolution: forward, adjoint (input gradient), weight gradient ----------------------
def _columns(xp, xpad, kernel, out_hw, stride, dilation):
    """``(M·H_out·W_out, kh·kw·C)``: tap ``n = i·kw + j``'s view of the padded NHWC input in
    columns ``n·C … n·C + C − 1``."""
    m, c = xpad.shape[0], xpad.shape[-1]
    taps = _taps(kernel)
    cols = xp.empty((m, *out_hw, len(taps), c), dtype=xpad.dtype)
    for n, (i, j) in enumerate(taps):
        r, cc = _tap(i, j, out_hw, stride, dilation)
        cols[:, :, :, n, :] = xpad[:, r, cc, :]
    return cols.reshape(m * out_hw[0] * out_hw[1], len(taps) * c)


def _wmat(w):
    """``w`` ``(O, C, kh, kw)`` as ``(O, kh·kw·C)``, columns ordered as :func:`_columns`'."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def conv2d(bk, x, w, stride, padding, dilation, out_hw=None):
    """``y[m,o,h,w'] = Σ_{c,i,j} w[o,c,i,j] x_pad[m,c, s·h + d·i, s·w' + d·j]`` (no bias;
    docs/DERIVATIONS.md#convolution).

    ``out_hw`` restricts the output to its first rows/columns (the adjoint of a transposed
    convolution with output padding ≥ stride needs it); by default the full output.
    """
    xp = bk.xp
    m, _, h, wd = x.shape
    kernel = w.shape[2:]
    if out_hw is None:
        out_hw = tuple(conv_out_size(n, k, s, p, d)
                       for n, k, s, p, d in zip((h, wd), kernel, stride, padding, dilation))
    xpad = _pad_hw(xp, x, padding).transpose(0, 2, 3, 1)          # NHWC: taps are matmuls on C
    out = _columns(xp, xpad, kernel, out_hw, stride, dilation) @ _wmat(w).T
    return out.reshape(m, *out_hw, w.shape[0]).transpose(0, 3, 1, 2)


def conv2d_adjoint(bk, dy, w, in_hw, stride, padding, dilation):
    """The adjoint of :func:`conv2d` for input size ``in_hw``:
    ``x̄_pad[m,c, s·h + d·i, s·w' + d·j] += Σ_o w[o,c,i,j] dy[m,o,h,w']``, padding cropped.

    This is the input gradient of a convolution and the forward map of a transposed one
    (docs/DERIVATIONS.md#transposed-convolution).
    """
    xp = bk.xp
    m, o, ho, wo = dy.shape
    kernel = w.shape[2:]
    c = w.shape[1]
    cols = (dy.transpose(0, 2, 3, 1).reshape(-1, o) @ _wmat(w)).reshape(m, ho, wo, -1, c)
    size = _buffer_hw(in_hw, (ho, wo), kernel, stride, padding, dilation)
    buf = xp.zeros((m, *size, c), dtype=dy.dtype)
    for n, (i, j) in enumerate(_taps(kernel)):
        r, cc = _tap(i, j, (ho, wo), stride, dilation)
        buf[:, r, cc, :] += cols[:, :, :, n, :]
    (ph, pw), (h, wd) = padding, in_hw
    return buf[:, ph:ph + h, pw:pw + wd, :].transpose(0, 3, 1, 2)


def conv2d_weight_grad(bk, x, dy, kernel, stride, padding, dilation):
    """``∂/∂w[o,c,i,j] = Σ_{m,h,w'} dy[m,o,h,w'] x_pad[m,c, s·h + d·i, s·w' + d·j]``
    (docs/DERIVATIONS.md#convolution)."""
    xp = bk.xp
    ho, wo = dy.shape[2:]
    xpad = _pad_hw(xp, x, padding).transpose(0, 2, 3, 1)
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])
    # (colsᵀ dy)ᵀ, not dyᵀ cols: OpenBLAS is 10–100 times slower on a short-and-wide left
    # factor
    grad = (_columns(xp, xpad, kernel, (ho, wo), stride, dilation).T @ dy2).T
    return grad.reshape(dy.shape[1], *kernel, x.shape[1]).transpose(0, 3, 1, 2)


# ----- pooling ----------------------------------------------------------------------------
def avg_pool2d(bk, x, kernel, stride, padding):
    """``y = (1/(kh·kw)) Σ_{i,j} x_pad[..., s·h + i, s·w' + j]`` (zeros padded and counted, as
    PyTorch's default ``count_include_pad=True``); any leading axes
    (docs/DERIVATIONS.md#pooling)."""
    out_hw = tuple(conv_out_size(n, k, s, p, 1)
                   for n, k, s, p in zip(x.shape[-2:], kernel, stride, padding))
    xpad = _pad_hw(bk.xp, x, padding)
    out = bk.xp.zeros((*x.shape[:-2], *out_hw), dtype=x.dtype)
    for i, j in _taps(kernel):
        r, c = _tap(i, j, out_hw, stride, (1, 1))
        out += xpad[..., r, c]
    return out / (kernel[0] * kernel[1])


def avg_pool2d_adjoint(bk, dy, in_hw, kernel, stride, padding):
    """The adjoint of :func:`avg_pool2d`: each output's ``dy/(kh·kw)`` added back to its window
    (docs/DERIVATIONS.md#pooling)."""
    out_hw = dy.shape[-2:]
    size = _buffer_hw(in_hw, out_hw, kernel, stride, padding, (1, 1))
    buf = bk.xp.zeros((*dy.shape[:-2], *size), dtype=dy.dtype)
    share = dy / (kernel[0] * kernel[1])
    for i, j in _taps(kernel):
        r, c = _tap(i, j, out_hw, stride, (1, 1))
        buf[..., r, c] += share
    (ph, pw), (h, wd) = padding, in_hw
    return buf[..., ph:ph + h, pw:pw + wd]


def max_pool2d(bk, x, kernel, stride, padding, dilation):
    """``y = max_{i,j} x_pad[..., s·h + d·i, s·w' + d·j]`` with −∞ padding; returns
    ``(y, arg)`` where ``arg`` is the winning tap ``i·kw + j``, the first in row-major order on
    ties (as PyTorch's CPU kernel; docs/DERIVATIONS.md#pooling)."""
    xp = bk.xp
    out_hw = tuple(conv_out_size(n, k, s, p, d)
                   for n, k, s, p, d in zip(x.shape[-2:], kernel, stride, padding, dilation))
    xpad = _pad_hw(xp, x, padding, value=-xp.inf)
    vals = xp.stack([xpad[(..., *_tap(i, j, out_hw, stride, dilation))]
                     for i, j in _taps(kernel)])
    arg = xp.argmax(vals, axis=0)
    return xp.max(vals, axis=0), arg


def max_pool2d_gather(bk, t, arg, kernel, stride, padding, dilation):
    """``t`` at the winning taps: the tangent map (JVP) of max pooling. ``arg`` broadcasts
    against ``t``'s leading axes (docs/DERIVATIONS.md#pooling)."""
    xp = bk.xp
    out_hw = arg.shape[-2:]
    tpad = _pad_hw(xp, t, padding)
    out = None
    for n, (i, j) in enumerate(_taps(kernel)):
        picked = xp.where(arg == n, tpad[(..., *_tap(i, j, out_hw, stride, dilation))], 0.0)
        out = picked if out is None else out + picked
    return out


def max_pool2d_adjoint(bk, dy, arg, in_hw, kernel, stride, padding, dilation):
    """The adjoint of :func:`max_pool2d_gather`: each ``dy`` goes to its window's winning tap
    (docs/DERIVATIONS.md#pooling)."""
    xp = bk.xp
    out_hw = dy.shape[-2:]
    size = _buffer_hw(in_hw, out_hw, kernel, stride, padding, dilation)
    buf = xp.zeros((*dy.shape[:-2], *size), dtype=dy.dtype)
    for n, (i, j) in enumerate(_taps(kernel)):
        r, c = _tap(i, j, out_hw, stride, dilation)
        buf[..., r, c] += xp.where(arg == n, dy, 0.0)
    (ph, pw), (h, wd) = padding, in_hw
    return buf[..., ph:ph + h, pw:pw + wd]
