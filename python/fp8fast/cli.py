"""The ``fp8fast`` command line: ``demo``, ``bench``, ``config`` (and the checkpoint tools).

Errors print one line, ``fp8fast: error: ...``, and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from . import _config, cli_checkpoint
from ._argtypes import ArgumentParser, positive_int

# numpy, ml_dtypes and the modules built on them are imported by the commands that use them:
# the checkpoint commands need neither, and a tenth of a second of imports is a tenth of
# converting a 2 GiB file.

EPILOG = """\
environment:
  FP8FAST_ISA           force an instruction-set path: scalar, avx2, avx512, avx512bf16
                        (x86-64), neon, neon-bf16 (aarch64)
  FP8FAST_NUM_THREADS   threads for large operations (default: all cores)

examples:
  fp8fast quantize ./model ./model-fp8          E4M3 with per-channel scales, compressed-tensors
  fp8fast quantize ./model ./model-fp8 --granularity block
                                                128x128 block scales, DeepSeek's fp8 layout
  fp8fast dequantize ./model-fp8 ./model-bf16   back to bf16 (--dtype f16 or f32)
  fp8fast inspect ./model --error               tensors, and the FP8 error each weight would get
  fp8fast inspect ./model-fp8 --source ./model  the error the conversion caused
  fp8fast demo                                  run the built-in demo and check its results
  fp8fast bench                                 time every conversion against ml_dtypes, np.copyto
  fp8fast bench -n 4194304 --threads 2
  fp8fast config                                show the version, ISA paths and threads
"""


class DemoFailure(Exception):
    """A check in the demo did not hold."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every demo step on built-in data; non-zero exit if any check fails."""
    from . import _demo

    _demo.run(args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Print the side-by-side conversion table."""
    from . import _bench

    threads = args.threads or _config.get_num_threads()
    if args.only in (None, "codecs"):
        rows = _bench.run(n=args.n, repeat=args.repeat, threads=threads)
        print(_bench.format_table(rows, args.n, threads))
    if args.only in (None, "quant"):
        print(_bench.format_quant_table(_bench.run_quant(args.n, args.repeat, 1), args.n, 1))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the configuration."""
    _config.show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fp8fast`` command."""
    parser = ArgumentParser(
        prog="fp8fast",
        description=(
            "Fast, bit-exact FP8 (OCP OFP8 E4M3 / E5M2) conversion, quantization and GEMM "
            "on CPUs, and conversion of safetensors checkpoints to and from FP8."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"fp8fast {_config._core.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="run the library's main jobs on built-in data and check the results")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in data (default 0)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="time every conversion against ml_dtypes astype and np.copyto")
    p.add_argument("-n", type=positive_int, default=1 << 24, help="elements per conversion (default 2^24)")
    p.add_argument("--repeat", type=positive_int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads of the multi-threaded column (default: all)")
    p.add_argument("--only", choices=["codecs", "quant"], default=None,
                   help="run one table only (default: all)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("config", help="show the version, the ISA paths and the thread count")
    p.set_defaults(func=cmd_config)
    cli_checkpoint.add_subcommands(sub)
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
    except (OSError, ValueError, TypeError, RuntimeError, MemoryError) as e:
        print(f"fp8fast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
