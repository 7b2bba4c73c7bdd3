"""The ``quantize``, ``dequantize`` and ``inspect`` subcommands of the ``fp8fast`` command.

``add_subcommands(subparsers)`` adds them to the main parser (``fp8fast.cli``). Each handler
returns an exit code and never lets a traceback out: a failure prints one line
``fp8fast: error: ...`` on stderr and returns 1, and leaves nothing at DST. Ctrl-C returns 130
with a line saying what is at DST: nothing (the usual case), the complete output (when it came
during or after the final rename), or, for ``--shard``, which of the job's files were written.

Splitting a large conversion across machines: ``--shard I/N`` converts only the shards whose
position in the sorted shard list is I-1 modulo N, into DST directly (each file still appears
atomically); job 1 also writes the index, config.json and the other files. Run the N jobs with
any scheduler; DST is complete when all N have exited with 0. Converting one shard file on its
own (SRC a single ``.safetensors`` file) works too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

from . import _checkpoint, _interrupt
from ._argtypes import ArgumentParser, positive_int

EXAMPLES = """\
examples:
  fp8fast quantize ./Llama-3-8B ./Llama-3-8B-FP8                        # FP8_DYNAMIC, compressed-tensors
  fp8fast quantize ./model ./model-fp8 --scheme fp8-block                # FP8_BLOCK, compressed-tensors
  fp8fast quantize ./model ./model-fp8 --scheme mxfp8-weight-only        # MXFP8A16
  fp8fast quantize ./model ./model-fp8 --granularity block               # 128x128 blocks, fp8-block (DeepSeek) layout
  fp8fast quantize model.safetensors out.safetensors --ignore 'mlp\\.down_proj'
  fp8fast quantize ./big ./big-fp8 --shard 3/8                            # job 3 of 8
  fp8fast dequantize ./DeepSeek-V3 ./DeepSeek-V3-bf16 --dtype bf16
  fp8fast inspect ./model --error --granularity channel
"""


def _block(text: str) -> Any:
    try:
        return _checkpoint.parse_block(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard(text: str) -> Any:
    try:
        return _checkpoint.parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with _interrupt.Command():
                return func(args)
        except _interrupt.Interrupted as e:  # its message says what is at DST
            print(f"fp8fast: error: {e}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # SIGINT was not ours to handle: no claim about DST
            print("fp8fast: error: interrupted", file=sys.stderr)
            return 130
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, MemoryError) as e:
            msg = str(e) or type(e).__name__
            print(f"fp8fast: error: {msg}", file=sys.stderr)
            return 1
        except Exception as e:  # a defect, but the command still ends with one line
            print(f"fp8fast: error: internal error ({type(e).__name__}: {e})", file=sys.stderr)
            return 1

    run.__doc__ = func.__doc__
    return run


def _report(args: argparse.Namespace, verb: str, count: int, r: Any) -> None:
    if args.quiet:
        return
    gib_in, gib_out = r["input_bytes"] / 2**30, r["output_bytes"] / 2**30
    secs = max(r["seconds"], 1e-9)
    print(
        f"{verb} {count} tensors: {gib_in:.3f} GiB -> {gib_out:.3f} GiB in {secs:.2f} s "
        f"({gib_in / secs:.2f} GiB/s in, {gib_out / secs:.2f} GiB/s out) -> {args.dst}",
        file=sys.stderr,
    )


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize SRC into DST."""
    r = _checkpoint.quantize(
        args.src, args.dst, fmt=args.format, granularity=args.granularity, block=args.block,
        layout=args.layout, ignore=args.ignore or (), rounding=args.rounding, seed=args.seed,
        jobs=args.jobs, shard=args.shard, force=args.force, quiet=args.quiet,
        scheme=args.scheme, scale_dtype=args.scale_dtype,
    )
    _report(args, "quantized", r["quantized"], r)
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    """Dequantize SRC into DST."""
    r = _checkpoint.dequantize(
        args.src, args.dst, dtype=args.dtype, jobs=args.jobs, shard=args.shard,
        force=args.force, quiet=args.quiet,
    )
    _report(args, "dequantized", r["dequantized"], r)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the tensor table of PATH."""
    _checkpoint.inspect(
        args.path, error=args.error, fmt=args.format, granularity=args.granularity,
        block=args.block, source=args.source, amax=not args.no_amax,
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="a .safetensors file, a sharded checkpoint's folder or index, or a model directory")
    p.add_argument("dst", metavar="DST", help="output file (for a single-file SRC) or directory")
    p.add_argument("--jobs", "-j", type=positive_int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="convert only every N-th shard starting at the I-th (for splitting across machines)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite an existing DST")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def add_subcommands(subparsers: Any) -> None:
    """Add ``quantize``, ``dequantize`` and ``inspect`` to the ``fp8fast`` parser's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "quantize", help="convert a bf16/f16/f32 safetensors checkpoint to FP8 (vLLM / transformers layouts)",
        description=(
            "Quantize the 2-D *.weight tensors of Linear layers to FP8 with scales; embeddings, norms, "
            "biases, 1-D tensors, lm_head, MoE routers and --ignore matches are copied byte for byte. "
            "config.json gets a quantization_config and the index is rewritten. Output is written "
            "under a temporary name and renamed at the end."
        ),
        epilog=EXAMPLES, formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--scheme", choices=list(_checkpoint.SCHEMES), default=None,
                   help="compressed-tensors preset: fp8-dynamic (FP8_DYNAMIC, the default: channel weights, "
                        "dynamic per-token FP8 activations), fp8-block (FP8_BLOCK), fp8-weight-only (W8A16, "
                        "channel or --granularity tensor), mxfp8 (MXFP8), mxfp8-weight-only (MXFP8A16)")
    p.add_argument("--format", choices=["e4m3", "e5m2"], default="e4m3",
                   help="FP8 format (default e4m3; e5m2 only in the fp8-block layout)")
    p.add_argument("--granularity", choices=["tensor", "channel", "block"], default=None,
                   help="one scale per tensor, per output channel, or per block (default: the scheme's; "
                        "without --scheme: channel = fp8-dynamic, tensor = fp8-weight-only, "
                        "block = the fp8-block layout)")
    p.add_argument("--block", type=_block, default=(128, 128), metavar="RxC", help="block size (default 128x128)")
    p.add_argument("--layout", choices=["compressed-tensors", "fp8-block"], default=None,
                   help="scale layout (default: fp8-block for --granularity block without --scheme, "
                        "else compressed-tensors)")
    p.add_argument("--scale-dtype", choices=list(_checkpoint.SCALE_DTYPES), default="auto",
                   help="dtype of the stored scales; codes are computed against the scale as stored "
                        "(default auto: the weight's dtype for compressed-tensors, float32 for fp8-block)")
    p.add_argument("--ignore", action="append", metavar="REGEX",
                   help="leave tensors whose name matches REGEX unquantized (repeatable)")
    p.add_argument("--rounding", choices=["nearest", "stochastic"], default="nearest", help="rounding (default nearest)")
    p.add_argument("--seed", type=int, default=None, help="seed of stochastic rounding")
    p.set_defaults(func=_guarded(cmd_quantize))

    p = subparsers.add_parser(
        "dequantize", help="convert an FP8 checkpoint back to bf16/f16/f32 on the CPU",
        description=(
            "Dequantize every F8_E4M3/F8_E5M2 tensor with its scale (compressed-tensors weight_scale "
            "per tensor/channel/block, DeepSeek weight_scale_inv 128x128 blocks, MX E8M0); scale "
            "tensors are dropped and quantization_config removed. Values are decode(q) * scale "
            "rounded once to the output type."
        ),
        epilog=EXAMPLES, formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16", help="output dtype (default bf16)")
    p.set_defaults(func=_guarded(cmd_dequantize))

    p = subparsers.add_parser(
        "inspect", help="list a checkpoint's tensors, scale layouts, amax and quantization error",
        description=(
            "A table of tensors (name, dtype, shape, scale layout, bytes, amax) and totals. --error adds "
            "the SQNR and max relative error quantizing each quantizable tensor would cause; for an "
            "FP8 checkpoint, --source ORIGINAL gives the error its quantization did cause."
        ),
        epilog=EXAMPLES, formatter_class=fmt,
    )
    p.add_argument("path", metavar="PATH", help="a .safetensors file, index or model directory")
    p.add_argument("--error", action="store_true", help="show the quantization error per quantizable tensor")
    p.add_argument("--format", choices=["e4m3", "e5m2"], default="e4m3", help="format for --error (default e4m3)")
    p.add_argument("--granularity", choices=["tensor", "channel", "block"], default="channel",
                   help="granularity for --error (default channel)")
    p.add_argument("--block", type=_block, default=(128, 128), metavar="RxC", help="block size for --error")
    p.add_argument("--source", default=None, metavar="ORIGINAL",
                   help="the high-precision checkpoint an FP8 PATH was made from (error of FP8 tensors)")
    p.add_argument("--no-amax", action="store_true", help="skip reading tensor data (header only, fast)")
    p.set_defaults(func=_guarded(cmd_inspect))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the checkpoint subcommands on their own (``python -m fp8fast.cli_checkpoint``)."""
    parser = ArgumentParser(prog="fp8fast")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
