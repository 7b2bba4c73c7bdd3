"""Side-by-side conversion timings: fp8fast vs ml_dtypes ``astype`` vs ``np.copyto`` of float32.

Used by ``fp8fast bench``. The asv suite in ``benches/`` times the same cases one by one.
Every figure is the best of several interleaved repetitions, and the table reports ratios
measured in the same run, so machine-wide drift cancels.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _codec, _config, _core, _quant


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
            fast = functools.partial(case.fast, x, out)
            ml = functools.partial(np.copyto, out_ml, x, casting="unsafe")
            copy = functools.partial(np.copyto, ref_dst, ref_src)
            t_fast_1 = t_fast_m = t_ml = t_copy = float("inf")
            # Interleave the contenders so that drift hits them alike.
            for _ in range(repeat):
                # A fresh pool's first call pays for starting its threads: warm each one up.
                _config.set_num_threads(1)
                fast()
                t_fast_1 = min(t_fast_1, best_time(fast, 2))
                _config.set_num_threads(multi)
                fast()
                t_fast_m = min(t_fast_m, best_time(fast, 2))
                t_copy = min(t_copy, best_time(copy, 1))
            for _ in range(max(2, repeat // 3)):
                t_ml = min(t_ml, best_time(ml, 1))
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


# --- quantization ---------------------------------------------------------------------------

def numpy_quantize(x: np.ndarray) -> tuple:
    """Per-tensor E4M3 quantization written with numpy + ml_dtypes (the baseline)."""
    scale = np.float32(np.abs(x).max() / np.float32(448.0))
    return (x / scale).astype(E4M3), scale


def quant_cases(x: np.ndarray) -> dict:
    """Name -> zero-argument call, for the quantization table (``x`` is float32, 1-D)."""
    q, scale = _quant.quantize(x, "e4m3")
    w = x.reshape(-1, 4096) if x.size % 4096 == 0 else x.reshape(1, -1)
    stoch_out = np.empty(x.shape, np.uint8)
    deq_out = np.empty(x.shape, np.float32)
    return {
        "quantize tensor": lambda: _quant.quantize(x, "e4m3"),
        "quantize channel": lambda: _quant.quantize(w, "e4m3", granularity="channel"),
        "quantize block": lambda: _quant.quantize(w, "e4m3", granularity="block"),
        "quantize mx": lambda: _quant.quantize(w, "e4m3", granularity="mx"),
        "quantize stochastic": lambda: _quant.quantize(x, "e4m3", rounding="stochastic", seed=1),
        "encode stochastic": lambda: _core.encode_stochastic_into(x, stoch_out, "e4m3", True, 1),
        "dequantize": lambda: _quant.dequantize(q, scale),
        "dequantize out=": lambda: _quant.dequantize(q, scale, out=deq_out),
        "numpy+ml_dtypes quantize": lambda: numpy_quantize(x),
    }


def run_quant(n: int = 1 << 24, repeat: int = 5, threads: int = 1) -> dict:
    """Elements per second of every quantization case and of ``np.copyto`` float32
    (key ``"copyto f32"``), interleaved, best of ``repeat`` (the numpy baseline: of 2)."""
    saved = _config.get_num_threads()
    _config.set_num_threads(threads)
    try:
        x = make_input(F32, n)
        x[~np.isfinite(x)] = 0.0  # the numpy baseline would propagate NaN/Inf into its scale
        cases = quant_cases(x)
        copy_dst = np.empty_like(x)
        cases["copyto f32"] = lambda: np.copyto(copy_dst, x)
        best = {name: float("inf") for name in cases}
        for i in range(repeat):
            for name, fn in cases.items():
                if name.startswith("numpy") and i >= 2:
                    continue
                best[name] = min(best[name], best_time(fn, 1))
        return {name: n / t for name, t in best.items()}
    finally:
        _config.set_num_threads(saved)


def format_quant_table(rates: dict, n: int, threads: int) -> str:
    """The quantization table ``fp8fast bench`` prints."""
    copy = rates["copyto f32"]
    base = rates["numpy+ml_dtypes quantize"]
    lines = [
        f"\nquantization: N = {n} float32 elements, ISA {_config.get_isa()}, {threads} thread(s); "
        "G elements/s, ratio to np.copyto float32 and to the numpy + ml_dtypes version",
        f"{'operation':<26}{'G el/s':>8}{'vs copy':>9}{'vs numpy':>10}",
    ]
    for name, r in rates.items():
        vs_numpy = f"{r / base:>9.1f}x" if name.startswith("quantize") else " " * 10
        lines.append(f"{name:<26}{r / 1e9:>8.2f}{r / copy:>8.2f}x{vs_numpy}")
    lines.append("(numpy+ml_dtypes quantize = np.abs(x).max(), divide, astype float8_e4m3fn)")
    return "\n".join(lines)


__all__ = ["CASES", "Case", "Row", "best_time", "format_quant_table", "format_table", "make_input",
           "ml_dtypes_convert", "numpy_quantize", "quant_cases", "run", "run_quant"]
