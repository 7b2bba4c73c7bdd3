"""Scaled FP8 quantization: :func:`quantize`, :func:`dequantize`, :func:`amax`, :func:`quant_error`.

The scale is always the *dequantization multiplier*: ``x ≈ decode(q) * scale`` (the convention of
compressed-tensors ``weight_scale`` and DeepSeek-V3 ``weight_scale_inv``).

Stochastic rounding (``rounding="stochastic"`` here and in ``fp8fast.encode``) is defined exactly,
for a value ``v`` (the scaled value in :func:`quantize`) with magnitude ``a``, mantissa bits ``m``
(3 for E4M3, 2 for E5M2), smallest normal exponent ``emin`` (-6, -14), largest exponent ``emax``
(8, 15) and a 32-bit draw ``r``::

    e    = max(floor(log2 a), emin)         # FP8 subnormals share emin's spacing
    n    = a / 2**(e - m);  lo = floor(n);  frac = n - lo
    up   = floor(frac * 2**32) > r          # P(up) = frac, to 32 bits
    result magnitude = (lo + up) * 2**(e - m), sign of v kept

Only the two neighbouring FP8 values can appear. NaN stays NaN; ``e > emax`` (including ±Inf)
overflows; a result above max_normal (the upper neighbour of a value in the top gap, 480 for
E4M3 and 65536 for E5M2) overflows too: to ±max_normal when saturating, else to NaN (E4M3) or
±Inf (E5M2). So in the top gap a saturating encode always gives ±max_normal, and a
non-saturating one gives ±max_normal with probability ``1 - frac`` and overflows otherwise.

The draw of the element with C-order index ``i`` is::

    k0, k1 = low, high 32 bits of splitmix64(seed)
    r(i)   = mix32(mix32(lo32(i) ^ k0) ^ mix32(hi32(i) ^ k1))
    mix32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16

(all uint32 arithmetic), so results depend only on the seed and the element's position: the same
for any thread count, ISA path, memory layout or strides.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

from . import _codec, _core

__all__ = ["QuantError", "amax", "dequantize", "quant_error", "quantize"]

_FP8_DTYPES = _codec._FP8_DTYPES
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_OUTPUT_NAMES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.float16): "float16",
    _BF16: "bfloat16",
}
_GRANULARITIES = ("tensor", "channel", "block", "mx")


def _block(block) -> Tuple[int, int]:
    if isinstance(block, (bool, np.bool_, str, bytes)):
        # A string is a sequence of characters: "22" must not become (2, 2).
        raise TypeError(f"block must be an int or a pair of ints, got {block!r}")
    if isinstance(block, (int, np.integer)):
        block = (int(block), int(block))
    try:
        br, bc = (operator.index(b) for b in block)  # ints only: 2.5 is not a block size
    except TypeError:
        raise TypeError(f"block must be an int or a pair of ints, got {block!r}") from None
    except ValueError:
        raise ValueError(f"block must be a pair of positive integers, got {block!r}") from None
    if not (1 <= br < 2**62 and 1 <= bc < 2**62):
        raise ValueError(f"block sizes must be >= 1, got ({br}, {bc})")
    return br, bc


def _check_granularity(granularity) -> str:
    if granularity not in _GRANULARITIES:
        raise ValueError(
            f'unknown granularity {granularity!r}: expected "tensor", "channel", "block" or "mx"'
        )
    return granularity


def quantize(
    x,
    fmt="e4m3",
    *,
    granularity: str = "tensor",
    axis: int = 0,
    block: Union[int, Tuple[int, int]] = (128, 128),
    rounding: str = "nearest",
    seed: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Quantize ``x`` to FP8 with scales, so that ``x ≈ decode(q) * scale``.

    Parameters
    ----------
    x : array_like
        float64, float32, float16 or bfloat16 data, any shape and strides.
    fmt : {"e4m3", "e5m2"} or ml_dtypes float8 dtype
        Target format.
    granularity : {"tensor", "channel", "block", "mx"}
        Which elements share a scale:

        - ``"tensor"``: one scale, returned as a 0-d float32 array.
        - ``"channel"``: one per index along ``axis``; the scale keeps the dimensions
          (``(rows, 1)`` for a 2-D ``x`` and ``axis=0``).
        - ``"block"``: 2-D ``x`` only; ``block = (br, bc)`` tiles (default 128x128, the
          DeepSeek-V3 / FineGrainedFP8 layout), scale shape ``(ceil(rows/br), ceil(cols/bc))``;
          edge blocks are partial.
        - ``"mx"``: OCP MX v1.0 MXFP8: 32 consecutive elements along the last axis share an
          E8M0 power of two, scale shape ``(..., ceil(cols/32))`` with dtype
          ``ml_dtypes.float8_e8m0fnu``.
    axis : int
        The channel axis (``"channel"`` only). Negative values count from the end.
    block : (int, int) or int
        Block shape for ``"block"``.
    rounding : {"nearest", "stochastic"}
        Round to nearest-even, or stochastically (see Notes).
    seed : int, optional
        Seed for stochastic rounding (taken modulo ``2**64``, as by ``fp8fast.encode``);
        ``None`` draws a fresh one.

    Returns
    -------
    q : numpy.ndarray
        ``x``'s shape, dtype ``float8_e4m3fn`` / ``float8_e5m2``, C-contiguous.
    scale : numpy.ndarray
        float32 dequantization multipliers (E8M0 for ``"mx"``) in the layout above.

    Notes
    -----
    Definitions (exact; the tests re-implement them):

    - ``amax`` of a group is its largest *finite* magnitude: NaN and ±Inf are ignored.
    - tensor / channel / block: ``scale = float32(amax / max_normal)`` (448 for E4M3, 57344 for
      E5M2), the quotient rounded once; a group with ``amax == 0`` (all zeros, or nothing
      finite) gets ``scale = 1``, so it dequantizes to exact zeros. The scale is clamped to
      ``[2**-126, float32 max]`` (reachable only for float32 groups with amax below
      ``448 * 2**-126`` or float64 input outside the float32 range).
    - mx: shared exponent ``X = clamp(floor(log2(amax)) - emax_elem, -127, 127)`` with
      ``emax_elem`` = 8 (E4M3) or 15 (E5M2); ``X = 0`` (scale 1, code 127) for a zero group. The
      clamp is the E8M0 range (codes 0..254); groups beyond it saturate or flush to zero. As in
      OCP MX v1.0, the group's largest magnitudes land in ``[2**emax, 2**(emax+1))`` and those
      above max_normal (448 for E4M3, 57344 for E5M2) saturate to it: MX trades that clipping
      of the top of each group for power-of-two scales.
    - The elements are ``q = encode_saturating(x * inv_scale)``: for float32, float16 and
      bfloat16 input, ``inv_scale = np.float32(1) / scale`` in float32 and the product is one
      float32 multiply (``x`` widened exactly to float32); for float64 input
      ``inv_scale = 1.0 / float64(scale)`` and the product is in float64, encoded directly
      (rounded once). For mx, ``inv_scale = 2**-X`` exactly. Multiplying by the reciprocal is
      the FP8 training convention and keeps the pass a multiply; for powers of two it equals
      division.
    - Encoding saturates: ±Inf becomes ±max_normal, a NaN stays NaN (with its sign), and the
      other elements of its group are scaled by the group's finite amax.
    - Stochastic rounding rounds ``x * inv_scale`` up with probability equal to its fractional
      position between the two neighbouring FP8 values, from a counter-based generator keyed
      by ``(seed, C-order element index)``: reproducible and identical for any thread count.
      The exact definition is in this module's docstring (``fp8fast._quant``).

    The input is read twice (one amax pass, one fused scale-and-encode pass), multi-threaded for
    large inputs; the result does not depend on the thread count or the ISA path.
    """
    fmt = _codec.format_name(fmt)
    granularity = _check_granularity(granularity)
    x = _codec.as_wide_array(x)
    br, bc = _block(block) if granularity == "block" else (1, 1)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f'unknown rounding {rounding!r}: expected "nearest" or "stochastic"')
    if rounding == "stochastic":
        seed = _codec.resolve_seed(seed)  # as fp8fast.encode: modulo 2**64, fresh when None
    if granularity == "channel":
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an integer, got {axis!r}")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis {axis} is out of bounds for an array of dimension {x.ndim}")
    else:
        axis = 0
    q, scale = _core.quantize(x, fmt, granularity, int(axis), (br, bc), rounding, seed)
    q = q.view(_FP8_DTYPES[fmt])
    if granularity == "mx":
        scale = scale.view(_E8M0)
    return q, scale


def _scale_f32(scale: np.ndarray, expected: str) -> np.ndarray:
    if scale.dtype == np.float32:
        return scale
    if scale.dtype in (np.dtype(np.float16), _BF16):
        return scale.astype(np.float32)
    if scale.dtype == np.float64:
        s32 = scale.astype(np.float32)
        if np.array_equal(s32.astype(np.float64), scale, equal_nan=True):
            return s32
        raise ValueError("float64 scales must be exactly representable in float32")
    raise ValueError(f"scale must be float32 (got {scale.dtype}); expected shape {expected}")


def _as_scale(scale) -> np.ndarray:
    """``scale`` as an array; a number is a float32 per-tensor scale. A Python float is rounded
    to float32 once (numpy's rule for a Python scalar combined with float32 data, NEP 50); an
    integer (Python or numpy) must be exactly representable in float32, as float64 scales must.
    """
    if isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"scale must be a number or an array of float32, got {scale!r}")
    if isinstance(scale, (int, np.integer)):
        value = int(scale)
        try:
            with np.errstate(over="ignore"):
                s32 = np.float32(value)
        except OverflowError:  # beyond float64
            s32 = np.float32(np.inf)
        if not np.isfinite(s32) or int(s32) != value:
            raise ValueError(f"integer scale {value} is not exactly representable in float32")
        return np.asarray(s32)
    if isinstance(scale, float) and not isinstance(scale, np.floating):
        with np.errstate(over="ignore"):  # reported below
            s32 = np.float32(scale)
        if math.isfinite(scale) and not np.isfinite(s32):
            raise ValueError(f"scale {scale!r} is outside the float32 range")
        return np.asarray(s32)
    return _codec.native_byte_order(np.asarray(scale))


def _accepted_scale_shapes(q_shape: tuple, block: Tuple[int, int]) -> str:
    """The scale shapes :func:`dequantize` takes for codes of ``q_shape``, in words."""
    shapes = ["one number (shape () or (1,)) for the tensor"]
    long_axes = [i for i, d in enumerate(q_shape) if d != 1]
    if long_axes:
        per_axis = [
            _shape_str(tuple(d if i == ax else 1 for i, d in enumerate(q_shape))) for ax in long_axes
        ]
        shapes.append(f"one per channel {' or '.join(per_axis)}")
    if len(q_shape) == 2:
        br, bc = block
        shapes.append(
            f"one per {br}x{bc} block {_shape_str((-(-q_shape[0] // br), -(-q_shape[1] // bc)))}"
        )
    if q_shape:
        mx = q_shape[:-1] + (-(-q_shape[-1] // 32),)
        shapes.append(f"E8M0 mx scales {_shape_str(mx)}")
    return ", ".join(shapes[:-1]) + " or " + shapes[-1] if len(shapes) > 1 else shapes[0]


def _shape_str(shape) -> str:
    return str(tuple(shape))


def _infer_granularity(scale: np.ndarray, q_shape: tuple, block: Tuple[int, int]) -> str:
    """The granularity a scale's dtype and shape imply for codes of ``q_shape``; a shape that
    fits none is a ``ValueError`` listing the ones that would."""
    if scale.dtype == _E8M0:
        return "mx"
    if scale.size == 1:
        return "tensor"
    if len(scale.shape) == len(q_shape) and all(s in (1, d) for s, d in zip(scale.shape, q_shape)):
        return "channel"  # (a scale with two long axes gets the channel rule's error)
    if len(q_shape) == 2 and scale.shape == (-(-q_shape[0] // block[0]), -(-q_shape[1] // block[1])):
        return "block"
    raise ValueError(
        f"scale has shape {_shape_str(scale.shape)}, which fits no layout of q of shape "
        f"{_shape_str(q_shape)}: expected {_accepted_scale_shapes(q_shape, block)}"
    )


def dequantize(
    q,
    scale,
    *,
    dtype=np.float32,
    granularity: Optional[str] = None,
    block: Union[int, Tuple[int, int]] = (128, 128),
    fmt=None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Dequantize: ``decode(q) * scale`` with ``scale`` broadcast per layout, in one pass.

    Parameters
    ----------
    q : array_like
        FP8 codes (``float8_e4m3fn`` / ``float8_e5m2``, or ``uint8`` with ``fmt`` given).
    scale : array_like or number
        Dequantization multipliers as returned by :func:`quantize`: float32 (float16, bfloat16,
        and float64 or integers exactly representable in float32, are accepted) or E8M0 for
        mx. A Python number is a per-tensor scale, rounded to float32 as numpy rounds Python
        scalars combined with float32 arrays.
    dtype : dtype
        float32 (default), float64, float16 or bfloat16.
    granularity : {"tensor", "channel", "block", "mx"}, optional
        Inferred when ``None``: E8M0 scale -> mx; one element -> tensor; same number of
        dimensions as ``q`` with a single axis of ``q``'s length and ones elsewhere -> channel;
        the block grid of a 2-D ``q`` -> block. Any other shape is a ``ValueError`` listing the
        shapes that fit ``q``.
    block : (int, int) or int
        Block shape for ``"block"`` (default 128x128).
    fmt : {"e4m3", "e5m2"}, optional
        Required when ``q`` is ``uint8``.
    out : numpy.ndarray, optional
        Where to write: ``q``'s shape and ``dtype`` (``out.dtype`` when ``dtype`` is left at
        its default), any strides. Returned.

    Returns
    -------
    numpy.ndarray
        ``q``'s shape, of ``dtype`` (``out`` if given, else a new C-contiguous array).

    Notes
    -----
    float32 output is ``decode(q) * scale`` as one float32 multiply (correctly rounded);
    float16 / bfloat16 output is that float32 product rounded to nearest-even; float64 output is
    exact. E8M0 scales are ``2**(code - 127)``; the NaN code 0xFF gives NaN. A wrong scale shape
    or dtype raises ``ValueError`` naming the expected shape.
    """
    q, fmt = _codec.as_fp8_array(q, fmt, what="q")
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if dtype is np.float32 and out.dtype in _OUTPUT_NAMES:
            dtype = out.dtype
        if out.dtype != np.dtype(dtype):
            raise TypeError(f"out has dtype {out.dtype} but dtype={np.dtype(dtype)} was asked for")
        if out.shape != q.shape:
            raise ValueError(f"out has shape {_shape_str(out.shape)}, expected {_shape_str(q.shape)}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    out_dtype = np.dtype(dtype)
    if out_dtype not in _OUTPUT_NAMES:
        raise TypeError(
            f"cannot dequantize to {out_dtype}: expected float32, float64, float16 or bfloat16"
        )
    scale = _as_scale(scale)
    if granularity is None:
        granularity = _infer_granularity(scale, q.shape, _block(block))
    granularity = _check_granularity(granularity)
    axis = 0
    br, bc = _block(block) if granularity == "block" else (1, 1)
    if granularity == "mx":
        if q.ndim == 0:
            raise ValueError("mx granularity needs at least 1 dimension")
        expected = q.shape[:-1] + (-(-q.shape[-1] // 32),)
        if scale.dtype not in (_E8M0, np.dtype(np.uint8)):
            raise ValueError(
                f"mx scales must be float8_e8m0fnu (or uint8 codes), got {scale.dtype}; "
                f"expected shape {_shape_str(expected)}"
            )
        if scale.shape != expected:
            raise ValueError(
                f"mx scale has shape {_shape_str(scale.shape)}, expected {_shape_str(expected)}"
            )
        scale = scale.view(np.uint8)
    elif granularity == "tensor":
        if scale.size != 1:
            raise ValueError(
                f"tensor scale has shape {_shape_str(scale.shape)}, expected () or (1,)"
            )
        scale = _scale_f32(scale, "()").reshape(())
    elif granularity == "channel":
        hint = "one axis of q's length and ones elsewhere, e.g. " + _shape_str(
            q.shape[:1] + (1,) * (q.ndim - 1)
        )
        if scale.ndim != q.ndim:
            raise ValueError(
                f"channel scale has shape {_shape_str(scale.shape)}, expected {q.ndim} "
                f"dimensions: {hint}"
            )
        long_axes = [i for i, s in enumerate(scale.shape) if s != 1]
        if len(long_axes) > 1 or any(scale.shape[i] != q.shape[i] for i in long_axes):
            raise ValueError(
                f"channel scale has shape {_shape_str(scale.shape)} for q of shape "
                f"{_shape_str(q.shape)}: expected {hint}"
            )
        if not long_axes:
            granularity = "tensor"
            scale = _scale_f32(scale, "()").reshape(())
        else:
            axis = long_axes[0]
            scale = _scale_f32(scale, _shape_str(scale.shape))
    else:  # block
        if q.ndim != 2:
            raise ValueError(f"block granularity needs a 2-D q, got shape {_shape_str(q.shape)}")
        expected = (-(-q.shape[0] // br), -(-q.shape[1] // bc))
        if scale.shape != expected:
            raise ValueError(
                f"block scale has shape {_shape_str(scale.shape)}, expected "
                f"{_shape_str(expected)} for q of shape {_shape_str(q.shape)} with block "
                f"({br}, {bc})"
            )
        scale = _scale_f32(scale, _shape_str(expected))
    # The kernels write a C-contiguous, aligned float array in place; any other out (strided,
    # or unaligned as from a byte buffer) gets the result through a copy.
    aligned = out is not None and out.flags.c_contiguous and out.flags.aligned
    direct = out if aligned else None
    if direct is not None and np.may_share_memory(direct, q):
        direct = None  # out overlaps the codes: compute aside, then copy
    result = _core.dequantize(
        q, scale, fmt, granularity, axis, (br, bc), _OUTPUT_NAMES[out_dtype], direct
    )
    if out is not None and direct is None:
        np.copyto(out, result)
        return out
    return result


def amax(
    x,
    axis: Union[int, Sequence[int], None] = None,
    *,
    ignore_nan: bool = False,
    keepdims: bool = False,
):
    """Largest magnitude, ``np.max(np.abs(x), axis)``, in one SIMD multi-threaded pass.

    Parameters
    ----------
    x : array_like
        float64, float32, float16 or bfloat16.
    axis : None, int or tuple of int
        Axes to reduce (all by default).
    ignore_nan : bool
        ``False`` (default): a NaN in a reduced group makes its result NaN, like ``np.max``.
        ``True``: NaNs are skipped, like ``np.nanmax`` (a group of only NaNs gives 0).
    keepdims : bool
        Keep reduced axes with length 1.

    Returns
    -------
    numpy scalar or numpy.ndarray
        Of ``x``'s dtype (the maximum of magnitudes is exact). ±Inf counts as a magnitude.
        An empty group gives 0 (the identity of a maximum of magnitudes), where numpy raises.

    Notes
    -----
    The result is exact and independent of the thread count (a maximum is order-free).
    """
    x = _codec.as_wide_array(x)
    nd = x.ndim
    if axis is None:
        axes = tuple(range(nd))
    else:
        seq = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        axes = []
        for a in seq:
            a = int(a)
            if not -nd <= a < nd:
                raise ValueError(f"axis {a} is out of bounds for an array of dimension {nd}")
            axes.append(a % nd)
        if len(set(axes)) != len(axes):
            raise ValueError("repeated axis in amax")
        axes = tuple(sorted(axes))
    kept = tuple(i for i in range(nd) if i not in axes)
    kept_shape = tuple(x.shape[i] for i in kept)
    moved = np.transpose(x, kept + axes) if nd else x
    rows = math.prod(kept_shape)
    cols = math.prod(x.shape[i] for i in axes)
    res = _core.amax_rows(moved.reshape(rows, cols), bool(ignore_nan)).astype(x.dtype)
    res = res.reshape(kept_shape)
    if keepdims:
        res = res.reshape(tuple(1 if i in axes else x.shape[i] for i in range(nd)))
    elif res.ndim == 0:
        return res[()]
    return res


class QuantError(NamedTuple):
    """Error of a quantization: ``sqnr_db`` and ``max_rel_error`` (see :func:`quant_error`)."""

    sqnr_db: float
    max_rel_error: float


def quant_error(
    x,
    q,
    scale,
    *,
    granularity: Optional[str] = None,
    block: Union[int, Tuple[int, int]] = (128, 128),
    fmt=None,
) -> QuantError:
    """Signal-to-quantization-noise ratio and max relative error of ``(q, scale)`` against ``x``.

    Parameters
    ----------
    x : array_like
        The original data.
    q, scale, granularity, block, fmt
        As for :func:`dequantize`.

    Returns
    -------
    QuantError
        ``sqnr_db = 10 * log10(sum(x**2) / sum((x - x2)**2))`` and
        ``max_rel_error = max(|x - x2| / |x|)``, where ``x2 = dequantize(q, scale)`` in float64
        and both are taken over the finite elements of ``x`` (the relative error over the
        finite non-zero ones). No noise gives ``inf`` dB; no signal but some noise ``-inf``;
        no non-zero finite element gives a relative error of 0.

    Notes
    -----
    Computed in float64 with numpy's pairwise summation in a fixed order, so the result does
    not depend on the thread count.
    """
    xf = np.asarray(_codec.as_wide_array(x), dtype=np.float64)
    x2 = dequantize(q, scale, dtype=np.float64, granularity=granularity, block=block, fmt=fmt)
    if xf.shape != x2.shape:
        raise ValueError(f"x has shape {xf.shape} but q has shape {x2.shape}")
    finite = np.isfinite(xf)
    xs = xf[finite]
    err = xs - x2[finite]
    signal = float(np.sum(xs * xs))
    noise = float(np.sum(err * err))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    nz = xs != 0
    max_rel = float(np.max(np.abs(err[nz]) / np.abs(xs[nz]))) if np.any(nz) else 0.0
    return QuantError(sqnr, max_rel)
