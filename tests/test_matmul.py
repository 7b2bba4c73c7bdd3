"""fp8fast.matmul / linear against a float64 reference computed here from the decoded operands.

Every test that runs kernels is parametrized over the ISA paths (the `isa` fixture of
conftest.py; paths this CPU lacks are skipped), so each microkernel (scalar, AVX2, AVX-512, AVX-512 BF16) and GEMV kernel is checked.
The accuracy contract: |c - ref| <= (k + 2) * 2**-23 * (|A| @ |B|) elementwise, where A and B
are the scaled operands in float64.
"""

import fp8fast._core as core
import ml_dtypes
import numpy as np
import pytest
from fp8fast._gemm import linear, matmul

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
BF16 = np.dtype(ml_dtypes.bfloat16)
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
KINDS = {"e4m3": E4M3, "e5m2": E5M2, "f32": F32, "f16": F16, "bf16": BF16}


def rand(rng, shape, dtype, order="C"):
    x = rng.standard_normal(shape).astype(np.float32) * 2
    x = np.asarray(x, order=order)
    return x.astype(dtype, order="K")


def f64(x, fmt=None):
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.view(E4M3 if fmt == "e4m3" else E5M2)
    return x.astype(np.float64)


def expand_scale(s, rows, cols, block, is_a):
    """A scale of matmul's layouts expanded to a full (rows, cols) float64 array."""
    if s is None:
        return np.ones((rows, cols))
    s = np.asarray(s, dtype=np.float32).astype(np.float64)
    if s.ndim == 0:
        s = s.reshape(1, 1)
    elif s.ndim == 1:
        s = s.reshape(-1, 1) if is_a else s.reshape(1, -1)
    outer_axis = 0 if is_a else 1
    for axis, full in ((0, rows), (1, cols)):
        n = s.shape[axis]
        if n == 1:
            s = np.repeat(s, full, axis=axis)
        elif n != full or (axis != outer_axis):
            # Blocked (K is always blocked when longer than 1).
            s = np.repeat(s, block, axis=axis).take(np.arange(full), axis=axis)
    return s


def reference(a, b, sa=None, sb=None, block=128, fmt_a=None, fmt_b=None):
    A, B = f64(a, fmt_a), f64(b, fmt_b)
    if A.ndim == 1:
        A = A[None, :]
    if B.ndim == 1:
        B = B[:, None]
    A = A * expand_scale(sa, A.shape[-2], A.shape[-1], block, True)
    B = B * expand_scale(sb, B.shape[-2], B.shape[-1], block, False)
    return A @ B, np.abs(A) @ np.abs(B), A.shape[-1]


def check(c, a, b, sa=None, sb=None, block=128, fmt_a=None, fmt_b=None, out_unit=0.0):
    ref, absref, k = reference(a, b, sa, sb, block, fmt_a, fmt_b)
    ref = ref.reshape(c.shape)
    absref = absref.reshape(c.shape)
    tol = (k + 2) * 2.0**-23 * absref
    # Rounding the float32 result to float16 / bfloat16 adds half an ulp of the output.
    tol = tol * (1 + out_unit) + out_unit * np.abs(ref) + (2.0**-24 if out_unit else 0.0)
    err = np.abs(c.astype(np.float64) - ref)
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} outside the bound; first at {np.argwhere(bad)[0]}: "
        f"got {c[tuple(np.argwhere(bad)[0])]}, want {ref[tuple(np.argwhere(bad)[0])]}"
    )


# --------------------------------------------------------------------------------------------
# Per kernel: identity first, then sizes around MR / NR / MC / KC.


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("m,k", [(1, 1), (13, 31), (15, 33), (29, 70)])
def test_identity_exact(isa, dtype, m, k):
    rng = np.random.default_rng(m * 100 + k)
    a = rand(rng, (m, k), dtype)
    eye = np.eye(k, dtype=np.float32).astype(dtype)
    want = a.astype(np.float32)
    np.testing.assert_array_equal(matmul(a, eye), want)  # GEMM path (b row-major)
    np.testing.assert_array_equal(matmul(a, np.asfortranarray(eye)), want)  # GEMV path (m <= 32)


# Register blocks MR x NR: scalar 4 x 8, AVX2 6 x 16, AVX-512 (f32 and bf16) 14 x 32.
# Cache blocks: MC 64 (scalar) / 336, KC 256 (scalar) / 512 (float32) / 768 (bfloat16 pairs).
SHAPES = [
    (0, 5, 7), (5, 0, 7), (5, 7, 0), (1, 1, 1), (3, 5, 13), (4, 8, 6), (5, 9, 14),
    (13, 31, 15), (14, 32, 257), (15, 33, 300), (65, 17, 65), (337, 17, 40), (1, 1000, 300),
    (8, 300, 1000), (9, 300, 513), (300, 14, 1000), (1000, 15, 13), (121, 97, 129),
    (20, 70, 769), (29, 65, 1537)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_shapes_e4m3(isa, m, n, k):
    rng = np.random.default_rng(m + 7 * n + 13 * k)
    a = rand(rng, (m, k), E4M3)
    w = rand(rng, (n, k), E4M3)  # [out, in] weight: b = w.T, the GEMV / transposed layout
    check(matmul(a, w.T), a, w.T)
    b = rand(rng, (k, n), E5M2)
    check(matmul(a, b), a, b)


@pytest.mark.parametrize("ka", list(KINDS))
@pytest.mark.parametrize("kb", list(KINDS))
# (Small-m paths up to the CPU's crossovers, 16-128 rows; blocked GEMM above.)
@pytest.mark.parametrize("m,n,k", [(37, 45, 300), (3, 70, 130), (150, 40, 200)])
def test_dtype_combinations(isa, ka, kb, m, n, k):
    rng = np.random.default_rng(len(ka) * 31 + len(kb) + m)
    a = rand(rng, (m, k), KINDS[ka])
    b = rand(rng, (n, k), KINDS[kb]).T
    check(matmul(a, b), a, b)


def test_uint8_bits_with_format(isa):
    rng = np.random.default_rng(1)
    a = rand(rng, (20, 40), E4M3)
    b = rand(rng, (40, 30), E5M2)
    c = matmul(a.view(np.uint8), b.view(np.uint8), fmt_a="e4m3", fmt_b="e5m2")
    np.testing.assert_array_equal(c, matmul(a, b))
    check(c, a.view(np.uint8), b.view(np.uint8), fmt_a="e4m3", fmt_b="e5m2")


# --------------------------------------------------------------------------------------------
# Scales.


def scale_cases(m, n, k, block):
    kb, mb, nb = -(-k // block), -(-m // block), -(-n // block)
    return {
        "tensor": ((), ()),
        "tensor-1": ((1,), (1, 1)),
        "row-col": ((m,), (n,)),
        "row-col-2d": ((m, 1), (1, n)),
        "block-a-1x128": ((m, kb), ()),
        "block-b-128x128": ((), (kb, nb)),
        "deepseek": ((m, kb), (kb, nb)),
        "block-both-square": ((mb, kb), (kb, nb)),
        "k-only": ((1, kb), (kb, 1)),
        "col-block-k": ((m, 1), (kb, n)),
    }


@pytest.mark.parametrize("layout", list(scale_cases(1, 1, 1, 1)))
@pytest.mark.parametrize(
    "m,n,k,block", [(40, 70, 300, 128), (5, 100, 200, 32), (130, 33, 129, 64), (20, 40, 100, 33)]
)
def test_scale_layouts(isa, layout, m, n, k, block):
    rng = np.random.default_rng(hash(layout) % 1000 + m)
    a = rand(rng, (m, k), E4M3)
    w = rand(rng, (n, k), E4M3)
    sa_shape, sb_shape = scale_cases(m, n, k, block)[layout]
    sa = (rng.random(sa_shape) * 4 + 0.1).astype(np.float32)
    sb = (rng.random(sb_shape) * 4 + 0.1).astype(np.float32)
    c = matmul(a, w.T, scale_a=sa, scale_b=sb, block=block)
    check(c, a, w.T, sa, sb, block)


def test_e8m0_and_float64_scales_are_accepted():
    rng = np.random.default_rng(2)
    a, b = rand(rng, (10, 256), E4M3), rand(rng, (256, 12), E4M3)
    sa = np.array([[0.5, 4.0]]).astype(ml_dtypes.float8_e8m0fnu)
    sb = np.float64(0.25)
    check(matmul(a, b, scale_a=sa, scale_b=sb), a, b, sa, sb)


# --------------------------------------------------------------------------------------------
# Views, batches, outputs.


def test_strided_and_negative_views(isa):
    rng = np.random.default_rng(3)
    base_a = rand(rng, (60, 90), E4M3)
    base_b = rand(rng, (90, 80), F32)
    cases = [
        (base_a[::-1], base_b),
        (base_a[:, ::-1], base_b[::-1]),
        (base_a[::2, 1::3], base_b[1::3, ::-2]),
        (base_a.T[::3, :60], base_b[:60].T.T),
        (base_a[:6, ::-1], rand(rng, (40, 90), E5M2)[::-1].T),  # GEMV, negative stride
    ]
    for a, b in cases:
        check(matmul(a, b), a, b)


def test_batched_and_vector_shapes(isa):
    rng = np.random.default_rng(4)
    a = rand(rng, (2, 1, 5, 40), E4M3)
    b = rand(rng, (3, 40, 7), E5M2)
    c = matmul(a, b)
    assert c.shape == (2, 3, 5, 7)
    want = f64(a) @ f64(b)
    np.testing.assert_allclose(c, want, rtol=0, atol=(40 + 2) * 2.0**-23 * (np.abs(f64(a)) @ np.abs(f64(b))).max())
    for i in range(2):
        for j in range(3):
            check(c[i, j], a[i, 0], b[j])
    v = rand(rng, (40,), F32)
    check(matmul(v, b[0]), v, b[0])
    assert matmul(v, b).shape == (3, 7)
    assert matmul(a, v).shape == (2, 1, 5)
    check(matmul(a[1, 0], v), a[1, 0], v)
    dot = matmul(v, v.astype(E4M3))
    assert isinstance(dot, np.float32) and type(dot) is type(np.matmul(v, v))  # a scalar, as numpy
    check(np.asarray(dot), v, v.astype(E4M3))
    out0 = np.zeros((), np.float32)
    assert matmul(v, v.astype(E4M3), out=out0) is out0 and out0 == dot


def test_per_batch_scales(isa):
    # Scales with leading batch dimensions: each matrix of the batch has its own, broadcast
    # like the operands (here per-row a scales for every (i, j), per-column b scales per j).
    rng = np.random.default_rng(14)
    a = rand(rng, (2, 1, 5, 300), E4M3)
    b = rand(rng, (3, 300, 7), E4M3)
    sa = (rng.random((2, 3, 5, 1)) + 0.5).astype(np.float32)
    sb = (rng.random((3, 1, 7)) + 0.5).astype(np.float32)
    c = matmul(a, b, scale_a=sa, scale_b=sb)
    assert c.shape == (2, 3, 5, 7)
    for i in range(2):
        for j in range(3):
            check(c[i, j], a[i, 0], b[j], sa[i, j], sb[j])
    # Block scales along K per batch entry, and a 2-D scale shared by the batch beside them.
    sab = (rng.random((2, 1, 5, 3)) + 0.5).astype(np.float32)
    sbb = (rng.random((3, 7)) + 0.5).astype(np.float32)
    c = matmul(a, b, scale_a=sab, scale_b=sbb[None, :1, :], block=128)
    for i in range(2):
        for j in range(3):
            check(c[i, j], a[i, 0], b[j], sab[i, 0], sbb[:1, :], block=128)
    out = np.full((2, 3, 5, 7), np.nan, np.float32)
    assert matmul(a, b, scale_a=sa, scale_b=sb, out=out) is out
    np.testing.assert_array_equal(out, matmul(a, b, scale_a=sa, scale_b=sb))
    with pytest.raises(ValueError, match=r"scale_a has shape \(4, 5, 1\): its batch dimensions"):
        matmul(a, b, scale_a=np.ones((4, 5, 1), np.float32))


@pytest.mark.parametrize("out_dtype,unit", [(F32, 0.0), (F16, 2.0**-11), (BF16, 2.0**-8)])
def test_out_dtype_and_out(isa, out_dtype, unit):
    rng = np.random.default_rng(5)
    a, b = rand(rng, (33, 50), E4M3), rand(rng, (50, 40), E4M3)
    c = matmul(a, b, out_dtype=out_dtype)
    assert c.dtype == out_dtype
    check(c, a, b, out_unit=unit)
    # out= written in place: NaN-filled, strided, and it must be the returned object.
    big = np.full((33, 80), np.nan, dtype=out_dtype)
    out = big[:, ::2]
    res = matmul(a, b, out=out)
    assert res is out
    check(out, a, b, out_unit=unit)
    assert np.isnan(big[:, 1::2].astype(np.float32)).all(), "wrote outside out"


@pytest.mark.parametrize("m", [2, 50])
def test_nan_filled_out_does_not_leak(isa, m):
    rng = np.random.default_rng(6)
    a, w = rand(rng, (m, 1000), E4M3), rand(rng, (64, 1000), E4M3)
    out = np.full((m, 64), np.nan, dtype=np.float32)
    matmul(a, w.T, out=out)  # several cache K blocks
    assert np.isfinite(out).all()
    check(out, a, w.T)
    out[:] = np.nan
    matmul(a, w.T, out=out, scale_b=np.ones((8, 1), np.float32))  # scale K blocks
    assert np.isfinite(out).all()
    check(out, a, w.T)
    out[:] = np.nan
    matmul(a[:, :0], w.T[:0], out=out)  # k = 0: zeros
    np.testing.assert_array_equal(out, 0)


def test_out_overlapping_input():
    a = np.ones((8, 8), np.float32)
    want = matmul(a, a)
    matmul(a, a, out=a)
    np.testing.assert_array_equal(a, want)


# m = 1, 3 and 40 with float32 activations take the GEMV path (m = 1: the one-row VBMI
# kernels where the CPU has them), the others the blocked GEMM.
@pytest.mark.parametrize(
    "m,n,k", [(300, 200, 600), (1, 1000, 700), (3, 1000, 700), (60, 700, 300), (40, 300, 200)]
)
def test_thread_count_does_not_change_results(isa, threads, m, n, k):
    rng = np.random.default_rng(7)
    a, w = rand(rng, (m, k), F32 if m in (1, 3, 40) else E4M3), rand(rng, (n, k), E4M3)
    sb = (rng.random((1, n)) + 0.5).astype(np.float32)
    core.set_num_threads(1)
    c1 = matmul(a, w.T, scale_b=sb)
    c1b = matmul(a, np.ascontiguousarray(w.T), scale_a=np.float32(0.5), block=64)
    core.set_num_threads(2)
    c2 = matmul(a, w.T, scale_b=sb)
    c2b = matmul(a, np.ascontiguousarray(w.T), scale_a=np.float32(0.5), block=64)
    np.testing.assert_array_equal(c1.view(np.uint32), c2.view(np.uint32))
    np.testing.assert_array_equal(c1b.view(np.uint32), c2b.view(np.uint32))


@pytest.mark.parametrize("m", [3, 40])
def test_nan_inf_propagation(isa, m):
    k, n = 70, 50
    a = np.ones((m, k), E4M3)
    w = np.ones((n, k), E5M2)
    a[1, 7] = np.nan
    w[5, 3] = np.inf  # column 5 of b = w.T
    c = matmul(a, w.T)
    expect_nan = np.zeros((m, n), bool)
    expect_nan[1, :] = True
    expect_inf = np.zeros((m, n), bool)
    expect_inf[:, 5] = True
    expect_inf[1, :] = False
    np.testing.assert_array_equal(np.isnan(c), expect_nan)
    np.testing.assert_array_equal(np.isposinf(c), expect_inf)
    np.testing.assert_array_equal(c[~expect_nan & ~expect_inf], k)


# --------------------------------------------------------------------------------------------
# linear.


def test_linear_layouts(isa):
    rng = np.random.default_rng(8)
    x = rand(rng, (2, 3, 256), BF16)
    w = rand(rng, (300, 256), E4M3)
    bias = rng.standard_normal(300).astype(np.float32)
    for w_scale, sb in [
        (None, None),
        (np.float32(0.5), np.float32(0.5)),
        (np.linspace(0.1, 2, 300, dtype=np.float32), np.linspace(0.1, 2, 300, dtype=np.float32)),
        (np.ones((300, 1), np.float32) * 3, np.full((1, 300), 3, np.float32)),
        ((rng.random((3, 2)) + 0.5).astype(np.float32), None),
    ]:
        if sb is None and w_scale is not None:
            sb = w_scale.T
        y = linear(x, w, w_scale=w_scale, bias=bias)
        assert y.shape == (2, 3, 300) and y.dtype == np.float32
        ref, absref, k = reference(x.reshape(6, 256), w.T, None, sb, 128)
        tol = (k + 3) * 2.0**-23 * (absref + np.abs(bias))
        assert (np.abs(y.reshape(6, 300) - (ref + bias)) <= tol).all()
    y16 = linear(x[0, 0], w, out_dtype=np.float16)
    assert y16.dtype == np.float16 and y16.shape == (300,)


@pytest.mark.parametrize("act", [F32, BF16, E4M3])
def test_linear_leading_dims_bf16_output_and_out(isa, act):
    # batch x sequence x in activations in one product (rows = batch * sequence, here 2 x 20
    # = 40: past the GEMV path), float32 and bfloat16 outputs, bias, and out= views.
    rng = np.random.default_rng(12)
    x = rand(rng, (2, 20, 96), act)
    w = rand(rng, (70, 96), E4M3)
    bias = rng.standard_normal(70).astype(np.float32)
    ref, absref, k = reference(x.reshape(40, 96), w.T, None, np.float32(0.25), 128)
    tol = (k + 3) * 2.0**-23 * (absref + np.abs(bias))
    y = linear(x, w, np.float32(0.25), bias)
    assert y.shape == (2, 20, 70) and y.dtype == np.float32
    assert (np.abs(y.reshape(40, 70) - (ref + bias)) <= tol).all()
    yb = linear(x, w, np.float32(0.25), bias, out_dtype=BF16)
    assert yb.shape == (2, 20, 70) and yb.dtype == BF16
    np.testing.assert_array_equal(yb, y.astype(BF16))
    out = np.full((2, 20, 70), np.nan, np.float32)
    assert linear(x, w, np.float32(0.25), out=out) is out
    assert (np.abs(out.reshape(40, 70) - ref) <= tol).all()
    out_t = np.full((70, 20, 2), np.nan, np.float32).T  # not reshapeable in place
    assert linear(x, w, np.float32(0.25), out=out_t) is out_t
    assert (np.abs(out_t.reshape(40, 70) - ref) <= tol).all()


# --------------------------------------------------------------------------------------------
# Errors name the problem.


def test_errors():
    a = np.zeros((3, 4), E4M3)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        matmul(a, np.zeros((5, 2), E4M3))
    with pytest.raises(ValueError, match=r"do not broadcast"):
        matmul(np.zeros((2, 3, 4), E4M3), np.zeros((3, 4, 2), E4M3))
    with pytest.raises(ValueError, match=r"scale_a has shape \(2, 2\)"):
        matmul(a, np.zeros((4, 2), E4M3), scale_a=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"scale_b has shape \(1, 3\)"):
        matmul(a, np.zeros((4, 2), E4M3), scale_b=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"float64"):
        matmul(np.zeros((3, 4)), np.zeros((4, 2), E4M3))
    with pytest.raises(TypeError, match=r"int32"):
        matmul(a, np.zeros((4, 2), np.int32))
    with pytest.raises(TypeError, match=r"fmt_a"):
        matmul(np.zeros((3, 4), np.uint8), np.zeros((4, 2), E4M3))
    with pytest.raises(ValueError, match=r"unknown FP8 format"):
        matmul(np.zeros((3, 4), np.uint8), np.zeros((4, 2), E4M3), fmt_a="e3m4")
    with pytest.raises(TypeError, match=r"out_dtype"):
        matmul(a, np.zeros((4, 2), E4M3), out_dtype=np.float64)
    with pytest.raises(ValueError, match=r"out has shape \(3, 3\)"):
        matmul(a, np.zeros((4, 2), E4M3), out=np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match=r"out"):
        matmul(a, np.zeros((4, 2), E4M3), out=np.zeros((3, 2), np.float64))
    with pytest.raises(ValueError, match=r"at least one dimension"):
        matmul(np.float32(1), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"block"):
        matmul(a, np.zeros((4, 2), E4M3), block=0)
    with pytest.raises(ValueError, match=r"w must be a 2-D"):
        linear(np.zeros(4, np.float32), np.zeros(4, E4M3))


@pytest.mark.parametrize("m", [1, 2, 5, 8, 20])
def test_nan_e4m3_weights_gemv(isa, m):
    # E4M3 weights as w.T (the GEMV path): NaN codes after clean 64-byte blocks, in the first
    # block, and in the tail; only their columns become NaN.
    rng = np.random.default_rng(9)
    k, n = 300, (530 if m == 1 else 21)  # m = 1, n >= 512: the bfloat16 kernel where it runs
    x = rand(rng, (m, k), F32)
    w = rand(rng, (n, k), E4M3)
    w[5, 200] = np.nan
    w[9, 10] = -np.nan
    w[20, 299] = np.nan
    c = matmul(x, w.T)
    nan_cols = np.isnan(c).all(axis=0)
    np.testing.assert_array_equal(np.flatnonzero(nan_cols), [5, 9, 20])
    assert not np.isnan(np.delete(c, [5, 9, 20], axis=1)).any()
    keep = [j for j in range(n) if j not in (5, 9, 20)]
    check(c[:, keep], x, w.T[:, keep])


def test_empty_result_with_a_huge_batch_returns_at_once():
    c = matmul(np.empty((2**40, 0, 5), np.float32), np.ones((5, 4), np.float32))
    assert c.shape == (2**40, 0, 4)


def test_self_overlapping_out_is_assigned_like_numpy():
    from numpy.lib.stride_tricks import as_strided
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = as_strided(np.zeros(1, np.float32), (3, 3), (0, 0))
    matmul(a, np.eye(4, 3, dtype=np.float32), out=out)
    assert out[0, 0] in (a[:, :3]).ravel()  # one cell, holding one of the results

@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("k", [1, 63, 65, 200, 1000])
def test_gemv_shapes(isa, dtype, m, k):
    # x @ w.T for m = 1..8 (the GEMV kernels; m = 1, n >= 512 with E4M3 takes the bfloat16
    # kernel on AVX-512 BF16 + VBMI), K around the 64-byte blocks, with and without block scales.
    rng = np.random.default_rng(m * 1000 + k)
    n = 520 if m == 1 else 37
    x = rand(rng, (m, k), F32)
    w = rand(rng, (n, k), dtype)
    check(matmul(x, w.T), x, w.T)
    sa = (rng.random((m, -(-k // 32))) + 0.5).astype(np.float32)
    sb = (rng.random((-(-k // 32), n)) + 0.5).astype(np.float32)
    check(matmul(x, w.T, scale_a=sa, scale_b=sb, block=32), x, w.T, sa, sb, block=32)


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("m", [1, 4])
def test_gemv_tiny_activations(isa, dtype, m):
    # Activations around 2**-80 (the smallest magnitude the bfloat16 kernel splits exactly into
    # three normal bfloat16 parts) and below it (then the float32 kernel runs), plus zeros.
    rng = np.random.default_rng(31)
    k, n = 300, 515
    w = rand(rng, (n, k), dtype)
    base = rand(rng, (m, k), F32)
    for low in (2.0**-80, 2.0**-100, 2.0**-130):
        # |x| >= low, with all 24 significand bits used (lo parts near low * 2**-23).
        x = (np.sign(base) * (1 + np.abs(base)) * np.float32(low)).astype(np.float32)
        x[:, ::7] = np.float32(2.0**-80) * np.float32(1 + 2.0**-23)
        x[:, 3::11] = 0
        check(matmul(x, w.T), x, w.T)


# --------------------------------------------------------------------------------------------
# Scales, block and scale-shape errors (issue 10, item 10).


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["a", "b", "a_block", "b_col"])
@pytest.mark.parametrize("m", [1, 3, 40])
def test_nonfinite_scale_applied_like_the_reference(isa, bad, where, m):
    # The reference scales each element before its product: 0 * inf is NaN, so a row of a
    # holding a zero becomes NaN under scale_a = inf (and a column of b under scale_b = inf),
    # where scaling the float32 sums would give infinities.
    rng = np.random.default_rng(5)
    k, n = 70, 45
    a = np.abs(rand(rng, (m, k), E4M3).astype(np.float32)).astype(E4M3)
    a[a.astype(np.float32) == 0] = 1
    a[0, 3] = 0  # row 0 has a zero
    w = np.abs(rand(rng, (n, k), E4M3).astype(np.float32)).astype(E4M3)
    w[w.astype(np.float32) == 0] = 1
    w[2, 5] = 0  # column 2 of b = w.T has a zero
    w[4, 7] = -1  # column 4 has mixed signs
    sa = sb = None
    block = 32
    if where == "a":
        sa = np.float32(bad)
    elif where == "b":
        sb = np.float32(bad)
    elif where == "a_block":
        sa = np.ones((m, -(-k // block)), np.float32)
        sa[0, 1] = bad
    else:
        sb = np.ones((1, n), np.float32)
        sb[0, 2] = bad
    with np.errstate(invalid="ignore"):
        ref, _, _ = reference(a, w.T, sa, sb, block=block)
    c = matmul(a, w.T, scale_a=sa, scale_b=sb, block=block)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(c[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
    if fin.any():
        good = np.flatnonzero(fin.all(axis=0))
        rows = np.flatnonzero(fin.all(axis=1))
        if good.size and rows.size:
            sub_sa = sa
            if isinstance(sa, np.ndarray) and sa.ndim == 2 and sa.shape[0] == m:
                sub_sa = sa[rows]
            sub_sb = sb[:, good] if isinstance(sb, np.ndarray) and sb.ndim == 2 else sb
            check(c[np.ix_(rows, good)], a[rows], w.T[:, good], sub_sa, sub_sb, block=block)


@pytest.mark.parametrize("block", [2.5, "a", True, None, np.float64(4.0)])
def test_block_must_be_an_integer(block):
    a = np.ones((3, 4), E4M3)
    with pytest.raises(TypeError, match=r"block must be an int"):
        matmul(a, a.T, block=block)


def test_block_accepts_numpy_integers():
    a = np.ones((3, 4), E4M3)
    np.testing.assert_array_equal(matmul(a, a.T, block=np.int64(2)), np.full((3, 3), 4.0))


def test_wrong_scale_shape_lists_the_accepted_shapes():
    a = np.zeros((3, 4), E4M3)
    b = np.zeros((4, 2), E4M3)
    with pytest.raises(ValueError) as e:
        matmul(a, b, scale_a=np.ones((4, 4), np.float32), block=2)
    msg = str(e.value)
    assert "scale_a has shape (4, 4)" in msg, msg
    assert "one of the shapes (1, 1), (1, 2), (2, 1), (2, 2), (3, 1) or (3, 2)" in msg, msg
    with pytest.raises(ValueError) as e:
        matmul(a, b, scale_b=np.ones((3, 2), np.float32))
    assert "one of the shapes (1, 1) or (1, 2)" in str(e.value), str(e.value)
