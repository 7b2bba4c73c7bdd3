"""safetensors files as numpy arrays, with FP8: ``load_file``, ``safe_open``, ``save_file``.

Every file's header is validated in Rust (``fp8fast._core.read_header``) before any tensor
byte is touched. Tensors are then exposed zero-copy: a read-only numpy array over a Python
``mmap`` of the file, at offsets Rust has checked against the file size (the simplest robust
way: numpy keeps the mmap alive through the array's ``base``, no ``unsafe`` code is needed, and
arrays stay valid after the file object is closed). Writing goes through Rust's streaming,
atomic writer (temporary name in the destination folder, fsync, rename).
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Dict, List, Mapping, Optional

import ml_dtypes
import numpy as np

from . import _core

__all__ = ["DTYPES", "load_file", "safe_open", "save_file"]

#: safetensors dtype name -> numpy dtype (FP8 and bfloat16 through ml_dtypes).
DTYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_NAMES: Dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
# Big-endian and native spellings of the same types.
for _k, _v in list(DTYPES.items()):
    _NAMES.setdefault(_v.newbyteorder("="), _k)


def _dtype_of(path: str, name: str, dtype: str) -> np.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise TypeError(f"{path}: tensor {name!r} has dtype {dtype}, which numpy cannot represent") from None


class safe_open:
    """Lazy, zero-copy access to the tensors of a safetensors file, by name.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.safetensors`` file. Its header is validated on opening.
    framework : str, optional
        Only ``"numpy"`` / ``"np"`` (accepted for compatibility with ``safetensors.safe_open``).

    Examples
    --------
    >>> with fp8fast.safe_open("model.safetensors") as f:   # doctest: +SKIP
    ...     w = f.get_tensor("layers.0.q_proj.weight")
    """

    def __init__(self, path: os.PathLike[str] | str, framework: str = "numpy") -> None:
        if framework not in ("numpy", "np"):
            raise ValueError(f"framework {framework!r} is not supported: fp8fast returns numpy arrays")
        self._path = os.fspath(path)
        with open(self._path, "rb") as fh:
            opened = os.fstat(fh.fileno())
            file_len, rows, meta = _core.read_header(self._path)
            # The header was read through the path, the map comes from `fh`: both must be the
            # same file, or a file replaced in between (as save_file and the CLI do, by rename)
            # would have one file's header applied to another's bytes.
            now = os.stat(self._path)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino) or opened.st_size != file_len:
                raise ValueError(f"{self._path}: the file was replaced or changed while it was opened")
            self._meta = meta
            self._entries = {r[0]: r for r in rows}
            self._order = [r[0] for r in rows]
            # mmap cannot map an empty range; a file with no tensor data needs no map.
            self._map: Optional[mmap.mmap] = (
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if file_len > 0 else None
            )

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's reference to the map (arrays already returned stay valid)."""
        self._map = None

    def keys(self) -> List[str]:
        """Tensor names in file order."""
        return list(self._order)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The header's ``__metadata__`` map, or None."""
        return None if self._meta is None else dict(self._meta)

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a read-only numpy array viewing the file's memory map."""
        try:
            _, dtype, shape, start, end = self._entries[name]
        except KeyError:
            raise KeyError(f"{self._path}: no tensor {name!r}") from None
        dt = _dtype_of(self._path, name, dtype)
        count = (end - start) // dt.itemsize
        if count == 0 or self._map is None:
            if self._map is None and count:
                raise ValueError(f"{self._path}: file is closed")
            return np.zeros(shape, dt)
        arr = np.frombuffer(self._map, dtype=dt, count=count, offset=start)
        return arr.reshape(shape)


def load_file(path: os.PathLike[str] | str, *, copy: bool = False) -> Dict[str, np.ndarray]:
    """Load every tensor of a safetensors file as numpy arrays.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Its header is fully validated first (sizes, offsets, dtypes, overlaps).
    copy : bool, default False
        False: read-only arrays viewing a memory map of the file (zero-copy; the map lives as
        long as any array). As with any memory map (numpy.memmap, safetensors), a file that is
        truncated in place while such arrays live makes reading them fail with SIGBUS; files
        replaced by rename, as fp8fast and safetensors write them, are safe. True: writable
        in-memory copies, independent of the file.

    Returns
    -------
    dict of str to numpy.ndarray
        In file order. FP8 tensors have the ml_dtypes dtypes ``float8_e4m3fn``,
        ``float8_e5m2``, ``float8_e8m0fnu``; BF16 is ``ml_dtypes.bfloat16``.

    Raises
    ------
    ValueError
        Malformed file (the message names the file and the tensor).
    TypeError
        A tensor of a dtype numpy cannot hold (F4, F6).
    OSError
        The file cannot be read.
    """
    with safe_open(path) as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
    if copy:
        out = {k: np.array(v) for k, v in out.items()}
    return out


def save_file(
    tensors: Mapping[str, Any],
    path: os.PathLike[str] | str,
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write numpy arrays to a safetensors file, atomically.

    Parameters
    ----------
    tensors : mapping of str to array-like
        Tensors of the dtypes in :data:`DTYPES` (FP8 as ml_dtypes arrays). Written in the
        mapping's order, C-contiguous, little-endian.
    path : str or os.PathLike
        Destination; written under a temporary name in the same folder, synced, then renamed,
        so a failure leaves the previous file (or none) in place.
    metadata : mapping of str to str, optional
        The header's ``__metadata__``.
    """
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"metadata must be a dict of str to str, not {type(metadata).__name__}"
            )
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"metadata must be a dict of str to str; bad entry {bad[0]!r}")
        metadata = dict(metadata)
    rows = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        a = np.asarray(value)
        dt = a.dtype
        key = _NAMES.get(dt) or _NAMES.get(dt.newbyteorder("="))
        if key is None:
            raise TypeError(f"tensor {name!r}: dtype {dt} has no safetensors equivalent")
        a = np.asarray(a, dtype=DTYPES[key], order="C")  # (ascontiguousarray would make 0-d 1-d)
        rows.append((name, key, list(a.shape), a.reshape(-1).view(np.uint8)))
    _core.write_file(os.fspath(path), rows, metadata, True)
