"""safetensors I/O (load_file / save_file / safe_open) and the checkpoint conversions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import fp8fast
import ml_dtypes
import numpy as np
import pytest
from ckpt_fixtures import BF16, bad_files, is_linear, model_tensors, write_model_dir, write_raw
from fp8fast import _checkpoint as ck

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def listdir_all(path):
    return sorted(os.listdir(path))


# ---------------------------------------------------------------------------------------------
# load_file / save_file / safe_open


def all_dtype_tensors():
    rng = np.random.default_rng(1)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "bf16": rng.standard_normal((4, 3)).astype(BF16),
        "e4m3": rng.standard_normal((6, 2)).astype(ml_dtypes.float8_e4m3fn),
        "e5m2": rng.standard_normal(9).astype(ml_dtypes.float8_e5m2),
        "e8m0": np.array([0.25, 1, 8, 2**-20], dtype=ml_dtypes.float8_e8m0fnu),
        "i64": np.arange(5, dtype=np.int64),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "u8": np.arange(255, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_save_load_round_trip_every_dtype(tmp_path):
    t = all_dtype_tensors()
    p = tmp_path / "all.safetensors"
    fp8fast.save_file(t, p, metadata={"format": "np", "who": "test"})
    back = fp8fast.load_file(p)
    assert list(back) == list(t)
    for k in t:
        assert_same(back[k], t[k])
    with fp8fast.safe_open(p) as f:
        assert f.metadata() == {"format": "np", "who": "test"}
        assert f.keys() == list(t)
        assert_same(f.get_tensor("e4m3"), t["e4m3"])
        with pytest.raises(KeyError, match="nope"):
            f.get_tensor("nope")
    assert listdir_all(tmp_path) == ["all.safetensors"]


def test_load_is_zero_copy_and_read_only(tmp_path):
    p = tmp_path / "z.safetensors"
    write_raw(str(p), {"w": np.arange(1 << 16, dtype=np.float32)})
    a = fp8fast.load_file(p)["w"]
    assert not a.flags.writeable
    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    assert type(base).__name__ == "mmap"
    c = fp8fast.load_file(p, copy=True)["w"]
    assert c.flags.writeable and c.flags.owndata
    np.testing.assert_array_equal(a, c)


def test_reads_files_of_an_independent_writer_and_the_safetensors_package(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    t = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(6, dtype=np.int64)}
    p = tmp_path / "st.safetensors"
    st_numpy.save_file(t, str(p), metadata={"k": "v"})
    back = fp8fast.load_file(p)
    for k in t:
        assert_same(back[k], t[k])
    # FP8 written by the hand-written writer of the test fixtures.
    q = np.arange(-20, 20, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).reshape(5, 8)
    write_raw(str(tmp_path / "f8.safetensors"), {"q": q, "s": np.array([0.5], np.float32)})
    assert_same(fp8fast.load_file(tmp_path / "f8.safetensors")["q"], q)


def test_files_we_write_open_with_the_safetensors_package(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    t = all_dtype_tensors()
    p = tmp_path / "ours.safetensors"
    fp8fast.save_file(t, p, metadata={"format": "pt"})
    with safetensors.safe_open(str(p), framework="np") as f:
        assert sorted(f.keys()) == sorted(t)
        assert f.metadata() == {"format": "pt"}
        for k in ("f32", "f64", "f16", "i64", "i32", "u8", "bool", "scalar", "empty"):
            assert_same(f.get_tensor(k), t[k])


def test_empty_file_with_empty_metadata_round_trips(tmp_path):
    # The header fuzzer's find: no tensors and an empty __metadata__ once gave invalid JSON.
    p = tmp_path / "e.safetensors"
    fp8fast.save_file({}, p, metadata={})
    assert fp8fast.load_file(p) == {}
    with fp8fast.safe_open(p) as f:
        assert f.keys() == [] and f.metadata() == {}
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(p), framework="np") as f:
        assert list(f.keys()) == []


def test_save_file_errors(tmp_path):
    with pytest.raises(TypeError, match="complex128"):
        fp8fast.save_file({"x": np.zeros(2, np.complex128)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="str"):
        fp8fast.save_file({"x": np.zeros(2)}, tmp_path / "x.safetensors", metadata={"a": 1})
    with pytest.raises(OSError):
        fp8fast.save_file({"x": np.zeros(2)}, tmp_path / "missing" / "x.safetensors")
    assert listdir_all(tmp_path) == []


@pytest.mark.parametrize("case,data,message", bad_files(), ids=[c[0] for c in bad_files()])
def test_load_file_rejects_malformed_files(tmp_path, case, data, message):
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(data)
    with pytest.raises(ValueError) as e:
        fp8fast.load_file(p)
    assert message in str(e.value)
    assert f"{case}.safetensors" in str(e.value)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError):
        fp8fast.load_file(tmp_path / "none.safetensors")


# ---------------------------------------------------------------------------------------------
# quantize


def reference_quantize(x32: np.ndarray, granularity: str, block=(128, 128), store=np.float32):
    """Reference of the documented semantics (the quantization module's), from numpy +
    ml_dtypes: scale = float32(amax / 448) (1 for an all-zero group) rounded to nearest in the
    scale's storage dtype ``store``, q = (x * float32(1 / scale)).astype(e4m3) with the
    product in float32."""
    rows, cols = x32.shape
    if granularity == "tensor":
        amax = np.abs(x32).max(keepdims=True).reshape(1).astype(np.float64)
        s = np.where(amax == 0, 1, amax / 448).astype(np.float32).astype(store).astype(np.float32)
        full = np.broadcast_to(s.reshape(1, 1), x32.shape)
    elif granularity == "channel":
        amax = np.abs(x32).max(axis=1, keepdims=True).astype(np.float64)
        s = np.where(amax == 0, 1, amax / 448).astype(np.float32).astype(store).astype(np.float32)
        full = np.broadcast_to(s, x32.shape)
    else:
        br, bc = block
        nr, nc = -(-rows // br), -(-cols // bc)
        s = np.empty((nr, nc), np.float32)
        for i in range(nr):
            for j in range(nc):
                a = float(np.abs(x32[i * br:(i + 1) * br, j * bc:(j + 1) * bc]).max())
                s[i, j] = 1 if a == 0 else np.float32(a / 448)
        s = s.astype(store).astype(np.float32)
        full = np.repeat(np.repeat(s, br, 0), bc, 1)[:rows, :cols]
    q = (x32 * (np.float32(1) / full)).astype(ml_dtypes.float8_e4m3fn)
    return q, s


@pytest.mark.parametrize("granularity,layout", [("channel", None), ("tensor", None), ("block", None),
                                                ("block", "compressed-tensors")])
def test_quantize_model_directory(tmp_path, granularity, layout):
    src, dst = tmp_path / "src", tmp_path / "dst"
    tensors = model_tensors()
    write_model_dir(str(src), tensors)
    block = (32, 48)
    ck.quantize(str(src), str(dst), granularity=granularity, block=block, layout=layout, quiet=True)
    layout = layout or ("fp8-block" if granularity == "block" else "compressed-tensors")
    suffix = "_scale_inv" if layout == "fp8-block" else "_scale"
    assert listdir_all(dst) == listdir_all(src)
    assert [n for n in listdir_all(tmp_path)] == ["dst", "src"]  # no temporary left over
    for name in ("tokenizer.json", "generation_config.json"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    config = json.loads((dst / "config.json").read_text())
    qc = config["quantization_config"]
    if layout == "fp8-block":
        assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == list(block)
        assert qc["fmt"] == "e4m3" and qc["activation_scheme"] == "dynamic"
    else:
        # tensor weights are the weight-only scheme (W8A16): compressed-tensors calls it naive.
        want_format = "naive-quantized" if granularity == "tensor" else "float-quantized"
        assert qc["quant_method"] == "compressed-tensors" and qc["format"] == want_format
        assert qc["quantization_status"] == "compressed"
        w = qc["config_groups"]["group_0"]["weights"]
        assert (w["num_bits"], w["type"], w["strategy"], w["symmetric"]) == (8, "float", granularity, True)
        assert qc["ignore"] == ["lm_head"]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    loaded = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = fp8fast.load_file(dst / shard)
        for n in part:
            assert index["weight_map"][n] == shard
        loaded.update(part)
    assert set(loaded) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in loaded.values())
    for name, x in tensors.items():
        if is_linear(name):
            # Scales are stored in the weight's dtype for compressed-tensors, float32 for fp8-block.
            store = np.float32 if layout == "fp8-block" else x.dtype
            q, s = reference_quantize(x.astype(np.float32), granularity, block, store)
            assert loaded[name].dtype == E4M3
            assert loaded[name].view(np.uint8).tobytes() == q.view(np.uint8).tobytes(), name
            scale = loaded[name + suffix]
            assert scale.dtype == store
            want_shape = {"tensor": (1,), "channel": (x.shape[0], 1)}.get(granularity, s.shape)
            assert scale.shape == want_shape
            np.testing.assert_array_equal(scale.reshape(s.shape), s)
        else:
            assert_same(loaded[name], x)  # copied byte for byte (embeddings, norms, bias, lm_head)
    # A safetensors-package reader sees the same header.
    safetensors = pytest.importorskip("safetensors")
    shard = sorted(set(index["weight_map"].values()))[0]
    with safetensors.safe_open(str(dst / shard), framework="np") as f:
        assert set(f.keys()) == {n for n, s in index["weight_map"].items() if s == shard}


def test_quantize_ignore_and_single_file(tmp_path):
    tensors = model_tensors(layers=1)
    src = tmp_path / "m.safetensors"
    write_raw(str(src), tensors)
    out = tmp_path / "q.safetensors"
    r = ck.quantize(str(src), str(out), ignore=[r"mlp\.down_proj", "k_proj"], quiet=True)
    loaded = fp8fast.load_file(out)
    assert loaded["model.layers.0.mlp.down_proj.weight"].dtype == BF16
    assert loaded["model.layers.0.self_attn.k_proj.weight"].dtype == BF16
    assert loaded["model.layers.0.self_attn.q_proj.weight"].dtype == E4M3
    assert r["quantized"] == 5


def test_quantize_round_trip_within_fp8_error_bound(tmp_path):
    tensors = model_tensors()
    src, q, back = tmp_path / "src", tmp_path / "q", tmp_path / "back"
    write_model_dir(str(src), tensors)
    ck.quantize(str(src), str(q), granularity="channel", quiet=True)
    ck.dequantize(str(q), str(back), dtype="f32", quiet=True)
    config = json.loads((back / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "float32"
    index = json.loads((back / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)  # scales dropped from the index too
    loaded = {}
    for shard in set(index["weight_map"].values()):
        loaded.update(fp8fast.load_file(back / shard))
    assert set(loaded) == set(tensors)
    for name, x in tensors.items():
        y = loaded[name]
        if not is_linear(name):
            assert_same(y, x)
            continue
        x = x.astype(np.float64)
        s = np.abs(x).max(axis=1, keepdims=True) / 448
        # Half an E4M3 step: 2^-4 relative for normals, 2^-10 * scale absolute for subnormals.
        bound = np.abs(x) * 2.0**-4 + s * 2.0**-10 + 1e-30
        assert (np.abs(y - x) <= bound).all(), name


def test_threads_do_not_change_the_output(tmp_path, threads):
    src = tmp_path / "m.safetensors"
    rng = np.random.default_rng(5)
    write_raw(str(src), {"l.weight": rng.standard_normal((700, 300)).astype(BF16)})
    outs = []
    for n in (1, 2):
        fp8fast.set_num_threads(n)
        for g in ("tensor", "channel", "block"):
            out = tmp_path / f"q{n}{g}.safetensors"
            ck.quantize(str(src), str(out), granularity=g, quiet=True)
            outs.append((g, out.read_bytes()))
    assert outs[:3] == outs[3:]


def test_stochastic_rounding_is_seeded_and_picks_a_neighbour(tmp_path, threads):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 200)).astype(np.float32)
    src = tmp_path / "m.safetensors"
    write_raw(str(src), {"a.weight": x, "b.weight": x})
    outs = {}
    for n, seed in ((1, 5), (2, 5), (2, 6)):
        fp8fast.set_num_threads(n)
        out = tmp_path / f"s{n}-{seed}.safetensors"
        ck.quantize(str(src), str(out), rounding="stochastic", seed=seed, quiet=True)
        outs[(n, seed)] = fp8fast.load_file(out)
    a1, a2, a6 = outs[(1, 5)], outs[(2, 5)], outs[(2, 6)]
    assert a1["a.weight"].tobytes() == a2["a.weight"].tobytes()  # thread count does not matter
    assert a1["a.weight"].tobytes() != a6["a.weight"].tobytes()  # the seed does
    assert a1["a.weight"].tobytes() != a1["b.weight"].tobytes()  # each tensor its own stream
    near, s = reference_quantize(x, "channel")
    np.testing.assert_array_equal(a1["a.weight_scale"], s)
    # Each code is the nearest one or the neighbour on the other side of x * inv: one code
    # step further in magnitude if |x * inv| is above the nearest value, one below otherwise.
    scaled = x.astype(np.float64) * (np.float32(1) / s).astype(np.float64)
    cn = near.view(np.uint8).astype(np.int32)
    qn = near.astype(np.float64)
    step = np.sign(np.abs(scaled) - np.abs(qn)).astype(np.int32)
    sign_bit = np.where(scaled < 0, 0x80, 0)
    other = sign_bit | ((cn & 0x7F) + step)
    c = a1["a.weight"].view(np.uint8).astype(np.int32)
    q = a1["a.weight"].astype(np.float64)
    assert ((c == cn) | ((step != 0) & (c == other))).all()
    assert (q != qn).mean() > 0.05


# ---------------------------------------------------------------------------------------------
# dequantize


def rounded_bf16(ref64: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16, ties to even, by comparing the two
    bfloat16 neighbours (independent of any library's float64 -> bfloat16 cast)."""
    f32 = ref64.astype(np.float32)
    bits = f32.view(np.uint32) & np.uint32(0xFFFF0000)
    lo = bits.view(np.float32).astype(np.float64)  # truncated toward zero
    hi_bits = (bits + np.uint32(0x10000)).view(np.float32).astype(np.float64)
    d_lo, d_hi = np.abs(ref64 - lo), np.abs(hi_bits - ref64)
    lo_even = ((bits >> 16) & 1) == 0
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ~lo_even)
    return np.where(pick_hi, hi_bits, lo).astype(BF16)


def write_deepseek_checkpoint(path, rows=300, cols=260, seed=3, mx=False):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x40  # no NaN codes in weights
    q = codes.view(ml_dtypes.float8_e4m3fn)
    if mx:
        sc = rng.integers(110, 135, (rows, -(-cols // 32)), dtype=np.uint8)
        scale = sc.view(ml_dtypes.float8_e8m0fnu)
        tensors = {"layer.weight": q, "layer.weight_scale": scale}
        config = {"quantization_config": {"quant_method": "mx"}}
    else:
        scale = (rng.random((-(-rows // 128), -(-cols // 128))) * 0.01 + 1e-4).astype(np.float32)
        tensors = {"layer.weight": q, "layer.weight_scale_inv": scale}
        config = {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                          "weight_block_size": [128, 128]}}
    tensors["layer.bias"] = rng.standard_normal(rows).astype(BF16)
    os.makedirs(path, exist_ok=True)
    write_raw(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return codes, scale


def block_reference(codes, scale, mx=False):
    x = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    s = scale.astype(np.float64)
    if mx:
        full = np.repeat(s, 32, axis=1)[:, :x.shape[1]]
    else:
        full = np.repeat(np.repeat(s, 128, 0), 128, 1)[:x.shape[0], :x.shape[1]]
    return x * full


@pytest.mark.parametrize("mx", [False, True], ids=["deepseek_block", "mx_e8m0"])
def test_dequantize_block_and_mx_checkpoints_to_the_f64_reference(tmp_path, mx):
    src = tmp_path / "ds"
    codes, scale = write_deepseek_checkpoint(str(src), mx=mx)
    ref = block_reference(codes, scale, mx)
    for dtype in ("f32", "bf16", "f16"):
        out = tmp_path / f"out-{dtype}"
        ck.dequantize(str(src), str(out), dtype=dtype, quiet=True)
        t = fp8fast.load_file(out / "model.safetensors")
        assert set(t) == {"layer.weight", "layer.bias"}
        y = t["layer.weight"]
        if dtype == "f32":
            assert y.dtype == np.float32
            np.testing.assert_array_equal(y, ref.astype(np.float32))  # one rounding: exact
        elif dtype == "bf16":
            assert y.dtype == BF16
            np.testing.assert_array_equal(y.astype(np.float64), rounded_bf16(ref).astype(np.float64))
        else:
            assert y.dtype == np.float16
            # float64 -> float16 in numpy is a single correct rounding.
            np.testing.assert_array_equal(y, ref.astype(np.float16))
        assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_dequantize_finds_scales_in_another_shard(tmp_path):
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    os.makedirs(src)
    q = rng.standard_normal((40, 64)).astype(ml_dtypes.float8_e4m3fn)
    s = (rng.random((40, 1)) + 0.5).astype(np.float32)
    write_raw(str(src / "a.safetensors"), {"l.weight": q, "m.weight_scale": np.array([2.0], np.float32)})
    m = rng.standard_normal((8, 8)).astype(ml_dtypes.float8_e5m2)
    write_raw(str(src / "b.safetensors"), {"l.weight_scale": s, "m.weight": m})
    with open(src / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"l.weight": "a.safetensors", "m.weight_scale": "a.safetensors",
                                  "l.weight_scale": "b.safetensors", "m.weight": "b.safetensors"}}, f)
    out = tmp_path / "out"
    ck.dequantize(str(src), str(out), dtype="f32", quiet=True)
    a, b = fp8fast.load_file(out / "a.safetensors"), fp8fast.load_file(out / "b.safetensors")
    assert set(a) == {"l.weight"} and set(b) == {"m.weight"}
    np.testing.assert_array_equal(a["l.weight"], (q.astype(np.float64) * s).astype(np.float32))
    np.testing.assert_array_equal(b["m.weight"], (m.astype(np.float64) * 2).astype(np.float32))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"l.weight": "a.safetensors", "m.weight": "b.safetensors"}


def test_dequantize_errors_name_the_tensor(tmp_path):
    src = tmp_path / "x.safetensors"
    q = np.zeros((300, 260), ml_dtypes.float8_e4m3fn)
    write_raw(str(src), {"l.weight": q, "l.weight_scale_inv": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="l.weight_scale_inv"):
        ck.dequantize(str(src), str(tmp_path / "y.safetensors"), quiet=True)
    write_raw(str(src), {"l.weight": q})
    with pytest.raises(ValueError, match="l.weight"):
        ck.dequantize(str(src), str(tmp_path / "y.safetensors"), quiet=True)
    assert listdir_all(tmp_path) == ["x.safetensors"]


# ---------------------------------------------------------------------------------------------
# inspect


def test_inspect_reports_layout_amax_and_error(tmp_path, capsys):
    tensors = model_tensors(layers=1)
    src, q = tmp_path / "src", tmp_path / "q"
    write_model_dir(str(src), tensors, shards=1)
    rows = ck.inspect(str(src), error=True, granularity="tensor")
    by = {r["name"]: r for r in rows}
    down = "model.layers.0.mlp.down_proj.weight"
    assert by[down]["amax"] == 2000.0
    assert by["lm_head.weight"]["sqnr_db"] is None  # not quantizable by default
    tensor_sqnr = by[down]["sqnr_db"]
    rows = ck.inspect(str(src), error=True, granularity="channel")
    channel_sqnr = {r["name"]: r for r in rows}[down]["sqnr_db"]
    assert channel_sqnr > tensor_sqnr + 3  # the outlier row hurts per-tensor scaling
    # float32 scales, as the --error prediction assumes.
    ck.quantize(str(src), str(q), granularity="channel", scale_dtype="f32", quiet=True)
    rows = ck.inspect(str(q), source=str(src))
    by_q = {r["name"]: r for r in rows}
    assert by_q[down]["scale"] == "channel"
    assert by_q[down]["sqnr_db"] == pytest.approx(channel_sqnr)
    text = capsys.readouterr().out
    assert "SQNR dB" in text and down in text and "tensors in 1 file(s)" in text


# ---------------------------------------------------------------------------------------------
# memory bound


def test_peak_memory_stays_below_twice_the_largest_tensor_plus_200mb(tmp_path):
    """The checkpoint (24 tensors of 16 MiB = 384 MiB) is larger than the bound
    (2 x 16 MiB + 200 MB = 233.5 MB), so a converter that held the checkpoint (or even the
    output file) in memory would fail. RSS is measured in a fresh child process (the
    interpreter, numpy and fp8fast included) via getrusage of its own children."""
    rows, cols, n = 4096, 2048, 24
    src = tmp_path / "big.safetensors"
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((rows, cols)) * 0.02).astype(BF16).tobytes()
    header = {f"layers.{i}.mlp.up_proj.weight": {"dtype": "BF16", "shape": [rows, cols],
                                                 "data_offsets": [i * len(block), (i + 1) * len(block)]}
              for i in range(n)}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(src, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for _ in range(n):
            f.write(block)
    largest = len(block)
    bound = 2 * largest + 200 * 10**6
    assert os.path.getsize(src) > bound
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        cmds = [
            [sys.executable, "-m", "fp8fast.cli_checkpoint", "quantize", {str(src)!r}, {str(tmp_path / 'q.safetensors')!r}, "-q"],
            [sys.executable, "-m", "fp8fast.cli_checkpoint", "dequantize", {str(tmp_path / 'q.safetensors')!r}, {str(tmp_path / 'b.safetensors')!r}, "-q"],
        ]
        for c in cmds:
            subprocess.run(c, check=True)
            print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    peaks = [int(v) for v in out.stdout.split()]
    assert len(peaks) == 2
    for peak in peaks:
        assert peak < bound, f"peak RSS {peak / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"
    back = fp8fast.safe_open(tmp_path / "b.safetensors")
    assert back.keys() == list(header)


def test_save_file_with_an_empty_tensor_first(tmp_path):
    p = tmp_path / "empty-first.safetensors"
    fp8fast.save_file({"c": np.zeros((0, 5), np.float16), "a": np.ones(2, np.float32)}, p)
    got = fp8fast.load_file(p)
    assert got["c"].shape == (0, 5) and got["c"].dtype == np.float16
    assert np.array_equal(got["a"], np.ones(2, np.float32))
