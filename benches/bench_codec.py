"""Conversion benchmarks: every direction, next to ml_dtypes ``astype`` and ``np.copyto``.

``time_*`` give absolute times (asv tracks them across commits); ``track_*`` measure ratios
within one run (fp8fast against ml_dtypes and against the float32 copy that bounds any
conversion by memory bandwidth), which is what the targets are stated in: on a shared,
noisy machine the ratios hold while absolute times drift.
"""

import fp8fast
import numpy as np
from fp8fast import _bench

N = 1 << 24
CASES = {c.name: c for c in _bench.CASES}


def _threads(impl):
    return 1 if impl.endswith("1t") else None


class Convert:
    """Absolute time of one conversion of 2^24 elements into a preallocated output."""

    params = (list(CASES), ["fp8fast-1t", "fp8fast-mt", "ml_dtypes"])
    param_names = ["conversion", "impl"]
    timeout = 300

    def setup(self, name, impl):
        case = CASES[name]
        self.x = _bench.make_input(case.src_dtype, N)
        self.out = np.empty(N, case.dst_dtype)
        self.case = case
        self.saved = fp8fast.get_num_threads()
        if _threads(impl) == 1:
            fp8fast.set_num_threads(1)

    def teardown(self, name, impl):
        fp8fast.set_num_threads(self.saved)

    def time_convert(self, name, impl):
        if impl == "ml_dtypes":
            np.copyto(self.out, self.x, casting="unsafe")
        else:
            self.case.fast(self.x, self.out)


class CopyReference:
    """np.copyto of 2^24 float32: the memory-bandwidth reference."""

    def setup(self):
        self.x = _bench.make_input(np.dtype(np.float32), N)
        self.out = np.empty_like(self.x)

    def time_copyto_f32(self):
        np.copyto(self.out, self.x)


class Ratios:
    """Same-run ratios, single thread: fp8fast / ml_dtypes, fp8fast / copyto, 2 threads / 1."""

    params = list(CASES)
    param_names = ["conversion"]
    timeout = 600
    number = 1
    repeat = 1

    def setup_cache(self):
        rows = _bench.run(n=N, repeat=5, threads=2)
        return {r.name: r for r in rows}

    def track_speedup_vs_ml_dtypes(self, rows, name):
        r = rows[name]
        return r.fp8fast_1t / r.ml_dtypes

    track_speedup_vs_ml_dtypes.unit = "x"

    def track_fraction_of_copyto(self, rows, name):
        r = rows[name]
        return r.fp8fast_1t / r.copyto

    track_fraction_of_copyto.unit = "x"

    def track_two_threads_vs_one(self, rows, name):
        r = rows[name]
        return r.fp8fast_mt / r.fp8fast_1t

    track_two_threads_vs_one.unit = "x"


class ThreadScaling:
    """Two threads / one thread, same run, at 2^22 elements (in cache) and 2^24 (in memory)."""

    params = ([1 << 22, 1 << 24], list(CASES))
    param_names = ["n", "conversion"]
    timeout = 900
    number = 1
    repeat = 1

    def setup_cache(self):
        return {n: {r.name: r for r in _bench.run(n=n, repeat=7, threads=2)} for n in self.params[0]}

    def track_two_threads_vs_one(self, rows, n, name):
        r = rows[n][name]
        return r.fp8fast_mt / r.fp8fast_1t

    track_two_threads_vs_one.unit = "x"
