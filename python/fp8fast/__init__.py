"""fp8fast: fast, bit-exact FP8 (OCP OFP8 E4M3 / E5M2) for numpy on CPUs.

Conversions follow OFP8 §5.2 (round to nearest even, then saturate or overflow) and run on
SIMD kernels (AVX-512, AVX2, portable) chosen at run time, on all cores for large inputs.
FP8 arrays use the ml_dtypes dtypes ``float8_e4m3fn`` and ``float8_e5m2``.

>>> import numpy as np, fp8fast as f8
>>> f8.to_e4m3(np.array([1.0, 464.0, 500.0], np.float32), saturate=True).astype(np.float32)
array([  1., 448., 448.], dtype=float32)
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, List, Optional

from . import _core


def _module_run_by_interpreter() -> Optional[str]:
    """The module of ``python [options] -m MODULE``, from the interpreter's own arguments."""
    args = iter(getattr(sys, "orig_argv", [])[1:])  # Python 3.10+
    for arg in args:
        if arg in ("-W", "-X"):
            next(args, None)  # the option's value
        elif arg == "-m":
            return next(args, None)
        elif arg.startswith("-m"):
            return arg[2:]
        elif arg in ("-c", "-") or not arg.startswith("-"):
            return None  # a command, stdin or a script
    return None


_setting_error = _core.env_error()
if _setting_error is not None:
    # A bad FP8FAST_ISA / FP8FAST_NUM_THREADS: the library refuses to import rather than run
    # with a setting other than the one asked for. The command line prints it as one line
    # instead: the ``fp8fast`` script's entry point (``_fp8fast_cli``, outside this package)
    # catches the error by its attribute; ``python -m fp8fast`` imports this package before
    # any of its code runs, so for it the line is printed here.
    if _module_run_by_interpreter() == __name__:
        print(f"fp8fast: error: {_setting_error}", file=sys.stderr)
        raise SystemExit(2)
    _error = ImportError(f"fp8fast: {_setting_error}")
    _error.fp8fast_setting = _setting_error  # type: ignore[attr-defined]
    raise _error

#: Public name -> the submodule defining it. Submodules load on first use (PEP 562), so the
#: command line's checkpoint conversions never import numpy and ml_dtypes; ``import fp8fast``
#: followed by any array function behaves exactly as an eager import would.
_EXPORTS = {
    "load_file": "_safetensors",
    "safe_open": "_safetensors",
    "save_file": "_safetensors",
    "BFLOAT16": "_codec",
    "E4M3": "_codec",
    "E5M2": "_codec",
    "decode": "_codec",
    "encode": "_codec",
    "from_e4m3": "_codec",
    "from_e5m2": "_codec",
    "to_e4m3": "_codec",
    "to_e5m2": "_codec",
    "available_isas": "_config",
    "get_isa": "_config",
    "get_num_threads": "_config",
    "set_isa": "_config",
    "set_num_threads": "_config",
    "show_config": "_config",
    "linear": "_gemm",
    "matmul": "_gemm",
    "QuantError": "_quant",
    "amax": "_quant",
    "dequantize": "_quant",
    "quant_error": "_quant",
    "quantize": "_quant",
    "dequantize_checkpoint": "_checkpoint",
    "quantize_checkpoint": "_checkpoint",
}

if TYPE_CHECKING:
    from ._checkpoint import dequantize_checkpoint, quantize_checkpoint
    from ._codec import BFLOAT16, E4M3, E5M2, decode, encode, from_e4m3, from_e5m2, to_e4m3, to_e5m2
    from ._config import available_isas, get_isa, get_num_threads, set_isa, set_num_threads, show_config
    from ._gemm import linear, matmul
    from ._quant import QuantError, amax, dequantize, quant_error, quantize
    from ._safetensors import load_file, safe_open, save_file

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
    "dequantize_checkpoint",
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
    "quantize_checkpoint",
    "safe_open",
    "save_file",
    "set_isa",
    "set_num_threads",
    "show_config",
    "to_e4m3",
    "to_e5m2",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fp8fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> List[str]:
    # The public API only: not the helpers this module imports (importlib, typing names,
    # ``annotations``) nor the submodules that lazy loading has already brought in.
    return sorted([*__all__, "__version__"])
