//! The portable path: plain Rust for every CPU without a SIMD level (ARM, older x86).
//!
//! Encoding works on the `f32` bit pattern with integer operations only, so it is exact
//! whatever the FTZ/DAZ or rounding-mode state of the FPU, and the compiler can auto-vectorise
//! the branch-free form. `f16` and `bf16` widen to `f32` exactly first. `f64` is narrowed to
//! `f32` with round-to-odd (truncate, then set the lowest bit if anything was lost): with at
//! least two more bits than the target, a round-to-odd intermediate makes the second rounding
//! give exactly the once-rounded result (Boldo & Melquiond), and every FP8 subnormal is an
//! `f32` normal. Decoding is a table lookup.
//!
//! Rounding a pattern right by `s` bits to nearest, ties to even, in integers:
//!
//! ```text
//! (v + (2^(s-1) - 1) + ((v >> s) & 1)) >> s
//! ```
//!
//! adds just under half a unit, plus one more when the kept part is odd, so exactly-half
//! fractions round up only from odd values. Applied to a normal `f32` pattern with
//! `s = 23 - m` it rounds the significand; a carry out of it increments the exponent field,
//! which is the correct next binade (the pattern is monotonic in magnitude).

use half::{bf16, f16};

use crate::format::Format;

#[inline(always)]
const fn round_shift(v: u32, s: u32) -> u32 {
    (v + ((1 << (s - 1)) - 1) + ((v >> s) & 1)) >> s
}

/// Encode one `f32` pattern; `M` mantissa bits, `BIAS` exponent bias of the target format.
#[inline(always)]
fn encode_bits<const M: u32, const BIAS: u32>(
    bits: u32,
    nan: u8,
    max_code: u32,
    overflow: u8,
) -> u8 {
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return sign | nan;
    }
    // Smallest normal of the target, 2^(1 - BIAS), as an f32 pattern.
    let min_normal = (127 + 1 - BIAS) << 23;
    let code = if abs >= min_normal {
        // Normal target: round the significand to M bits, then re-bias the exponent.
        round_shift(abs, 23 - M) - ((127 - BIAS) << M)
    } else {
        // Subnormal target: count units of 2^(1 - BIAS - M). With the implicit bit,
        // |x| = sig * 2^(e - 150), so the count is sig >> (e_unit - e + 150 ...) as below.
        let exp = abs >> 23;
        let sig = (abs & 0x7F_FFFF) | 0x80_0000;
        // shift = (1 - BIAS - M) - (exp - 150) >= 24 - M > 0 because exp < 128 - BIAS.
        let shift = 150 + 1 - BIAS - M - exp;
        if exp == 0 || shift >= 25 {
            // f32 subnormals and anything below half the smallest subnormal: sig * 2^-shift < 1/2.
            0
        } else {
            round_shift(sig, shift)
        }
    };
    if code > max_code {
        sign | overflow
    } else {
        sign | code as u8
    }
}

#[inline(always)]
fn encode_iter(src: impl Iterator<Item = u32>, dst: &mut [u8], fmt: Format, saturate: bool) {
    let (nan, max, ov) = (
        fmt.nan_code(),
        u32::from(fmt.max_code()),
        fmt.overflow_code(saturate),
    );
    match fmt {
        Format::E4M3 => {
            for (d, b) in dst.iter_mut().zip(src) {
                *d = encode_bits::<3, 7>(b, nan, max, ov);
            }
        }
        Format::E5M2 => {
            for (d, b) in dst.iter_mut().zip(src) {
                *d = encode_bits::<2, 15>(b, nan, max, ov);
            }
        }
    }
}

/// Encode `f32` values (equal-length slices).
pub fn encode_f32(src: &[f32], dst: &mut [u8], fmt: Format, saturate: bool) {
    encode_iter(src.iter().map(|x| x.to_bits()), dst, fmt, saturate);
}

/// `x` narrowed to an `f32` pattern with round-to-odd. Beyond the `f32` range the result is
/// `f32::MAX` (odd), which overflows every FP8 format just as the input does; NaN stays NaN.
#[inline(always)]
pub fn f64_to_f32_round_odd(x: f64) -> u32 {
    let nearest = x as f32;
    if x.is_nan() || x.is_infinite() {
        return nearest.to_bits();
    }
    let mut bits = nearest.to_bits();
    if f64::from(nearest).abs() > x.abs() {
        bits -= 1; // one step toward zero: truncation
    }
    if f64::from(f32::from_bits(bits)) != x {
        bits |= 1; // sticky bit
    }
    bits
}

/// Encode `f64` values, rounded once (through a round-to-odd `f32`).
pub fn encode_f64(src: &[f64], dst: &mut [u8], fmt: Format, saturate: bool) {
    encode_iter(
        src.iter().map(|&x| f64_to_f32_round_odd(x)),
        dst,
        fmt,
        saturate,
    );
}

/// Encode `f16` values, widened exactly to `f32`.
pub fn encode_f16(src: &[f16], dst: &mut [u8], fmt: Format, saturate: bool) {
    encode_iter(src.iter().map(|x| x.to_f32().to_bits()), dst, fmt, saturate);
}

/// Encode `bf16` values: a `bf16` is the top half of an `f32`.
pub fn encode_bf16(src: &[bf16], dst: &mut [u8], fmt: Format, saturate: bool) {
    encode_iter(
        src.iter().map(|x| u32::from(x.to_bits()) << 16),
        dst,
        fmt,
        saturate,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar;

    #[test]
    fn matches_the_reference_on_every_f16_bf16_and_sampled_f32() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut f32s: Vec<f32> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                f32::from_bits(state as u32)
            })
            .collect();
        // Every f32 within 4 ulps of every FP8 value and midpoint, both signs.
        for fmt in Format::ALL {
            for code in 0..fmt.max_code() {
                let v = scalar::decode_f64(code, fmt);
                let next = scalar::decode_f64(code + 1, fmt);
                for p in [v as f32, ((v + next) / 2.0) as f32] {
                    for d in -4i32..=4 {
                        let b = p.to_bits().wrapping_add_signed(d);
                        f32s.push(f32::from_bits(b));
                        f32s.push(-f32::from_bits(b));
                    }
                }
            }
        }
        let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let bhalves: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        for fmt in Format::ALL {
            for sat in [false, true] {
                let mut got = vec![0u8; f32s.len()];
                encode_f32(&f32s, &mut got, fmt, sat);
                for (x, g) in f32s.iter().zip(&got) {
                    assert_eq!(
                        *g,
                        scalar::encode_f32(*x, fmt, sat),
                        "{x:e} {fmt} sat={sat}"
                    );
                }
                let mut got = vec![0u8; 1 << 16];
                encode_f16(&halves, &mut got, fmt, sat);
                for (x, g) in halves.iter().zip(&got) {
                    assert_eq!(
                        *g,
                        scalar::encode_f16(*x, fmt, sat),
                        "f16 {x} {fmt} sat={sat}"
                    );
                }
                encode_bf16(&bhalves, &mut got, fmt, sat);
                for (x, g) in bhalves.iter().zip(&got) {
                    assert_eq!(
                        *g,
                        scalar::encode_bf16(*x, fmt, sat),
                        "bf16 {x} {fmt} sat={sat}"
                    );
                }
            }
        }
    }

    #[test]
    fn f64_is_rounded_once() {
        let mut xs: Vec<f64> = vec![
            f64::MAX,
            1e300,
            3.5e38,
            3.4028235677973366e38,
            1e-300,
            5e-324,
            1e-40,
            0.0,
            f64::INFINITY,
            f64::NAN,
        ];
        for fmt in Format::ALL {
            for code in 0..fmt.max_code() {
                let (v, next) = (
                    scalar::decode_f64(code, fmt),
                    scalar::decode_f64(code + 1, fmt),
                );
                let mid = (v + next) / 2.0;
                for t in [2f64.powi(-30), 2f64.powi(-45), 2f64.powi(-52)] {
                    xs.extend([
                        mid * (1.0 + t),
                        mid * (1.0 - t),
                        mid,
                        v * (1.0 + t),
                        v * (1.0 - t),
                    ]);
                }
            }
        }
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            xs.push(f64::from_bits(state >> 2) * if state & 1 == 1 { -1.0 } else { 1.0 });
        }
        let negated: Vec<f64> = xs.iter().map(|x| -x).collect();
        xs.extend(negated);
        for fmt in Format::ALL {
            for sat in [false, true] {
                let mut got = vec![0u8; xs.len()];
                encode_f64(&xs, &mut got, fmt, sat);
                for (x, g) in xs.iter().zip(&got) {
                    assert_eq!(
                        *g,
                        scalar::encode_f64(*x, fmt, sat),
                        "{x:e} {fmt} sat={sat}"
                    );
                }
            }
        }
    }
}
