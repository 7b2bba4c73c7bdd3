# Type stubs of the compiled extension fp8fast._core. Public wrappers live in the
# Python modules of the package; these are the raw entry points they call.
import numpy as np
import numpy.typing as npt

__version__: str
MAX_THREADS: int

# --- configuration ---------------------------------------------------------------
def config() -> dict[str, object]: ...
def env_error() -> str | None: ...
def set_isa(name: str) -> None: ...
def get_isa() -> str: ...
def available_isas() -> list[str]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...

# --- codecs ----------------------------------------------------------------------
def encode_into(src: np.ndarray, dst: npt.NDArray[np.uint8], fmt: str, saturate: bool) -> None: ...
def decode_into(src: npt.NDArray[np.uint8], dst: np.ndarray, fmt: str) -> None: ...

# --- checkpoints (safetensors) ------------------------------------------------------
# Header validation; rows are (name, dtype, shape, start, end) with absolute file offsets.
def read_header(
    path: str,
) -> tuple[int, list[tuple[str, str, list[int], int, int]], dict[str, str] | None]: ...
def write_file(
    path: str,
    tensors: list[tuple[str, str, list[int], npt.NDArray[np.uint8]]],
    metadata: dict[str, str] | None = None,
    overwrite: bool = True,
) -> None: ...
def quantize_file(
    src: str,
    dst: str,
    targets: list[str],
    fmt: str,
    granularity: str,
    block: tuple[int, int],
    layout: str,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: object | None = None,
    seed: int | None = None,
    scale_dtype: str = "auto",
) -> dict[str, object]: ...
def dequantize_file(
    src: str,
    dst: str,
    dtype: str,
    scale_files: list[str] = ...,
    block: tuple[int, int] | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: object | None = None,
) -> dict[str, object]: ...
def tensor_report(
    paths: list[str],
    name: str,
    block: tuple[int, int] | None = None,
    error: tuple[str, str, tuple[int, int]] | None = None,
    source: str | None = None,
) -> dict[str, float | str | None]: ...
# --- quantization (src/py/quant.rs) ---------------------------------------------------
def quantize(
    x: np.ndarray,
    fmt: str,
    granularity: str,
    axis: int,
    block: tuple[int, int],
    rounding: str,
    seed: int | None = None,
) -> tuple[npt.NDArray[np.uint8], np.ndarray]:
    """Codes (uint8, x's shape) and scales (float32, or uint8 E8M0 codes for "mx")."""
    ...
def dequantize(
    q: npt.NDArray[np.uint8],
    scale: np.ndarray,
    fmt: str,
    granularity: str,
    axis: int,
    block: tuple[int, int],
    dtype: str,
    out: np.ndarray | None = None,
) -> np.ndarray: ...
def amax_rows(x: np.ndarray, ignore_nan: bool) -> npt.NDArray[np.float64]: ...
def encode_stochastic_into(
    src: np.ndarray, dst: npt.NDArray[np.uint8], fmt: str, saturate: bool, seed: int | None = None
) -> None: ...

# --- GEMM (src/py/gemm.rs) -------------------------------------------------------------
def matmul_into(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    fmt_a: str | None = None,
    fmt_b: str | None = None,
    scale_a: npt.NDArray[np.float32] | None = None,
    scale_b: npt.NDArray[np.float32] | None = None,
    block: int = 128,
) -> None:
    """out[...] = (a * scale_a) @ (b * scale_b); a, b at least 2-D (uint8 FP8 bits with fmt_*,
    float32, float16 or bfloat16), scales 2-D float32, out float32/float16/bfloat16."""
    ...
