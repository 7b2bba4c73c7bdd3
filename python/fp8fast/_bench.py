"""Side-by-side conversion timings: fp8fast vs ml_dtypes ``astype`` vs ``np.copyto`` of float32.

Used by ``fp8fast bench``. The asv suite in ``benches/`` times the same cases one by one.
Every figure is the best of several interleaved repetitions, and the table reports ratios
measured in the same run, so machine-wide drift cancels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _codec, _config


@dataclass(frozen=True)
class Case:
    """One conversion: source dtype, target dtype, fp8fast call, ml_dtypes equivalent."""

    name: str
    src_dtype: np.dtype
    dst_dtype: np.dtype
    fast: Callable[[np.ndarray, np.ndarray], object]
    saturate: bool = False


def _enc(fmt: str, saturate: bool) -> Callable[[np.ndarray, np.ndarray], object]:
    return lambda x, out: _codec.encode(x, fmt, saturate=saturate, out=out)


def _dec(x: np.ndarray, out: np.ndarray) -> object:
    return _codec.decode(x, out=out)


F32, F64, F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
BF16, E4M3, E5M2 = _codec.BFLOAT16, _codec.E4M3, _codec.E5M2

CASES = [
    Case("f32->e4m3", F32, E4M3, _enc("e4m3", False)),
    Case("f32->e4m3 sat", F32, E4M3, _enc("e4m3", True), saturate=True),
    Case("f32->e5m2", F32, E5M2, _enc("e5m2", False)),
    Case("f32->e5m2 sat", F32, E5M2, _enc("e5m2", True), saturate=True),
    Case("bf16->e4m3", BF16, E4M3, _enc("e4m3", False)),
    Case("f16->e5m2", F16, E5M2, _enc("e5m2", False)),
    Case("f64->e4m3", F64, E4M3, _enc("e4m3", False)),
    Case("e4m3->f32", E4M3, F32, _dec),
    Case("e5m2->f32", E5M2, F32, _dec),
    Case("e4m3->bf16", E4M3, BF16, _dec),
    Case("e4m3->f16", E4M3, F16, _dec),
    Case("e5m2->f16", E5M2, F16, _dec),
]


def make_input(dtype: np.dtype, n: int, seed: int = 0) -> np.ndarray:
    """Deterministic test data: normal values spread over the FP8 range, some NaN and Inf."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n, dtype=np.float32) * 64.0).astype(np.float32)
    x[:: 997] = np.inf
    x[:: 1009] = np.nan
    return x.astype(dtype)


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass
class Row:
    """Elements per second of one case."""

    name: str
    fp8fast_1t: float
    fp8fast_mt: float
    ml_dtypes: float
    copyto: float


def run(n: int = 1 << 24, repeat: int = 7, threads: Optional[int] = None,
        cases: Optional[list] = None) -> list:
    """Time every case; returns a list of :class:`Row` (elements per second)."""
    cases = CASES if cases is None else cases
    saved = _config.get_num_threads()
    multi = threads or saved
    rows = []
    ref_src = make_input(F32, n)
    ref_dst = np.empty_like(ref_src)
    try:
        for case in cases:
            x = make_input(case.src_dtype, n)
            out = np.empty(n, case.dst_dtype)
            out_ml = np.empty(n, case.dst_dtype)
            t_fast_1 = t_fast_m = t_ml = t_copy = float("inf")
            # Interleave the contenders so that drift hits them alike.
            for _ in range(repeat):
                _config.set_num_threads(1)
                t_fast_1 = min(t_fast_1, best_time(lambda: case.fast(x, out), 1))
                _config.set_num_threads(multi)
                t_fast_m = min(t_fast_m, best_time(lambda: case.fast(x, out), 1))
                t_copy = min(t_copy, best_time(lambda: np.copyto(ref_dst, ref_src), 1))
            for _ in range(max(2, repeat // 3)):
                t_ml = min(t_ml, best_time(lambda: np.copyto(out_ml, x, casting="unsafe"), 1))
            rows.append(Row(case.name, n / t_fast_1, n / t_fast_m, n / t_ml, n / t_copy))
    finally:
        _config.set_num_threads(saved)
    return rows


def format_table(rows: list, n: int, threads: int) -> str:
    """The table ``fp8fast bench`` prints."""
    isa = _config.get_isa()
    head = (
        f"fp8fast bench: N = {n} elements, ISA {isa}, preallocated outputs, best of interleaved runs\n"
        f"G elements/s; 'vs ml' = fp8fast 1 thread / ml_dtypes astype; "
        f"'vs copy' = fp8fast 1 thread / np.copyto float32 (memory-bandwidth reference)\n"
    )
    cols = f"{'conversion':<15}{'fp8fast 1t':>11}{f'{threads}t':>8}{'ml_dtypes':>11}{'copyto':>9}{'vs ml':>9}{'vs copy':>9}{f'{threads}t/1t':>8}"
    lines = [head, cols, "-" * len(cols)]
    for r in rows:
        lines.append(
            f"{r.name:<15}{r.fp8fast_1t / 1e9:>11.2f}{r.fp8fast_mt / 1e9:>8.2f}{r.ml_dtypes / 1e9:>11.3f}"
            f"{r.copyto / 1e9:>9.2f}{r.fp8fast_1t / r.ml_dtypes:>8.0f}x{r.fp8fast_1t / r.copyto:>8.2f}x"
            f"{r.fp8fast_mt / r.fp8fast_1t:>7.2f}x"
        )
    lines.append("(ml_dtypes has no saturating mode: 'sat' rows compare with its non-saturating astype.)")
    return "\n".join(lines)


# For asv and tests that want the raw ml_dtypes equivalent of a case.
def ml_dtypes_convert(x: np.ndarray, out: np.ndarray) -> None:
    """The reference conversion: ``x.astype(out.dtype)`` into ``out``."""
    np.copyto(out, x, casting="unsafe")


__all__ = ["CASES", "Case", "Row", "best_time", "format_table", "make_input", "ml_dtypes_convert", "run"]
