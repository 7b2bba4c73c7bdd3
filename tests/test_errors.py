"""Bad input to the library: each case is a clean Python exception or the numpy-style result,
never a panic (``PanicException`` is a ``BaseException``), an abort or a silently wrong value."""

import os
import subprocess
import sys
import textwrap

import fp8fast as f8
import ml_dtypes
import numpy as np
import pytest


def run_limited(code, limit_bytes, timeout=120):
    """Run ``code`` in a fresh interpreter whose address space is capped at ``limit_bytes``
    (``RLIMIT_AS``), so that large allocations fail for sure, whatever the machine has."""
    prelude = textwrap.dedent(f"""\
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FP8FAST_NUM_THREADS": "2"})


# --- allocation failures: MemoryError, never a panic ---------------------------------------

HUGE = "np.broadcast_to(np.float32(1), (1 << 24, 1 << 24))"
CASES = {
    "quantize": f"f8.quantize({HUGE})",
    "quantize_block": f"f8.quantize({HUGE}, granularity='block')",
    "dequantize": "f8.dequantize(np.broadcast_to(np.zeros((), f8.E4M3), (1 << 24, 1 << 24)), "
                  "np.float32(1))",
    "dequantize_bf16": "f8.dequantize(np.broadcast_to(np.zeros((), f8.E4M3), (1 << 20, 1 << 20)), "
                       "1.0, dtype=f8.BFLOAT16)",
    "encode": f"f8.encode({HUGE})",
    "encode_stochastic": f"f8.encode({HUGE}, rounding='stochastic', seed=1)",
    "amax_rows": f"f8.amax({HUGE}, axis=1)",
    "decode": "f8.decode(np.broadcast_to(np.zeros((), f8.E4M3), (1 << 24, 1 << 24)))",
    # Inputs that fit under the limit, results that do not.
    "quantize_limit": "f8.quantize(np.broadcast_to(np.float32(1), (1 << 15, 1 << 14)))",
    # matmul's operand-sized buffers: the GEMV path's activation rows (4 bytes per element
    # of a 1 x 2^28 float32 row, against 256 MiB of real FP8 weights), and the blocked path's
    # row scales for 2^25 rows with K block scales.
    "matmul_gemv": (
        "w = np.zeros((1, 1 << 28), f8.E4M3)\n"
        "f8.matmul(np.broadcast_to(np.float32(1), (1, 1 << 28)), w.T)"
    ),
    "matmul_block_scales": (
        "a = np.broadcast_to(np.zeros((), f8.E4M3), (1 << 25, 256))\n"
        "b = np.zeros((256, 1), f8.E4M3)\n"
        "sa = np.broadcast_to(np.float32(1), (1 << 25, 2))\n"
        "f8.matmul(a, b, scale_a=sa, scale_b=np.ones((2, 1), np.float32))"
    ),
    "stochastic_strided_out": (
        "x = np.broadcast_to(np.float32(1), (1 << 15, 1 << 14))\n"
        "out = np.lib.stride_tricks.as_strided(np.zeros(2, f8.E4M3), x.shape, (0, 1))\n"
        "f8._core.encode_stochastic_into(x, out.view(np.uint8), 'e4m3', False, 1)"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_allocation_failure_is_a_memory_error(case):
    """Item 6: under an address-space limit every allocation sized by the input fails as
    MemoryError (an ``Exception``), with no Rust panic message or backtrace on stderr."""
    code = f"""
        import numpy as np, fp8fast as f8
        f8.set_num_threads(2)
        try:
{textwrap.indent(CASES[case], " " * 12)}
        except MemoryError as e:
            print("MemoryError:", e)
        else:
            print("no error")
    """
    r = run_limited(code, 600 << 20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("MemoryError:"), r.stdout + r.stderr
    assert "panicked" not in r.stderr and "PanicException" not in r.stderr, r.stderr


# --- dequantize into an unaligned out ------------------------------------------------------

def unaligned(shape, dtype):
    """A C-contiguous array of ``dtype`` whose data starts one byte past an aligned address."""
    dtype = np.dtype(dtype)
    raw = np.zeros(int(np.prod(shape)) * dtype.itemsize + 1, np.uint8)
    a = raw[1:].view(dtype).reshape(shape)
    assert a.flags.c_contiguous and not a.flags.aligned
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_dequantize_into_unaligned_out(isa, dtype, granularity):
    """Item 8: an unaligned C-contiguous out is written like any other out."""
    x = np.random.default_rng(1).standard_normal((7, 300)).astype(np.float32)
    q, s = f8.quantize(x, granularity=granularity, block=(4, 128))
    kw = {"block": (4, 128)} if granularity == "block" else {}
    expected = f8.dequantize(q, s, dtype=dtype, **kw)
    out = unaligned(q.shape, dtype)
    got = f8.dequantize(q, s, dtype=dtype, out=out, **kw)
    assert got is out
    np.testing.assert_array_equal(out, expected)


# --- scales: numbers, and wrong shapes named plainly --------------------------------------

def test_dequantize_takes_numbers_as_per_tensor_scales():
    """Item 10: a Python int or float, or a numpy scalar, is a per-tensor scale."""
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
    q = f8.to_e4m3(x)
    ref = q.astype(np.float32) * np.float32(2)
    for scale in (2, 2.0, np.float32(2), np.float64(2), np.int64(2), np.uint8(2), [2.0]):
        np.testing.assert_array_equal(f8.dequantize(q, scale), ref, err_msg=repr(scale))
    # A Python float is rounded to float32 once, as numpy rounds a Python scalar with float32.
    np.testing.assert_array_equal(f8.dequantize(q, 0.1), q.astype(np.float32) * np.float32(0.1))
    with pytest.raises(ValueError, match="float32 range"):
        f8.dequantize(q, 1e300)
    for bad in (np.int64(2**25 + 1), 2**25 + 1, 2**128 - 1, 2**200, 10**400):
        with pytest.raises(ValueError, match="exactly representable"):
            f8.dequantize(q, bad)
    with pytest.raises(TypeError):
        f8.dequantize(q, True)
    with pytest.raises(ValueError, match="float32"):
        f8.dequantize(q, np.ones((1, 1), np.int32))  # integer arrays stay refused


def test_a_scale_of_no_known_shape_lists_the_shapes_that_fit():
    """Item 10: a (2,) scale for 2x4 codes fits no layout; the error says which ones would."""
    q = f8.to_e4m3(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError) as e:
        f8.dequantize(q, np.ones(2, np.float32))
    msg = str(e.value)
    assert "block scale" not in msg
    for part in ("(2,)", "(2, 4)", "()", "(1,)", "(2, 1)", "(1, 4)", "(1, 1)", "128x128"):
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        f8.dequantize(np.zeros((300, 300), f8.E4M3), np.ones((2, 2), np.float32))


# --- byte order -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [">f4", ">f2", ">f8"])
def test_big_endian_floats_give_the_native_results(dtype):
    """Item 10: byte-swapped float input is converted, with the native-order results."""
    rng = np.random.default_rng(2)
    native = (rng.standard_normal((5, 64)) * 100).astype(np.dtype(dtype).newbyteorder("="))
    swapped = native.astype(dtype)
    assert not swapped.dtype.isnative
    for fmt in ("e4m3", "e5m2"):
        np.testing.assert_array_equal(f8.encode(swapped, fmt).view(np.uint8),
                                      f8.encode(native, fmt).view(np.uint8))
        np.testing.assert_array_equal(
            f8.encode(swapped, fmt, rounding="stochastic", seed=3).view(np.uint8),
            f8.encode(native, fmt, rounding="stochastic", seed=3).view(np.uint8))
    np.testing.assert_array_equal(f8.to_e5m2(swapped[:, ::3]).view(np.uint8),
                                  f8.to_e5m2(native[:, ::3]).view(np.uint8))
    for g in ("tensor", "channel", "block", "mx"):
        (qa, sa), (qb, sb) = f8.quantize(swapped, granularity=g), f8.quantize(native, granularity=g)
        assert qa.tobytes() == qb.tobytes() and sa.tobytes() == sb.tobytes()
    assert f8.amax(swapped) == f8.amax(native)
    np.testing.assert_array_equal(f8.amax(swapped, axis=1), f8.amax(native, axis=1))
    q, s = f8.quantize(native, granularity="channel")
    assert f8.quant_error(swapped, q, s) == f8.quant_error(native, q, s)
    np.testing.assert_array_equal(f8.dequantize(q, s.astype(">f4")), f8.dequantize(q, s))


def test_big_endian_float_operands_of_matmul():
    a = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    w = f8.to_e4m3(np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32))
    np.testing.assert_array_equal(f8.matmul(a.astype(">f4"), w.T), f8.matmul(a, w.T))


# --- set_num_threads ------------------------------------------------------------------------

def test_set_num_threads_takes_numpy_integers_and_names_the_range(threads):
    """Item 10: numpy integers are integers; out of range is a ValueError naming the range."""
    f8.set_num_threads(np.int64(2))
    assert f8.get_num_threads() == 2
    f8.set_num_threads(np.uint8(1))
    assert f8.get_num_threads() == 1
    for bad in (0, -1, 2**63, 2**64, 10**30, np.int64(-5), 1025):
        with pytest.raises(ValueError, match="from 1 to 1024"):
            f8.set_num_threads(bad)
    for bad in (2.0, "2", None, True, np.float64(2)):
        with pytest.raises(TypeError):
            f8.set_num_threads(bad)
    assert f8.get_num_threads() == 1


# --- save_file metadata ---------------------------------------------------------------------

@pytest.mark.parametrize("metadata", [["a", "b"], [("a", "b")], "ab", 3, {"a": 1}, {1: "a"}])
def test_save_file_metadata_must_be_a_dict_of_str(tmp_path, metadata):
    """Item 10: TypeError naming what metadata must be, and nothing written."""
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="metadata must be a dict of str to str"):
        f8.save_file({"a": np.ones(2, np.float32)}, path, metadata=metadata)
    assert not path.exists()


def test_bfloat16_scales_and_inputs_still_work():
    x = np.arange(-8, 8, dtype=np.float32).reshape(2, 8).astype(ml_dtypes.bfloat16)
    q, s = f8.quantize(x)
    s16 = s.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(f8.dequantize(q, s16), f8.dequantize(q, s16.astype(np.float32)))
