"""Run-time configuration: the instruction-set path and the thread count."""

from __future__ import annotations

import operator
from typing import Any

from . import _core

__all__ = ["available_isas", "get_isa", "get_num_threads", "set_isa", "set_num_threads", "show_config"]


def show_config(file: Any = None) -> dict:
    """Print (and return) the version, the active ISA path, the available ones and the threads.

    ``FP8FAST_ISA`` forces a path at import, ``FP8FAST_NUM_THREADS`` the thread count.
    """
    cfg = dict(_core.config())
    lines = [
        f"fp8fast {cfg['version']}",
        f"  isa:            {cfg['isa']}",
        f"  available isas: {', '.join(cfg['available_isas'])}",
        f"  threads:        {cfg['num_threads']}",
        f"  target arch:    {cfg['target_arch']}",
    ]
    print("\n".join(lines), file=file)
    return cfg


def set_isa(name: str) -> None:
    """Force an instruction-set path for every later call.

    Parameters
    ----------
    name : {"scalar", "avx2", "avx512", "avx512bf16", "neon", "neon-bf16"}
        Must be one of :func:`available_isas`; ``ValueError`` otherwise. ``avx2``,
        ``avx512`` and ``avx512bf16`` exist on x86-64, ``neon`` and ``neon-bf16`` on
        aarch64; ``scalar`` everywhere.
    """
    _core.set_isa(name)


def get_isa() -> str:
    """The active instruction-set path."""
    return _core.get_isa()


def available_isas() -> list:
    """The paths this CPU can run, least capable first."""
    return list(_core.available_isas())


#: The most threads :func:`set_num_threads` accepts (as ``FP8FAST_NUM_THREADS``).
MAX_THREADS: int = _core.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for large operations (results never depend on it).

    Parameters
    ----------
    n : int
        From 1 to 1024; any integer type (``int``, ``numpy.int64``, ...), not ``bool``.

    Raises
    ------
    TypeError
        ``n`` is not an integer.
    ValueError
        ``n`` is outside 1..1024.
    """
    if isinstance(n, bool):
        raise TypeError("number of threads must be an integer, not bool")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"number of threads must be an integer, not {type(n).__name__}") from None
    if not 1 <= count <= MAX_THREADS:
        raise ValueError(f"number of threads must be from 1 to {MAX_THREADS}, got {count}")
    _core.set_num_threads(count)


def get_num_threads() -> int:
    """The number of threads large operations use."""
    return _core.get_num_threads()
