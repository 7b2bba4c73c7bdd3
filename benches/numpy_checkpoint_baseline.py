"""The baseline fp8fast's checkpoint conversion is compared with: the same conversions written
in plain numpy + ml_dtypes, the way a user would without fp8fast (issue 5).

quantize: per-channel E4M3, compressed-tensors layout (``<w>.weight`` F8_E4M3 plus
``<w>.weight_scale`` float32 ``(out, 1)``), for 2-D ``*.weight`` tensors other than
embeddings, norms and ``lm_head``; everything else copied. dequantize: the reverse to bf16.
One tensor at a time (header parsed with json, ``np.frombuffer`` on the bytes read, amax,
divide, ``astype``), so its memory use is comparable too.

    python benches/numpy_checkpoint_baseline.py quantize SRC.safetensors DST.safetensors
    python benches/numpy_checkpoint_baseline.py dequantize SRC.safetensors DST.safetensors
"""

from __future__ import annotations

import json
import re
import struct
import sys

import ml_dtypes
import numpy as np

DT = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32),
      "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "U8": np.dtype(np.uint8), "I64": np.dtype(np.int64)}
NAME = {v: k for k, v in DT.items()}
SKIP = re.compile(r"embed|norm|lm_head")


def read_header(f):
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    return 8 + n, meta, sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])


def read_tensor(f, base, info):
    a, b = info["data_offsets"]
    f.seek(base + a)
    return np.frombuffer(f.read(b - a), dtype=DT[info["dtype"]]).reshape(info["shape"])


def write_file(path, plan, produce, meta):
    """plan: [(name, dtype, shape)]; produce(name) -> array, called in order."""
    header, off = {}, 0
    if meta:
        header["__metadata__"] = meta
    for name, dt, shape in plan:
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": NAME[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(h)) + h)
        for name, _, _ in plan:
            out.write(np.ascontiguousarray(produce(name)).tobytes())


def quantize(src, dst):
    with open(src, "rb") as f:
        base, meta, entries = read_header(f)
        info = dict(entries)
        targets = {k for k, v in entries if k.endswith(".weight") and len(v["shape"]) == 2
                   and v["dtype"] in ("BF16", "F16", "F32") and not SKIP.search(k)}
        plan = []
        for k, v in entries:
            if k in targets:
                plan += [(k, DT["F8_E4M3"], v["shape"]), (k + "_scale", DT["F32"], [v["shape"][0], 1])]
            else:
                plan.append((k, DT[v["dtype"]], v["shape"]))
        pending = {}

        def produce(name):
            if name in pending:
                return pending.pop(name)
            x = read_tensor(f, base, info[name])
            if name not in targets:
                return x
            x = x.astype(np.float32)
            amax = np.abs(x).max(axis=1, keepdims=True)
            scale = np.where(amax == 0, np.float32(1), amax / np.float32(448)).astype(np.float32)
            pending[name + "_scale"] = scale
            return (x / scale).astype(ml_dtypes.float8_e4m3fn)

        write_file(dst, plan, produce, meta)


def dequantize(src, dst):
    with open(src, "rb") as f:
        base, meta, entries = read_header(f)
        info = dict(entries)
        plan = []
        for k, v in entries:
            if k.endswith("_scale") and k[:-6] in info:
                continue
            plan.append((k, DT["BF16"] if v["dtype"] == "F8_E4M3" else DT[v["dtype"]], v["shape"]))

        def produce(name):
            x = read_tensor(f, base, info[name])
            if info[name]["dtype"] != "F8_E4M3":
                return x
            s = read_tensor(f, base, info[name + "_scale"])
            return (x.astype(np.float32) * s).astype(ml_dtypes.bfloat16)

        write_file(dst, plan, produce, meta)


if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"quantize": quantize, "dequantize": dequantize}[cmd](src, dst)
