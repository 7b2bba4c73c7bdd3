"""FP8 matrix multiplication: :func:`matmul` and :func:`linear`."""

from __future__ import annotations

import operator

import ml_dtypes
import numpy as np

from . import _codec, _core

__all__ = ["linear", "matmul"]

_FP8_DTYPES = {dt: name for name, dt in _codec._FP8_DTYPES.items()}
_WIDE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), _codec.BFLOAT16)
_OUT_DTYPES = _WIDE_DTYPES


def _operand(x, fmt, name):
    """Return ``(array, fmt)``: FP8 dtypes viewed as uint8 with their format."""
    x = _codec.native_byte_order(np.asarray(x))
    dt = x.dtype
    if dt in _FP8_DTYPES:
        own = _FP8_DTYPES[dt]
        if fmt is not None and _codec.format_name(fmt) != own:
            raise ValueError(f"fmt_{name}={fmt!r} contradicts the dtype {dt} of {name}")
        return x.view(np.uint8), own
    if dt == np.uint8:
        if fmt is None:
            raise TypeError(
                f"{name} is a uint8 array (shape {x.shape}): name its FP8 format with "
                f"fmt_{name}='e4m3' or 'e5m2'"
            )
        return x, _codec.format_name(fmt)
    if dt in _WIDE_DTYPES:
        if fmt is not None:
            raise ValueError(f"fmt_{name}={fmt!r} given but {name} has dtype {dt}, not FP8 bits")
        return x, None
    raise TypeError(
        f"matmul: unsupported dtype {dt} for {name} (shape {x.shape}): expected float8_e4m3fn, "
        f"float8_e5m2, uint8 (with fmt_{name}), float32, float16 or bfloat16"
    )


def _scale(s, name, per_row):
    """A scale as a float32 array of at least 2 dimensions (the last two laid out like the
    operand, any before them batch dimensions); 1-D scales are per row of ``a`` / per column
    of ``b``."""
    if s is None:
        return None
    s = np.asarray(s)
    if s.dtype.kind not in "fiu" and s.dtype not in (
        np.dtype(ml_dtypes.bfloat16),
        np.dtype(ml_dtypes.float8_e8m0fnu),
        *_FP8_DTYPES,
    ):
        raise TypeError(f"{name} must be a real number array, got dtype {s.dtype}")
    s = s.astype(np.float32, copy=False)
    if s.ndim == 0:
        return s.reshape(1, 1)
    if s.ndim == 1:
        return s.reshape(-1, 1) if per_row else s.reshape(1, -1)
    return s


def _block_size(block):
    """The block size as an int: integers only (``2.5`` or ``'a'`` is a TypeError, as for
    :func:`fp8fast.quantize`), at least 1."""
    if isinstance(block, (bool, np.bool_)):
        raise TypeError(f"block must be an int, got {block!r}")
    try:
        block = operator.index(block)
    except TypeError:
        raise TypeError(f"block must be an int, got {block!r}") from None
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return block


def matmul(a, b, *, scale_a=None, scale_b=None, out_dtype=None, out=None, block=128,
           fmt_a=None, fmt_b=None):
    """Matrix product of FP8 (or wider) operands, ``(a * scale_a) @ (b * scale_b)``.

    Products are exact and accumulated in float32: every element of the result is within
    ``(k + 2) * 2**-23 * (|A| @ |B|)`` of the float64 product of the scaled operands. FP8
    operands are decoded while packing cache blocks (never copied whole), on the fastest
    kernel of this CPU (AVX-512 BF16 dot products for FP8 x FP8), with all threads of
    ``fp8fast`` and the GIL released; results do not depend on the thread count.

    Parameters
    ----------
    a, b : array_like
        Operands with ``numpy.matmul`` shapes: ``a`` is ``(..., m, k)`` (or ``(k,)``), ``b`` is
        ``(..., k, n)`` (or ``(k,)``), leading batch dimensions broadcast. Any strides:
        ``b = w.T`` of an ``[out, in]`` weight is used in place. Dtypes: ``float8_e4m3fn``,
        ``float8_e5m2`` (either format on either side, mixed allowed), ``uint8`` FP8 bits with
        ``fmt_a`` / ``fmt_b``, or ``float32``, ``float16``, ``bfloat16`` (e.g. activations
        times FP8 weights).
    scale_a, scale_b : array_like, optional
        Dequantization multipliers (``x ~ decode(q) * scale``). A scalar is a per-tensor
        scale. A 1-D ``scale_a`` has one entry per row of ``a``, a 1-D
        ``scale_b`` one per column of ``b``. 2-D scales are laid out like their operand, each
        dimension 1 (broadcast), full, or ``ceil(dim / block)`` (blocks):
        ``scale_a`` is ``(1 | m | ceil(m/block), 1 | ceil(k/block))`` (DeepSeek-V3
        activations: ``(m, ceil(k/128))``), ``scale_b`` is
        ``(1 | ceil(k/block), 1 | n | ceil(n/block))`` (a ``[out, in]`` weight's 128 x 128
        ``weight_scale_inv`` transposed). Scales that vary along K are applied to each K
        block's float32 sum. Scales of up to 2 dimensions serve every matrix of a batch;
        leading dimensions before those two give each matrix its own, and broadcast against
        the batch dimensions of the product.
    out_dtype : dtype, optional
        ``float32`` (default), ``float16`` or ``bfloat16``; the float32 result is rounded to
        nearest even. Defaults to ``out.dtype`` when ``out`` is given.
    out : ndarray, optional
        Array of the result's shape and dtype to write in place (its previous contents,
        NaN included, never affect the result).
    block : int, optional
        Block size of block scales (default 128).
    fmt_a, fmt_b : {'e4m3', 'e5m2'}, optional
        FP8 format of a ``uint8`` operand.

    Returns
    -------
    ndarray
        The product, of shape ``numpy.matmul(a, b).shape``; ``out`` if given. As with
        ``numpy.matmul``, two 1-D operands give a scalar.

    Raises
    ------
    TypeError
        Unsupported operand, scale or output dtype; ``uint8`` without a format.
    ValueError
        Mismatched inner dimensions, batch dimensions that do not broadcast, scales or
        ``out`` of the wrong shape (the message names the shapes).

    Notes
    -----
    NaN and infinity propagate to the outputs whose row and column they touch, and nowhere
    else; a non-finite scale is applied to each element as in the float64 reference
    (``0 * inf`` is NaN). A few rows times FP8 weights (up to 48-128 rows, by CPU and
    activation dtype) take paths that stream the FP8 bytes instead of packing them: a GEMV
    path for weights stored along K (``w.T``) and an axpy path for weights stored
    ``[in, out]`` (``x @ w``, 16-24 rows).

    Examples
    --------
    >>> import numpy as np, ml_dtypes, fp8fast
    >>> a = np.ones((2, 3), ml_dtypes.float8_e4m3fn)
    >>> w = np.full((4, 3), 0.5, ml_dtypes.float8_e4m3fn)   # [out, in]
    >>> fp8fast.matmul(a, w.T, scale_b=2.0)
    array([[3., 3., 3., 3.],
           [3., 3., 3., 3.]], dtype=float32)
    """
    a_in, b_in = np.asarray(a), np.asarray(b)
    a, fmt_a = _operand(a_in, fmt_a, "a")
    b, fmt_b = _operand(b_in, fmt_b, "b")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: operands must have at least one dimension, got a {a.shape} and b {b.shape}"
        )
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    if a_vec:
        a = a[None, :]
    if b_vec:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"matmul: inner dimensions differ: a has shape {a_in.shape} (k = {a.shape[-1]}) "
            f"and b has shape {b_in.shape} (k = {b.shape[-2]})"
        )
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: batch dimensions of a {a_in.shape} and b {b_in.shape} do not broadcast"
        ) from None
    full_shape = tuple(batch) + (a.shape[-2], b.shape[-1])
    shape = full_shape
    if b_vec:
        shape = shape[:-1]
    if a_vec:
        shape = shape[:-2] + shape[-1:] if not b_vec else shape[:-1]
    block = _block_size(block)
    sa = _scale(scale_a, "scale_a", per_row=True)
    sb = _scale(scale_b, "scale_b", per_row=False)

    scalar_result = out is None and shape == ()  # 1-D @ 1-D: numpy returns a scalar
    if out is None:
        dt = np.dtype(np.float32 if out_dtype is None else out_dtype)
        if dt not in _OUT_DTYPES:
            raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {dt}")
        out = np.empty(shape, dt)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out_dtype is not None and np.dtype(out_dtype) != out.dtype:
            raise TypeError(f"out has dtype {out.dtype} but out_dtype is {np.dtype(out_dtype)}")
        if out.dtype not in _OUT_DTYPES:
            raise TypeError(f"out must be float32, float16 or bfloat16, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(
                f"out has shape {out.shape} but a {a_in.shape} @ b {b_in.shape} has shape {shape}"
            )
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    per_batch = [s for s in (sa, sb) if s is not None and s.ndim > 2]
    for s, name in ((sa, "scale_a"), (sb, "scale_b")):
        if s is not None and s.ndim > 2:
            try:
                ok = np.broadcast_shapes(s.shape[:-2], batch) == tuple(batch)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{name} has shape {s.shape}: its batch dimensions {s.shape[:-2]} do not "
                    f"broadcast to the product's {tuple(batch)}"
                )
    if out.size == 0:
        return out  # nothing to compute, however many (empty) batch entries there are
    target = out
    if np.may_share_memory(out, a) or np.may_share_memory(out, b) or _codec.overlaps_itself(out):
        target = np.empty(shape, out.dtype)
    view = target
    if b_vec:
        view = view[..., None]
    if a_vec:
        view = view[..., None, :]
    if per_batch:
        # One product per batch entry, each with its own scales (each one multi-threaded).
        def entries(x):
            return np.broadcast_to(x, tuple(batch) + x.shape[-2:])

        a_b, b_b = entries(a), entries(b)
        sa_b = entries(sa) if sa is not None and sa.ndim > 2 else None
        sb_b = entries(sb) if sb is not None and sb.ndim > 2 else None
        for idx in np.ndindex(*batch):
            _core.matmul_into(a_b[idx], b_b[idx], view[idx], fmt_a=fmt_a, fmt_b=fmt_b,
                              scale_a=sa if sa_b is None else sa_b[idx],
                              scale_b=sb if sb_b is None else sb_b[idx], block=block)
    else:
        _core.matmul_into(a, b, view, fmt_a=fmt_a, fmt_b=fmt_b, scale_a=sa, scale_b=sb,
                          block=block)
    if target is not out:
        np.copyto(out, target)
    return out[()] if scalar_result else out


def linear(x, w, w_scale=None, bias=None, *, x_scale=None, out_dtype=None, out=None,
           fmt=None, block=128):
    """Linear layer with an ``[out, in]`` weight: ``(x * x_scale) @ (w * w_scale).T + bias``.

    A thin convenience over :func:`matmul` for checkpoint layouts (compressed-tensors,
    DeepSeek-V3 / FineGrainedFP8): ``w`` is used through the transposed view ``w.T``
    (no copy), which takes the GEMV path for a few rows of ``x``. For an ``[in, out]``
    weight (``x @ w``), call :func:`matmul` directly.

    Parameters
    ----------
    x : array_like
        Activations ``(..., in)``: float32, float16, bfloat16 or FP8. Leading dimensions
        (batch x sequence) form the rows of one product.
    w : array_like
        Weight ``(out, in)``: FP8 (or ``uint8`` bits with ``fmt``) or a wider float type.
    w_scale : array_like, optional
        Dequantization multiplier of ``w``: a scalar (per tensor), ``(out,)`` or
        ``(out, 1)`` (per output channel), or ``(ceil(out/block), ceil(in/block))`` (block
        scales, DeepSeek-V3 ``weight_scale_inv``).
    bias : array_like, optional
        ``(out,)``, added in float32.
    x_scale : array_like, optional
        Scale of ``x`` as ``scale_a`` of :func:`matmul`.
    out_dtype : dtype, optional
        ``float32`` (default), ``float16`` or ``bfloat16``.
    out : ndarray, optional
        Output array (only without ``bias``).
    fmt : {'e4m3', 'e5m2'}, optional
        FP8 format of a ``uint8`` weight.
    block : int, optional
        Block size of block scales (default 128).

    Returns
    -------
    ndarray
        ``(..., out)``.

    Examples
    --------
    >>> import numpy as np, ml_dtypes, fp8fast
    >>> w = np.full((2, 3), 2.0, ml_dtypes.float8_e4m3fn)
    >>> fp8fast.linear(np.ones(3, np.float32), w, w_scale=0.5, bias=np.array([1.0, -1.0]))
    array([4., 2.], dtype=float32)
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"linear: w must be a 2-D [out, in] weight, got shape {w.shape}")
    x = np.asarray(x)
    if x.ndim > 2 and (x_scale is None or np.ndim(x_scale) == 0):
        # Leading dimensions (batch x sequence) are rows of one product: one call with
        # m = batch * sequence, not one per batch entry.
        lead = x.shape[:-1]
        flat_out = None
        if out is not None:
            flat_out = out.view()
            try:
                flat_out.shape = (-1, out.shape[-1])  # a view, never a copy
            except AttributeError:
                flat_out = None
        if out is None or flat_out is not None:
            y = linear(x.reshape(-1, x.shape[-1]), w, w_scale, bias, x_scale=x_scale,
                       out_dtype=out_dtype, out=flat_out, fmt=fmt, block=block)
            return out if out is not None else y.reshape(lead + y.shape[-1:])
    sb = None
    if w_scale is not None:
        s = np.asarray(w_scale)
        if s.ndim <= 1:
            sb = s  # scalar, or one per output channel = per column of w.T
        elif s.ndim == 2:
            sb = s.T
        else:
            raise ValueError(f"linear: w_scale has shape {s.shape}: expected at most 2 dimensions")
    if bias is None:
        return matmul(x, w.T, scale_a=x_scale, scale_b=sb, out_dtype=out_dtype, out=out,
                      block=block, fmt_b=fmt)
    if out is not None:
        raise ValueError("linear: out= is not supported together with bias")
    y = matmul(x, w.T, scale_a=x_scale, scale_b=sb, block=block, fmt_b=fmt)
    bias = np.asarray(bias, dtype=np.float32)
    if bias.shape not in ((w.shape[0],), (1,), ()):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({w.shape[0]},)")
    y += bias
    dt = np.dtype(np.float32 if out_dtype is None else out_dtype)
    if dt not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {dt}")
    return y if dt == np.float32 else y.astype(dt)
