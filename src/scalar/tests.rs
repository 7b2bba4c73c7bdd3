//! The reference checked against a brute-force nearest-value search and the OFP8 table.

use half::{bf16, f16};

use super::*;

/// Rounding by exhaustive search, the definition in OFP8 §5.2 spelled out: among every finite
/// positive value plus the first value past the max normal (the point the unbounded exponent
/// range would round to), pick the nearest; ties go to the even mantissa; then anything that
/// landed past the max normal overflows.
fn brute_force(x: f64, fmt: Format, saturate: bool) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | fmt.nan_code();
    }
    let a = x.abs();
    let m = fmt.mantissa_bits();
    // (value, mantissa is even, code); the code 0xFF marks the point past the max normal.
    let mut candidates: Vec<(f64, bool, u8)> = (0..=fmt.max_code())
        .map(|c| (decode_f64(c, fmt), c & 1 == 0, c))
        .collect();
    let step_at_max = 2f64.powi(fmt.max_exp() - m as i32);
    let past_max = fmt.max_normal() + step_at_max;
    let past_max_even = (fmt.max_code() + 1) & ((1 << m) - 1) & 1 == 0;
    candidates.push((past_max, past_max_even, 0xFF));
    if a > past_max {
        return sign | fmt.overflow_code(saturate);
    }
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        let (d_best, d_c) = ((a - best.0).abs(), (a - c.0).abs());
        if d_c < d_best || (d_c == d_best && c.1 && !best.1) {
            best = c;
        }
    }
    if best.2 == 0xFF {
        sign | fmt.overflow_code(saturate)
    } else {
        sign | best.2
    }
}

fn same(a: u8, b: u8, fmt: Format) -> bool {
    a == b || (fmt.is_nan(a) && fmt.is_nan(b) && (a & 0x80) == (b & 0x80))
}

#[test]
fn matches_brute_force_for_every_f16_and_bf16() {
    for fmt in Format::ALL {
        for sat in [false, true] {
            for bits in 0..=u16::MAX {
                let h = f16::from_bits(bits).to_f64();
                let (got, want) = (encode_f64(h, fmt, sat), brute_force(h, fmt, sat));
                assert!(
                    same(got, want, fmt),
                    "f16 {bits:#06x} {fmt} sat={sat}: {got:#04x} vs {want:#04x}"
                );
                let b = bf16::from_bits(bits).to_f64();
                let (got, want) = (encode_f64(b, fmt, sat), brute_force(b, fmt, sat));
                assert!(
                    same(got, want, fmt),
                    "bf16 {bits:#06x} {fmt} sat={sat}: {got:#04x} vs {want:#04x}"
                );
            }
        }
    }
}

#[test]
fn matches_brute_force_near_every_f32_midpoint() {
    // Every grid point and midpoint of both formats, and the f32 values right around them,
    // in both signs: the only places where rounding can go wrong.
    for fmt in Format::ALL {
        for code in 0..=fmt.max_code() {
            let v = decode_f64(code, fmt);
            let next = if code == fmt.max_code() {
                v + 2f64.powi(fmt.max_exp() - fmt.mantissa_bits() as i32)
            } else {
                decode_f64(code + 1, fmt)
            };
            for point in [v, (v + next) / 2.0] {
                let p = point as f32;
                let mut x = p.to_bits().saturating_sub(3);
                while x <= p.to_bits() + 3 {
                    for s in [0u32, 0x8000_0000] {
                        let xf = f64::from(f32::from_bits(x | s));
                        for sat in [false, true] {
                            let (got, want) = (encode_f64(xf, fmt, sat), brute_force(xf, fmt, sat));
                            assert!(
                                same(got, want, fmt),
                                "{xf:e} {fmt} sat={sat}: {got:#04x} vs {want:#04x}"
                            );
                        }
                    }
                    x += 1;
                }
            }
        }
    }
}

#[test]
fn matches_brute_force_on_pseudo_random_f32() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = f64::from(f32::from_bits(state as u32));
        for fmt in Format::ALL {
            for sat in [false, true] {
                let (got, want) = (encode_f64(x, fmt, sat), brute_force(x, fmt, sat));
                assert!(same(got, want, fmt), "{x:e} {fmt} sat={sat}");
            }
        }
    }
}

#[test]
fn ofp8_table_boundaries() {
    use Format::*;
    let cases: &[(f64, Format, u8, u8)] = &[
        // (input, format, non-saturating code, saturating code)
        (448.0, E4M3, 0x7E, 0x7E),
        (464.0, E4M3, 0x7E, 0x7E), // tie between 448 and 480: 448 is even
        (464.0001, E4M3, 0x7F, 0x7E),
        (f64::INFINITY, E4M3, 0x7F, 0x7E),
        (2f64.powi(-10), E4M3, 0x00, 0x00), // half the min subnormal: tie to 0
        (2f64.powi(-10) * 1.0001, E4M3, 0x01, 0x01),
        (2f64.powi(-9) * 1.5, E4M3, 0x02, 0x02), // tie between 1 and 2 subnormal steps: 2 is even
        (57344.0, E5M2, 0x7B, 0x7B),
        (61439.99, E5M2, 0x7B, 0x7B),
        (61440.0, E5M2, 0x7C, 0x7B), // tie goes to 2^16: overflow
        (f64::INFINITY, E5M2, 0x7C, 0x7B),
        (2f64.powi(-17), E5M2, 0x00, 0x00),
        (2f64.powi(-17) * 1.0001, E5M2, 0x01, 0x01),
    ];
    for &(x, fmt, nonsat, sat) in cases {
        for (s, xs) in [(0u8, x), (0x80, -x)] {
            assert_eq!(
                encode_f64(xs, fmt, false),
                nonsat | s,
                "{xs} {fmt} non-saturating"
            );
            assert_eq!(encode_f64(xs, fmt, true), sat | s, "{xs} {fmt} saturating");
        }
    }
    assert_eq!(encode_f64(f64::NAN, E4M3, true), 0x7F);
    assert_eq!(encode_f64(-f64::NAN, E5M2, false), 0xFE);
}

#[test]
fn f64_is_rounded_once() {
    // Just above the E4M3 midpoint 1.0625 by less than an f32 ulp: through f32 it becomes the
    // midpoint and rounds to even (1.0); rounded directly it goes up to 1.125.
    let x = 1.0625 + 2f64.powi(-40);
    assert_eq!(encode_f64(x, Format::E4M3, false), 0x39);
    assert_eq!(encode_f32(x as f32, Format::E4M3, false), 0x38);
}

#[test]
fn every_code_round_trips() {
    for fmt in Format::ALL {
        for code in 0..=255u8 {
            let v = decode_f64(code, fmt);
            if fmt.is_nan(code) {
                assert!(v.is_nan() && decode_f32(code, fmt).is_nan());
                assert_eq!(decode_f32(code, fmt).is_sign_negative(), code & 0x80 != 0);
                continue;
            }
            for sat in [false, true] {
                let back = encode_f64(v, fmt, sat);
                let inf = fmt.inf_code().map(|c| c | (code & 0x80));
                if sat && Some(code) == inf {
                    assert_eq!(back, fmt.max_code() | (code & 0x80));
                } else {
                    assert_eq!(back, code, "{fmt} {code:#04x}");
                }
            }
            assert_eq!(f64::from(decode_f32(code, fmt)), v);
            assert_eq!(decode_f16(code, fmt).to_f64(), v);
            assert_eq!(decode_bf16(code, fmt).to_f64(), v);
        }
    }
}

#[test]
fn e5m2_is_the_top_byte_of_f16() {
    for code in 0..=255u8 {
        let h = decode_f16(code, Format::E5M2).to_bits();
        if Format::E5M2.is_nan(code) {
            assert_eq!(h & 0x7FFF, 0x7E00);
        } else {
            assert_eq!(h, u16::from(code) << 8);
        }
    }
}
