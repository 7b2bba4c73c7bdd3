"""The ``fp8fast`` command line: ``demo``, ``bench``, ``config`` (and the checkpoint tools).

Errors print one line, ``fp8fast: error: ...``, and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Optional, Sequence

import ml_dtypes
import numpy as np

from . import _bench, _codec, _config

EPILOG = """\
environment:
  FP8FAST_ISA           force an instruction-set path: scalar, avx2, avx512, avx512bf16
  FP8FAST_NUM_THREADS   threads for large operations (default: all cores)

examples:
  fp8fast demo                 run the built-in demo and check its results
  fp8fast bench                time every conversion against ml_dtypes and np.copyto
  fp8fast bench -n 4194304 --threads 2
  fp8fast config               show the version, ISA paths and threads
"""


class DemoFailure(Exception):
    """A check in the demo did not hold."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailure(what)
    print(f"  ok  {what}")


def _demo_codecs(rng: np.random.Generator) -> None:
    print("\n[1] converting synthetic weights (built-in data) to FP8")
    # A transformer-like weight matrix: N(0, 0.02) with a few large outliers, in three dtypes.
    w = (rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02).astype(np.float32)
    w.flat[rng.integers(0, w.size, 64)] = rng.choice([-600.0, 300.0, 70000.0, np.inf, np.nan], 64)
    with np.errstate(over="ignore", invalid="ignore"):  # 70000 overflows float16: intended
        sources = (w, w.astype(ml_dtypes.bfloat16), w.astype(np.float16))
    for src in sources:
        for name, dt in (("e4m3", _codec.E4M3), ("e5m2", _codec.E5M2)):
            q = _codec.encode(src, name)
            with np.errstate(invalid="ignore"):
                ref = src.astype(dt)
            same = np.array_equal(q.view(np.uint8), ref.view(np.uint8)) or bool(
                np.all((q.view(np.uint8) == ref.view(np.uint8)) | (np.isnan(q) & np.isnan(ref)))
            )
            _check(same, f"{src.dtype}->{name} is bit-identical to ml_dtypes astype ({src.size} values)")
    q = _codec.to_e4m3(w, saturate=True)
    back = _codec.from_e4m3(q)
    finite = np.isfinite(w)
    _check(bool(np.all(np.abs(back[finite]) <= 448)), "saturating E4M3 never exceeds 448, Inf -> 448")
    rel = np.abs(back[finite] - w[finite]) / np.maximum(np.abs(w[finite]), 2.0**-6)
    _check(float(rel[np.abs(w[finite]) <= 448].max()) <= 2.0**-4, "relative error <= 2^-4 in range")

    print("\n[2] the OFP8 boundary cases (round to nearest even, then saturate or overflow)")
    x = np.array([448, 464, 465, 57344, 61439, 61440, np.inf, 2.0**-10, 2.0**-17, np.nan], np.float64)
    rows = [
        ("e4m3", False, [448, 448, np.nan, np.nan, np.nan, np.nan, np.nan, 0, 0, np.nan]),
        ("e4m3", True, [448, 448, 448, 448, 448, 448, 448, 0, 0, np.nan]),
        ("e5m2", False, [448, 448, 448, 57344, 57344, np.inf, np.inf, 2.0**-10, 0, np.nan]),
        ("e5m2", True, [448, 448, 448, 57344, 57344, 57344, 57344, 2.0**-10, 0, np.nan]),
    ]
    print("  input      " + " ".join(f"{v:>9.4g}" for v in x))
    for name, sat, expected in rows:
        got = _codec.decode(_codec.encode(x, name, saturate=sat), np.float64)
        label = f"{name} {'sat' if sat else 'nonsat'}"
        print(f"  {label:<11}" + " ".join(f"{v:>9.4g}" for v in got))
        _check(np.array_equal(got, np.array(expected), equal_nan=True), f"{label} matches OFP8 §5.2")

    print("\n[3] float64 input is rounded once (ml_dtypes rounds through float32)")
    x = np.array([1.0625 + 2.0**-40], np.float64)  # just above the midpoint of 1.0 and 1.125
    ours = float(_codec.to_e4m3(x).astype(np.float64)[0])
    theirs = float(x.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)[0])
    print(f"  x = 1.0625 + 2^-40: fp8fast -> {ours}, ml_dtypes -> {theirs}")
    _check(ours == 1.125, "fp8fast rounds float64 directly to the nearest E4M3 value")

    print("\n[4] speed on this machine (2^24 float32 -> E4M3, best of 5)")
    x = _bench.make_input(np.dtype(np.float32), 1 << 24)
    out = np.empty(x.shape, _codec.E4M3)
    t_fast = _bench.best_time(lambda: _codec.to_e4m3(x, out=out), 5)
    t_ml = _bench.best_time(lambda: np.copyto(out, x, casting="unsafe"), 2)
    print(f"  fp8fast {x.size / t_fast / 1e9:.2f} G elements/s on {_config.get_isa()}, "
          f"{_config.get_num_threads()} threads; ml_dtypes {x.size / t_ml / 1e9:.3f} G elements/s; "
          f"{t_ml / t_fast:.0f}x")


DEMO_STEPS: list = [_demo_codecs]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every demo step on built-in data; non-zero exit if any check fails."""
    _config.show_config()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in DEMO_STEPS:
        step(rng)
    print(f"\ndemo: all checks passed in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Print the side-by-side conversion table."""
    threads = args.threads or _config.get_num_threads()
    rows = _bench.run(n=args.n, repeat=args.repeat, threads=threads)
    print(_bench.format_table(rows, args.n, threads))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the configuration."""
    _config.show_config()
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


# Hooks through which other parts of the package add subcommands: each gets the subparsers.
SUBCOMMAND_HOOKS: list = []

from . import cli_checkpoint as _cli_checkpoint  # noqa: E402  (the checkpoint subcommands)

SUBCOMMAND_HOOKS.append(_cli_checkpoint.add_subcommands)
DEMO_STEPS.append(_cli_checkpoint.demo_step)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fp8fast`` command."""
    parser = argparse.ArgumentParser(
        prog="fp8fast",
        description=(
            "Fast, bit-exact FP8 (OCP OFP8 E4M3 / E5M2) conversion, quantization and GEMM "
            "on CPUs, and conversion of safetensors checkpoints to and from FP8."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fp8fast {_config._core.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="run the library's main jobs on built-in data and check the results")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in data (default 0)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="time every conversion against ml_dtypes astype and np.copyto")
    p.add_argument("-n", type=_positive_int, default=1 << 24, help="elements per conversion (default 2^24)")
    p.add_argument("--repeat", type=_positive_int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads of the multi-threaded column (default: all)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("config", help="show the version, the ISA paths and the thread count")
    p.set_defaults(func=cmd_config)
    for hook in SUBCOMMAND_HOOKS:
        hook(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``fp8fast`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("fp8fast: interrupted", file=sys.stderr)
        return 130
    except DemoFailure as e:
        print(f"fp8fast: error: demo check failed: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f"fp8fast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
