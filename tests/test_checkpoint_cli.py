"""The ``fp8fast quantize / dequantize / inspect`` commands: exit codes, one-line errors,
atomic output, --force, --shard, --jobs, and the bad-input list."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import fp8fast
import ml_dtypes
import numpy as np
import pytest
from ckpt_fixtures import bad_files, model_tensors, write_model_dir, write_raw
from fp8fast.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tree(path):
    """Every file under path with its bytes."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "model"
    write_model_dir(str(src), model_tensors())
    return src


def test_help_lists_the_checkpoint_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("quantize", "dequantize", "inspect"):
        assert cmd in out
    for cmd in ("quantize", "dequantize", "inspect"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: fp8fast " + cmd in capsys.readouterr().out


def test_quantize_dequantize_inspect_succeed(tmp_path, capsys, model):
    q, b = tmp_path / "q", tmp_path / "b"
    code, out, err = run(capsys, "quantize", str(model), str(q), "--jobs", "2")
    assert code == 0, err
    assert "quantized 14 tensors" in err
    code, out, err = run(capsys, "quantize", str(model), str(tmp_path / "qb"), "--granularity", "block",
                         "--block", "32x32", "-q")
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "qb" / "config.json").read_text())["quantization_config"]["weight_block_size"] == [32, 32]
    for k in (1, 2):
        code, _, err = run(capsys, "quantize", str(model), str(tmp_path / f"qs{k}"), "-q",
                           "--rounding", "stochastic", "--seed", "3")
        assert code == 0, err
    assert tree(tmp_path / "qs1") == tree(tmp_path / "qs2")
    code, out, err = run(capsys, "dequantize", str(q), str(b), "--dtype", "bf16", "-q")
    assert code == 0, err
    code, out, err = run(capsys, "inspect", str(q))
    assert code == 0 and "channel" in out and "F8_E4M3" in out
    code, out, err = run(capsys, "inspect", str(model), "--error", "--granularity", "block")
    assert code == 0 and "SQNR dB" in out


def test_existing_destination_and_source_as_destination_are_refused(tmp_path, capsys, model):
    q = tmp_path / "q"
    assert run(capsys, "quantize", str(model), str(q), "-q")[0] == 0
    before = tree(q)
    code, out, err = run(capsys, "quantize", str(model), str(q), "-q")
    assert code == 1 and err.startswith("fp8fast: error:") and "--force" in err and err.count("\n") == 1
    assert tree(q) == before
    code, _, err = run(capsys, "quantize", str(model), str(q), "-q", "--force", "--granularity", "tensor")
    assert code == 0, err
    assert json.loads((q / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] == "tensor"
    src_before = tree(model)
    for dst in (model, model / "inner"):
        code, _, err = run(capsys, "quantize", str(model), str(dst), "-q", "--force")
        assert code == 1 and "source" in err
    shard = next(p for p in os.listdir(model) if p.endswith(".safetensors"))
    code, _, err = run(capsys, "quantize", str(model / shard), str(model / shard), "-q", "--force")
    assert code == 1 and "source" in err
    assert tree(model) == src_before
    assert sorted(os.listdir(tmp_path)) == ["model", "q"]


def test_single_file_into_a_directory_and_shard_jobs(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    write_raw(str(src), model_tensors(layers=1))
    out = tmp_path / "out"
    out.mkdir()
    assert run(capsys, "quantize", str(src), str(out), "-q", "--shard", "2/2")[0] == 0
    assert os.listdir(out) == []  # the only file belongs to job 1
    assert run(capsys, "quantize", str(src), str(out), "-q")[0] == 0
    assert os.listdir(out) == ["m.safetensors"]
    assert fp8fast.load_file(out / "m.safetensors")["model.layers.0.mlp.up_proj.weight"].dtype == fp8fast.E4M3


def test_a_single_file_remembers_its_block_size(tmp_path, capsys):
    # No config.json next to a lone file: its metadata must carry the block size, or a
    # non-default one could not be dequantized.
    src, q, back = (tmp_path / n for n in ("m.safetensors", "q.safetensors", "d.safetensors"))
    tensors = model_tensors(layers=1)
    write_raw(str(src), tensors, metadata={"format": "pt"})
    assert run(capsys, "quantize", str(src), str(q), "-q", "--granularity", "block", "--block", "64x32")[0] == 0
    with fp8fast.safe_open(q) as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["quantization_config"])["weight_block_size"] == [64, 32]
    assert run(capsys, "dequantize", str(q), str(back), "-q")[0] == 0
    with fp8fast.safe_open(back) as f:
        assert f.metadata() == {"format": "pt"}
    out = fp8fast.load_file(back)
    name = "model.layers.0.mlp.up_proj.weight"
    x, y = tensors[name].astype(np.float64), out[name].astype(np.float64)
    rows, cols = x.shape
    for r0 in range(0, rows, 64):
        for c0 in range(0, cols, 32):
            xb, yb = x[r0:r0 + 64, c0:c0 + 32], y[r0:r0 + 64, c0:c0 + 32]
            # E4M3 with this block's scale s = amax / 448: half a step is 2^-4 relative for
            # normals and s * 2^-10 in the subnormal range; bf16 adds 2^-8 relative.
            s_blk = np.abs(xb).max() / 448
            bound = np.abs(xb) * (2.0**-4 + 2.0**-8) * 1.001 + s_blk * 2.0**-10 * 1.001
            assert np.all(np.abs(yb - xb) <= bound), (r0, c0)
    # A broken metadata entry is a clean error.
    bad = tmp_path / "bad.safetensors"
    qt = fp8fast.load_file(q)
    write_raw(str(bad), {name: qt[name], name + "_scale_inv": qt[name + "_scale_inv"]},
              metadata={"quantization_config": "{not json"})
    code, _, err = run(capsys, "dequantize", str(bad), str(tmp_path / "bad-out.safetensors"))
    assert code == 1 and "not JSON" in err


def test_index_metadata_that_is_not_an_object_is_a_clean_error(tmp_path, capsys, model):
    index = model / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["metadata"] = "text"
    index.write_text(json.dumps(data))
    code, _, err = run(capsys, "quantize", str(model), str(tmp_path / "q"), "-q")
    assert code == 1 and '"metadata" is not an object' in err
    assert not (tmp_path / "q").exists()


def test_quantizing_twice_is_refused(tmp_path, capsys, model):
    q = tmp_path / "q"
    assert run(capsys, "quantize", str(model), str(q), "-q")[0] == 0
    code, _, err = run(capsys, "quantize", str(q), str(tmp_path / "qq"), "-q")
    assert code == 1 and "already quantized" in err


def test_shards_split_across_jobs_give_the_same_output(tmp_path, capsys, model):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run(capsys, "quantize", str(model), str(full), "-q")[0] == 0
    for i in (2, 1):
        code, _, err = run(capsys, "quantize", str(model), str(split), "-q", "--shard", f"{i}/2")
        assert code == 0, err
    assert tree(split) == tree(full)
    with pytest.raises(SystemExit) as e:  # a usage error, reported by argparse
        main(["quantize", str(model), str(tmp_path / "x"), "--shard", "3/2"])
    assert e.value.code == 2 and "expected I/N" in capsys.readouterr().err


@pytest.mark.parametrize("case,data,message", bad_files(), ids=[c[0] for c in bad_files()])
def test_bad_input_gives_one_clean_line_and_leaves_nothing(tmp_path, capsys, case, data, message):
    src = tmp_path / "model"
    write_model_dir(str(src), model_tensors(layers=1), shards=2)
    # Replace the second shard with the malformed file: the first converts fine, the run
    # must still fail as a whole and leave nothing at DST.
    shard = sorted(p for p in os.listdir(src) if p.endswith(".safetensors"))[1]
    (src / shard).write_bytes(data)
    single = tmp_path / "single.safetensors"
    single.write_bytes(data)
    for argv in (
        ["quantize", str(src), str(tmp_path / "out")],
        ["quantize", str(single), str(tmp_path / "out.safetensors")],
        ["dequantize", str(src), str(tmp_path / "out")],
        ["dequantize", str(single), str(tmp_path / "out.safetensors")],
        ["inspect", str(src)],
        ["inspect", str(single)],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 1, argv
        assert err.startswith("fp8fast: error:") and err.count("\n") == 1, err
        assert message in err, err
        assert ("single.safetensors" in err) or (shard in err), err
        assert "Traceback" not in err
        assert sorted(os.listdir(tmp_path)) == ["model", "single.safetensors"], argv


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    r = subprocess.run([sys.executable, "-m", "fp8fast", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("fp8fast: error:") and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_ctrl_c_leaves_nothing_at_the_destination(tmp_path):
    rows, cols, n = 2048, 2048, 40  # 320 MiB: long enough to be interrupted
    src = tmp_path / "big.safetensors"
    block = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32).astype(
        fp8fast.BFLOAT16).tobytes()
    header = {f"l{i}.q_proj.weight": {"dtype": "BF16", "shape": [rows, cols],
                                      "data_offsets": [i * len(block), (i + 1) * len(block)]} for i in range(n)}
    h = json.dumps(header).encode()
    with open(src, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for _ in range(n):
            f.write(block)
    dst = tmp_path / "out.safetensors"
    p = subprocess.Popen([sys.executable, "-m", "fp8fast", "quantize", str(src), str(dst), "--jobs", "1"],
                         stderr=subprocess.PIPE, text=True)
    # Wait until the temporary output exists, i.e. conversion has started, then interrupt.
    deadline = time.time() + 30
    while time.time() < deadline and not any("fp8fast-tmp" in f for f in os.listdir(tmp_path)):
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the conversion finished before the interrupt arrived")
    assert p.returncode == 130, err
    assert err.startswith("fp8fast: error: interrupted") and err.count("\n") == 1, err
    if "is complete" in err:  # the interrupt came during the final rename: DST is whole
        assert sorted(os.listdir(tmp_path)) == ["big.safetensors", "out.safetensors"]
        assert len(fp8fast.load_file(dst)) == n
    else:
        assert "nothing was written" in err, err
        assert sorted(os.listdir(tmp_path)) == ["big.safetensors"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs, where mounting one is allowed (root with CAP_SYS_ADMIN on Linux)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_file_system_is_a_clean_error(tmp_path, capsys, small_tmpfs):
    # The output is written through memory maps on tmpfs: running out of space must be an
    # error before any byte is written through a map (a write would raise SIGBUS instead).
    src = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    name = "model.layers.0.mlp.up_proj.weight"
    write_raw(str(src), {name: (rng.standard_normal((2048, 2560)) * 0.02).astype(ml_dtypes.bfloat16)})
    q = tmp_path / "q.safetensors"
    assert run(capsys, "quantize", str(src), str(q), "-q")[0] == 0
    # 10 MiB of bf16 and 5 MiB of FP8: neither fits in 4 MiB.
    for argv in (["dequantize", str(q)], ["quantize", str(src)]):
        code, _, err = run(capsys, *argv, str(small_tmpfs / "out.safetensors"), "-q")
        assert code == 1 and "fp8fast: error:" in err, err
        assert "no room" in err or "No space" in err, err
        assert os.listdir(small_tmpfs) == []


def _tmpfs_dir():
    """/dev/shm when it is tmpfs with room, where outputs are also written through maps."""
    try:
        with open("/proc/mounts") as f:
            shm = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in f)
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if shm and st.f_bavail * st.f_frsize >= 256 << 20 else None


@pytest.fixture(params=["disk", "tmpfs"])
def out_dir(request, tmp_path):
    """Outputs on the test's folder (positional writes) and on tmpfs (also maps)."""
    if request.param == "disk":
        yield tmp_path
        return
    base = _tmpfs_dir()
    if base is None:
        pytest.skip("no tmpfs /dev/shm with 256 MiB free: the map write paths are not tested here")
    d = tempfile.mkdtemp(prefix="fp8fast-test-", dir=base)
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_dequantize_writes_the_same_bytes_on_every_write_path(tmp_path, out_dir, capsys, granularity):
    # --jobs 1: each piece written as it is converted; 2: converted beside a writer thread (on
    # tmpfs the converting thread also writes pieces through maps); 3: converted on all threads
    # (on tmpfs into a map of the output). Weights of several MiB, not a whole number of 1 MiB
    # pieces nor of 128-row blocks, so pieces and blocks straddle.
    rng = np.random.default_rng(5)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": (rng.standard_normal((1000, 1300)) * 0.02).astype(ml_dtypes.bfloat16),
        "model.layers.0.input_layernorm.weight": np.ones(1300, ml_dtypes.bfloat16),
        "model.layers.0.mlp.down_proj.weight": (rng.standard_normal((1300, 777)) * 3).astype(np.float32),
    }
    src, q = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    fp8fast.save_file(tensors, src)
    assert run(capsys, "quantize", str(src), str(q), "-q", "--granularity", granularity)[0] == 0
    qt = fp8fast.load_file(q)
    for dtype in ("f32", "bf16"):
        images = []
        for jobs in ("1", "2", "3"):
            out = out_dir / f"{dtype}-{jobs}.safetensors"
            code, _, err = run(capsys, "dequantize", str(q), str(out), "--dtype", dtype, "--jobs", jobs, "-q")
            assert code == 0, err
            images.append(out.read_bytes())
        assert images[0] == images[1] == images[2], dtype
    back = fp8fast.load_file(out_dir / "f32-1.safetensors")
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        codes = qt[name].astype(np.float64)
        s = qt[name + ("_scale" if granularity == "channel" else "_scale_inv")].astype(np.float64)
        if granularity == "block":
            s = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[: codes.shape[0], : codes.shape[1]]
        assert np.array_equal(back[name], (codes * s).astype(np.float32)), name
    assert np.array_equal(back["model.layers.0.input_layernorm.weight"], tensors["model.layers.0.input_layernorm.weight"])


def test_partial_blocks_warn_in_one_line_even_when_quiet(tmp_path, capsys, model):
    code, out, err = run(capsys, "quantize", str(model), str(tmp_path / "q"), "-q", "--granularity", "block",
                         "--block", "7x7")
    assert code == 0 and err.count("\n") == 1 and err.startswith("fp8fast: warning: 7x7 blocks do not divide")
    assert "transformers' fp8-block loader" in err


@pytest.mark.parametrize("argv,message", [
    (["--format", "e5m2"], "compressed-tensors has no E5M2"),
    (["--format", "e5m2", "--scheme", "mxfp8"], "--layout fp8-block"),
    (["--scheme", "fp8-dynamic", "--granularity", "tensor"], "--scheme fp8-dynamic has channel weight scales"),
    (["--scheme", "mxfp8", "--layout", "fp8-block"], "needs --layout compressed-tensors"),
    (["--scheme", "mxfp8", "--scale-dtype", "f32"], "E8M0"),
])
def test_contradictory_schemes_are_refused_in_one_line(tmp_path, capsys, model, argv, message):
    code, out, err = run(capsys, "quantize", str(model), str(tmp_path / "q"), *argv)
    assert code == 1 and err.count("\n") == 1 and err.startswith("fp8fast: error: ") and message in err, err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("argv,group_format,strategy,inputs,scale_dtype", [
    ([], "float-quantized", "channel", "token", "BF16"),
    (["--scheme", "fp8-block"], "float-quantized", "block", "group", "BF16"),
    (["--scheme", "fp8-weight-only", "--granularity", "tensor"], "naive-quantized", "tensor", None, "BF16"),
    (["--granularity", "tensor", "--scale-dtype", "f32"], "naive-quantized", "tensor", None, "F32"),
    (["--scheme", "mxfp8"], "mxfp8-quantized", "group", "group", "U8"),
    (["--scheme", "mxfp8-weight-only"], "mxfp8-quantized", "group", None, "U8"),
])
def test_schemes_write_their_preset_and_scale_dtype(tmp_path, capsys, model, argv, group_format, strategy,
                                                    inputs, scale_dtype):
    """The compressed-tensors fields that decide how clients run the model (the whole config is
    compared with compressed-tensors' own in test_interop.py)."""
    q = tmp_path / "q"
    code, out, err = run(capsys, "quantize", str(model), str(q), "-q", *argv)
    assert code == 0, err
    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == group["format"] == group_format
    assert group["weights"]["strategy"] == strategy
    assert (group["input_activations"] or {}).get("strategy") == inputs
    assert "fp8_format" not in qc and qc["version"] and qc["sparsity_config"] == {}
    headers = [fp8fast._core.read_header(str(p))[1] for p in sorted(q.glob("*.safetensors"))]
    dtypes = {row[1] for rows in headers for row in rows if row[0].endswith("_scale")}
    assert dtypes == {scale_dtype}
    code, out, err = run(capsys, "dequantize", str(q), str(tmp_path / "back"), "-q")
    assert code == 0, err


def test_quantize_checkpoint_from_python(tmp_path, model):
    r = fp8fast.quantize_checkpoint(str(model), str(tmp_path / "q"), scheme="fp8-block", block=(32, 32))
    assert r["quantized"] > 0 and r["partial_blocks"] == []
    with pytest.warns(UserWarning, match="transformers' fp8-block loader"):
        r = fp8fast.quantize_checkpoint(str(model), str(tmp_path / "q7"), layout="fp8-block", block=(7, 7))
    assert r["partial_blocks"]
    r = fp8fast.dequantize_checkpoint(str(tmp_path / "q"), str(tmp_path / "back"), dtype="f32")
    assert r["dequantized"] > 0
    with pytest.raises(ValueError, match="E5M2"):
        fp8fast.quantize_checkpoint(str(model), str(tmp_path / "e5"), fmt="e5m2")
    assert not (tmp_path / "e5").exists()
    assert "quantize_checkpoint" in fp8fast.__all__ and "dequantize_checkpoint" in dir(fp8fast)


def test_mx_groups_that_do_not_divide_a_row_warn(tmp_path, capsys):
    # compressed-tensors and transformers refuse MX weights whose rows 32 does not divide.
    tensors = model_tensors()
    tensors["model.layers.0.mlp.odd_proj.weight"] = np.ones((16, 40), np.float32).astype(ml_dtypes.bfloat16)
    write_model_dir(str(tmp_path / "m"), tensors)
    code, out, err = run(capsys, "quantize", str(tmp_path / "m"), str(tmp_path / "q"), "-q", "--scheme", "mxfp8")
    assert code == 0 and err.count("\n") == 1, err
    assert err.startswith("fp8fast: warning: MX groups of 32 do not divide 1 weight(s): "
                          "model.layers.0.mlp.odd_proj.weight (16, 40)"), err


@pytest.mark.parametrize("scale_dtype,warns", [("f32", True), ("f16", True), ("bf16", False), ("auto", False)])
def test_a_compressed_tensors_scale_dtype_other_than_the_weights_warns(tmp_path, capsys, model, scale_dtype,
                                                                      warns):
    # transformers keeps weight_scale in the model's (bf16) dtype: other scales are misread.
    code, out, err = run(capsys, "quantize", str(model), str(tmp_path / "q"), "-q", "--scale-dtype", scale_dtype)
    assert code == 0, err
    if warns:
        assert err.count("\n") == 1 and err.startswith(f"fp8fast: warning: --scale-dtype {scale_dtype} differs"), err
        assert "(BF16)" in err
    else:
        assert err == "", err


def test_nothing_to_quantize_is_an_error_that_writes_nothing(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    write_raw(str(src), {"model.layers.0.mlp.up_proj.weight": np.ones((8, 16), ml_dtypes.bfloat16),
                         "model.norm.weight": np.ones(16, ml_dtypes.bfloat16)})
    q = tmp_path / "q.safetensors"
    assert run(capsys, "quantize", str(src), str(q), "-q")[0] == 0
    # An FP8 checkpoint is already quantized; a checkpoint whose weights are all ignored has
    # nothing to quantize. Neither writes anything.
    for argv, why in (([str(q), str(tmp_path / "again.safetensors")],
                       "tensor 'model.layers.0.mlp.up_proj.weight' is already F8_E4M3: the checkpoint is already quantized"),
                      ([str(src), str(tmp_path / "none.safetensors"), "--ignore", "mlp"], "no weight to quantize")):
        code, out, err = run(capsys, "quantize", *argv, "-q")
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("fp8fast: error: ") and why in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "q.safetensors"]
