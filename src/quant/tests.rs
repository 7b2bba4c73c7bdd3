//! Quantization checked against naive references written from the definitions in the module
//! docs, on every ISA table this CPU has.

use half::{bf16, f16};

use super::stochastic::{self, StochasticKey, StochasticParams};
use super::*;
use crate::arch::{self, Isa};
use crate::scalar;

/// Deterministic pseudo-random numbers for test data (not the code under test's generator).
struct Lcg(u64);
impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }
    /// A float spread over many binades, both signs.
    fn wide_f32(&mut self) -> f32 {
        let m = (self.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0;
        let e = (self.next_u32() % 40) as i32 - 20;
        m * 2f32.powi(e)
    }
}

fn tables() -> Vec<&'static QuantKernels> {
    arch::available()
        .into_iter()
        .filter_map(quant_kernels_for)
        .collect()
}

fn same_code(a: u8, b: u8, fmt: Format) -> bool {
    a == b || (fmt.is_nan(a) && fmt.is_nan(b) && (a & 0x80) == (b & 0x80))
}

fn special_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::MAX,
        -f32::MAX,
        448.0,
        449.0,
        464.0,
        479.9,
        480.0,
        500.0,
        511.99,
        512.0,
        57344.0,
        60000.0,
        61440.0,
        65535.0,
        65536.0,
        1.0,
        1.0625,
        1.1,
        -1.1,
        0.3,
    ];
    for fmt in Format::ALL {
        let emin = fmt.min_normal_exp();
        let m = fmt.mantissa_bits() as i32;
        for k in -3..=3 {
            let sub = 2f32.powi(emin - m + k);
            v.extend([sub, sub * 1.5, sub * 1.25 + sub * 0.001, -sub * 0.75]);
        }
        v.extend([2f32.powi(emin) * 0.999, 2f32.powi(emin - m - 1)]);
    }
    v
}

#[test]
fn stochastic_integer_form_matches_reference() {
    let mut rng = Lcg(7);
    let mut values: Vec<f32> = special_f32();
    values.extend((0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()));
    values.extend((0..=u16::MAX).map(|b| bf16::from_bits(b).to_f32()));
    values.extend((0..20000).map(|_| f32::from_bits(rng.next_u32())));
    values.extend((0..20000).map(|_| rng.wide_f32()));
    for fmt in Format::ALL {
        for sat in [false, true] {
            for &x in &values {
                let mut draws = vec![0, 1, u32::MAX, u32::MAX / 2, rng.next_u32()];
                // Draws right at the threshold of this value: floor(frac * 2^32) and one below.
                let a = f64::from(x).abs();
                if a.is_finite() && a > 0.0 {
                    let e = a.log2().floor().max(f64::from(fmt.min_normal_exp()));
                    let n = a / 2f64.powf(e - f64::from(fmt.mantissa_bits()));
                    let f = ((n - n.floor()) * 4_294_967_296.0).floor() as u32;
                    draws.extend([f, f.wrapping_sub(1)]);
                }
                for r in draws {
                    let want = stochastic::reference(f64::from(x), fmt, sat, r);
                    let got = stochastic::round_f32(x, fmt, sat, r);
                    assert!(
                        same_code(got, want, fmt),
                        "{x:e} ({:#x}) {fmt} sat={sat} r={r:#x}: {got:#04x} vs {want:#04x}",
                        x.to_bits()
                    );
                    let got64 = stochastic::round_f64(f64::from(x), fmt, sat, r);
                    assert!(same_code(got64, want, fmt), "f64 {x:e} {fmt} r={r:#x}");
                }
            }
        }
    }
}

#[test]
fn stochastic_f64_matches_reference() {
    let mut rng = Lcg(11);
    for fmt in Format::ALL {
        for _ in 0..50000 {
            let bits = (u64::from(rng.next_u32()) << 32) | u64::from(rng.next_u32());
            let x = if rng.next_u32().is_multiple_of(2) {
                f64::from_bits(bits)
            } else {
                f64::from(rng.wide_f32()) * (1.0 + f64::from(rng.next_u32()) * 1e-12)
            };
            let r = rng.next_u32();
            for sat in [false, true] {
                let want = stochastic::reference(x, fmt, sat, r);
                let got = stochastic::round_f64(x, fmt, sat, r);
                assert!(same_code(got, want, fmt), "{x:e} {fmt} sat={sat} r={r:#x}");
            }
        }
    }
}

/// The two FP8 neighbours of `a >= 0` by search over the decoded codes (independent of the
/// rounding code): the largest value <= a and the smallest value >= a (the point past the max
/// normal stands in for "overflow").
fn neighbours(a: f64, fmt: Format) -> (f64, f64) {
    let mut vals: Vec<f64> = (0..=fmt.max_code())
        .map(|c| scalar::decode_f64(c, fmt))
        .collect();
    vals.push(fmt.max_normal() + 2f64.powi(fmt.max_exp() - fmt.mantissa_bits() as i32));
    let lo = vals.iter().copied().filter(|&v| v <= a).fold(0.0, f64::max);
    let hi = vals
        .iter()
        .copied()
        .filter(|&v| v >= a)
        .fold(f64::INFINITY, f64::min);
    (lo, hi)
}

#[test]
fn stochastic_reference_picks_a_neighbour_with_the_right_threshold() {
    let mut rng = Lcg(3);
    for fmt in Format::ALL {
        for _ in 0..20000 {
            let x = f64::from(rng.wide_f32()) * 64.0;
            let a = x.abs();
            let (lo, hi) = neighbours(a, fmt);
            if hi.is_infinite() {
                continue;
            }
            // frac * 2^32 from the neighbours (exact: power-of-two gap, dyadic a).
            let f = if hi == lo {
                0.0
            } else {
                ((a - lo) / (hi - lo) * 4_294_967_296.0).floor()
            };
            for r in [0u32, rng.next_u32(), u32::MAX] {
                let code = stochastic::reference(x, fmt, false, r);
                let v = scalar::decode_f64(code, fmt).abs();
                let up = f > f64::from(r);
                let want = if up { hi } else { lo };
                if want > fmt.max_normal() {
                    assert!(fmt.is_nan(code) || Some(code & 0x7F) == fmt.inf_code());
                } else {
                    assert_eq!(v, want, "{x:e} {fmt} r={r}");
                }
            }
        }
    }
}

#[test]
fn stochastic_kernels_match_scalar_on_every_isa() {
    let mut rng = Lcg(5);
    let mut data: Vec<f32> = special_f32();
    data.extend((0..3000).map(|_| rng.wide_f32() * 100.0));
    data.extend((0..1000).map(|_| f32::from_bits(rng.next_u32())));
    // Whole vectors in the FP8 normal range (the kernels' fast path), a few with NaN / Inf /
    // values past the range mixed in.
    data.extend((0..4000).map(|i| {
        let v = (1.0 + rng.next_u32() as f32 / 4_294_967_296.0)
            * 2f32.powi((rng.next_u32() % 30) as i32 - 14)
            * if i % 3 == 0 { -1.0 } else { 1.0 };
        match i % 97 {
            5 => f32::NAN,
            6 => f32::NEG_INFINITY,
            7 => 1e30,
            8 => 470.0,
            9 => 60000.0,
            _ => v,
        }
    }));
    let key = StochasticKey::new(42);
    for k in tables() {
        for fmt in Format::ALL {
            for sat in [false, true] {
                // Heads, tails, misaligned starts; and an index range crossing 2^32.
                for (off, len, start) in [
                    (0, data.len(), 0u64),
                    (3, 77, 1000),
                    (1, 0, 0),
                    (5, 15, 9),
                    (7, 100, (1u64 << 32) - 37),
                    (0, 64, u64::MAX - 70),
                ] {
                    let src = &data[off..off + len];
                    let mut got = vec![0u8; len];
                    let p = StochasticParams {
                        fmt,
                        saturate: sat,
                        key,
                        start,
                    };
                    (k.stochastic_f32)(src, &mut got, p);
                    for (i, (&x, &g)) in src.iter().zip(&got).enumerate() {
                        let r = key.draw(start.wrapping_add(i as u64));
                        let want = stochastic::reference(f64::from(x), fmt, sat, r);
                        assert!(
                            same_code(g, want, fmt),
                            "{} {x:e} {fmt} sat={sat} i={i}: {g:#04x} vs {want:#04x}",
                            k.isa
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn generator_depends_on_seed_and_index_only() {
    let a = StochasticKey::new(1);
    let b = StochasticKey::new(2);
    assert_ne!(a, b);
    let da: Vec<u32> = (0..1000).map(|i| a.draw(i)).collect();
    let db: Vec<u32> = (0..1000).map(|i| b.draw(i)).collect();
    assert_ne!(da, db);
    // Roughly uniform: the mean of 2^16 draws / 2^32 is 0.5 within 5 sigma (sigma = 1/sqrt(12 n)).
    let n = 1 << 16;
    let mean: f64 = (0..n).map(|i| f64::from(a.draw(i))).sum::<f64>() / n as f64 / 4_294_967_296.0;
    assert!(
        (mean - 0.5).abs() < 5.0 / (12.0 * n as f64).sqrt(),
        "{mean}"
    );
}

fn naive_keys<T: QuantInput>(x: &[T]) -> AbsMaxKeys {
    let mut k = AbsMaxKeys::default();
    for &v in x {
        let key = v.abs_key();
        k.all = k.all.max(key);
        if key <= T::INF_KEY {
            k.non_nan = k.non_nan.max(key);
        }
        if key < T::INF_KEY {
            k.finite = k.finite.max(key);
        }
    }
    k
}

#[test]
fn absmax_kernels_match_naive_on_every_isa() {
    let mut rng = Lcg(9);
    let base: Vec<f32> = (0..300).map(|_| rng.wide_f32()).collect();
    for k in tables() {
        for len in 0..base.len() {
            for special in [None, Some(f32::NAN), Some(f32::INFINITY), Some(-f32::NAN)] {
                let mut v: Vec<f32> = base[..len].to_vec();
                if let (Some(s), true) = (special, len > 0) {
                    v[len / 2] = s;
                }
                assert_eq!(
                    (k.absmax_f32)(&v),
                    naive_keys(&v),
                    "{} f32 len {len}",
                    k.isa
                );
                let d: Vec<f64> = v.iter().map(|&x| f64::from(x) * 1e-3).collect();
                assert_eq!((k.absmax_f64)(&d), naive_keys(&d), "{} f64", k.isa);
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                assert_eq!((k.absmax_f16)(&h), naive_keys(&h), "{} f16", k.isa);
                let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                assert_eq!((k.absmax_bf16)(&b), naive_keys(&b), "{} bf16", k.isa);
            }
        }
    }
}

/// Naive quantization of a 2-D f32 array from the definitions: returns (codes, scales).
fn naive_quantize_2d(
    x: &[f32],
    rows: usize,
    cols: usize,
    fmt: Format,
    scale_of: &dyn Fn(usize, usize) -> (usize, usize),
    grid: (usize, usize),
    mx: bool,
) -> (Vec<u8>, Vec<f32>) {
    let mut amax = vec![0f64; grid.0 * grid.1];
    for r in 0..rows {
        for c in 0..cols {
            let v = f64::from(x[r * cols + c]).abs();
            let (i, j) = scale_of(r, c);
            if v.is_finite() && v > amax[i * grid.1 + j] {
                amax[i * grid.1 + j] = v;
            }
        }
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| {
            if mx {
                if a == 0.0 {
                    1.0
                } else {
                    let x = (a.log2().floor() as i32 - fmt.max_exp()).clamp(-127, 127);
                    2f32.powi(x)
                }
            } else if a == 0.0 {
                1.0
            } else {
                ((a / fmt.max_normal()) as f32).max(f32::MIN_POSITIVE)
            }
        })
        .collect();
    let mut q = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (i, j) = scale_of(r, c);
            let inv = 1.0f32 / scales[i * grid.1 + j];
            q[r * cols + c] = scalar::encode_f32(x[r * cols + c] * inv, fmt, true);
        }
    }
    (q, scales)
}

fn test_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.wide_f32()).collect();
    if x.len() > 40 {
        x[3] = f32::NAN;
        x[17] = f32::INFINITY;
        x[29] = -f32::INFINITY;
    }
    x
}

/// Element (row, col) -> scale (row, col).
type ScaleMap = Box<dyn Fn(usize, usize) -> (usize, usize)>;

#[test]
fn quantize_layouts_match_naive_reference() {
    let (rows, cols) = (300, 260);
    let x = test_matrix(rows, cols, 1);
    for fmt in Format::ALL {
        let cases: Vec<(Granularity, ScaleMap, (usize, usize))> = vec![
            (Granularity::Tensor, Box::new(|_, _| (0, 0)), (1, 1)),
            (
                Granularity::Channel { axis: 0 },
                Box::new(|r, _| (r, 0)),
                (rows, 1),
            ),
            (
                Granularity::Channel { axis: 1 },
                Box::new(|_, c| (0, c)),
                (1, cols),
            ),
            (
                Granularity::Block {
                    rows: 128,
                    cols: 128,
                },
                Box::new(|r, c| (r / 128, c / 128)),
                (3, 3),
            ),
            (
                Granularity::Block { rows: 7, cols: 50 },
                Box::new(|r, c| (r / 7, c / 50)),
                (43, 6),
            ),
            (Granularity::Mx, Box::new(|r, c| (r, c / 32)), (rows, 9)),
        ];
        for (g, map, grid) in cases {
            let mx = g == Granularity::Mx;
            let (want_q, want_s) = naive_quantize_2d(&x, rows, cols, fmt, &*map, grid, mx);
            let mut q = vec![0u8; x.len()];
            let s = quantize(&x, &[rows, cols], fmt, g, Rounding::Nearest, &mut q).unwrap();
            let got_s: Vec<f32> = match s {
                Scales::F32(v) => v,
                Scales::E8M0(c) => c.iter().map(|&c| e8m0_value(c)).collect(),
            };
            assert_eq!(got_s, want_s, "{g:?} {fmt}");
            for (i, (&a, &b)) in q.iter().zip(&want_q).enumerate() {
                assert!(same_code(a, b, fmt), "{g:?} {fmt} at {i}: {a:#x} vs {b:#x}");
            }
            // Dequantize: decode * scale in f32.
            let mut y = vec![0f32; x.len()];
            dequantize(&q, &[rows, cols], fmt, g, &got_s, &mut y).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    let (i, j) = map(r, c);
                    let want = scalar::decode_f32(q[r * cols + c], fmt) * got_s[i * grid.1 + j];
                    let got = y[r * cols + c];
                    assert!(got == want || (got.is_nan() && want.is_nan()), "{g:?} deq");
                }
            }
        }
    }
}

#[test]
fn channel_on_3d_middle_axis() {
    let shape = [3, 5, 70];
    let x = test_matrix(1, 3 * 5 * 70, 2);
    let mut q = vec![0u8; x.len()];
    let s = quantize(
        &x,
        &shape,
        Format::E4M3,
        Granularity::Channel { axis: 1 },
        Rounding::Nearest,
        &mut q,
    )
    .unwrap();
    let Scales::F32(s) = s else { panic!() };
    assert_eq!(s.len(), 5);
    for ch in 0..5 {
        let mut a = 0f64;
        for o in 0..3 {
            for i in 0..70 {
                let v = f64::from(x[(o * 5 + ch) * 70 + i]).abs();
                if v.is_finite() {
                    a = a.max(v);
                }
            }
        }
        assert_eq!(s[ch], (a / 448.0) as f32);
        for o in 0..3 {
            for i in 0..70 {
                let idx = (o * 5 + ch) * 70 + i;
                let want = scalar::encode_f32(x[idx] * (1.0 / s[ch]), Format::E4M3, true);
                assert!(same_code(q[idx], want, Format::E4M3));
            }
        }
    }
    assert_eq!(
        Layout::new(&shape, Granularity::Channel { axis: 1 })
            .unwrap()
            .scale_shape,
        vec![1, 5, 1]
    );
}

#[test]
fn zero_and_nonfinite_groups() {
    // One MX group of zeros, one of NaN/Inf only, one mixed.
    let mut x = vec![0f32; 96];
    for v in &mut x[32..64] {
        *v = f32::NAN;
    }
    x[40] = f32::NEG_INFINITY;
    x[64] = 3.0;
    x[65] = f32::NAN;
    x[66] = f32::INFINITY;
    let mut q = vec![0u8; 96];
    let s = quantize(
        &x,
        &[96],
        Format::E4M3,
        Granularity::Mx,
        Rounding::Nearest,
        &mut q,
    )
    .unwrap();
    // 3 = 1.5 * 2^1: X = 1 - 8 = -7.
    assert_eq!(s, Scales::E8M0(vec![127, 127, 120]));
    assert!(q[..32].iter().all(|&c| c == 0));
    assert!(Format::E4M3.is_nan(q[33]));
    assert_eq!(q[40], 0xFE); // -Inf saturates
    assert_eq!(scalar::decode_f64(q[64], Format::E4M3), 384.0);
    assert!(Format::E4M3.is_nan(q[65]));
    assert_eq!(q[66], 0x7E);
    let mut q = vec![0u8; 96];
    let s = quantize(
        &x,
        &[96],
        Format::E5M2,
        Granularity::Tensor,
        Rounding::Nearest,
        &mut q,
    )
    .unwrap();
    assert_eq!(s, Scales::F32(vec![(3.0f64 / 57344.0) as f32]));
}

#[test]
fn results_do_not_depend_on_threads_or_isa() {
    let n = 300_001;
    let x = test_matrix(1, n, 4);
    let shapes: [(&[usize], Granularity); 4] = [
        (&[n], Granularity::Tensor),
        (&[n], Granularity::Mx),
        (&[1, n], Granularity::Channel { axis: 1 }),
        (
            &[1, n],
            Granularity::Block {
                rows: 1,
                cols: 1000,
            },
        ),
    ];
    let prev = arch::active();
    for (shape, g) in shapes {
        for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 99 }] {
            let mut results = vec![];
            for isa in arch::available() {
                arch::set_active(isa).unwrap();
                for t in [1, 2, 3] {
                    threads::set_num_threads(t).unwrap();
                    let mut q = vec![0u8; n];
                    let s = quantize(&x, shape, Format::E4M3, g, rounding, &mut q).unwrap();
                    results.push((isa, t, q, s));
                }
            }
            for r in &results[1..] {
                assert!(
                    r.2 == results[0].2 && r.3 == results[0].3,
                    "{g:?} {:?} {} threads",
                    r.0,
                    r.1
                );
            }
        }
    }
    arch::set_active(prev).unwrap();
}

#[test]
fn stochastic_encode_matches_reference_for_every_input_type() {
    let n = 70_000; // large enough to split across threads
    let x = test_matrix(1, n, 6);
    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let d: Vec<f64> = x.iter().map(|&v| f64::from(v) * (1.0 + 1e-9)).collect();
    let key = StochasticKey::new(123);
    for fmt in Format::ALL {
        for sat in [false, true] {
            let check = |vals: Vec<f64>, got: Vec<u8>| {
                for (i, (&v, &g)) in vals.iter().zip(&got).enumerate() {
                    let want = stochastic::reference(v, fmt, sat, key.draw(5 + i as u64));
                    assert!(same_code(g, want, fmt), "{fmt} sat={sat} {v:e}");
                }
            };
            let mut q = vec![0u8; n];
            encode_stochastic(&x, &mut q, fmt, sat, 123, 5).unwrap();
            check(x.iter().map(|&v| f64::from(v)).collect(), q.clone());
            encode_stochastic(&h, &mut q, fmt, sat, 123, 5).unwrap();
            check(h.iter().map(|v| v.to_f64()).collect(), q.clone());
            encode_stochastic(&b, &mut q, fmt, sat, 123, 5).unwrap();
            check(b.iter().map(|v| v.to_f64()).collect(), q.clone());
            encode_stochastic(&d, &mut q, fmt, sat, 123, 5).unwrap();
            check(d.clone(), q.clone());
        }
    }
}

#[test]
fn f64_input_scales_in_f64() {
    let x: Vec<f64> = vec![1.0 + 2f64.powi(-40), 3.0, -7.5e-3, 1e-300];
    let mut q = vec![0u8; 4];
    let s = quantize(
        &x,
        &[4],
        Format::E4M3,
        Granularity::Tensor,
        Rounding::Nearest,
        &mut q,
    )
    .unwrap();
    let Scales::F32(s) = s else { panic!() };
    let inv = 1.0 / f64::from(s[0]);
    for (v, c) in x.iter().zip(&q) {
        assert_eq!(*c, scalar::encode_f64(v * inv, Format::E4M3, true));
    }
    // Huge float64 groups clamp the scale to float32 max and saturate.
    let x = vec![1e300f64, -1e300];
    let mut q = vec![0u8; 2];
    let s = quantize(
        &x,
        &[2],
        Format::E4M3,
        Granularity::Tensor,
        Rounding::Nearest,
        &mut q,
    )
    .unwrap();
    assert_eq!(s, Scales::F32(vec![f32::MAX]));
    assert_eq!(q, vec![0x7E, 0xFE]);
}

#[test]
fn dequantize_output_types() {
    let q: Vec<u8> = (0..=255).collect();
    let scales = [0.37f32, 3.0e-3];
    for fmt in Format::ALL {
        let g = Granularity::Channel { axis: 0 };
        let mut y64 = vec![0f64; 256];
        dequantize(&q, &[2, 128], fmt, g, &scales, &mut y64).unwrap();
        let mut y16 = vec![f16::ZERO; 256];
        dequantize(&q, &[2, 128], fmt, g, &scales, &mut y16).unwrap();
        let mut yb = vec![bf16::ZERO; 256];
        dequantize(&q, &[2, 128], fmt, g, &scales, &mut yb).unwrap();
        for i in 0..256 {
            let exact = scalar::decode_f64(q[i], fmt) * f64::from(scales[i / 128]);
            assert!(y64[i] == exact || (exact.is_nan() && y64[i].is_nan()));
            let f = exact as f32;
            assert!(y16[i] == f16::from_f32(f) || (f.is_nan() && y16[i].is_nan()));
            assert!(yb[i] == bf16::from_f32(f) || (f.is_nan() && yb[i].is_nan()));
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = [1.0f32; 12];
    let mut q = [0u8; 12];
    let mut e = |g| quantize(&x, &[3, 4], Format::E4M3, g, Rounding::Nearest, &mut q).is_err();
    assert!(e(Granularity::Block { rows: 0, cols: 4 }));
    assert!(e(Granularity::Channel { axis: 2 }));
    assert!(quantize(
        &x,
        &[12],
        Format::E4M3,
        Granularity::Block { rows: 2, cols: 2 },
        Rounding::Nearest,
        &mut q
    )
    .is_err());
    assert!(quantize(
        &x,
        &[5],
        Format::E4M3,
        Granularity::Tensor,
        Rounding::Nearest,
        &mut q
    )
    .is_err());
    assert!(Granularity::parse("row", 2, 0, (1, 1)).is_err());
    assert!(Granularity::parse("channel", 2, -3, (1, 1)).is_err());
    let mut y = [0f32; 12];
    let err = dequantize(
        &q,
        &[3, 4],
        Format::E4M3,
        Granularity::Block { rows: 2, cols: 2 },
        &[1.0; 3],
        &mut y,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[2, 2]"), "{err}");
}

#[test]
fn empty_inputs() {
    let x: [f32; 0] = [];
    let mut q: [u8; 0] = [];
    assert_eq!(
        quantize(
            &x,
            &[0, 5],
            Format::E4M3,
            Granularity::Channel { axis: 1 },
            Rounding::Nearest,
            &mut q
        )
        .unwrap(),
        Scales::F32(vec![1.0; 5])
    );
    assert_eq!(
        quantize(
            &x,
            &[3, 0],
            Format::E4M3,
            Granularity::Mx,
            Rounding::Nearest,
            &mut q
        )
        .unwrap(),
        Scales::E8M0(vec![])
    );
    assert_eq!(amax_rows(&x, 0, 3, true).unwrap(), Vec::<f64>::new());
    assert_eq!(amax_rows(&x, 2, 0, true).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn amax_nan_handling() {
    let x = [1.0f32, -5.0, f32::NAN, f32::NEG_INFINITY, 2.0, 3.0];
    assert_eq!(
        amax_rows(&x, 3, 2, true).unwrap(),
        vec![5.0, f64::INFINITY, 3.0]
    );
    let p = amax_rows(&x, 3, 2, false).unwrap();
    assert!(p[1].is_nan() && p[0] == 5.0 && p[2] == 3.0);
    assert_eq!(absmax_all(&x).finite, u64::from(5f32.to_bits()));
    assert_eq!(Isa::ALL[0], Isa::Scalar);
}

#[test]
fn scale_group_kernels_match_naive_on_every_isa() {
    let mut rng = Lcg(21);
    let src: Vec<f32> = (0..500).map(|_| rng.wide_f32()).collect();
    let s: Vec<f32> = (0..600).map(|_| rng.wide_f32()).collect();
    for k in tables() {
        for group in [1usize, 3, 32, 128, 1000] {
            for col0 in [0usize, 1, 31, 95] {
                for len in [0usize, 1, 17, 64, 500] {
                    let want: Vec<f32> = (0..len).map(|j| src[j] * s[(col0 + j) / group]).collect();
                    let mut got = vec![0f32; len];
                    (k.scale_groups_f32)(&src[..len], col0, group, &s, &mut got);
                    assert_eq!(got, want, "{} group {group} col0 {col0} len {len}", k.isa);
                    let mut buf = src[..len].to_vec();
                    (k.scale_groups_inplace_f32)(&mut buf, col0, group, &s);
                    assert_eq!(buf, want);
                }
            }
        }
    }
}

/// Every bfloat16 and float16 bit pattern, widened and scaled by each level's one-pass kernel,
/// equals `half`'s exact widening followed by the same multiply (NaN stays NaN with its sign).
#[test]
fn half_scale_group_kernels_widen_exactly_on_every_isa() {
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let b: Vec<bf16> = bits.iter().map(|&x| bf16::from_bits(x)).collect();
    let h: Vec<f16> = bits.iter().map(|&x| f16::from_bits(x)).collect();
    // 1 (the widening alone), a rounding scale, one that overflows large inputs, one that
    // flushes small ones into f32 subnormals, and per-group scales.
    let scales: Vec<f32> = vec![1.0, 0.7, 3.1e34, 1.3e-39, -2.5, 448.0 / 3.0];
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
            || (a.is_nan() && b.is_nan() && a.is_sign_negative() == b.is_sign_negative())
    }
    for k in tables() {
        for (group, col0) in [
            (1usize << 20, 0usize),
            (1 << 20, 5),
            (10_930, 0),
            (10_930, 17),
        ] {
            let mut got = vec![0f32; bits.len()];
            let want = |x: f32, j: usize| x * scales[(col0 + j) / group];
            (k.scale_groups_bf16)(&b, col0, group, &scales, &mut got);
            for (j, (&g, x)) in got.iter().zip(&b).enumerate() {
                assert!(
                    same(g, want(x.to_f32(), j)),
                    "{} bf16 {:#06x} group {group}: {g:e}",
                    k.isa,
                    x.to_bits()
                );
            }
            (k.scale_groups_f16)(&h, col0, group, &scales, &mut got);
            for (j, (&g, x)) in got.iter().zip(&h).enumerate() {
                assert!(
                    same(g, want(x.to_f32(), j)),
                    "{} f16 {:#06x} group {group}: {g:e}",
                    k.isa,
                    x.to_bits()
                );
            }
        }
        // Per-element scales (group 1) from an offset column.
        let per: Vec<f32> = (0..300).map(|j| 0.5 + j as f32 / 7.0).collect();
        let mut got = vec![0f32; 200];
        (k.scale_groups_f16)(&h[0x3000..0x30C8], 100, 1, &per, &mut got);
        for (j, &g) in got.iter().enumerate() {
            assert!(
                same(g, h[0x3000 + j].to_f32() * per[100 + j]),
                "{} group 1",
                k.isa
            );
        }
    }
}
/// Where a level fuses the bfloat16 scaling and encoding, every bfloat16 pattern, scaled by
/// rounding, overflowing, flushing and negative scales, in both formats, from offsets that
/// leave group runs of every tail length, gives the scalar reference's code of the scaled
/// value: the codes of the two separate passes.
#[test]
fn fused_bf16_scale_encode_matches_the_scalar_reference_on_every_isa() {
    let b: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let scales: Vec<f32> = vec![1.0, 0.7, 3.1e34, 1.3e-39, -2.5, 448.0 / 3.0, 2e-3, 7.0];
    let mut fused = 0;
    for k in tables() {
        let Some(f) = k.scale_encode_bf16 else {
            continue;
        };
        fused += 1;
        for fmt in [Format::E4M3, Format::E5M2] {
            for (group, col0) in [(8_300usize, 0usize), (8_300, 77), (8_193, 5), (1, 3)] {
                let n = if group == 1 { 4_000 } else { b.len() };
                let mut got = vec![0u8; n];
                let per: Vec<f32> = (0..n + col0).map(|j| scales[j % scales.len()]).collect();
                let s = if group == 1 { &per[..] } else { &scales[..] };
                f(&b[..n], col0, group, s, &mut got, fmt);
                for (j, (&code, x)) in got.iter().zip(&b).enumerate() {
                    let want = scalar::encode_f32(x.to_f32() * s[(col0 + j) / group], fmt, true);
                    assert!(
                        same_code(code, want, fmt),
                        "{} {fmt:?} bf16 {:#06x} group {group} col0 {col0}: {code:#04x} != {want:#04x}",
                        k.isa,
                        x.to_bits()
                    );
                }
            }
        }
    }
    let want = usize::from(arch::available().contains(&Isa::Avx512));
    assert!(fused >= want, "the AVX-512 level has the fused kernel");
}

#[test]
fn group_max_kernels_match_naive_on_every_isa() {
    let mut rng = Lcg(22);
    let mut v: Vec<f32> = (0..700).map(|_| rng.wide_f32()).collect();
    for i in (0..700).step_by(41) {
        v[i] = [f32::NAN, f32::INFINITY, -f32::INFINITY, -f32::NAN][i % 4];
    }
    let d: Vec<f64> = v.iter().map(|&x| f64::from(x) * 1e200).collect();
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    fn naive<T: QuantInput>(row: &[T], group: usize, init: u64) -> Vec<u64> {
        row.chunks(group)
            .map(|seg| naive_keys(seg).finite.max(init))
            .collect()
    }
    for k in tables() {
        for group in [8usize, 32, 33, 128, 700, 1000] {
            for len in [0usize, 7, 32, 100, 700] {
                let slots = len.div_ceil(group);
                let init = 0x3F80_0000u64; // merged with an existing partial maximum
                let mut out = vec![init; slots];
                (k.group_max_f32)(&v[..len], group, &mut out);
                assert_eq!(
                    out,
                    naive(&v[..len], group, init),
                    "{} f32 {group} {len}",
                    k.isa
                );
                let mut out = vec![0; slots];
                (k.group_max_f64)(&d[..len], group, &mut out);
                assert_eq!(out, naive(&d[..len], group, 0), "{} f64", k.isa);
                let mut out = vec![0; slots];
                (k.group_max_f16)(&h[..len], group, &mut out);
                assert_eq!(out, naive(&h[..len], group, 0), "{} f16", k.isa);
                let mut out = vec![0; slots];
                (k.group_max_bf16)(&b[..len], group, &mut out);
                assert_eq!(out, naive(&b[..len], group, 0), "{} bf16", k.isa);
            }
        }
    }
}

#[test]
fn powers_of_two_are_exact() {
    for k in -127..=127 {
        assert_eq!(f64::from(pow2_f32(k)), 2f64.powi(k), "{k}");
        assert_eq!(f64::from(e8m0_value((k + 127) as u8)), 2f64.powi(k));
    }
    assert!(e8m0_value(0xFF).is_nan());
}

#[test]
fn table_lookup_kernels_match_scalar_on_every_isa() {
    // A table with every entry distinct, so a wrong pick cannot go unnoticed; and a
    // sign-symmetric one (`table[c | 0x80] == table[c] ^ 0x8000`, some positive codes with the
    // sign bit set), which the NEON kernel looks up with `tbl` / `tbx`.
    let distinct: [u16; 256] = std::array::from_fn(|i| (i as u16).wrapping_mul(40503) ^ 0x5A5A);
    let symmetric: [u16; 256] =
        std::array::from_fn(|i| distinct[i & 0x7F] ^ if i & 0x80 != 0 { 0x8000 } else { 0 });
    // Every code, in an order that mixes the four 64-entry quarters within each vector.
    let codes: Vec<u8> = (0..4 * 256 + 77)
        .map(|i: usize| (i * 167 + (i >> 8)) as u8)
        .collect();
    let isas: Vec<Isa> = tables().iter().map(|k| k.isa).collect();
    assert!(isas.contains(&Isa::Scalar), "{isas:?}");
    for (k, table) in tables()
        .into_iter()
        .flat_map(|k| [(k, &distinct), (k, &symmetric)])
    {
        for start in 0..3 {
            for len in (0..4 * 32 + 3).chain([256, 300, 1000]) {
                let src = &codes[start..start + len];
                let mut got = vec![0u16; len];
                let mut want = vec![1u16; len];
                (k.lookup_u16)(src, table, &mut got);
                kernels::lookup_u16_body(src, table, &mut want);
                assert_eq!(got, want, "{:?} start {start} len {len}", k.isa);
                assert!(want
                    .iter()
                    .zip(src)
                    .all(|(&w, &c)| w == table[usize::from(c)]));
            }
        }
    }
}

#[test]
fn float16_scales_never_make_the_largest_code_overflow_float16() {
    // amax 65504 (float16's max) rounds its scale up to a float16 value whose product with the
    // max normal is infinite in float16; the stored scale must step down instead.
    use crate::quant::ScaleDtype;
    for fmt in [Format::E4M3, Format::E5M2] {
        for amax in [65504.0f64, 65490.0, 65000.0, 1.0] {
            let exact = (amax / fmt.max_normal()) as f32;
            let s = ScaleDtype::F16.round_for(exact, fmt);
            assert_eq!(
                half::f16::from_f32(s).to_f32(),
                s,
                "{fmt:?} {amax}: not a float16"
            );
            assert!(
                f64::from(s) * fmt.max_normal() <= 65504.0,
                "{fmt:?} {amax}: {s} * max normal overflows float16"
            );
            // Never more than one float16 step from the nearest.
            let nearest = ScaleDtype::F16.round(exact);
            assert!(
                s == nearest
                    || half::f16::from_f32(s).to_bits() + 1
                        == half::f16::from_f32(nearest).to_bits()
            );
        }
        // The case that overflowed: the nearest float16 scale is too large.
        let nearest = ScaleDtype::F16.round((65504.0 / fmt.max_normal()) as f32);
        assert!(
            f64::from(nearest) * fmt.max_normal() > 65504.0,
            "{fmt:?}: test input no longer exercises the step"
        );
    }
}
