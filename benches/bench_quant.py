"""Quantization benchmarks: quantize / dequantize / stochastic rounding next to ``np.copyto``
of float32 (the memory-bandwidth reference) and the same operation in numpy + ml_dtypes.

``time_*`` are absolute times (asv tracks them across commits); ``track_*`` are ratios measured
in one run, single thread, 2^24 float32 elements, which is what the targets are stated in
(issue 3): quantize tensor >= 0.4x copyto and >= 20x numpy + ml_dtypes; dequantize >= 0.6x
copyto; stochastic rounding >= 0.3x copyto.

Run directly for a table: ``python benches/bench_quant.py [log2 n]``.
"""

import numpy as np
from fp8fast import _bench, _core
from fp8fast._quant import dequantize, quantize

N = 1 << 24


def make_input(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n, dtype=np.float32) * 3.0).astype(np.float32)


numpy_quantize = _bench.numpy_quantize
measure = _bench.run_quant


class Quantize:
    """Absolute times on 2^24 float32 elements, single thread."""

    params = [["tensor", "channel", "block", "mx", "stochastic"]]
    param_names = ["granularity"]
    timeout = 300

    def setup(self, granularity):
        self.x = make_input(N).reshape(4096, -1)
        self.saved = _core.get_num_threads()
        _core.set_num_threads(1)

    def teardown(self, granularity):
        _core.set_num_threads(self.saved)

    def time_quantize(self, granularity):
        if granularity == "stochastic":
            quantize(self.x, "e4m3", rounding="stochastic", seed=1)
        else:
            quantize(self.x, "e4m3", granularity=granularity)


class Dequantize:
    """Absolute time of dequantize (per-tensor) to float32, single thread."""

    timeout = 300

    def setup(self):
        self.q, self.scale = quantize(make_input(N), "e4m3")
        self.saved = _core.get_num_threads()
        _core.set_num_threads(1)

    def teardown(self):
        _core.set_num_threads(self.saved)

    def time_dequantize(self):
        dequantize(self.q, self.scale)


class NumpyQuantize:
    """The numpy + ml_dtypes baseline."""

    timeout = 300

    def setup(self):
        self.x = make_input(N)

    def time_numpy_quantize(self):
        numpy_quantize(self.x)


class Ratios:
    """Same-run ratios, single thread (the issue's targets)."""

    timeout = 900
    number = 1
    repeat = 1

    def setup_cache(self):
        return measure()

    def track_quantize_tensor_vs_copyto(self, r):
        return r["quantize tensor"] / r["copyto f32"]

    def track_quantize_tensor_vs_numpy(self, r):
        return r["quantize tensor"] / r["numpy+ml_dtypes quantize"]

    def track_dequantize_vs_copyto(self, r):
        return r["dequantize"] / r["copyto f32"]

    def track_dequantize_out_vs_copyto(self, r):
        return r["dequantize out="] / r["copyto f32"]

    def track_encode_stochastic_vs_copyto(self, r):
        return r["encode stochastic"] / r["copyto f32"]

    def track_quantize_stochastic_vs_copyto(self, r):
        return r["quantize stochastic"] / r["copyto f32"]

    for _f in (track_quantize_tensor_vs_copyto, track_quantize_tensor_vs_numpy,
               track_dequantize_vs_copyto, track_dequantize_out_vs_copyto, track_encode_stochastic_vs_copyto,
               track_quantize_stochastic_vs_copyto):
        _f.unit = "x"
    del _f


if __name__ == "__main__":
    import sys

    n = 1 << int(sys.argv[1]) if len(sys.argv) > 1 else N
    print(_bench.format_quant_table(measure(n), n, 1))
