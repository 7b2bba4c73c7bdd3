"""The checkpoint conversions behind ``fp8fast quantize``, ``fp8fast dequantize`` and
``fp8fast inspect``.

The conversions process one shard at a time, one tensor at a time, in Rust with the GIL
released; this module finds the shards, picks the tensors to quantize, and rewrites
``config.json`` and ``model.safetensors.index.json``. It imports neither numpy nor ml_dtypes,
so the command line converts a checkpoint without paying for their import (a tenth of a
second, a tenth of converting a 2 GiB file); the numpy-facing file API is ``_safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _commit, _core, _interrupt, _paths

__all__ = ["dequantize", "dequantize_checkpoint", "inspect", "quantize", "quantize_checkpoint"]


# --------------------------------------------------------------------------------------------
# Checkpoints: files, sharded checkpoints and model directories.

INDEX_NAME = "model.safetensors.index.json"
#: Key of a single quantized file's ``__metadata__`` holding its quantization config as JSON.
METADATA_KEY = "quantization_config"

#: Weights that are not Linear layers: never quantized, not listed in compressed-tensors' ignore.
NOT_LINEAR = (r"embed", r"norm")
#: Linear layers left in high precision by default (listed in the ignore list): the output
#: head and MoE routers (``mlp.gate``), as in the published FP8 checkpoints.
DEFAULT_IGNORE = (r"(^|\.)lm_head\.", r"(^|\.)gate\.weight$")

@dataclass
class Checkpoint:
    """A resolved source: its folder, shard files (names relative to ``root``), optional
    index and config, and the other files of a model directory."""

    root: str
    shards: List[str]
    single_file: bool
    index: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None
    extra_files: List[str] = field(default_factory=list)
    headers: Dict[str, Tuple[int, list, Optional[Dict[str, str]]]] = field(default_factory=dict)
    index_path: Optional[str] = None

    def path(self, shard: str) -> str:
        return os.path.join(self.root, shard)


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            v = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(v, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return v


def open_checkpoint(src: str) -> Checkpoint:
    """Resolve ``src`` (a ``.safetensors`` file, an index JSON or a model directory) and
    validate every shard's header.

    Every tensor name must be in one shard only: a name the index gives to one shard but that
    another shard holds too, or (without an index) a name two shards hold, is a ValueError
    naming the file, the tensor and the shard that owns it, rather than a guess at which copy
    is meant."""
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such file or directory")
    if os.path.isdir(src):
        ck = _open_directory(src, None)
    elif src.endswith(".json"):
        ck = _open_directory(_index_folder(src), src)
    else:
        ck = Checkpoint(os.path.dirname(src) or ".", [os.path.basename(src)], True)
    for s in ck.shards:
        ck.headers[s] = _core.read_header(ck.path(s))
    _check_tensor_owners(ck)
    return ck


def _read_index(path: str) -> Dict[str, Any]:
    index = _read_json(path)
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise ValueError(f"{path}: no valid \"weight_map\"")
    if not isinstance(index.get("metadata") or {}, dict):
        raise ValueError(f"{path}: \"metadata\" is not an object")
    return index


def _index_folder(index_path: str) -> str:
    """The folder holding the shards an index JSON names: the folder the index is in or, when
    the index is a symbolic link and its shards are not beside the link, the folder of the file
    it points to."""
    here = os.path.dirname(index_path) or "."
    if not os.path.islink(index_path):
        return here
    shards = set(_read_index(index_path)["weight_map"].values())
    if all(os.path.exists(os.path.join(here, s)) for s in shards):
        return here
    return os.path.dirname(os.path.realpath(index_path))


def _open_directory(root: str, index_path: Optional[str]) -> Checkpoint:
    """A model directory; its index is ``index_path`` if given, else its
    ``model.safetensors.index.json`` if any."""
    names = sorted(os.listdir(root))
    config = _read_json(os.path.join(root, "config.json")) if "config.json" in names else None
    if index_path is None and INDEX_NAME in names:
        index_path = os.path.join(root, INDEX_NAME)
    if index_path is not None:
        index = _read_index(index_path)
        shards = sorted(set(index["weight_map"].values()))
    else:
        index = None
        shards = [n for n in names if n.endswith(".safetensors")]
    if not shards:
        raise ValueError(f"{root}: no .safetensors files in this directory")
    for s in shards:
        if os.path.basename(s) != s or s.startswith("."):
            raise ValueError(f"{root}: shard name {s!r} is not a plain file name")
    used = set(shards) | {INDEX_NAME, "config.json"}
    if index_path is not None and _paths.same_file(os.path.dirname(index_path) or ".", root):
        used.add(os.path.basename(index_path))
    extra = [n for n in names if n not in used and not n.startswith(".")]
    return Checkpoint(root, shards, False, index, config, extra, index_path=index_path)


def _check_tensor_owners(ck: Checkpoint) -> None:
    """Each tensor name in one shard only, the one the index (if any) names."""
    wm = ck.index["weight_map"] if ck.index is not None else {}
    held = {s: {r[0] for r in ck.headers[s][1]} for s in ck.shards}
    for name, shard in wm.items():
        if name not in held[shard]:
            raise ValueError(f"{ck.path(shard)}: the index lists tensor {name!r} here but the file has no such tensor")
    seen: Dict[str, str] = {}
    for s in ck.shards:
        for row in ck.headers[s][1]:
            name = row[0]
            owner = wm.get(name)
            if owner is not None and owner != s:
                raise ValueError(
                    f"{ck.path(s)}: holds tensor {name!r}, which the index gives to {owner}: "
                    "a tensor must be in one shard only"
                )
            if name in seen:
                raise ValueError(
                    f"{ck.path(s)}: tensor {name!r} is also in {seen[name]}: a tensor must be in one shard only"
                )
            seen[name] = s


# --------------------------------------------------------------------------------------------
# Progress bar.


class Progress:
    """Tensors and bytes done, rate and ETA on one stderr line, when stderr is a terminal."""

    def __init__(self, tensors: int, nbytes: int, label: str, quiet: bool = False) -> None:
        self.total_tensors, self.total_bytes, self.label = tensors, nbytes, label
        self.base_tensors = self.base_bytes = 0
        self.enabled = not quiet and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def shard_done(self, tensors: int, nbytes: int) -> None:
        self.base_tensors += tensors
        self.base_bytes += nbytes

    def __call__(self, done: int, total: int, bytes_done: int, bytes_total: int) -> None:
        # Rust calls this before each tensor; an exception here abandons the file being
        # written before it is renamed into place.
        _interrupt.poll()
        if not self.enabled:
            return
        now = time.perf_counter()
        t, b = self.base_tensors + done, self.base_bytes + bytes_done
        if now - self.last < 0.1 and t < self.total_tensors:
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = b / el
        eta = (self.total_bytes - b) / rate if rate > 0 else 0.0
        frac = b / self.total_bytes if self.total_bytes else 1.0
        bar = "#" * int(frac * 24)
        sys.stderr.write(
            f"\r{self.label} [{bar:<24}] {t}/{self.total_tensors} tensors "
            f"{b / 2**30:.2f}/{self.total_bytes / 2**30:.2f} GiB {rate / 2**30:.2f} GiB/s ETA {eta:4.0f} s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Destination handling.


def _single_file_destination(ck: Checkpoint, dst: str, shard: Optional[Tuple[int, int]]) -> Optional[str]:
    """For a single-file source: DST itself, or DST/<file name> when DST is a directory; None
    when ``--shard I/N`` gives this (only) file to another job."""
    if shard is not None and shard[0] != 1:
        return None
    if os.path.isdir(dst):
        return os.path.join(dst, ck.shards[0])
    return dst


def _source_paths(ck: Checkpoint) -> List[str]:
    """Every path a conversion of ``ck`` reads: the file, or the folder, its index, its shards,
    config.json and the other files copied."""
    if ck.single_file:
        return [ck.path(ck.shards[0])]
    paths = [ck.root] + [ck.path(s) for s in ck.shards] + [os.path.join(ck.root, n) for n in ck.extra_files]
    if ck.index_path is not None:
        paths.append(ck.index_path)
    if ck.config is not None:
        paths.append(os.path.join(ck.root, "config.json"))
    return paths


def _destination_paths(ck: Checkpoint, dst: str, shard: Optional[Tuple[int, int]]) -> List[str]:
    """Every path a conversion of ``ck`` into ``dst`` creates or replaces."""
    if ck.single_file:
        return [dst]
    if shard is not None:  # written into dst itself, file by file
        names = _selected(ck, shard) + ([INDEX_NAME, "config.json", *ck.extra_files] if shard[0] == 1 else [])
        return [dst] + [os.path.join(dst, n) for n in names]
    return [dst, _OutputDir.temp_path(dst), _commit.aside_path(dst)]


def _check_destination(ck: Checkpoint, dst: str, shard: Optional[Tuple[int, int]], force: bool) -> None:
    """Refuse a destination that is, contains or lies inside anything the conversion reads,
    however either is spelled; or that exists, without ``force``."""
    _paths.check_disjoint(_source_paths(ck), _destination_paths(ck, dst, shard), dst)
    if os.path.lexists(dst) and not force:
        raise ValueError(f"{dst} already exists (use --force to overwrite)")


class _OutputDir:
    """A model directory written under a temporary name beside ``dst`` and put in place by
    :meth:`commit` (over an existing ``dst`` as :func:`_commit.replace` describes); removed on
    failure. With ``shared`` (``--shard I/N``) several jobs write into the real ``dst`` instead,
    each file atomically. Ctrl-C inside is handled as :mod:`_interrupt` describes."""

    def __init__(self, dst: str, force: bool, shared: bool, quiet: bool = False) -> None:
        self.dst, self.force, self.shared, self.quiet = dst, force, shared, quiet
        self.path = dst if shared else self.temp_path(dst)
        self._writing = _interrupt.Writing(dst, shared)

    @staticmethod
    def temp_path(dst: str) -> str:
        full = os.path.abspath(dst)
        return os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.fp8fast-tmp-{os.getpid()}")

    def _create(self) -> None:
        if self.shared:
            os.makedirs(self.dst, exist_ok=True)
            return
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"{parent}: no such directory")
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.mkdir(self.path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def placed(self, name: str) -> None:
        """File ``name`` is written, whole (in a shared ``dst``: in place)."""
        if self.shared:
            self.gate.wrote(name)

    def write_json(self, name: str, obj: Any) -> None:
        target = self.file(name)
        tmp = os.path.join(self.path, f".{name}.fp8fast-tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        self.placed(name)

    def commit(self) -> None:
        _interrupt.poll()  # the last point where stopping leaves nothing at dst
        if not self.shared:
            if os.path.lexists(self.dst) and not self.force:
                raise ValueError(f"{self.dst} already exists (use --force to overwrite)")
            _commit.replace(self.path, self.dst, announce=not self.quiet, placed=self.gate.completed)
        self.gate.completed()

    def abort(self) -> None:
        if not self.shared:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> _OutputDir:
        self.gate = self._writing.__enter__()
        try:
            self._create()
        except BaseException:
            self._writing.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Commit when the block succeeded; otherwise (or if committing fails) leave nothing."""
        try:
            if exc_type is not None:
                self.abort()
            else:
                try:
                    self.commit()
                except BaseException:
                    self.abort()
                    raise
        except BaseException:
            self._writing.__exit__(*sys.exc_info())
            raise
        self._writing.__exit__(exc_type, exc, tb)


def _single_file_writing(ck: Checkpoint, dst: str) -> ContextManager[Any]:
    """For a single-file source, the region in which Rust writes ``dst`` and renames it into
    place; Ctrl-C is seen there only before each tensor (see :mod:`_interrupt`). A directory's
    region is its :class:`_OutputDir`."""
    if ck.single_file:
        return _interrupt.Writing(dst, complete_on_exit=True)
    return contextlib.nullcontext()


def _copy_extra(ck: Checkpoint, out: _OutputDir) -> None:
    for name in ck.extra_files:
        _interrupt.poll()
        s = os.path.join(ck.root, name)
        if os.path.isdir(s):
            shutil.copytree(s, out.file(name), dirs_exist_ok=True)
        else:
            shutil.copy2(s, out.file(name))
        out.placed(name)


def _shard_done(ck: Checkpoint, s: str, out: _OutputDir, r: Dict[str, Any], bar: Progress,
                files: List[str]) -> Tuple[int, int]:
    """After shard ``s`` was converted (Rust's summary ``r``): advance the progress bar and list
    the file; returns the bytes written and the number of tensors converted."""
    rows = ck.headers[s][1]
    bar.shard_done(len(rows), sum(e[4] - e[3] for e in rows))
    files.append(out.file(s))
    out.placed(s)
    return r["output_bytes"], len(r["converted"])


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """Parse ``I/N`` (1 <= I <= N) for ``--shard``."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard {text!r}: expected I/N with 1 <= I <= N")
    return int(m.group(1)), int(m.group(2))


def parse_block(text: str) -> Tuple[int, int]:
    """Parse ``RxC`` (e.g. ``128x128``) for ``--block``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--block {text!r}: expected ROWSxCOLS, e.g. 128x128")
    return int(m.group(1)), int(m.group(2))


class _Threads:
    def __init__(self, jobs: Optional[int]) -> None:
        self.jobs, self.saved = jobs, None

    def __enter__(self) -> None:
        if self.jobs:
            self.saved = _core.get_num_threads()
            _core.set_num_threads(self.jobs)

    def __exit__(self, *exc: Any) -> None:
        if self.saved:
            _core.set_num_threads(self.saved)


def _selected(ck: Checkpoint, shard: Optional[Tuple[int, int]]) -> List[str]:
    if shard is None:
        return list(ck.shards)
    i, n = shard
    return [s for k, s in enumerate(ck.shards) if k % n == i - 1]


def _totals(ck: Checkpoint, shards: Iterable[str]) -> Tuple[int, int]:
    t = b = 0
    for s in shards:
        rows = ck.headers[s][1]
        t += len(rows)
        b += sum(r[4] - r[3] for r in rows)
    return t, b


# --------------------------------------------------------------------------------------------
# quantize


def _why_nothing_to_quantize(ck: Checkpoint) -> str:
    """Why :func:`select_targets` found no weight in ``ck``: already FP8, or nothing eligible."""
    for s in ck.shards:
        for name, dtype, _, _, _ in ck.headers[s][1]:
            if dtype in ("F8_E4M3", "F8_E5M2") and name.endswith(".weight"):
                return f"tensor {name!r} is already {dtype}: the checkpoint is already quantized"
    return ("no weight to quantize: none is a 2-D BF16, F16 or F32 '*.weight' of a Linear layer "
            "outside the ignored names (embeddings, norms, lm_head and --ignore)")


def select_targets(ck: Checkpoint, ignore: Sequence[str] = ()) -> Tuple[Dict[str, List[str]], List[str]]:
    """Per shard, the tensors ``quantize`` converts; and the Linear modules it leaves alone
    (compressed-tensors' ``ignore`` list). A target is a 2-D ``*.weight`` of BF16/F16/F32 whose
    name matches neither :data:`DEFAULT_IGNORE` nor any ``ignore`` regex (``re.search``)."""
    try:
        skip = [re.compile(p) for p in (*DEFAULT_IGNORE, *ignore)]
    except re.error as e:
        raise ValueError(f"--ignore: invalid regular expression: {e}") from None
    not_linear = [re.compile(p) for p in NOT_LINEAR]
    targets: Dict[str, List[str]] = {}
    skipped = set()
    for s in ck.shards:
        targets[s] = []
        for name, dtype, shape, _, _ in ck.headers[s][1]:
            if not name.endswith(".weight") or len(shape) != 2 or dtype not in ("BF16", "F16", "F32"):
                continue
            if any(p.search(name) for p in not_linear):
                continue
            if any(p.search(name) for p in skip):
                skipped.add(name[: -len(".weight")])
                continue
            targets[s].append(name)
    return targets, sorted(skipped)


#: The compressed-tensors release whose ``config.json`` format the compressed-tensors layout
#: follows (written as the config's ``version``, as compressed-tensors' own compressor does).
COMPRESSED_TENSORS_VERSION = "0.20.1"

#: ``--scheme`` names: compressed-tensors' presets (``preset_name_to_scheme``), and the weight
#: granularities each allows (the first is its default).
SCHEMES: Dict[str, Tuple[str, ...]] = {
    "fp8-dynamic": ("channel",),  # FP8_DYNAMIC: channel weights, dynamic per-token activations
    "fp8-block": ("block",),  # FP8_BLOCK: block weights, dynamic per-group activations
    "fp8-weight-only": ("channel", "tensor"),  # W8A16: FP8 weights, activations unquantized
    "mxfp8": ("mx",),  # MXFP8: E8M0 scales per 32 weights, dynamic MX activations
    "mxfp8-weight-only": ("mx",),  # MXFP8A16
}

SCALE_DTYPES = ("auto", "bf16", "f16", "f32")


def resolve_scheme(
    scheme: Optional[str], fmt: str, granularity: Optional[str], layout: Optional[str]
) -> Tuple[Optional[str], str, str]:
    """Reconcile ``--scheme``, ``--granularity``, ``--layout`` and ``--format``: returns
    ``(scheme, layout, granularity)``, ``scheme`` None for the fp8-block layout.

    Without ``--scheme``, ``--granularity`` keeps its meaning: channel (the default) is
    fp8-dynamic, tensor is fp8-weight-only (the one tensor-weight scheme that needs no
    calibrated activation scale), block is the fp8-block layout (or the fp8-block scheme with
    ``--layout compressed-tensors``).
    """
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if granularity is not None and granularity not in ("tensor", "channel", "block", "mx"):
        raise ValueError(f"unknown granularity {granularity!r}: expected tensor, channel, block or mx")
    if layout is not None and layout not in ("compressed-tensors", "fp8-block"):
        raise ValueError(f"unknown layout {layout!r}: expected compressed-tensors or fp8-block")
    if fmt not in ("e4m3", "e5m2"):
        raise ValueError(f"unknown format {fmt!r}: expected e4m3 or e5m2")
    if layout is None:
        layout = "fp8-block" if scheme is None and granularity == "block" else "compressed-tensors"
    if layout == "fp8-block":
        if scheme not in (None, "fp8-block"):
            raise ValueError(f"the fp8-block layout stores 2-D block scales: --scheme {scheme} needs "
                             "--layout compressed-tensors")
        if granularity not in (None, "block"):
            raise ValueError("the fp8-block layout stores 2-D block scales: use --granularity block")
        return None, layout, "block"
    if fmt == "e5m2":
        raise ValueError("compressed-tensors has no E5M2 (its 8-bit float is always E4M3): use "
                         "--layout fp8-block (DeepSeek block scales, \"fmt\": \"e5m2\") for E5M2")
    if scheme is None:
        scheme = {None: "fp8-dynamic", "channel": "fp8-dynamic", "tensor": "fp8-weight-only",
                  "block": "fp8-block", "mx": "mxfp8"}[granularity]
    allowed = SCHEMES[scheme]
    if granularity is None:
        granularity = allowed[0]
    elif granularity not in allowed:
        raise ValueError(f"--scheme {scheme} has {' or '.join(allowed)} weight scales, not {granularity}")
    return scheme, layout, granularity


def _ct_args(strategy: str, dynamic: bool, group_size: Optional[int] = None,
             block: Optional[Tuple[int, int]] = None, mx: bool = False) -> Dict[str, Any]:
    """One compressed-tensors ``QuantizationArgs`` of an 8-bit float, serialized as
    compressed-tensors does (fields left unset are omitted)."""
    args: Dict[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True,
                            "group_size": group_size, "strategy": strategy, "dynamic": dynamic}
    if block is not None:
        args["block_structure"] = list(block)
    if mx:
        args["scale_dtype"] = "torch.uint8"
    if not dynamic:
        # The observer llm-compressor records for weights (compressed-tensors omits unset ones).
        args["observer"] = "memoryless_minmax"
    return args


def quantization_config(
    scheme: Optional[str], fmt: str, granularity: str, block: Tuple[int, int], layout: str,
    ignore: List[str],
) -> Dict[str, Any]:
    """The ``quantization_config`` of ``config.json`` for the layout: for compressed-tensors,
    exactly what compressed-tensors' ``ModelCompressor`` writes for the scheme's preset (as
    llm-compressor produces it); for fp8-block, transformers' FineGrainedFP8 config."""
    if layout == "fp8-block":
        return {
            "quant_method": "fp8",
            "fmt": fmt,
            "activation_scheme": "dynamic",
            "weight_block_size": list(block),
            "modules_to_not_convert": ignore,
        }
    if scheme is None or scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    mx = scheme.startswith("mxfp8")
    if mx:
        weights = _ct_args("group", False, group_size=32, mx=True)
    elif granularity == "block":
        weights = _ct_args("block", False, block=block)
    else:
        weights = _ct_args(granularity, False)
    inputs: Optional[Dict[str, Any]] = None
    if scheme == "fp8-dynamic":
        inputs = _ct_args("token", True)
    elif scheme == "fp8-block":
        # Activations grouped along K like the weights' blocks (128 for the preset's 128x128).
        inputs = _ct_args("group", True, group_size=block[1])
    elif scheme == "mxfp8":
        inputs = _ct_args("group", True, group_size=32, mx=True)
    # compressed-tensors' format inference: MX first, float-quantized needs activations,
    # weight-only falls back to naive-quantized.
    fmt_name = "mxfp8-quantized" if mx else ("float-quantized" if inputs else "naive-quantized")
    return {
        "version": COMPRESSED_TENSORS_VERSION,
        "quant_method": "compressed-tensors",
        "sparsity_config": {},
        "transform_config": {},
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": inputs,
                "output_activations": None,
                "format": fmt_name,
            }
        },
        "format": fmt_name,
        "global_compression_ratio": None,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "moe_sparsity_config": None,
        "quantization_status": "compressed",
    }


def _scale_itemsize(dtype: str, granularity: str, layout: str, scale_dtype: str) -> int:
    """Bytes per scale of a weight of safetensors dtype ``dtype`` (see the Rust driver)."""
    if granularity == "mx":
        return 1
    if scale_dtype == "auto":
        if layout == "fp8-block":
            return 4
        return {"BF16": 2, "F16": 2}.get(dtype, 4)
    return {"bf16": 2, "f16": 2, "f32": 4}[scale_dtype]


def _partial_blocks(ck: Checkpoint, targets: Dict[str, List[str]], block: Tuple[int, int]) -> List[str]:
    """The target weights a block does not tile exactly (``name (rows, cols)``)."""
    out = []
    for s in ck.shards:
        wanted = set(targets.get(s, ()))
        for name, _, shape, _, _ in ck.headers[s][1]:
            if name in wanted and (shape[0] % block[0] or shape[1] % block[1]):
                out.append(f"{name} ({shape[0]}, {shape[1]})")
    return out


def quantize(
    src: str,
    dst: str,
    *,
    fmt: str = "e4m3",
    granularity: Optional[str] = None,
    block: Tuple[int, int] = (128, 128),
    layout: Optional[str] = None,
    ignore: Sequence[str] = (),
    rounding: str = "nearest",
    seed: Optional[int] = None,
    jobs: Optional[int] = None,
    shard: Optional[Tuple[int, int]] = None,
    force: bool = False,
    quiet: bool = False,
    scheme: Optional[str] = None,
    scale_dtype: str = "auto",
    warn: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Quantize a bf16/f16/f32 checkpoint to FP8 (see ``fp8fast quantize --help`` and
    :func:`resolve_scheme`). ``warn`` receives warnings (default: one ``fp8fast: warning:``
    line on stderr each, printed even when ``quiet``).

    Returns a summary dict: ``quantized`` (count), ``files`` written, ``input_bytes``,
    ``output_bytes``, ``seconds``, ``partial_blocks`` (weights a block does not tile).
    """
    scheme, layout, granularity = resolve_scheme(scheme, fmt, granularity, layout)
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"unknown scale dtype {scale_dtype!r}: expected {', '.join(SCALE_DTYPES)}")
    if granularity == "mx" and scale_dtype != "auto":
        raise ValueError(f"--scale-dtype {scale_dtype}: MX scales are E8M0 exponents stored as uint8")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"unknown rounding {rounding!r}: expected nearest or stochastic")
    if rounding == "stochastic" and seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    elif rounding == "nearest":
        seed = None
    elif not 0 <= seed < 2**64:
        raise ValueError(f"--seed {seed}: expected 0 <= seed < 2^64")
    t0 = time.perf_counter()
    ck = open_checkpoint(src)
    if ck.config is not None and "quantization_config" in ck.config:
        raise ValueError(f"{src}: config.json already has a quantization_config: the checkpoint is already quantized")
    if ck.single_file:
        dst = _single_file_destination(ck, dst, shard)
        if dst is None:
            return {"quantized": 0, "files": [], "input_bytes": 0, "output_bytes": 0, "seconds": 0.0,
                    "partial_blocks": []}
        shard = None
    _check_destination(ck, dst, shard, force or shard is not None)
    targets, skipped = select_targets(ck, ignore)
    if not any(targets.values()):
        raise ValueError(f"{src}: {_why_nothing_to_quantize(ck)}")
    shards = _selected(ck, shard)
    tensors, nbytes = _totals(ck, shards)
    bar = Progress(tensors, nbytes, "quantize", quiet)
    files: List[str] = []
    out_bytes = 0
    quantized = 0
    qc = quantization_config(scheme, fmt, granularity, block, layout, skipped)
    def warning(message: str) -> None:
        if warn is None:
            print(f"fp8fast: warning: {message}", file=sys.stderr)
        else:
            warn(message)

    # MX groups are 1 x 32 blocks: compressed-tensors and transformers refuse a row length
    # they do not divide, as they refuse partial 2-D blocks.
    group = (1, 32) if granularity == "mx" else block
    partial = _partial_blocks(ck, targets, group) if granularity in ("block", "mx") else []
    if partial:
        more = f" and {len(partial) - 3} more" if len(partial) > 3 else ""
        what = "MX groups of 32" if granularity == "mx" else f"{block[0]}x{block[1]} blocks"
        readers = ("compressed-tensors' group decompression and transformers" if granularity == "mx"
                   else "transformers' fp8-block loader and compressed-tensors' block decompression")
        warning(f"{what} do not divide {len(partial)} weight(s): {', '.join(partial[:3])}{more}; "
                f"partial edge groups are valid, but {readers} refuse these tensors")
    if layout == "compressed-tensors" and scale_dtype != "auto":
        # transformers keeps weight_scale in the model's dtype: a scale stored in another
        # dtype is rounded on load, and the weights it computes are no longer these.
        stored = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[scale_dtype]
        other = sorted({dt for s in ck.shards for name, dt, *_ in ck.headers[s][1]
                        if name in targets.get(s, ()) and dt != stored})
        if other:
            warning(f"--scale-dtype {scale_dtype} differs from the weights' dtype ({', '.join(other)}): "
                    "transformers keeps weight_scale in the model's dtype and would compute other "
                    "weights than fp8fast dequantize; --scale-dtype auto stores them in the weight's dtype")
    with _Threads(jobs), _single_file_writing(ck, dst):
        if ck.single_file:
            # A lone file has no config.json: its own metadata carries the quantization config
            # (dequantize reads the block size from it).
            s = ck.shards[0]
            meta = dict(ck.headers[s][2] or {})
            meta[METADATA_KEY] = json.dumps(qc, sort_keys=True)
            r = _core.quantize_file(ck.path(s), dst, targets[s], fmt, granularity, block, layout,
                                    meta, force, bar, seed, scale_dtype)
            bar.finish()
            return {"quantized": len(r["converted"]), "files": [dst], "input_bytes": nbytes,
                    "output_bytes": r["output_bytes"], "seconds": time.perf_counter() - t0,
                    "partial_blocks": partial}
        try:
            with _OutputDir(dst, force, shard is not None, quiet) as out:
                plans: Dict[str, List[str]] = {}
                total_size = 0
                for s in ck.shards:
                    names = []
                    for name, dtype_, shape, start, end in ck.headers[s][1]:
                        names.append(name)
                        if name in targets[s]:
                            rows_, cols_ = shape
                            names.append(name + ("_scale_inv" if layout == "fp8-block" else "_scale"))
                            nscale = {"tensor": 1, "channel": rows_, "mx": rows_ * -(-cols_ // 32),
                                      "block": -(-rows_ // block[0]) * -(-cols_ // block[1])}[granularity]
                            itemsize = _scale_itemsize(dtype_, granularity, layout, scale_dtype)
                            total_size += rows_ * cols_ + itemsize * nscale
                        else:
                            total_size += end - start
                    plans[s] = names
                for s in shards:
                    r = _core.quantize_file(ck.path(s), out.file(s), targets[s], fmt, granularity, block,
                                            layout, None, force or shard is None, bar, seed, scale_dtype)
                    nbytes_out, count = _shard_done(ck, s, out, r, bar, files)
                    out_bytes += nbytes_out
                    quantized += count
                if shard is None or shard[0] == 1:
                    _write_model_files(ck, out, plans, total_size, layout_config=qc, dtype=None)
        finally:
            bar.finish()
    return {"quantized": quantized, "files": files, "input_bytes": nbytes,
            "output_bytes": out_bytes, "seconds": time.perf_counter() - t0, "partial_blocks": partial}


def _write_model_files(
    ck: Checkpoint,
    out: _OutputDir,
    plans: Dict[str, List[str]],
    total_size: int,
    layout_config: Optional[Dict[str, Any]],
    dtype: Optional[str],
) -> None:
    """Write the index (if the source had one), config.json and the other files."""
    _copy_extra(ck, out)
    if ck.index is not None:
        index = dict(ck.index)
        index["weight_map"] = {n: s for s, names in plans.items() for n in names}
        meta = dict(index.get("metadata") or {})
        meta["total_size"] = total_size
        index["metadata"] = meta
        out.write_json(INDEX_NAME, index)
    if ck.config is not None:
        config = dict(ck.config)
        if layout_config is not None:
            config["quantization_config"] = layout_config
        else:
            config.pop("quantization_config", None)
        if dtype is not None:
            config["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
        out.write_json("config.json", config)


# --------------------------------------------------------------------------------------------
# dequantize


def _file_quantization_config(ck: Checkpoint) -> Optional[Dict[str, Any]]:
    """The quantization config a single file carries in its metadata (see quantize), if any."""
    text = (ck.headers[ck.shards[0]][2] or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        qc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{ck.path(ck.shards[0])}: metadata {METADATA_KEY!r} is not JSON: {e}") from None
    return {"quantization_config": qc}


def _block_from_config(config: Optional[Dict[str, Any]]) -> Optional[Tuple[int, int]]:
    """The block size a config declares (``weight_block_size`` of the fp8 layout, or
    ``block_structure`` of a compressed-tensors weights group), if any."""
    qc = (config or {}).get("quantization_config") or {}
    if not isinstance(qc, dict):
        raise ValueError(f"quantization_config is {type(qc).__name__}, not an object")
    b = qc.get("weight_block_size")
    groups = qc.get("config_groups") or {}
    if b is None and isinstance(groups, dict):
        for g in groups.values():
            weights = g.get("weights") if isinstance(g, dict) else None
            if isinstance(weights, dict) and weights.get("block_structure") is not None:
                b = weights["block_structure"]
    if b is None:
        return None
    if not (isinstance(b, list) and len(b) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in b)):
        raise ValueError(f"quantization_config block size {b!r} is not [rows, cols]")
    return b[0], b[1]


def _is_fp8(dtype: str) -> bool:
    return dtype in ("F8_E4M3", "F8_E5M2")


def dequantize(
    src: str,
    dst: str,
    *,
    dtype: str = "bf16",
    jobs: Optional[int] = None,
    shard: Optional[Tuple[int, int]] = None,
    force: bool = False,
    quiet: bool = False,
) -> Dict[str, Any]:
    """Dequantize an FP8 checkpoint (compressed-tensors or fp8-block layout, per-tensor,
    per-channel, block or MX E8M0 scales) to bf16/f16/f32; scale tensors are dropped and
    ``quantization_config`` removed. Returns a summary dict like :func:`quantize`."""
    if dtype not in ("bf16", "f16", "f32"):
        raise ValueError(f"unknown dtype {dtype!r}: expected bf16, f16 or f32")
    t0 = time.perf_counter()
    ck = open_checkpoint(src)
    if ck.single_file:
        dst = _single_file_destination(ck, dst, shard)
        if dst is None:
            return {"dequantized": 0, "files": [], "input_bytes": 0, "output_bytes": 0, "seconds": 0.0}
        shard = None
    _check_destination(ck, dst, shard, force or shard is not None)
    block = _block_from_config(ck.config if not ck.single_file else _file_quantization_config(ck))
    # Which shard holds each tensor, to find scales stored beside other shards' weights.
    where = {r[0]: s for s in ck.shards for r in ck.headers[s][1]}
    fp8 = {r[0] for s in ck.shards for r in ck.headers[s][1] if _is_fp8(r[1])}
    shards = _selected(ck, shard)
    tensors, nbytes = _totals(ck, shards)
    bar = Progress(tensors, nbytes, "dequantize", quiet)

    def scale_files(s: str) -> List[str]:
        need = set()
        for name, dt, *_ in ck.headers[s][1]:
            if _is_fp8(dt):
                for suffix in ("_scale", "_scale_inv"):
                    other = where.get(name + suffix)
                    if other is not None and other != s:
                        need.add(other)
            # A scale stored here for a weight stored elsewhere: Rust must see that weight's
            # shard to know the scale is to be dropped.
            for suffix in ("_scale_inv", "_scale", ".input_scale"):
                if name.endswith(suffix):
                    stem = name[: -len(suffix)] + (".weight" if suffix == ".input_scale" else "")
                    other = where.get(stem)
                    if other is not None and other != s and stem in fp8:
                        need.add(other)
        return [ck.path(o) for o in sorted(need)]

    def dropped(name: str) -> bool:
        for suffix in ("_scale_inv", "_scale"):
            if name.endswith(suffix) and name[: -len(suffix)] in fp8:
                return True
        return name.endswith(".input_scale") and name[: -len(".input_scale")] + ".weight" in fp8

    files: List[str] = []
    out_bytes = 0
    converted = 0
    with _Threads(jobs), _single_file_writing(ck, dst):
        if ck.single_file:
            s = ck.shards[0]
            meta = ck.headers[s][2]
            if meta is not None and METADATA_KEY in meta:
                meta = {k: v for k, v in meta.items() if k != METADATA_KEY}
            r = _core.dequantize_file(ck.path(s), dst, dtype, [], block, meta, force, bar)
            bar.finish()
            return {"dequantized": len(r["converted"]), "files": [dst], "input_bytes": nbytes,
                    "output_bytes": r["output_bytes"], "seconds": time.perf_counter() - t0}
        try:
            with _OutputDir(dst, force, shard is not None, quiet) as out:
                for s in shards:
                    extra = scale_files(s)
                    r = _core.dequantize_file(ck.path(s), out.file(s), dtype, extra, block, None,
                                              force or shard is None, bar)
                    # Scales of weights in other shards are removed by Rust only if it sees the
                    # weight; pass every shard holding such weights so the rule is global.
                    nbytes_out, count = _shard_done(ck, s, out, r, bar, files)
                    out_bytes += nbytes_out
                    converted += count
                if shard is None or shard[0] == 1:
                    plans = {s: [r[0] for r in ck.headers[s][1] if not dropped(r[0])] for s in ck.shards}
                    itemsize = {"bf16": 2, "f16": 2, "f32": 4}[dtype]
                    total_size = sum(
                        (math.prod(r[2]) * itemsize if _is_fp8(r[1]) else r[4] - r[3])
                        for s in ck.shards for r in ck.headers[s][1] if not dropped(r[0])
                    )
                    _write_model_files(ck, out, plans, total_size, layout_config=None, dtype=dtype)
        finally:
            bar.finish()
    return {"dequantized": converted, "files": files, "input_bytes": nbytes,
            "output_bytes": out_bytes, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# inspect


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def inspect(
    path: str,
    *,
    error: bool = False,
    fmt: str = "e4m3",
    granularity: str = "channel",
    block: Tuple[int, int] = (128, 128),
    source: Optional[str] = None,
    amax: bool = True,
    out: Any = None,
) -> List[Dict[str, Any]]:
    """Print a table of the tensors of a checkpoint and return its rows.

    With ``error``, each quantizable high-precision tensor also gets the SQNR (dB) and max
    relative error that quantizing it with ``fmt`` / ``granularity`` would cause; for an FP8
    checkpoint, ``source`` (the original checkpoint) gives the error the quantization did cause.
    """
    out = out or sys.stdout
    ck = open_checkpoint(path)
    src_ck = open_checkpoint(source) if source else None
    block_cfg = _block_from_config(ck.config)
    targets, _ = select_targets(ck) if error else ({}, [])
    rows: List[Dict[str, Any]] = []
    where = {r[0]: s for s in ck.shards for r in ck.headers[s][1]}
    src_where = {r[0]: s for s in src_ck.shards for r in src_ck.headers[s][1]} if src_ck else {}
    for s in ck.shards:
        for name, dtype, shape, start, end in ck.headers[s][1]:
            # Only the shard holding this tensor's scale, if elsewhere, is opened with it.
            others = sorted({ck.path(where[name + sfx]) for sfx in ("_scale", "_scale_inv")
                             if _is_fp8(dtype) and name + sfx in where and where[name + sfx] != s})
            row: Dict[str, Any] = {"name": name, "dtype": dtype, "shape": tuple(shape),
                                   "bytes": end - start, "scale": "", "amax": None,
                                   "sqnr_db": None, "max_rel_err": None}
            want_error = error and name in targets.get(s, [])
            src_path = None
            if src_ck is not None and _is_fp8(dtype) and name in src_where:
                src_path = src_ck.path(src_where[name])
            if amax or want_error or src_path:
                rep = _core.tensor_report(
                    [ck.path(s)] + others, name, block_cfg,
                    (fmt, granularity, block) if want_error else None, src_path,
                )
                row.update({k: v for k, v in rep.items() if k != "scale_layout"})
                row["scale"] = rep["scale_layout"] or ""
            rows.append(row)
    show_err = error or source is not None
    header = f"{'tensor':<48} {'dtype':<8} {'shape':<16} {'scale':<14} {'bytes':>10} {'amax':>10}"
    if show_err:
        header += f" {'SQNR dB':>8} {'max rel':>9}"
    print(header, file=out)
    for r in rows:
        line = (f"{r['name']:<48} {r['dtype']:<8} {'x'.join(map(str, r['shape'])) or '()':<16} "
                f"{r['scale']:<14} {_fmt_bytes(r['bytes']):>10} "
                f"{'' if r['amax'] is None else format(r['amax'], '.4g'):>10}")
        if show_err:
            s_db = "" if r["sqnr_db"] is None else format(r["sqnr_db"], ".2f")
            mre = "" if r["max_rel_err"] is None else format(r["max_rel_err"], ".3g")
            line += f" {s_db:>8} {mre:>9}"
        print(line, file=out)
    by_dtype: Dict[str, int] = {}
    for r in rows:
        by_dtype[r["dtype"]] = by_dtype.get(r["dtype"], 0) + r["bytes"]
    total = sum(by_dtype.values())
    print(f"\n{len(rows)} tensors in {len(ck.shards)} file(s), {_fmt_bytes(total)}: "
          + ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in sorted(by_dtype.items())), file=out)
    if error:
        n = sum(len(v) for v in targets.values())
        print(f"quantizable: {n} tensors, error shown for {fmt} {granularity}"
              + (f" {block[0]}x{block[1]}" if granularity == "block" else ""), file=out)
    qc = (ck.config or {}).get("quantization_config")
    if qc:
        print(f"quantization_config: {json.dumps(qc, sort_keys=True)[:200]}", file=out)
    return rows


# --------------------------------------------------------------------------------------------
# The script-facing entry points (``fp8fast.quantize_checkpoint`` / ``dequantize_checkpoint``).


def quantize_checkpoint(
    src: str,
    dst: str,
    *,
    scheme: Optional[str] = None,
    fmt: str = "e4m3",
    granularity: Optional[str] = None,
    block: Tuple[int, int] = (128, 128),
    layout: Optional[str] = None,
    scale_dtype: str = "auto",
    ignore: Sequence[str] = (),
    rounding: str = "nearest",
    seed: Optional[int] = None,
    jobs: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
) -> Dict[str, Any]:
    """Quantize a bf16/f16/f32 safetensors checkpoint to FP8, as ``fp8fast quantize`` does.

    Parameters
    ----------
    src : str
        A ``.safetensors`` file, a sharded checkpoint's folder or index, or a model directory.
    dst : str
        The output file (for a single-file ``src``) or directory; must not exist unless
        ``force``.
    scheme : {"fp8-dynamic", "fp8-block", "fp8-weight-only", "mxfp8", "mxfp8-weight-only"}, optional
        The compressed-tensors preset (FP8_DYNAMIC, FP8_BLOCK, W8A16 with FP8 weights, MXFP8,
        MXFP8A16) whose ``quantization_config`` is written. Default: from ``granularity``
        (channel or unset: fp8-dynamic; tensor: fp8-weight-only; block: the fp8-block layout).
    fmt : {"e4m3", "e5m2"}
        FP8 format; E5M2 only in the fp8-block layout (compressed-tensors cannot express it).
    granularity : {"tensor", "channel", "block"}, optional
        Weight scale granularity; must be one the scheme allows.
    block : tuple of int
        Block size (rows, cols) of block scales.
    layout : {"compressed-tensors", "fp8-block"}, optional
        Where scales go: ``<weight>_scale`` with a compressed-tensors config, or DeepSeek's
        ``<weight>_scale_inv`` with ``quant_method: fp8``.
    scale_dtype : {"auto", "bf16", "f16", "f32"}
        Stored scale dtype; ``auto`` is the weight's dtype for compressed-tensors and float32 for
        fp8-block. Codes are computed against the scale as stored.
    ignore : sequence of str
        Regular expressions (``re.search``) of weights to leave unquantized.
    rounding : {"nearest", "stochastic"}
        Rounding of the codes; ``seed`` seeds stochastic rounding.
    seed : int, optional
        Seed of stochastic rounding (random when omitted).
    jobs : int, optional
        Worker threads (default: all cores).
    force : bool
        Replace an existing ``dst``.
    progress : bool
        Show the progress bar on a terminal's stderr.

    Returns
    -------
    dict
        ``quantized`` (tensor count), ``files`` written, ``input_bytes``, ``output_bytes``,
        ``seconds`` and ``partial_blocks`` (weights whose shape a block does not divide).

    Warns
    -----
    UserWarning
        When a block does not divide some weights: partial edge blocks are valid, but
        transformers' fp8-block loader and compressed-tensors' block decompression refuse them.

    Raises
    ------
    ValueError
        An unknown or contradictory option (E5M2 with compressed-tensors), a malformed or
        already quantized source (a ``quantization_config``, or FP8 weights), a source with no
        weight to quantize, or an existing ``dst`` without ``force``.
    OSError
        A file cannot be read or written.
    """
    return quantize(src, dst, fmt=fmt, granularity=granularity, block=block, layout=layout,
                    ignore=ignore, rounding=rounding, seed=seed, jobs=jobs, force=force,
                    quiet=not progress, scheme=scheme, scale_dtype=scale_dtype,
                    warn=lambda message: warnings.warn(message, UserWarning, stacklevel=5))


def dequantize_checkpoint(
    src: str,
    dst: str,
    *,
    dtype: str = "bf16",
    jobs: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
) -> Dict[str, Any]:
    """Dequantize an FP8 checkpoint to bf16/f16/f32, as ``fp8fast dequantize`` does.

    Parameters
    ----------
    src : str
        An FP8 checkpoint: compressed-tensors (tensor, channel, block or MX scales) or fp8-block
        (DeepSeek ``weight_scale_inv``) layout.
    dst : str
        The output file or directory; must not exist unless ``force``.
    dtype : {"bf16", "f16", "f32"}
        Output dtype; each value is ``decode(q) * scale`` rounded once.
    jobs : int, optional
        Worker threads (default: all cores).
    force : bool
        Replace an existing ``dst``.
    progress : bool
        Show the progress bar on a terminal's stderr.

    Returns
    -------
    dict
        ``dequantized`` (tensor count), ``files``, ``input_bytes``, ``output_bytes``, ``seconds``.

    Raises
    ------
    ValueError
        An unknown dtype, a malformed checkpoint or an FP8 tensor without its scale.
    OSError
        A file cannot be read or written.
    """
    return dequantize(src, dst, dtype=dtype, jobs=jobs, force=force, quiet=not progress)
