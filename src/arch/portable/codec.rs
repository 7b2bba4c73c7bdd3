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

use std::sync::OnceLock;

use half::{bf16, f16};

use crate::format::Format;

#[inline(always)]
const fn round_shift(v: u32, s: u32) -> u32 {
    (v + ((1 << (s - 1)) - 1) + ((v >> s) & 1)) >> s
}

/// Encode one `f32` pattern; `M` mantissa bits, `BIAS` exponent bias of the target format.
///
/// Branch-free (every candidate is computed and the right one selected) and without per-lane
/// shift counts, so the loops over it vectorise with the baseline instruction sets: the same
/// code becomes SSE2 on x86-64 and NEON on aarch64.
///
/// The subnormal range (`|x| < 2^(1 - BIAS)`, where the FP8 spacing is `2^(1 - BIAS - M)`)
/// counts units of that spacing in floating point without depending on the rounding mode:
/// `y = |x| * 2^(BIAS - 1 + M)` is exact (a power-of-two scale of a normal float whose result
/// is at least 2^-117, or of an f32 subnormal, whose code is 0 in every mode however the
/// product rounds, or reads as 0 under DAZ), `t = trunc(y)` converts by truncation (the
/// instruction's own rounding, not the mode's: `cvttps2dq`, `fcvtzs`), `y - t` is exact
/// (`0 <= y < 2^M + 1`, fixed point with the same exponent range), and rounding to nearest
/// even is `t + (frac > 1/2 || (frac == 1/2 && t odd))`, exact comparisons.
#[inline(always)]
fn encode_bits<const M: u32, const BIAS: u32>(
    bits: u32,
    nan: u8,
    max_code: u32,
    overflow: u8,
) -> u8 {
    let sign = (bits >> 24) & 0x80;
    let abs = (bits & 0x7FFF_FFFF) as i32;
    // Smallest normal of the target, 2^(1 - BIAS), as an f32 pattern.
    let min_normal = ((127 + 1 - BIAS) << 23) as i32;
    // Normal target: round the significand to M bits, then re-bias the exponent. Computed
    // from max(abs, min_normal) so that no lane wraps.
    let normal = (round_shift(abs.max(min_normal) as u32, 23 - M) - ((127 - BIAS) << M)) as i32;
    let scale = f32::from_bits((127 + BIAS - 1 + M) << 23);
    let y = f32::from_bits(abs.min(min_normal) as u32) * scale;
    // SAFETY: `y` is finite and in [0, 2^M] (`abs.min(min_normal)` is a finite non-negative
    // pattern at most 2^(1 - BIAS), scaled by 2^(BIAS - 1 + M)), so it truncates to an `i32`.
    // The saturating `as` would be correct too, but compiles to a scalar conversion per lane
    // on SSE2, a quarter of the speed.
    let t: i32 = unsafe { y.to_int_unchecked() };
    let frac = y - t as f32;
    let up = frac > 0.5 || (frac == 0.5 && t & 1 == 1);
    let sub = t + i32::from(up);
    // All in i32 (every value is below 2^12): SSE2 has signed compares only.
    let code = if abs >= min_normal { normal } else { sub };
    let code = if code > max_code as i32 {
        i32::from(overflow)
    } else {
        code
    };
    let code = if abs > 0x7F80_0000 {
        i32::from(nan)
    } else {
        code
    };
    (sign | code as u32) as u8
}

/// The code of every f32 pattern, by its top 16 bits and whether its low 16 bits are zero:
/// entry `2 * (bits >> 16) + (bits & 0xFFFF != 0)`.
///
/// Exact because no FP8 rounding point lies in the low half of an f32: rounding keeps at most
/// the top 3 (E4M3) or 2 (E5M2) of the 23 fraction bits, so the kept bits and the half bit
/// (bit 19 or higher) are in the top half, and the low half matters only through "any bit
/// set" (the sticky part of round-to-nearest-even, and NaN against Inf), which the entry
/// for low half 1 represents. A lookup costs a few scalar instructions per element, several
/// times fewer than the arithmetic even vectorised for SSE2 (15 instructions per element).
struct EncodeTable(Box<[u8]>);

impl EncodeTable {
    fn new(fmt: Format, saturate: bool) -> EncodeTable {
        let mut t = vec![0u8; 1 << 17];
        let patterns = (0..1u32 << 17).map(|i| (i >> 1) << 16 | (i & 1));
        encode_arith(patterns, &mut t, fmt, saturate);
        EncodeTable(t.into_boxed_slice())
    }

    /// The table of a format and mode, built on first use (128 KiB each).
    fn get(fmt: Format, saturate: bool) -> &'static EncodeTable {
        static TABLES: [OnceLock<EncodeTable>; 4] = [const { OnceLock::new() }; 4];
        let i = 2 * usize::from(fmt == Format::E5M2) + usize::from(saturate);
        TABLES[i].get_or_init(|| EncodeTable::new(fmt, saturate))
    }

    /// `bits >> 15` already ends in bit 15, which is set only when the low half is nonzero.
    #[inline(always)]
    fn code(&self, bits: u32) -> u8 {
        self.0[((bits >> 15) | u32::from(bits & 0x7FFF != 0)) as usize]
    }
}

/// Below this many elements the arithmetic is used (and no table is built).
const TABLE_MIN_LEN: usize = 512;

#[inline(always)]
fn encode_iter(src: impl Iterator<Item = u32>, dst: &mut [u8], fmt: Format, saturate: bool) {
    if dst.len() < TABLE_MIN_LEN {
        return encode_arith(src, dst, fmt, saturate);
    }
    let t = EncodeTable::get(fmt, saturate);
    for (d, b) in dst.iter_mut().zip(src) {
        *d = t.code(b);
    }
}

#[inline(always)]
fn encode_arith(src: impl Iterator<Item = u32>, dst: &mut [u8], fmt: Format, saturate: bool) {
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
    let sign = (x.to_bits() >> 32) as u32 & 0x8000_0000;
    if x.is_nan() {
        // A quiet NaN with the input's sign, built in integers: a conversion would give the
        // positive default NaN on aarch64 under FPCR.DN.
        return sign | 0x7FC0_0000;
    }
    let nearest = x as f32;
    if x.is_infinite() {
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

/// Encode `f16` values, widened exactly to `f32`. The sign is copied from the input: a
/// hardware conversion (aarch64 `fcvt`) gives the positive default NaN under FPCR.DN.
pub fn encode_f16(src: &[f16], dst: &mut [u8], fmt: Format, saturate: bool) {
    encode_iter(
        src.iter()
            .map(|x| x.to_f32().to_bits() | (u32::from(x.to_bits() & 0x8000) << 16)),
        dst,
        fmt,
        saturate,
    );
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

/// Per-format constants of the SIMD encoders, as `i32` lane values (derivations in
/// `arch::x86_64::common`; shared by the x86-64 and aarch64 levels).
#[derive(Clone, Copy)]
pub(crate) struct FmtConsts {
    /// `2^(s-1) - 1 - ((127 - b) << 23)` with `s = 23 - m`: rounding bias and exponent swap.
    pub round_add: i32,
    /// The code every overflowing magnitude becomes (before the sign is ORed in).
    pub overflow: i32,
    /// The canonical positive NaN code.
    pub nan: i32,
    /// Bit pattern of the smallest FP8 normal, `2^(1-b)`, as an f32.
    pub min_normal_bits: i32,
    /// Bit pattern of the subnormal magic number `2^(24-b-m)` as an f32 (see module docs).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub sub_magic_bits: i32,
    /// Bit pattern of `2^(b-1+m)` as an f32: `|x|` times this is the subnormal code before
    /// rounding (AVX2 path).
    pub sub_scale_bits: i32,
}

impl FmtConsts {
    /// The constants of E5M2 (`e5 = true`) or E4M3, saturating or not.
    #[inline(always)]
    pub const fn get(e5: bool, saturate: bool) -> FmtConsts {
        let (m, b): (i32, i32) = if e5 { (2, 15) } else { (3, 7) };
        let s = 23 - m;
        let max_code = if e5 { 0x7B } else { 0x7E };
        FmtConsts {
            round_add: (1 << (s - 1)) - 1 - ((127 - b) << 23),
            overflow: if saturate { max_code } else { max_code + 1 },
            nan: if e5 { 0x7E } else { 0x7F },
            min_normal_bits: (128 - b) << 23,
            sub_magic_bits: (127 + 24 - b - m) << 23,
            sub_scale_bits: (127 + b - 1 + m) << 23,
        }
    }
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

    #[test]
    fn constants_match_the_format_table() {
        for (e5, fmt) in [(false, Format::E4M3), (true, Format::E5M2)] {
            for sat in [false, true] {
                let c = FmtConsts::get(e5, sat);
                assert_eq!(c.overflow as u8, fmt.overflow_code(sat));
                assert_eq!(c.nan as u8, fmt.nan_code());
                let min_normal = f32::from_bits(c.min_normal_bits as u32);
                assert_eq!(f64::from(min_normal), 2f64.powi(fmt.min_normal_exp()));
                let magic = f32::from_bits(c.sub_magic_bits as u32);
                let min_sub = 2f64.powi(fmt.min_normal_exp() - fmt.mantissa_bits() as i32);
                // The f32 ulp of the magic number is the FP8 subnormal spacing.
                assert_eq!(f64::from(magic) * 2f64.powi(-23), min_sub);
                let scale = f32::from_bits(c.sub_scale_bits as u32);
                assert_eq!(f64::from(scale) * min_sub, 1.0);
            }
        }
    }
}
