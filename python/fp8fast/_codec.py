"""FP8 encode / decode with numpy conventions (any shape and strides, ``out=``, array-likes)."""

from __future__ import annotations

import os
from typing import Any, Optional

import ml_dtypes
import numpy as np

from . import _core

__all__ = [
    "BFLOAT16",
    "E4M3",
    "E5M2",
    "decode",
    "encode",
    "from_e4m3",
    "from_e5m2",
    "to_e4m3",
    "to_e5m2",
]

#: numpy dtype of E4M3 arrays (``ml_dtypes.float8_e4m3fn``).
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
#: numpy dtype of E5M2 arrays (``ml_dtypes.float8_e5m2``).
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
#: numpy dtype of bfloat16 arrays (``ml_dtypes.bfloat16``).
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

_FP8_DTYPES = {"e4m3": E4M3, "e5m2": E5M2}
_WIDE_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16), BFLOAT16)
_FORMAT_ALIASES = {
    "e4m3": "e4m3",
    "e4m3fn": "e4m3",
    "float8_e4m3fn": "e4m3",
    "f8_e4m3": "e4m3",
    "e5m2": "e5m2",
    "float8_e5m2": "e5m2",
    "f8_e5m2": "e5m2",
}


def format_name(fmt: Any) -> str:
    """Canonical format name (``"e4m3"`` or ``"e5m2"``) of a name or an FP8 dtype."""
    if isinstance(fmt, str):
        name = _FORMAT_ALIASES.get(fmt.lower())
        if name is not None:
            return name
    else:
        try:
            dt = np.dtype(fmt)
        except TypeError:
            dt = None
        for name, fp8 in _FP8_DTYPES.items():
            if dt == fp8:
                return name
    raise ValueError(f"unknown FP8 format {fmt!r}: expected 'e4m3' or 'e5m2'")


def fp8_dtype(fmt: Any) -> np.dtype:
    """The ml_dtypes dtype of a format name."""
    return _FP8_DTYPES[format_name(fmt)]


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """``arr``, or a copy in the machine's byte order when its floats are byte-swapped (``>f4``
    on a little-endian machine): equal values, which is what numpy's own functions compute on."""
    if arr.dtype.kind == "f" and not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def as_wide_array(x: Any, what: str = "input") -> np.ndarray:
    """``x`` as an array of a dtype the encoders take (ints and bools become float64, floats
    of the other byte order are swapped into a native copy)."""
    arr = native_byte_order(np.asarray(x))
    if arr.dtype in _WIDE_DTYPES:
        return arr
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    if arr.dtype in _FP8_DTYPES.values():
        raise TypeError(f"{what} is already FP8 ({arr.dtype}); decode it first")
    raise TypeError(
        f"cannot convert {what} of dtype {arr.dtype} to FP8: "
        "expected float64, float32, float16 or bfloat16 (or integers)"
    )


def as_fp8_array(q: Any, fmt: Any = None, what: str = "input") -> tuple[np.ndarray, str]:
    """``q`` viewed as ``uint8`` codes, with its format.

    FP8 dtypes name their format (``fmt`` must agree if given); ``uint8`` needs ``fmt``.
    """
    arr = np.asarray(q)
    name = None if fmt is None else format_name(fmt)
    for dtype_name, fp8 in _FP8_DTYPES.items():
        if arr.dtype == fp8:
            if name is not None and name != dtype_name:
                raise ValueError(f"{what} has dtype {arr.dtype} but fmt={fmt!r} was given")
            return arr.view(np.uint8), dtype_name
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8 and name is not None:
        # Array-likes of codes such as [0x38, 0x40] arrive as int64.
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{what} holds integers outside 0..255, so they are not FP8 bit patterns")
        arr = arr.astype(np.uint8)
    if arr.dtype == np.uint8:
        if name is None:
            raise ValueError(f"{what} is uint8 bit patterns: name the format with fmt='e4m3' or 'e5m2'")
        return arr, name
    raise TypeError(
        f"{what} must be float8_e4m3fn, float8_e5m2 or uint8 bit patterns, not {arr.dtype}"
    )


def wide_dtype(dtype: Any) -> np.dtype:
    """Check an output dtype of the decoders."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"unsupported output dtype {dtype!r}: {e}") from None
    if dt not in _WIDE_DTYPES:
        raise TypeError(
            f"unsupported output dtype {dt}: expected float32, float64, float16 or bfloat16"
        )
    return dt


def prepare_out(out: Any, shape: tuple, dtype: np.dtype, also_uint8: bool = False) -> np.ndarray:
    """Allocate the result, or check a user's ``out=`` array (shape, dtype, writeable)."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")
    if out.dtype != dtype and not (also_uint8 and out.dtype == np.uint8):
        expected = f"{dtype} (or uint8)" if also_uint8 else str(dtype)
        raise ValueError(f"out has dtype {out.dtype}, expected {expected}")
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def overlaps_itself(a: np.ndarray) -> bool:
    """Whether two elements of ``a`` may share memory (a stride-0 broadcast view, or an
    ``as_strided`` construction). The test is sufficient: each axis, from the smallest stride
    up, must step over everything the axes below it span."""
    extent = a.itemsize
    for stride, n in sorted((abs(st), n) for st, n in zip(a.strides, a.shape) if n > 1):
        if stride < extent:
            return True
        extent += stride * (n - 1)
    return False


def _run_into(result: np.ndarray, fill) -> None:
    """Call ``fill(target)``; an output whose elements overlap each other gets a temporary
    (the kernels write elements in parallel) and is then assigned like numpy would."""
    if overlaps_itself(result):
        tmp = np.empty(result.shape, result.dtype)
        fill(tmp)
        np.copyto(result, tmp)
    else:
        fill(result)


def _unaliased(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    # Like a ufunc: the result is as if the input had been read before anything was written.
    return src.copy() if np.may_share_memory(src, out) else src


def resolve_seed(seed: Optional[int]) -> int:
    """A stochastic-rounding seed as an unsigned 64-bit int (modulo 2**64); fresh when None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


def encode(
    x: Any,
    fmt: Any = "e4m3",
    *,
    saturate: bool = False,
    rounding: str = "nearest",
    seed: Optional[int] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Convert floats to FP8 (OCP OFP8 §5.2).

    Parameters
    ----------
    x : array_like
        float64, float32, float16 or ``ml_dtypes.bfloat16`` values, any shape and strides.
        Integers and bools are converted to float64 first.
    fmt : {"e4m3", "e5m2"} or FP8 dtype
        Target format.
    saturate : bool, default False
        False: values that round above the max normal become NaN (E4M3, which has no
        infinity) or ±Inf (E5M2), exactly like ``x.astype(ml_dtypes.float8_*)``.
        True: they become ±max normal (448 / 57344), and ±Inf does too (OFP8 saturating
        mode, CUDA ``__NV_SATFINITE``). NaN stays NaN (sign kept) in both modes.
    rounding : {"nearest", "stochastic"}, default "nearest"
        "nearest": round to nearest, ties to even, applied once (float64 input is not rounded
        through float32). "stochastic": round up with probability equal to the position of
        the value between its two FP8 neighbours, from a counter-based generator keyed by
        ``seed`` and the element's index: reproducible and independent of thread count.
    seed : int, optional
        Seed for stochastic rounding; a fresh random seed when omitted.
    out : ndarray, optional
        Where to write: same shape, dtype of ``fmt`` (or ``uint8`` for raw bit patterns), any
        strides. Returned.

    Returns
    -------
    ndarray
        ``ml_dtypes.float8_e4m3fn`` or ``float8_e5m2`` array of ``x``'s shape (``out`` if given).

    Raises
    ------
    TypeError
        unsupported input dtype (complex, object, strings, already FP8) or ``out`` type.
    ValueError
        unknown format or rounding, ``out`` of the wrong shape or dtype.

    Notes
    -----
    Works block-wise on dask arrays:
    ``dask.array.map_blocks(fp8fast.to_e4m3, x, dtype=fp8fast.E4M3)``. With
    ``rounding="stochastic"`` the element index restarts in every block, so give each block its
    own seed (e.g. from ``block_info``) or the blocks draw the same random bits.
    """
    name = format_name(fmt)
    src = as_wide_array(x)
    result = prepare_out(out, src.shape, _FP8_DTYPES[name], also_uint8=True)
    src = _unaliased(src, result)
    if rounding == "nearest":
        _run_into(result, lambda r: _core.encode_into(src, r.view(np.uint8), name, bool(saturate)))
    elif rounding == "stochastic":
        seed = resolve_seed(seed)
        _run_into(result, lambda r: _core.encode_stochastic_into(
            src, r.view(np.uint8), name, bool(saturate), seed))
    else:
        raise ValueError(f"unknown rounding {rounding!r}: expected 'nearest' or 'stochastic'")
    return result


def decode(
    q: Any,
    dtype: Any = None,
    *,
    fmt: Any = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Convert FP8 to a wider float type (exact: every FP8 value is representable).

    Parameters
    ----------
    q : array_like
        ``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2`` array, or ``uint8`` bit patterns with
        ``fmt`` given. Any shape and strides.
    dtype : dtype, default float32
        float32, float64, float16 or ``ml_dtypes.bfloat16``. Defaults to ``out.dtype`` when
        ``out`` is given.
    fmt : {"e4m3", "e5m2"}, optional
        Required for ``uint8`` input; must match an FP8 dtype otherwise.
    out : ndarray, optional
        Where to write (same shape, the output dtype, any strides). Returned.

    Returns
    -------
    ndarray
        Decoded values. NaN codes give the output type's quiet NaN with the code's sign;
        E5M2 infinities give infinities.
    """
    codes, name = as_fp8_array(q, fmt)
    if dtype is None:
        dt = out.dtype if isinstance(out, np.ndarray) else np.dtype(np.float32)
    else:
        dt = wide_dtype(dtype)
    result = prepare_out(out, codes.shape, dt)
    codes = _unaliased(codes, result)
    _run_into(result, lambda r: _core.decode_into(codes, r, name))
    return result


def to_e4m3(x: Any, *, saturate: bool = False, rounding: str = "nearest",
            seed: Optional[int] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Convert to E4M3 (``ml_dtypes.float8_e4m3fn``); see :func:`encode`."""
    return encode(x, "e4m3", saturate=saturate, rounding=rounding, seed=seed, out=out)


def to_e5m2(x: Any, *, saturate: bool = False, rounding: str = "nearest",
            seed: Optional[int] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Convert to E5M2 (``ml_dtypes.float8_e5m2``); see :func:`encode`."""
    return encode(x, "e5m2", saturate=saturate, rounding=rounding, seed=seed, out=out)


def from_e4m3(q: Any, dtype: Any = None, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode E4M3 (``float8_e4m3fn`` or ``uint8`` bits); see :func:`decode`."""
    return decode(q, dtype, fmt="e4m3", out=out)


def from_e5m2(q: Any, dtype: Any = None, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode E5M2 (``float8_e5m2`` or ``uint8`` bits); see :func:`decode`."""
    return decode(q, dtype, fmt="e5m2", out=out)
