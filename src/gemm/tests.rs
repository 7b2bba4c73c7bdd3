//! GEMM tests against a float64 reference built from the decoded operands, on every ISA this
//! CPU has (passed explicitly, so tests running in parallel do not race on the global ISA).

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, ArrayView2, IxDyn, ShapeBuilder};

use super::*;
use crate::arch;
use crate::scalar::decode_f64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A finite FP8 code (no NaN / infinity).
    fn fp8(&mut self, fmt: Format) -> u8 {
        loop {
            let c = self.next() as u8;
            if decode_f64(c, fmt).is_finite() {
                return c;
            }
        }
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }
}

/// An operand of one element type with its values as float64.
enum Data {
    Fp8(Array2<u8>, Format),
    F32(Array2<f32>),
    F16(Array2<f16>),
    Bf16(Array2<bf16>),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    E4M3,
    E5M2,
    F32,
    F16,
    Bf16,
}

impl Data {
    /// `rows x cols`, stored column-major when `fortran` (a transposed view).
    fn random(kind: Kind, rows: usize, cols: usize, fortran: bool, rng: &mut Rng) -> Data {
        let sh = (rows, cols).set_f(fortran);
        match kind {
            Kind::E4M3 => Data::Fp8(
                Array2::from_shape_simple_fn(sh, || rng.fp8(Format::E4M3)),
                Format::E4M3,
            ),
            Kind::E5M2 => Data::Fp8(
                Array2::from_shape_simple_fn(sh, || rng.fp8(Format::E5M2)),
                Format::E5M2,
            ),
            Kind::F32 => Data::F32(Array2::from_shape_simple_fn(sh, || rng.f32())),
            Kind::F16 => Data::F16(Array2::from_shape_simple_fn(sh, || {
                f16::from_f32(rng.f32())
            })),
            Kind::Bf16 => Data::Bf16(Array2::from_shape_simple_fn(sh, || {
                bf16::from_f32(rng.f32())
            })),
        }
    }

    fn values(&self) -> Array2<f64> {
        match self {
            Data::Fp8(a, f) => a.mapv(|c| decode_f64(c, *f)),
            Data::F32(a) => a.mapv(f64::from),
            Data::F16(a) => a.mapv(f64::from),
            Data::Bf16(a) => a.mapv(f64::from),
        }
    }

    fn operand(&self) -> Operand<'_> {
        match self {
            Data::Fp8(a, f) => Operand::Fp8(a.view().into_dyn(), *f),
            Data::F32(a) => Operand::F32(a.view().into_dyn()),
            Data::F16(a) => Operand::F16(a.view().into_dyn()),
            Data::Bf16(a) => Operand::Bf16(a.view().into_dyn()),
        }
    }
}

fn run(isa: Isa, a: &Data, b: &Data, scales: &Scales<'_>, m: usize, n: usize) -> Array2<f32> {
    let mut out = ArrayD::<f32>::from_elem(IxDyn(&[m, n]), f32::NAN);
    matmul_isa(
        isa,
        &a.operand(),
        &b.operand(),
        scales,
        Output::F32(out.view_mut()),
    )
    .unwrap();
    out.into_dimensionality().unwrap()
}

/// Scaled float64 operands: `A * scale_a` and `B * scale_b` expanded per element.
fn scaled(
    vals: Array2<f64>,
    s: Option<ArrayView2<'_, f32>>,
    is_a: bool,
    block: usize,
) -> Array2<f64> {
    let Some(s) = s else { return vals };
    let (rows, cols) = vals.dim();
    let (outer, k) = if is_a { (rows, cols) } else { (cols, rows) };
    let spec = check_scale("s", s, is_a, outer, k, block, &[rows, cols]).unwrap();
    Array2::from_shape_fn((rows, cols), |(r, c)| {
        let (o, kk) = if is_a { (r, c) } else { (c, r) };
        vals[[r, c]] * f64::from(spec.at(o, kk / block, block))
    })
}

/// Check `|c - ref| <= (k + 2) * 2^-23 * (|A| @ |B|)` elementwise.
fn check_bound(c: &Array2<f32>, a: &Array2<f64>, b: &Array2<f64>, what: &str) {
    let reference = a.dot(b);
    let abs = a.mapv(f64::abs).dot(&b.mapv(f64::abs));
    let k = a.ncols() as f64;
    for ((idx, &got), &want) in c.indexed_iter().zip(reference.iter()) {
        let tol = (k + 2.0) * 2f64.powi(-23) * abs[idx];
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "{what}: c{idx:?} = {got}, reference {want}, tolerance {tol}"
        );
    }
}

#[test]
fn identity_per_kernel() {
    let mut rng = Rng(7);
    for isa in arch::available() {
        for &(m, k) in &[(1, 1), (13, 31), (15, 33), (29, 70), (3, 300)] {
            for fmt in Format::ALL {
                let kind = if fmt == Format::E4M3 {
                    Kind::E4M3
                } else {
                    Kind::E5M2
                };
                let a = Data::random(kind, m, k, false, &mut rng);
                // B = I as FP8: 1.0 is 0x38 in E4M3 and 0x3C in E5M2; also check B stored
                // row-major (GEMM path for every m) and as a transposed view.
                let one = if fmt == Format::E4M3 { 0x38 } else { 0x3C };
                for fortran in [false, true] {
                    let eye =
                        Array2::from_shape_fn(
                            (k, k).set_f(fortran),
                            |(i, j)| if i == j { one } else { 0 },
                        );
                    let b = Data::Fp8(eye, fmt);
                    let c = run(
                        isa,
                        &a,
                        &b,
                        &Scales {
                            block: 128,
                            ..Default::default()
                        },
                        m,
                        k,
                    );
                    let want = a.values().mapv(|v| v as f32);
                    assert_eq!(c, want, "{isa} {fmt:?} m={m} k={k} fortran={fortran}");
                }
            }
        }
    }
}

#[test]
fn random_against_reference_every_kernel_and_dtype() {
    let mut rng = Rng(11);
    let kinds = [Kind::E4M3, Kind::E5M2, Kind::F32, Kind::F16, Kind::Bf16];
    // Edge sizes around the register blocks (MR 4/6/8/14, NR 8/12/16/32), KC + 1 (257, 513,
    // 769), MC + 1 (257 for NEON; 337) and the GEMV path.
    let sizes = [
        (1, 1, 1),
        (13, 31, 7),
        (15, 33, 257),
        (3, 65, 40),
        (200, 70, 513),
        (8, 9, 130),
        (257, 13, 20),
    ];
    for isa in arch::available() {
        for (t, &(m, n, k)) in sizes.iter().enumerate() {
            for (ia, &ka) in kinds.iter().enumerate() {
                // Every pair of kinds over the sizes, without running all 25 on every size.
                for (ib, &kb) in kinds.iter().enumerate() {
                    if (ia + ib + t) % 2 == 1 && m * n * k > 100_000 {
                        continue;
                    }
                    let a = Data::random(ka, m, k, (ia + t) % 3 == 0, &mut rng);
                    let b = Data::random(kb, k, n, (ib + t) % 2 == 0, &mut rng);
                    let c = run(
                        isa,
                        &a,
                        &b,
                        &Scales {
                            block: 128,
                            ..Default::default()
                        },
                        m,
                        n,
                    );
                    check_bound(
                        &c,
                        &a.values(),
                        &b.values(),
                        &format!("{isa} {ka:?}x{kb:?} {m}x{n}x{k}"),
                    );
                }
            }
        }
    }
}

#[test]
fn scale_layouts() {
    let mut rng = Rng(5);
    let block = 32;
    for isa in arch::available() {
        for &(m, n, k) in &[(5, 40, 100), (40, 50, 70), (17, 3, 64)] {
            let a = Data::random(Kind::E4M3, m, k, false, &mut rng);
            for b_fortran in [false, true] {
                let b = Data::random(Kind::E5M2, k, n, b_fortran, &mut rng);
                let mut s =
                    |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.f32().abs() + 0.25);
                let (kb, mb, nb) = (k.div_ceil(block), m.div_ceil(block), n.div_ceil(block));
                let layouts_a = [s(1, 1), s(m, 1), s(m, kb), s(1, kb), s(mb, kb)];
                let layouts_b = [s(1, 1), s(1, n), s(kb, nb), s(kb, 1), s(kb, n)];
                for sa in &layouts_a {
                    for sb in &layouts_b {
                        let scales = Scales {
                            a: Some(sa.view()),
                            b: Some(sb.view()),
                            block,
                        };
                        let c = run(isa, &a, &b, &scales, m, n);
                        let av = scaled(a.values(), Some(sa.view()), true, block);
                        let bv = scaled(b.values(), Some(sb.view()), false, block);
                        check_bound(
                            &c,
                            &av,
                            &bv,
                            &format!("{isa} {m}x{n}x{k} sa {:?} sb {:?}", sa.dim(), sb.dim()),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let mut rng = Rng(3);
    for isa in arch::available() {
        // (b_fortran: weights stored along K, `w.T`; otherwise `[in, out]`, the axpy path
        // for small m.)
        for &(m, n, k, kind, b_fortran) in &[
            (300, 200, 300, Kind::E4M3, true),
            (4, 1000, 300, Kind::F32, true),
            (1, 1000, 300, Kind::F32, true),
            (1, 3000, 300, Kind::F32, false),
            (5, 1000, 301, Kind::Bf16, false),
            (20, 1000, 301, Kind::F32, false),
            // Several L2 column blocks; a narrow product whose rows are split between threads.
            (100, 2000, 300, Kind::F32, true),
            (600, 40, 100, Kind::F32, false),
        ] {
            let a = Data::random(kind, m, k, false, &mut rng);
            let b = Data::random(Kind::E4M3, k, n, b_fortran, &mut rng);
            let s = Scales {
                block: 128,
                ..Default::default()
            };
            crate::threads::set_num_threads(1).unwrap();
            let c1 = run(isa, &a, &b, &s, m, n);
            crate::threads::set_num_threads(2).unwrap();
            let c2 = run(isa, &a, &b, &s, m, n);
            assert_eq!(
                c1.mapv(f32::to_bits),
                c2.mapv(f32::to_bits),
                "{isa} {m}x{n}x{k}"
            );
        }
    }
}

#[test]
fn nan_and_inf_reach_only_their_outputs() {
    for isa in arch::available() {
        for &(m, n, k) in &[(20, 40, 50), (2, 40, 50)] {
            let mut a = Array2::from_elem((m, k), 0x38u8); // 1.0
            a[[1, 7]] = 0x7F; // NaN
            let mut b = Array2::from_elem((k, n).f(), 0x38u8);
            b[[3, 5]] = 0x7F; // NaN
            let (a, b) = (Data::Fp8(a, Format::E4M3), Data::Fp8(b, Format::E4M3));
            let c = run(
                isa,
                &a,
                &b,
                &Scales {
                    block: 128,
                    ..Default::default()
                },
                m,
                n,
            );
            for ((i, j), &v) in c.indexed_iter() {
                assert_eq!(v.is_nan(), i == 1 || j == 5, "{isa} c[{i},{j}] = {v}");
                if !v.is_nan() {
                    assert_eq!(v, k as f32);
                }
            }
            // E5M2 infinity: +inf in one element of b gives +inf in its column (all-positive
            // operands), nowhere else.
            let mut b = Array2::from_elem((k, n), 0x3Cu8);
            b[[2, 4]] = 0x7C;
            let a = Data::Fp8(Array2::from_elem((m, k), 0x3Cu8), Format::E5M2);
            let c = run(
                isa,
                &a,
                &Data::Fp8(b, Format::E5M2),
                &Scales {
                    block: 128,
                    ..Default::default()
                },
                m,
                n,
            );
            for ((i, j), &v) in c.indexed_iter() {
                assert_eq!(v == f32::INFINITY, j == 4, "{isa} c[{i},{j}] = {v}");
            }
        }
    }
}

#[test]
fn output_types_batches_and_errors() {
    let mut rng = Rng(9);
    // Batched: a (2, 1, 5, 7) @ b (3, 7, 4) -> (2, 3, 5, 4), f16 output.
    let a = ArrayD::from_shape_simple_fn(IxDyn(&[2, 1, 5, 7]), || rng.fp8(Format::E4M3));
    let b = ArrayD::from_shape_simple_fn(IxDyn(&[3, 7, 4]), || rng.f32());
    let mut out = ArrayD::<f16>::from_elem(IxDyn(&[2, 3, 5, 4]), f16::NAN);
    let (oa, ob) = (Operand::Fp8(a.view(), Format::E4M3), Operand::F32(b.view()));
    let s = Scales {
        block: 128,
        ..Default::default()
    };
    matmul(&oa, &ob, &s, Output::F16(out.view_mut())).unwrap();
    for i in 0..2 {
        for j in 0..3 {
            let av = a
                .index_axis(ndarray::Axis(0), i)
                .index_axis(ndarray::Axis(0), 0)
                .mapv(|c| decode_f64(c, Format::E4M3));
            let bv = b.index_axis(ndarray::Axis(0), j).mapv(f64::from);
            let av = av.into_dimensionality::<ndarray::Ix2>().unwrap();
            let bv = bv.into_dimensionality::<ndarray::Ix2>().unwrap();
            let want = av.dot(&bv);
            let got = out
                .index_axis(ndarray::Axis(0), i)
                .index_axis(ndarray::Axis(0), j)
                .mapv(f64::from);
            for (g, w) in got.iter().zip(want.iter()) {
                // f16 rounding of the result dominates: half an f16 ulp plus the f32 bound.
                assert!(
                    (g - w).abs() <= w.abs() * 2f64.powi(-11) + 1e-3,
                    "{g} vs {w}"
                );
            }
        }
    }
    // Errors name the shapes.
    let a2 = ArrayD::<f32>::zeros(IxDyn(&[3, 4]));
    let b2 = ArrayD::<f32>::zeros(IxDyn(&[5, 2]));
    let mut o2 = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
    let e = matmul(
        &Operand::F32(a2.view()),
        &Operand::F32(b2.view()),
        &s,
        Output::F32(o2.view_mut()),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("(3, 4)") && e.to_string().contains("(5, 2)"),
        "{e}"
    );
    let a3 = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4]));
    let b3 = ArrayD::<f32>::zeros(IxDyn(&[3, 4, 2]));
    let mut o3 = ArrayD::<f32>::zeros(IxDyn(&[3, 3, 2]));
    let e = matmul(
        &Operand::F32(a3.view()),
        &Operand::F32(b3.view()),
        &s,
        Output::F32(o3.view_mut()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("do not broadcast"), "{e}");
    let b4 = ArrayD::<f32>::zeros(IxDyn(&[4, 2]));
    let bad = Array2::<f32>::ones((2, 2));
    let s_bad = Scales {
        a: Some(bad.view()),
        b: None,
        block: 128,
    };
    let e = matmul(
        &Operand::F32(a2.view()),
        &Operand::F32(b4.view()),
        &s_bad,
        Output::F32(o2.view_mut()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("scale_a has shape (2, 2)"), "{e}");
}

#[test]
fn bf16_pair_packing_matches_the_table_for_every_code() {
    use super::pack::{pack_bf16_pairs, Src};
    for fmt in Format::ALL {
        let table = crate::scalar::tables::bf16_table(fmt);
        // Two K rows of 256 columns: every code in each row, in different orders; panels of 32
        // (the vectorised path where the CPU has AVX-512) and of 24 (the portable path).
        let rows: Vec<u8> = (0..256u32)
            .map(|c| c as u8)
            .chain((0..256u32).map(|c| (c * 37 + 11) as u8))
            .collect();
        for panel in [32, 24] {
            let src = Src {
                elems: Elems::Fp8(rows.as_ptr(), fmt),
                ks: 256,
                ws: 1,
                kc: 2,
                width: 256,
            };
            let panels = 256usize.div_ceil(panel);
            let mut dst = vec![0xAAAAu16; panels * panel * 2];
            // SAFETY: the source is the 2 x 256 buffer above.
            unsafe { pack_bf16_pairs(src, panel, &mut dst) };
            for w in 0..panels * panel {
                let (q, col) = (w / panel, w % panel);
                let at = (q * panel + col) * 2;
                let (lo, hi) = if w < 256 {
                    (
                        table[usize::from(rows[w])].to_bits(),
                        table[usize::from(rows[256 + w])].to_bits(),
                    )
                } else {
                    (0, 0)
                };
                assert_eq!(
                    (dst[at], dst[at + 1]),
                    (lo, hi),
                    "{fmt:?} panel {panel} column {w}"
                );
            }
        }
    }
}

/// `|c - ref| <= (k + 2) * 2^-23 * (|A| @ |B|)`, except where `nan_cols` says the column holds
/// a NaN weight: there c must be NaN.
fn check_bound_nan(c: &Array2<f32>, a: &Array2<f64>, b: &Array2<f64>, what: &str) {
    let finite_b = b.mapv(|v| if v.is_nan() { 0.0 } else { v });
    let reference = a.dot(&finite_b);
    let abs = a.mapv(f64::abs).dot(&finite_b.mapv(f64::abs));
    let k = a.ncols() as f64;
    for ((i, j), &got) in c.indexed_iter() {
        if b.column(j).iter().any(|v| v.is_nan()) {
            assert!(got.is_nan(), "{what}: c[{i},{j}] = {got}, expected NaN");
            continue;
        }
        let tol = (k + 2.0) * 2f64.powi(-23) * abs[[i, j]];
        let want = reference[[i, j]];
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "{what}: c[{i},{j}] = {got}, reference {want}, tolerance {tol}"
        );
    }
}

/// GEMV shapes (m = 1..8, weights stored along K as `w.T`) on every ISA: K around the 64-byte
/// blocks of the kernels, E4M3 and E5M2 weights, NaN weights in the body and in the tail of
/// K, and activations near and below the smallest magnitude the bfloat16 kernel takes (2^-80,
/// below which the float32 kernel runs), with and without scales along K.
#[test]
fn gemv_shapes_nan_weights_and_tiny_activations() {
    let mut rng = Rng(23);
    let tiny = 2f32.powi(-80);
    for isa in arch::available() {
        for m in 1..=8 {
            for &k in &[1usize, 2, 63, 64, 65, 200, 1000] {
                for fmt in [Format::E4M3, Format::E5M2] {
                    for case in 0..4 {
                        // n >= 512 with m = 1 and E4M3 takes the bfloat16 kernel (BF16 + VBMI).
                        let n = if m == 1 {
                            [1, 9, 520, 530][case]
                        } else {
                            [1, 9, 70, 17][case]
                        };
                        let a = Array2::from_shape_fn((m, k), |(i, p)| {
                            let v = rng.f32();
                            match (case, (i + p) % 5) {
                                // At least 2^-80 (the bfloat16 kernel still runs), all 24
                                // bits used: the lo parts are near 2^-103.
                                (1, 0) => v.signum() * (1.0 + v.abs()) * tiny,
                                (1, 1) => tiny * (1.0 + f32::EPSILON),
                                // Below the bfloat16 kernel's range: the float32 fallback.
                                (2, 0) if i == 0 && p == k / 2 => v * tiny * 0.25,
                                (3, 2) => 0.0,
                                _ => v,
                            }
                        });
                        let mut w = Array2::from_shape_simple_fn((k, n).f(), || rng.fp8(fmt));
                        if case == 3 {
                            // NaN in column 0 at the end of K (the masked tail) and in
                            // column n - 1 in the middle.
                            let nan = if fmt == Format::E4M3 { 0x7F } else { 0x7E };
                            w[[k - 1, 0]] = nan | 0x80;
                            w[[k / 2, n - 1]] = nan;
                        }
                        let a = Data::F32(a);
                        let b = Data::Fp8(w, fmt);
                        let plain = Scales {
                            block: 128,
                            ..Default::default()
                        };
                        let c = run(isa, &a, &b, &plain, m, n);
                        let what = format!("{isa} {fmt:?} {m}x{n}x{k} case {case}");
                        check_bound_nan(&c, &a.values(), &b.values(), &what);
                        // Block scales along K (segments of 32: the kernels restart per block).
                        let sa = Array2::from_shape_fn((m, k.div_ceil(32)), |_| rng.f32() + 3.0);
                        let sb = Array2::from_shape_fn((k.div_ceil(32), n), |_| rng.f32() + 3.0);
                        let scales = Scales {
                            a: Some(sa.view()),
                            b: Some(sb.view()),
                            block: 32,
                        };
                        let c = run(isa, &a, &b, &scales, m, n);
                        let av = scaled(a.values(), Some(sa.view()), true, 32);
                        let bv = scaled(b.values(), Some(sb.view()), false, 32);
                        check_bound_nan(&c, &av, &bv, &format!("{what} block scales"));
                    }
                }
            }
        }
    }
}

/// The axpy path (m <= crossovers().axpy, FP8 weights `[in, out]` with contiguous columns) on every
/// ISA: M, N and K around the kernels' register blocks (16 / 8 columns per vector, up to 8
/// vectors, 4 weight rows per pass; on AVX-512 above 8 rows, tiles of 64 weight rows x 64
/// columns, 6 rows per pass), misaligned views with a row stride wider than N,
/// NaN codes, and block scales along K; compared with the float64 reference (and its NaN
/// pattern).
#[test]
fn axpy_shapes_views_nan_weights() {
    let mut rng = Rng(41);
    // Every m through the per-group kernels' blocks and the tile passes' remainders (groups
    // of 6), then a few larger ones up to the crossover.
    let cross = crossovers().axpy;
    let ms = (1..=26.min(cross)).chain(
        [31, 32, 33, 47, 64, cross - 1, cross]
            .into_iter()
            .filter(|&m| m > 26 && m <= cross),
    );
    for isa in arch::available() {
        let limit = super::axpy::max_rows(isa, cross);
        for m in ms.clone().filter(|&m| m <= limit) {
            for &k in &[1usize, 2, 3, 4, 5, 9, 65, 130] {
                for &n in &[1usize, 7, 16, 17, 33, 64, 65, 97, 129, 200, 400] {
                    for fmt in [Format::E4M3, Format::E5M2] {
                        let case = (m + k + n) % 3;
                        // A wider array, viewed from column 3 (misaligned) with row stride
                        // n + 5; case 2 also reverses K (negative row stride).
                        let mut big = Array2::from_shape_simple_fn((k, n + 5), || rng.fp8(fmt));
                        if case == 1 {
                            let nan = if fmt == Format::E4M3 { 0x7F } else { 0x7E };
                            big[[k - 1, 3]] = nan | 0x80;
                            big[[k / 2, 3 + n - 1]] = nan;
                        }
                        let mut view = big.slice(ndarray::s![.., 3..3 + n]);
                        if case == 2 {
                            view.invert_axis(ndarray::Axis(0));
                        }
                        let a = Array2::from_shape_fn((m, k), |_| rng.f32());
                        let bv = view.mapv(|c| decode_f64(c, fmt));
                        let av = a.mapv(f64::from);
                        let what = format!("{isa} {fmt:?} {m}x{n}x{k} case {case}");
                        let mut out = ArrayD::<f32>::from_elem(IxDyn(&[m, n]), f32::NAN);
                        let plain = Scales {
                            block: 128,
                            ..Default::default()
                        };
                        matmul_isa(
                            isa,
                            &Operand::F32(a.view().into_dyn()),
                            &Operand::Fp8(view.into_dyn(), fmt),
                            &plain,
                            Output::F32(out.view_mut()),
                        )
                        .unwrap();
                        let c: Array2<f32> = out.into_dimensionality().unwrap();
                        check_bound_nan(&c, &av, &bv, &what);
                        // Block scales along K (blocks of 2: K passes cut short).
                        let sa = Array2::from_shape_fn((m, k.div_ceil(2)), |_| rng.f32() + 3.0);
                        let sb = Array2::from_shape_fn((k.div_ceil(2), n), |_| rng.f32() + 3.0);
                        let scales = Scales {
                            a: Some(sa.view()),
                            b: Some(sb.view()),
                            block: 2,
                        };
                        let mut out = ArrayD::<f32>::from_elem(IxDyn(&[m, n]), f32::NAN);
                        matmul_isa(
                            isa,
                            &Operand::F32(a.view().into_dyn()),
                            &Operand::Fp8(view.into_dyn(), fmt),
                            &scales,
                            Output::F32(out.view_mut()),
                        )
                        .unwrap();
                        let c: Array2<f32> = out.into_dimensionality().unwrap();
                        let av = scaled(av, Some(sa.view()), true, 2);
                        let bv = scaled(bv, Some(sb.view()), false, 2);
                        check_bound_nan(&c, &av, &bv, &format!("{what} block scales"));
                    }
                }
            }
        }
    }
}

/// Bfloat16 activations times FP8 weights on every ISA (the bfloat16 dot-product kernel on
/// AVX-512 BF16) on the blocked path, both weight layouts, edge sizes around the 14 x 32
/// register block and the pair packing (odd K): ordinary values, magnitudes down to 2^-100
/// (still the dot kernel; products reach 2^-123 with E5M2 subnormal weights), and below it,
/// bfloat16 denormals included (the float32 kernel then runs; `vdpbf16ps` would flush them).
#[test]
fn bf16_activations_times_fp8_blocked() {
    let mut rng = Rng(57);
    for isa in arch::available() {
        for &(m, n, k) in &[(33, 33, 7), (43, 65, 131), (15, 31, 770)] {
            for fmt in [Format::E4M3, Format::E5M2] {
                for &low in &[1.0f32, 2f32.powi(-100), 2f32.powi(-101), 2f32.powi(-130)] {
                    for fortran in [false, true] {
                        let a = Array2::from_shape_fn((m, k), |(i, p)| {
                            let v = rng.f32();
                            let v = if low == 1.0 {
                                v
                            } else {
                                v.signum() * (1.0 + v.abs()) * low
                            };
                            bf16::from_f32(if (i + p) % 7 == 0 { 0.0 } else { v })
                        });
                        // Subnormal weight codes (E5M2 down to 2^-16) in every column.
                        let w = Array2::from_shape_fn((k, n).set_f(fortran), |(p, j)| {
                            if (p + j) % 5 == 0 {
                                1
                            } else {
                                rng.fp8(fmt)
                            }
                        });
                        let a = Data::Bf16(a);
                        let b = Data::Fp8(w, fmt);
                        let plain = Scales {
                            block: 128,
                            ..Default::default()
                        };
                        let c = run(isa, &a, &b, &plain, m, n);
                        let what = format!("{isa} {fmt:?} {m}x{n}x{k} low {low:e} f {fortran}");
                        check_bound(&c, &a.values(), &b.values(), &what);
                    }
                }
            }
        }
    }
}

/// Row blocks past the largest A block of every kernel family (MC: 1024 portable, 4088
/// AVX-512, 4092 AVX2, 4096 NEON) against the float64 reference, both weight layouts.
#[test]
fn rows_past_the_packed_a_block() {
    let mut rng = Rng(17);
    let (m, n, k) = (4097, 40, 20);
    for isa in arch::available() {
        for fortran in [false, true] {
            let a = Data::random(Kind::F32, m, k, false, &mut rng);
            let b = Data::random(Kind::E4M3, k, n, fortran, &mut rng);
            let s = Scales {
                block: 128,
                ..Default::default()
            };
            let c = run(isa, &a, &b, &s, m, n);
            check_bound(
                &c,
                &a.values(),
                &b.values(),
                &format!("{isa} fortran {fortran}"),
            );
        }
    }
}

/// The vectorised packers (lines contiguous along K, transposed in registers; FP8 rows
/// decoded in registers) write exactly what the portable packer writes: every source type,
/// both panel widths of the AVX-512 kernel, widths and K lengths around the 16 x 16 blocks
/// (and the 16 x 64 byte blocks of the E4M3 table packer, whose dispatch hides the float
/// packer of FP8 lines on VBMI CPUs: that one is run directly too), misaligned lines wider
/// apart than K, and every FP8 code (NaN stays NaN).
#[test]
fn vector_packing_matches_the_portable_packer() {
    use super::pack::{pack_f32, pack_f32_portable, Src};
    let mut rng = Rng(23);
    let widths = [1, 2, 13, 14, 15, 16, 17, 29, 31, 32, 33, 43, 46, 64, 97];
    let kcs = [1, 2, 15, 16, 17, 31, 33, 48, 49, 63, 64, 65, 130];
    let len = 100 * 140 + 8;
    let codes: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
    let f32s: Vec<f32> = (0..len).map(|_| rng.f32()).collect();
    let f16s: Vec<f16> = f32s.iter().map(|&x| f16::from_f32(x)).collect();
    let bf16s: Vec<bf16> = f32s.iter().map(|&x| bf16::from_f32(x)).collect();
    for fmt in Format::ALL {
        let sources = [
            Elems::Fp8(codes[1..].as_ptr(), fmt),
            Elems::F32(f32s[1..].as_ptr()),
            Elems::F16(f16s[1..].as_ptr()),
            Elems::Bf16(bf16s[1..].as_ptr()),
        ];
        for elems in sources {
            for panel in [14, 32] {
                for &width in &widths {
                    for &kc in &kcs {
                        // Along K (`ks == 1`, lines kc + 3 apart) and along the panel
                        // (`ws == 1`, K rows width + 5 apart).
                        for (ks, ws) in [(1, kc as isize + 3), (width as isize + 5, 1)] {
                            let src = Src {
                                elems,
                                ks,
                                ws,
                                kc,
                                width,
                            };
                            let size = width.div_ceil(panel) * panel * kc;
                            let mut fast = vec![f32::NAN; size];
                            let mut want = vec![-1.0f32; size];
                            // SAFETY: the largest offset read, (kc - 1) * ks + (width - 1) * ws,
                            // is below len - 1 for every case above.
                            unsafe {
                                pack_f32(src, panel, &mut fast);
                                pack_f32_portable(src, panel, &mut want);
                            }
                            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                            let mut results = vec![("dispatched", fast)];
                            #[cfg(target_arch = "x86_64")]
                            if let (Elems::Fp8(p, f), 1, true) =
                                (elems, ks, arch::x86_64::has_avx512())
                            {
                                use crate::arch::x86_64::avx512::gemm::{pack_klines_f32, KLines};
                                let mut float = vec![f32::NAN; size];
                                // SAFETY: as above; AVX-512 was detected.
                                unsafe {
                                    pack_klines_f32(
                                        KLines::Fp8(p, f),
                                        ws,
                                        kc,
                                        width,
                                        panel,
                                        float.as_mut_ptr(),
                                    )
                                };
                                results.push(("float lines", float));
                            }
                            for (how, fast) in results {
                                for (i, (x, y)) in fast.iter().zip(&want).enumerate() {
                                    assert!(
                                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                                        "{how} {elems:?} panel {panel} width {width} kc {kc} \
                                         ks {ks}: element {i} = {x}, portable {y}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// On the axpy path the AVX-512 tile kernel (above 8 rows) forms each output as the per-group
/// kernels do (the same products in K order): every group of up to 8 rows of an m-row product
/// is bitwise the product of those rows alone (on every level, up to its axpy limit), for E4M3 (table decode where the CPU has VBMI)
/// and E5M2, K across tiles (64 rows) and block scales, N across strips, NaN codes included.
#[test]
fn axpy_tiles_match_row_groups() {
    let mut rng = Rng(43);
    for isa in arch::available() {
        let limit = super::axpy::max_rows(isa, crossovers().axpy);
        for &m in &[9usize, 14, 20, 32, 70] {
            if m > limit {
                continue;
            }
            for &(k, n) in &[(130usize, 200usize), (64, 65), (257, 129)] {
                for fmt in [Format::E4M3, Format::E5M2] {
                    let mut w = Array2::from_shape_simple_fn((k, n), || rng.fp8(fmt));
                    w[[k / 3, n / 2]] = if fmt == Format::E4M3 { 0x7F } else { 0x7E };
                    let a = Array2::from_shape_fn((m, k), |_| rng.f32());
                    let sb = Array2::from_shape_fn((k.div_ceil(128), n), |_| rng.f32() + 1.0);
                    for scales in [
                        Scales {
                            block: 128,
                            ..Default::default()
                        },
                        Scales {
                            b: Some(sb.view()),
                            block: 128,
                            ..Default::default()
                        },
                    ] {
                        let product = |rows: ndarray::ArrayView2<'_, f32>| {
                            let mut out = ArrayD::<f32>::from_elem(IxDyn(&[rows.nrows(), n]), 0.0);
                            matmul_isa(
                                isa,
                                &Operand::F32(rows.into_dyn()),
                                &Operand::Fp8(w.view().into_dyn(), fmt),
                                &scales,
                                Output::F32(out.view_mut()),
                            )
                            .unwrap();
                            out.into_dimensionality::<ndarray::Ix2>().unwrap()
                        };
                        let whole = product(a.view());
                        for g0 in (0..m).step_by(8) {
                            let rows = ndarray::s![g0..(g0 + 8).min(m), ..];
                            let alone = product(a.slice(rows));
                            let what = format!("{isa} {fmt:?} {m}x{n}x{k} rows {g0}..");
                            // NaN outputs (the NaN code's column) compare as equal.
                            let bits = |c: ArrayView2<'_, f32>| {
                                c.mapv(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                            };
                            assert_eq!(bits(whole.slice(rows)), bits(alone.view()), "{what}");
                            assert!(whole[[g0, n / 2]].is_nan(), "{what}");
                        }
                    }
                }
            }
        }
    }
}

/// A row's result does not depend on the tile it falls in: the first rows of an m-row
/// product (its last row tile partial, 1..=13 rows on AVX-512) are bitwise those of a
/// 29-row product (full tiles), on every ISA, K split into a full and a shorter last block.
#[test]
fn partial_row_tiles_match_full_tiles() {
    let mut rng = Rng(29);
    let (n, k) = (64, 700);
    let a = Data::random(Kind::F32, 29, k, false, &mut rng);
    let b = Data::random(Kind::F32, k, n, false, &mut rng);
    let Data::F32(a_all) = &a else { unreachable!() };
    let s = Scales {
        block: 128,
        ..Default::default()
    };
    for isa in arch::available() {
        let whole = run(isa, &a, &b, &s, 29, n);
        for m in 1..29 {
            let part = Data::F32(a_all.slice(ndarray::s![..m, ..]).to_owned());
            let c = run(isa, &part, &b, &s, m, n);
            assert_eq!(
                c.mapv(f32::to_bits),
                whole.slice(ndarray::s![..m, ..]).mapv(f32::to_bits),
                "{isa} m = {m}"
            );
        }
    }
}

/// Every kernel on the blocked path at every edge of its register block (m up to 3 x 14 + 1
/// in steps that hit 1..3 x MR + 1 for MR 4, 6, 8 and 14; n likewise for NR 8, 12, 16, 32),
/// K short, odd and across a K block, with misaligned and reversed operand views (A FP8
/// bytes from column 1 of a wider array, B float32 from column 1), plain and with block
/// scales along K (several scale blocks per kernel call, each summed on its own).
#[test]
fn blocked_edges_and_misaligned_views() {
    let mut rng = Rng(61);
    let ms = [1usize, 3, 4, 5, 7, 8, 9, 12, 13, 15, 17, 25, 29, 43];
    let ns = [1usize, 7, 8, 9, 13, 16, 17, 24, 25, 33, 49, 65, 97];
    for isa in arch::available() {
        for (t, (&m, &n)) in ms
            .iter()
            .flat_map(|m| ns.iter().map(move |n| (m, n)))
            .enumerate()
        {
            // Mostly short K; every 15th case one K block (KC 256 or 512, 768) plus one.
            let k = if t % 15 == 14 {
                [257, 513, 769][t / 15 % 3]
            } else {
                [1usize, 2, 3, 5, 9, 17, 31][t % 7]
            };
            let fmt = Format::ALL[t % 2];
            let big_a = Array2::from_shape_simple_fn((m, k + 3), || rng.fp8(fmt));
            let mut a = big_a.slice(ndarray::s![.., 1..1 + k]);
            if t % 3 == 1 {
                a.invert_axis(ndarray::Axis(1));
            }
            let big_b = Array2::from_shape_simple_fn((k, n + 2), || rng.f32());
            let mut b = big_b.slice(ndarray::s![.., 1..1 + n]);
            if t % 3 == 2 {
                b.invert_axis(ndarray::Axis(0));
            }
            let (av, bv) = (a.mapv(|c| decode_f64(c, fmt)), b.mapv(f64::from));
            let what = format!("{isa} {fmt:?} {m}x{n}x{k} case {}", t % 3);
            let blocks = k.div_ceil(2);
            let sa = Array2::from_shape_fn((m, blocks), |_| rng.f32().abs() + 0.5);
            let sb = Array2::from_shape_fn((blocks, n), |_| rng.f32().abs() + 0.5);
            for with_scales in [false, true] {
                let scales = if with_scales {
                    Scales {
                        a: Some(sa.view()),
                        b: Some(sb.view()),
                        block: 2,
                    }
                } else {
                    Scales {
                        block: 128,
                        ..Default::default()
                    }
                };
                let mut out = ArrayD::<f32>::from_elem(IxDyn(&[m, n]), f32::NAN);
                matmul_isa(
                    isa,
                    &Operand::Fp8(a.view().into_dyn(), fmt),
                    &Operand::F32(b.view().into_dyn()),
                    &scales,
                    Output::F32(out.view_mut()),
                )
                .unwrap();
                let c: Array2<f32> = out.into_dimensionality().unwrap();
                if with_scales {
                    let (av, bv) = (
                        scaled(av.clone(), Some(sa.view()), true, 2),
                        scaled(bv.clone(), Some(sb.view()), false, 2),
                    );
                    check_bound(&c, &av, &bv, &format!("{what} block scales"));
                } else {
                    check_bound(&c, &av, &bv, &what);
                }
            }
        }
    }
}
