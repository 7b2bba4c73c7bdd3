"""fp8fast: fast, bit-exact FP8 (OCP OFP8 E4M3 / E5M2) for numpy on CPUs.

Conversions follow OFP8 §5.2 (round to nearest even, then saturate or overflow) and run on
SIMD kernels (AVX-512, AVX2, portable) chosen at run time, on all cores for large inputs.
FP8 arrays use the ml_dtypes dtypes ``float8_e4m3fn`` and ``float8_e5m2``.

>>> import numpy as np, fp8fast as f8
>>> f8.to_e4m3(np.array([1.0, 464.0, 500.0], np.float32), saturate=True).astype(np.float32)
array([  1., 448., 448.], dtype=float32)
"""

from __future__ import annotations

from . import _core
from ._checkpoint import load_file, safe_open, save_file
from ._codec import (
    BFLOAT16,
    E4M3,
    E5M2,
    decode,
    encode,
    from_e4m3,
    from_e5m2,
    to_e4m3,
    to_e5m2,
)
from ._config import (
    available_isas,
    get_isa,
    get_num_threads,
    set_isa,
    set_num_threads,
    show_config,
)
from ._gemm import linear, matmul
from ._quant import QuantError, amax, dequantize, quant_error, quantize

__version__: str = _core.__version__

__all__ = [
    "BFLOAT16",
    "E4M3",
    "E5M2",
    "QuantError",
    "amax",
    "available_isas",
    "decode",
    "dequantize",
    "encode",
    "from_e4m3",
    "from_e5m2",
    "get_isa",
    "get_num_threads",
    "linear",
    "load_file",
    "matmul",
    "quant_error",
    "quantize",
    "safe_open",
    "save_file",
    "set_isa",
    "set_num_threads",
    "show_config",
    "to_e4m3",
    "to_e5m2",
]
