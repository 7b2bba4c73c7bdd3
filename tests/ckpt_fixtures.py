"""Synthetic checkpoints for the checkpoint tests, written by hand (json + raw bytes) so the
files do not depend on the code under test; and the malformed files of the bad-input list."""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Tuple

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
ST_NAMES = {
    np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", BF16: "BF16",
    np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8",
    np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3", np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2",
    np.dtype(ml_dtypes.float8_e8m0fnu): "F8_E8M0", np.dtype(np.int32): "I32", np.dtype(np.bool_): "BOOL",
}


def write_raw(path: str, tensors: Dict[str, np.ndarray], metadata=None) -> None:
    """A safetensors writer written from the format description (not fp8fast's)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    blobs = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        b = a.tobytes()
        header[name] = {"dtype": ST_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


HIDDEN, INTER, VOCAB = 64, 160, 96


def model_tensors(seed: int = 0, layers: int = 2) -> Dict[str, np.ndarray]:
    """A tiny Llama-like model in bf16."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(BF16)

    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + rng.standard_normal(HIDDEN) * 0.1).astype(BF16)
        for n, shape in [("q_proj", (HIDDEN, HIDDEN)), ("k_proj", (HIDDEN // 2, HIDDEN)),
                         ("v_proj", (HIDDEN // 2, HIDDEN)), ("o_proj", (HIDDEN, HIDDEN))]:
            t[p + f"self_attn.{n}.weight"] = w(*shape)
        t[p + "self_attn.q_proj.bias"] = w(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = (1 + rng.standard_normal(HIDDEN) * 0.1).astype(BF16)
        t[p + "mlp.gate_proj.weight"] = w(INTER, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(INTER, HIDDEN)
        # An outlier in one row, large enough (2000 / 0.05 > 448 / 2^-6) to push the other rows
        # into E4M3's subnormal range under a per-tensor scale, so per-channel scaling wins.
        down = w(HIDDEN, INTER)
        down[3, 7] = 2000.0
        t[p + "mlp.down_proj.weight"] = down
    t["model.norm.weight"] = np.ones(HIDDEN, BF16)
    t["lm_head.weight"] = w(VOCAB, HIDDEN)
    return t


LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{n}." in name for n in LINEAR)


def write_model_dir(path: str, tensors: Dict[str, np.ndarray], shards: int = 2, config_extra=None) -> Dict[str, str]:
    """A model directory: config.json, tokenizer files and `shards` shards with an index."""
    os.makedirs(path, exist_ok=True)
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        write_raw(os.path.join(path, fname), part, {"format": "pt"})
        for n, a in part.items():
            weight_map[n] = fname
            total += a.nbytes
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "torch_dtype": "bfloat16"}
    config.update(config_extra or {})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0"}')
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        f.write('{"do_sample": false}')
    return weight_map


def _image(header: bytes, data: bytes = b"", length=None) -> bytes:
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def _h(obj) -> bytes:
    return json.dumps(obj).encode()


def bad_files() -> List[Tuple[str, bytes, str]]:
    """(case id, file bytes, substring the error must contain)."""
    ok = {"w": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]}}
    return [
        ("empty", b"", "shorter than the 8-byte"),
        ("short", b"\x05\x00\x00", "shorter than the 8-byte"),
        ("header_past_eof", _image(b"{}", length=4096), "runs past the end"),
        ("header_len_2_63", struct.pack("<Q", 1 << 63) + b"{}", "100 MB"),
        ("not_json", _image(b"{this is not json}"), "not valid JSON"),
        ("json_array", _image(b"[1, 2, 3]"), "not a JSON object"),
        ("json_number", _image(b"42"), "not a JSON object"),
        ("offsets_past_eof", _image(_h({"w": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]}}), b"\0" * 8),
         '"w"'),
        ("overlap", _image(_h({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                               "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}), b"\0" * 12),
         'tensor "b"'),
        ("unknown_dtype", _image(_h({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 2]}}), b"\0\0"),
         "unknown dtype"),
        ("shape_mismatch", _image(_h({"w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 16]}}), b"\0" * 16),
         'tensor "w"'),
        ("shape_overflow", _image(_h({"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}), b"\0" * 16),
         "overflows"),
        ("truncated_data", _image(_h(ok), b"\0" * 10), '"w"'),
        ("trailing_bytes", _image(_h(ok), b"\0" * 20), "unexplained bytes"),
    ]
