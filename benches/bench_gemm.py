"""asv benchmarks of fp8fast.matmul against numpy float32 matmul / sgemv.

Targets (issue 4), all single thread unless stated, measured side by side in one process:
- 2048^3 E4M3 x E4M3 -> float32: >= 1.0x numpy float32 matmul (AVX2 / AVX-512 kernels),
  >= 1.5x with the AVX-512 BF16 kernel, >= 2.5x "ml_dtypes astype float32 + np.matmul";
- GEMV 1 x 8192 x 8192 float32 x E4M3 weights (``x @ w.T``): >= 3x numpy sgemv,
  8 x 4096 x 4096: >= 2x;
- 2 threads >= 1.8x 1 thread at 2048^3.

Measured on the development machine (AMD EPYC, Zen 4 under KVM, 2 cores shared with other
jobs; single thread; CPU-time ratios of interleaved runs, medians; release build), 2026-11-29:

==========================================  ===========  ==========================
2048^3 E4M3 x E4M3 -> float32               GFLOP/s      ratio
==========================================  ===========  ==========================
numpy float32 matmul (OpenBLAS)             105          1.00
fp8fast avx2 (6x16 FMA)                     105          1.02 (1.33 vs astype+matmul)
fp8fast avx512 (14x32 FMA)                  107          1.02 (1.33 vs astype+matmul)
fp8fast avx512bf16 (14x32 vdpbf16ps)        208-211      1.98 (2.61-2.64 vs astype+matmul)
same, 1x128 / 128x128 block scales          --           1.75
GEMV 1x8192x8192 f32 x E4M3 (w.T)           3.3 ms       3.5-3.7 (avx2: 2.2-2.3)
GEMV 8x4096x4096 f32 x E4M3 (w.T)           --           4.0-4.6 (avx2: 2.4-2.6)
2 threads vs 1, 2048^3 (wall time)          --           1.75-1.90
==========================================  ===========  ==========================

FP8-weight products against what a CPU user would call instead (``PeerGrid``, and the table
printed by ``OPENBLAS_NUM_THREADS=1 python benches/bench_gemm.py [m,m,...]``): m = 1, 8, 32,
128, 512, 2048 rows times 4096 x 4096 E4M3 weights stored ``[in, out]`` (``x @ w``) or
``[out, in]`` (``x @ w.T``), float32 / bfloat16 / E4M3 activations, against numpy float32
matmul and, when torch is installed, torch's bfloat16 matmul and ``torch._scaled_mm``
(E4M3 x E4M3). Targets: m = 1 >= 3x numpy sgemv and >= 1.8x torch; m = 8, 32 >= 1.5x numpy;
bfloat16 / E4M3 activations at m >= 32 >= 1.0x torch; float32 at m >= 128 >= 1.0x numpy.
README lists a run.

The ``track_*`` benchmarks report those ratios directly (median of interleaved A/B timings, so
that machine noise affects both sides alike). Run numpy comparisons with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset, e.g. ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE asv run``.
"""

import sys
import time

import ml_dtypes
import numpy as np

try:
    from fp8fast import matmul
except ImportError:  # before the lead re-exports it from fp8fast/__init__.py
    from fp8fast._gemm import matmul
import fp8fast._core as core

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16

try:  # optional peers: torch's bfloat16 matmul (oneDNN) and torch._scaled_mm
    import torch
except ImportError:  # pragma: no cover
    torch = None

# The grid of the FP8-weight targets: m rows times k x n E4M3 weights stored either way.
GRID_M = (1, 8, 32, 128, 512, 2048)
GRID_KN = 4096
LAYOUTS = ("in_out", "out_in")  # x @ w with w [in, out] (K x N) / x @ w.T with w [out, in]
ACTIVATIONS = ("f32", "bf16", "e4m3")


def _single_thread(obj, n=1):
    obj._prev_threads = core.get_num_threads()
    core.set_num_threads(n)
    obj._limits = threadpool_limits(n) if threadpool_limits else None


def _restore(obj):
    core.set_num_threads(obj._prev_threads)
    if obj._limits is not None:
        obj._limits.restore_original_limits()


def _median_ratio(slow, fast, rounds=5):
    """Median over interleaved rounds of time(slow) / time(fast)."""
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        slow()
        t1 = time.perf_counter()
        fast()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
    return float(np.median(ratios))


class Gemm2048:
    """2048^3 E4M3 x E4M3 -> float32, one thread, per ISA path."""

    params = [core.available_isas()]
    param_names = ["isa"]
    timeout = 300
    n = 2048

    def setup(self, isa):
        _single_thread(self)
        self._prev_isa = core.get_isa()
        core.set_isa(isa)
        rng = np.random.default_rng(0)
        self.a32 = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.b32 = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.a8 = self.a32.astype(E4M3)
        self.b8 = self.b32.astype(E4M3)
        if isa == "scalar":
            raise NotImplementedError("the portable kernel is not a performance path")

    def teardown(self, isa):
        core.set_isa(self._prev_isa)
        _restore(self)

    def time_fp8fast(self, isa):
        matmul(self.a8, self.b8)

    def time_numpy_f32(self, isa):
        self.a32 @ self.b32

    def time_mldtypes_astype_matmul(self, isa):
        self.a8.astype(np.float32) @ self.b8.astype(np.float32)

    def track_gflops(self, isa):
        t0 = time.perf_counter()
        matmul(self.a8, self.b8)
        return 2 * self.n**3 / (time.perf_counter() - t0) / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_ratio_vs_numpy_f32(self, isa):
        return _median_ratio(lambda: self.a32 @ self.b32, lambda: matmul(self.a8, self.b8))

    track_ratio_vs_numpy_f32.unit = "x"

    def track_ratio_vs_mldtypes_astype(self, isa):
        return _median_ratio(
            lambda: self.a8.astype(np.float32) @ self.b8.astype(np.float32),
            lambda: matmul(self.a8, self.b8),
            rounds=3,
        )

    track_ratio_vs_mldtypes_astype.unit = "x"


class Gemv:
    """float32 activations x E4M3 ``[out, in]`` weights (``x @ w.T``), one thread."""

    params = [[(1, 8192, 8192), (8, 4096, 4096)]]
    param_names = ["m_n_k"]
    timeout = 300

    def setup(self, shape):
        _single_thread(self)
        m, n, k = shape
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((m, k), dtype=np.float32)
        self.w32 = rng.standard_normal((n, k), dtype=np.float32)
        self.w8 = self.w32.astype(E4M3)

    def teardown(self, shape):
        _restore(self)

    def time_fp8fast(self, shape):
        matmul(self.x, self.w8.T)

    def time_numpy_sgemv(self, shape):
        self.x @ self.w32.T

    def track_ratio_vs_numpy_f32(self, shape):
        return _median_ratio(lambda: self.x @ self.w32.T, lambda: matmul(self.x, self.w8.T), 9)

    track_ratio_vs_numpy_f32.unit = "x"


class Threads:
    """2 threads vs 1 at 2048^3 E4M3 x E4M3 on the best kernel."""

    timeout = 300
    n = 2048

    def setup(self):
        self._prev_threads = core.get_num_threads()
        rng = np.random.default_rng(0)
        self.a8 = rng.standard_normal((self.n, self.n), dtype=np.float32).astype(E4M3)
        self.b8 = rng.standard_normal((self.n, self.n), dtype=np.float32).astype(E4M3)

    def teardown(self):
        core.set_num_threads(self._prev_threads)

    def track_speedup_2_threads(self):
        ratios = []
        for _ in range(5):
            core.set_num_threads(1)
            matmul(self.a8, self.b8)  # warm the new pool's threads and buffers
            t0 = time.perf_counter()
            matmul(self.a8, self.b8)
            t1 = time.perf_counter()
            core.set_num_threads(2)
            matmul(self.a8, self.b8)
            t2 = time.perf_counter()
            matmul(self.a8, self.b8)
            ratios.append((t1 - t0) / (time.perf_counter() - t2))
        return float(np.median(ratios))

    track_speedup_2_threads.unit = "x"


class ThreadsGemv:
    """2 threads vs 1 for the 1 x 8192 x 8192 GEMV (float32 x E4M3), both weight layouts
    (target >= 1.6x): the threads split the output columns."""

    timeout = 300
    params = [["in_out", "out_in"]]
    param_names = ["weights"]
    n = 8192

    def setup(self, layout):
        self._prev_threads = core.get_num_threads()
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((1, self.n), dtype=np.float32)
        w = rng.standard_normal((self.n, self.n), dtype=np.float32).astype(E4M3)
        self.w = w if layout == "in_out" else np.ascontiguousarray(w.T).T

    def teardown(self, layout):
        core.set_num_threads(self._prev_threads)

    def track_speedup_2_threads(self, layout):
        best = {}
        for _ in range(5):
            for t in (1, 2):
                core.set_num_threads(t)
                matmul(self.x, self.w)  # warm the pool's threads and buffers
                t0 = time.perf_counter()
                for _ in range(10):
                    matmul(self.x, self.w)
                best[t] = min(best.get(t, float("inf")), time.perf_counter() - t0)
        return best[1] / best[2]


def _cpu_time(f, reps):
    """Best thread CPU time of `reps` calls (one warm-up first): the machine is shared, and a
    single-threaded call's CPU time is what preemption leaves intact."""
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        f()
        best = min(best, time.thread_time() - t0)
    return best


class _Problem:
    """One grid point: activations, E4M3 weights in a layout, and the peers' operands."""

    def __init__(self, m, layout, act, k=GRID_KN, n=GRID_KN, seed=0):
        rng = np.random.default_rng(seed)
        x32 = rng.standard_normal((m, k), dtype=np.float32)
        w32 = rng.standard_normal((k, n), dtype=np.float32)  # [in, out]
        if layout == "out_in":
            w32 = np.ascontiguousarray(w32.T).T  # the K x N view of an [out, in] array
        self.w8 = w32.astype(E4M3, order="K")
        self.x = {"f32": x32, "bf16": x32.astype(BF16), "e4m3": x32.astype(E4M3)}[act]
        self.x32, self.w32 = x32, w32
        self.flops = 2 * m * k * n
        self.torch = self.scaled = None
        if torch is not None:
            wt = torch.from_numpy(np.ascontiguousarray(w32) if layout == "in_out"
                                  else np.ascontiguousarray(w32.T)).to(torch.bfloat16)
            self.torch = (torch.from_numpy(x32).to(torch.bfloat16),
                          wt if layout == "in_out" else wt.t())
            if act == "e4m3":
                one = torch.tensor(1.0)
                x8 = torch.from_numpy(x32).to(torch.float8_e4m3fn)
                w8 = self.torch[1].to(torch.float8_e4m3fn)
                if layout == "out_in":
                    w8 = w8.t().contiguous().t()
                try:
                    torch._scaled_mm(x8, w8, scale_a=one, scale_b=one, out_dtype=torch.float32)
                    self.scaled = lambda: torch._scaled_mm(x8, w8, scale_a=one, scale_b=one,
                                                           out_dtype=torch.float32)
                except (RuntimeError, NotImplementedError):
                    pass

    def fp8fast(self):
        matmul(self.x, self.w8)

    def numpy(self):
        self.x32 @ self.w32

    def torch_bf16(self):
        self.torch[0] @ self.torch[1]


def ratio_table(ms=GRID_M, reps=3, file=sys.stdout):
    """Print time(peer) / time(fp8fast) over the grid, one thread, every ratio from one run.

    Run as ``OPENBLAS_NUM_THREADS=1 python benches/bench_gemm.py`` with OPENBLAS_CORETYPE and
    OPENBLAS_L2_SIZE unset.
    """
    prev = core.get_num_threads()
    core.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    print("| m | weights | activations | fp8fast GFLOP/s | vs numpy f32 | vs torch bf16 "
          "| vs torch._scaled_mm |", file=file)
    print("|---|---|---|---|---|---|---|", file=file)
    try:
        for m in ms:
            for layout in LAYOUTS:
                peers = None
                for act in ACTIVATIONS:
                    pr = _Problem(m, layout, act)
                    r = max(1, reps if m >= 128 else 3 * reps)
                    t = _cpu_time(pr.fp8fast, r)
                    if peers is None:  # the same for every activation dtype
                        peers = (_cpu_time(pr.numpy, r),
                                 _cpu_time(pr.torch_bf16, r) if pr.torch else None)
                    ts = _cpu_time(pr.scaled, r) if pr.torch and pr.scaled else None
                    cells = [f"{peers[0] / t:.2f}x",
                             f"{peers[1] / t:.2f}x" if peers[1] else "-",
                             f"{ts / t:.2f}x" if ts else "-"]
                    print(f"| {m} | {layout.replace('_', ', ')} | {act} | {pr.flops / t / 1e9:.0f} | "
                          + " | ".join(cells) + " |", file=file, flush=True)
    finally:
        core.set_num_threads(prev)


class PeerGrid:
    """The issue's grid as asv ratios (one thread): fp8fast against numpy float32 matmul and,
    when torch is installed, torch's bfloat16 matmul, per m, weight layout and activation
    dtype, k = n = 4096."""

    params = [list(GRID_M), list(LAYOUTS), list(ACTIVATIONS)]
    param_names = ["m", "weights", "activations"]
    timeout = 600

    def setup(self, m, layout, act):
        _single_thread(self)
        if torch is not None:
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        self.p = _Problem(m, layout, act)

    def teardown(self, m, layout, act):
        if torch is not None:
            torch.set_num_threads(self._torch_threads)
        _restore(self)

    def track_ratio_vs_numpy_f32(self, m, layout, act):
        return _cpu_time(self.p.numpy, 3) / _cpu_time(self.p.fp8fast, 3)

    track_ratio_vs_numpy_f32.unit = "x"

    def track_ratio_vs_torch_bf16(self, m, layout, act):
        if self.p.torch is None:
            raise NotImplementedError("torch is not installed")
        return _cpu_time(self.p.torch_bf16, 3) / _cpu_time(self.p.fp8fast, 3)

    track_ratio_vs_torch_bf16.unit = "x"


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(
        description="Print the ratio table: time of each peer / time of fp8fast.matmul, one thread, "
                    "k = n = 4096 E4M3 weights in both layouts, float32 / bfloat16 / E4M3 "
                    "activations. Run with OPENBLAS_NUM_THREADS=1 and OPENBLAS_CORETYPE / "
                    "OPENBLAS_L2_SIZE unset.")
    p.add_argument("ms", nargs="?", default=",".join(map(str, GRID_M)),
                   help=f"comma-separated row counts m (default {','.join(map(str, GRID_M))})")
    p.add_argument("--reps", type=int, default=3,
                   help="timed calls per cell for m >= 128, three times that below (default 3)")
    args = p.parse_args()
    try:
        ms = [int(v) for v in args.ms.split(",")]
    except ValueError:
        p.error(f"expected comma-separated whole numbers, got {args.ms!r}")
    if any(m < 1 for m in ms) or args.reps < 1:
        p.error("m and --reps must be >= 1")
    ratio_table(ms, args.reps)


if __name__ == "__main__":
    main()
