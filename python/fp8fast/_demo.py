"""``fp8fast demo``: the library's main jobs on built-in data, each result checked.

Every step prints what it does and raises :class:`DemoFailure` when a check does not hold;
the command line turns that into a one-line error and a non-zero exit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time

import ml_dtypes
import numpy as np

from . import _bench, _checkpoint, _codec, _config, _gemm, _quant, _safetensors
from .cli import DemoFailure


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

    print("\n[3] float64 input is rounded once, not through float32")
    x = np.array([1.0625 + 2.0**-40], np.float64)  # just above the midpoint of 1.0 and 1.125
    ours = float(_codec.to_e4m3(x).astype(np.float64)[0])
    twice = float(_codec.to_e4m3(x.astype(np.float32)).astype(np.float64)[0])
    print(f"  x = 1.0625 + 2^-40: fp8fast -> {ours}; rounded to float32 first -> {twice}")
    _check(ours == 1.125, "fp8fast rounds float64 directly to the nearest E4M3 value")

    print("\n[4] speed on this machine (2^24 float32 -> E4M3, best of 5)")
    x = _bench.make_input(np.dtype(np.float32), 1 << 24)
    out = np.empty(x.shape, _codec.E4M3)
    t_fast = _bench.best_time(lambda: _codec.to_e4m3(x, out=out), 5)
    t_ml = _bench.best_time(lambda: np.copyto(out, x, casting="unsafe"), 2)
    print(f"  fp8fast {x.size / t_fast / 1e9:.2f} G elements/s on {_config.get_isa()}, "
          f"{_config.get_num_threads()} threads; ml_dtypes {x.size / t_ml / 1e9:.3f} G elements/s; "
          f"{t_ml / t_fast:.0f}x")


def _expand_scale(scale: np.ndarray, shape: tuple, granularity: str) -> np.ndarray:
    """The per-element scale of a layout, built with numpy (an independent check of dequantize)."""
    s = np.asarray(scale).astype(np.float32)
    if granularity in ("tensor", "channel"):
        return np.broadcast_to(s, shape)
    if granularity == "block":
        rows = np.repeat(s, 128, axis=0)[: shape[0]]
        return np.repeat(rows, 128, axis=1)[:, : shape[1]]
    return np.repeat(s, 32, axis=-1)[..., : shape[-1]]  # mx: 32 elements along the last axis


def _sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(10 * np.log10(np.sum(x * x) / max(np.sum((x - y) ** 2), 1e-300)))


def _demo_quant(rng: np.random.Generator) -> None:
    print("\n[5] scaled quantization of a weight whose rows differ in magnitude by 10^5")
    w = rng.standard_normal((1000, 1000), dtype=np.float32)
    w *= np.logspace(-4, 1, 1000, dtype=np.float32)[:, None]
    print(f"  {'granularity':<12}{'scale shape':<13}{'SQNR dB':>8}{'SQNR of the 100 smallest rows':>31}")
    small = {}
    for gran in ("tensor", "channel", "block", "mx"):
        q, scale = _quant.quantize(w, "e4m3", granularity=gran)
        x2 = _quant.dequantize(q, scale)
        small[gran] = _sqnr_db(w[:100], x2[:100])
        print(f"  {gran:<12}{np.shape(scale)!s:<13}{_quant.quant_error(w, q, scale).sqnr_db:>8.1f}"
              f"{small[gran]:>31.1f}")
        full_scale = _expand_scale(scale, w.shape, gran)
        ref = _codec.from_e4m3(q) * full_scale
        _check(np.array_equal(x2, ref), f"{gran}: dequantize == decode(q) * scale (numpy)")
        bound = np.abs(w) * 2.0**-4 + full_scale * 2.0**-10
        if gran == "mx":  # OCP MX: magnitudes above 448 * scale saturate to it
            bound = np.maximum(bound, np.abs(w) - 448 * full_scale)
        _check(bool(np.all(np.abs(x2 - w) <= bound)), f"{gran}: every error within half an E4M3 step")
    _check(small["channel"] > small["tensor"] + 10,
           "per-channel scales keep the small rows (> 10 dB better than one scale)")
    x = np.full(1 << 20, 1.0 + 1.0 / 3.0, np.float32)  # between 1.25 and 1.375: 2/3 of the way
    draws = _codec.to_e4m3(x, rounding="stochastic", seed=7).astype(np.float64)
    _check(set(np.unique(draws)) == {1.25, 1.375}, "stochastic rounding gives only the two neighbours")
    sigma = 0.125 * np.sqrt((2 / 3) * (1 / 3) / x.size)
    _check(abs(draws.mean() - (1 + 1 / 3)) < 5 * sigma, "stochastic rounding is unbiased (2^20 draws, 5 sigma)")


def _demo_gemm(rng: np.random.Generator) -> None:
    print("\n[6] FP8 matrix multiplication (float32 accumulation) against a float64 reference")
    k = 1024
    a = rng.standard_normal((512, k), dtype=np.float32)
    b = rng.standard_normal((k, 768), dtype=np.float32)
    qa, sa = _quant.quantize(a, "e4m3", granularity="channel", axis=0)   # per row of a
    qb, sb = _quant.quantize(b, "e4m3", granularity="channel", axis=1)   # per column of b
    c = _gemm.matmul(qa, qb, scale_a=sa, scale_b=sb)
    da = _codec.from_e4m3(qa, np.float64) * sa
    db = _codec.from_e4m3(qb, np.float64) * sb
    ref = da @ db
    bound = (k + 2) * 2.0**-23 * (np.abs(da) @ np.abs(db))
    _check(bool(np.all(np.abs(c - ref) <= bound)),
           f"E4M3 x E4M3 {a.shape} @ {b.shape} with per-row / per-column scales within the float32 bound")
    w, ws = qb.T, sb.reshape(-1, 1)  # the same weights as an [out, in] Linear layer
    x = rng.standard_normal((4, k), dtype=np.float32)
    y = _gemm.linear(x, w, ws)
    ref = x.astype(np.float64) @ (_codec.from_e4m3(w, np.float64) * ws).T
    bound = (k + 2) * 2.0**-23 * (np.abs(x.astype(np.float64)) @ np.abs(_codec.from_e4m3(w, np.float64) * ws).T)
    _check(bool(np.all(np.abs(y - ref) <= bound)), "linear(x, w_fp8, w_scale): float32 activations x E4M3 weights")
    t_fast = _bench.best_time(lambda: _gemm.matmul(qa, qb, scale_a=sa, scale_b=sb), 3)
    a32, b32 = da.astype(np.float32), db.astype(np.float32)
    t_np = _bench.best_time(lambda: a32 @ b32, 3)
    flops = 2 * a.shape[0] * k * b.shape[1]
    print(f"  fp8fast {flops / t_fast / 1e9:.0f} GFLOP/s on {_config.get_isa()} "
          f"({_config.get_num_threads()} threads); numpy float32 matmul {flops / t_np / 1e9:.0f} GFLOP/s")


def _demo_model(path: str, rng: np.random.Generator) -> int:
    """Write a small Llama-like bf16 model directory (2 shards, index, config); return its bytes."""
    hidden, inter, vocab, layers = 512, 1408, 2048, 4
    names, tensors = [], {}

    def w(*shape):
        x = rng.standard_normal(shape, dtype=np.float32) * 0.02
        x.flat[rng.integers(0, x.size, 4)] = 0.5  # a few outliers
        return x.astype(ml_dtypes.bfloat16)

    tensors["model.embed_tokens.weight"] = w(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(hidden, ml_dtypes.bfloat16)
        for n, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden // 4, hidden)),
                         ("self_attn.v_proj", (hidden // 4, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                         ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                         ("mlp.down_proj", (hidden, inter))):
            tensors[p + n + ".weight"] = w(*shape)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden, ml_dtypes.bfloat16)
    tensors["model.norm.weight"] = np.ones(hidden, ml_dtypes.bfloat16)
    tensors["lm_head.weight"] = w(vocab, hidden)
    names = list(tensors)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        _safetensors.save_file({n: tensors[n] for n in part}, os.path.join(path, fname), {"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(a.nbytes for a in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "torch_dtype": "bfloat16"}, f)
    return total


def _demo_checkpoint(rng: np.random.Generator) -> None:
    """Write a small model, quantize it in both layouts, inspect it,
    dequantize it, and check and report sizes, errors and speed."""
    print("\n[7] checkpoints: a small bf16 model -> FP8 (both layouts) -> inspect -> bf16")
    d = tempfile.mkdtemp(prefix="fp8fast-demo-")
    try:
        src = os.path.join(d, "model")
        os.mkdir(src)
        size = _demo_model(src, rng)
        print(f"  wrote {src}: {size / 2**20:.1f} MiB bf16 in 2 shards")
        for granularity in ("channel", "block"):
            dst = os.path.join(d, f"fp8-{granularity}")
            r = _checkpoint.quantize(src, dst, granularity=granularity, quiet=True)
            qc = json.loads(open(os.path.join(dst, "config.json")).read())["quantization_config"]
            print(f"  quantize --granularity {granularity}: {r['quantized']} weights, "
                  f"{r['input_bytes'] / 2**20:.1f} -> {r['output_bytes'] / 2**20:.1f} MiB in {r['seconds']:.2f} s "
                  f"({r['input_bytes'] / max(r['seconds'], 1e-9) / 2**30:.2f} GiB/s); quant_method {qc['quant_method']}")
            _check(r["quantized"] == 28, f"{granularity}: the 28 Linear weights are FP8, lm_head/embeddings/norms kept")
            buf = io.StringIO()
            rows = _checkpoint.inspect(dst, source=src, out=buf)
            worst = min(r_["sqnr_db"] for r_ in rows if r_["sqnr_db"] is not None and r_["dtype"] == "F8_E4M3")
            print(f"  inspect --source: worst SQNR of a quantized weight {worst:.1f} dB")
            _check(worst > 25, f"{granularity}: every quantized weight keeps SQNR > 25 dB")
            back = os.path.join(d, f"bf16-{granularity}")
            r = _checkpoint.dequantize(dst, back, dtype="bf16", quiet=True)
            print(f"  dequantize: {r['output_bytes'] / 2**20:.1f} MiB in {r['seconds']:.2f} s")
            name = "model.layers.0.mlp.down_proj.weight"
            shard = json.loads(open(os.path.join(back, "model.safetensors.index.json")).read())["weight_map"][name]
            orig_shard = json.loads(open(os.path.join(src, "model.safetensors.index.json")).read())["weight_map"][name]
            y = _safetensors.load_file(os.path.join(back, shard))[name].astype(np.float64)
            x = _safetensors.load_file(os.path.join(src, orig_shard))[name].astype(np.float64)
            rel = float(np.max(np.abs(y - x) / np.maximum(np.abs(x), 1e-3)))
            _check(rel < 0.07, f"{granularity}: bf16 round trip within the E4M3 step (max rel err {rel:.3f} above 1e-3)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(seed: int = 0) -> None:
    """Run every step on data drawn with ``seed``; raises DemoFailure if a check fails."""
    _config.show_config()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for step in (_demo_codecs, _demo_quant, _demo_gemm, _demo_checkpoint):
        step(rng)
    print(f"\ndemo: all checks passed in {time.perf_counter() - t0:.1f} s")
