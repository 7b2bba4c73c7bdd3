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

The ``track_*`` benchmarks report those ratios directly (median of interleaved A/B timings, so
that machine noise affects both sides alike). Run numpy comparisons with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset, e.g. ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE asv run``.
"""

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
