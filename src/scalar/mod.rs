//! The reference codec: written from OFP8 §5.2, simple enough to check by reading, and the
//! oracle every SIMD path is compared with bit for bit.
//!
//! Encoding works on the exact value in `f64`. Every `f32`, `f16` and `bf16` widens to `f64`
//! exactly, so each input type is rounded once, directly, to the FP8 grid (no double rounding).
//!
//! The rounding, for a magnitude `a` with `m` mantissa bits and smallest normal exponent `emin`:
//!
//! ```text
//! e = max(floor(log2 a), emin)      the binade a falls in (subnormals share emin's spacing)
//! q = 2^(e - m)                     the spacing of the FP8 grid in that binade
//! n = a / q                         exact (division by a power of two); 0 <= n < 2^(m+1)
//! r = round_half_even(n)            nearest grid point, ties to the even mantissa
//! ```
//!
//! then `r * q` is compared with the max normal (OFP8: round first, then saturate or overflow).
//! `r` may reach `2^(m+1)`, the first point of the next binade, which the code formula below
//! absorbs because FP8 codes are monotonic in magnitude.

use half::{bf16, f16};

use crate::format::Format;

/// `2^k` for `-1022 <= k <= 1023`, built from the bits so it is exact and cheap.
#[inline(always)]
pub(crate) fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k));
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// The binade of a finite magnitude `a` on the FP8 grid: `max(floor(log2 a), emin)`, since
/// subnormals share the smallest normal binade's spacing. The grid step there is `2^(e - m)`.
#[inline(always)]
pub(crate) fn binade(a: f64, fmt: Format) -> i32 {
    let emin = fmt.min_normal_exp();
    if a < pow2(emin) {
        emin
    } else {
        // `a` is a normal f64 here, so its exponent field is floor(log2 a).
        ((a.to_bits() >> 52) & 0x7FF) as i32 - 1023
    }
}

/// Encode `x` to an FP8 code: round to nearest even, then saturate (`saturate = true`) or
/// overflow to infinity / NaN. NaN keeps its sign and becomes the format's canonical NaN.
pub fn encode_f64(x: f64, fmt: Format, saturate: bool) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return sign | fmt.nan_code();
    }
    let a = x.abs();
    let m = fmt.mantissa_bits();
    let overflow = sign | fmt.overflow_code(saturate);
    if a.is_infinite() {
        return overflow;
    }
    let e = binade(a, fmt);
    if e > fmt.max_exp() {
        return overflow;
    }
    let n = a * pow2(m as i32 - e); // exact, and n < 2^(m+1)
    let whole = n as u32; // truncation = floor for n >= 0
    let frac = n - f64::from(whole);
    let round_up = frac > 0.5 || (frac == 0.5 && whole & 1 == 1);
    let r = whole + u32::from(round_up);
    if f64::from(r) * pow2(e - m as i32) > fmt.max_normal() {
        return overflow;
    }
    let code = if r < (1 << m) {
        // Subnormal (only possible when e == emin): the code is the mantissa itself.
        r
    } else {
        // Normal; r == 2^(m+1) carries into the exponent field through the addition.
        (((e + fmt.bias()) as u32) << m) + (r - (1 << m))
    };
    sign | code as u8
}

/// Encode an `f32` (widened exactly to `f64`, so rounded once).
pub fn encode_f32(x: f32, fmt: Format, saturate: bool) -> u8 {
    encode_f64(f64::from(x), fmt, saturate)
}

/// Encode an IEEE binary16 value.
pub fn encode_f16(x: f16, fmt: Format, saturate: bool) -> u8 {
    encode_f64(x.to_f64(), fmt, saturate)
}

/// Encode a bfloat16 value.
pub fn encode_bf16(x: bf16, fmt: Format, saturate: bool) -> u8 {
    encode_f64(x.to_f64(), fmt, saturate)
}

/// The exact value of an FP8 code. NaN codes give a quiet NaN with the code's sign.
pub fn decode_f64(code: u8, fmt: Format) -> f64 {
    let negative = code & 0x80 != 0;
    let magnitude = if fmt.is_nan(code) {
        f64::NAN
    } else if Some(code & 0x7F) == fmt.inf_code() {
        f64::INFINITY
    } else {
        let m = fmt.mantissa_bits();
        let exp_field = i32::from((code & 0x7F) >> m);
        let mantissa = f64::from(code & ((1 << m) - 1));
        if exp_field == 0 {
            mantissa * pow2(fmt.min_normal_exp() - m as i32)
        } else {
            (f64::from(1u32 << m) + mantissa) * pow2(exp_field - fmt.bias() - m as i32)
        }
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// Decode to `f32` (exact). NaN becomes the canonical quiet NaN `0x7FC00000` with the code's sign.
pub fn decode_f32(code: u8, fmt: Format) -> f32 {
    if fmt.is_nan(code) {
        return f32::from_bits(0x7FC0_0000 | (u32::from(code & 0x80) << 24));
    }
    decode_f64(code, fmt) as f32
}

/// Decode to binary16 (exact). NaN becomes `0x7E00` with the code's sign.
pub fn decode_f16(code: u8, fmt: Format) -> f16 {
    if fmt.is_nan(code) {
        return f16::from_bits(0x7E00 | (u16::from(code & 0x80) << 8));
    }
    f16::from_f64(decode_f64(code, fmt))
}

/// Decode to bfloat16 (exact). NaN becomes `0x7FC0` with the code's sign.
pub fn decode_bf16(code: u8, fmt: Format) -> bf16 {
    if fmt.is_nan(code) {
        return bf16::from_bits(0x7FC0 | (u16::from(code & 0x80) << 8));
    }
    bf16::from_f64(decode_f64(code, fmt))
}

/// Decode to `f64` with the canonical NaN (`0x7FF8_0000_0000_0000` with the code's sign).
fn decode_f64_canonical(code: u8, fmt: Format) -> f64 {
    if fmt.is_nan(code) {
        return f64::from_bits(0x7FF8_0000_0000_0000 | (u64::from(code & 0x80) << 56));
    }
    decode_f64(code, fmt)
}

/// Decode tables, one per format and output type, built once from the reference functions.
/// The portable path decodes by table lookup: obviously equal to the reference and fast.
pub mod tables {
    use std::sync::OnceLock;

    use half::{bf16, f16};

    use crate::format::Format;

    fn build<T: Copy + Default>(fmt: Format, f: fn(u8, Format) -> T) -> [T; 256] {
        let mut t = [T::default(); 256];
        for (code, slot) in t.iter_mut().enumerate() {
            *slot = f(code as u8, fmt);
        }
        t
    }

    macro_rules! table_fn {
        ($name:ident, $ty:ty, $f:path) => {
            /// The 256-entry decode table of `fmt` for this output type.
            pub fn $name(fmt: Format) -> &'static [$ty; 256] {
                static T: [OnceLock<[$ty; 256]>; 2] = [OnceLock::new(), OnceLock::new()];
                let i = fmt as usize;
                T[i].get_or_init(|| build(fmt, $f))
            }
        };
    }

    table_fn!(f32_table, f32, super::decode_f32);
    table_fn!(f64_table, f64, super::decode_f64_canonical);
    table_fn!(f16_table, f16, super::decode_f16);
    table_fn!(bf16_table, bf16, super::decode_bf16);
}

/// Slice kernels of the portable path, with the same signatures as the SIMD kernels.
pub mod slices {
    use half::{bf16, f16};

    use super::tables;
    use crate::format::Format;

    /// Encode `src` into `dst` (equal lengths).
    pub fn encode_f32(src: &[f32], dst: &mut [u8], fmt: Format, saturate: bool) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = super::encode_f32(s, fmt, saturate);
        }
    }

    /// Encode `src` into `dst` (equal lengths).
    pub fn encode_f64(src: &[f64], dst: &mut [u8], fmt: Format, saturate: bool) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = super::encode_f64(s, fmt, saturate);
        }
    }

    /// Encode `src` into `dst` (equal lengths).
    pub fn encode_f16(src: &[f16], dst: &mut [u8], fmt: Format, saturate: bool) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = super::encode_f16(s, fmt, saturate);
        }
    }

    /// Encode `src` into `dst` (equal lengths).
    pub fn encode_bf16(src: &[bf16], dst: &mut [u8], fmt: Format, saturate: bool) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = super::encode_bf16(s, fmt, saturate);
        }
    }

    /// Decode `src` into `dst` (equal lengths).
    pub fn decode_f32(src: &[u8], dst: &mut [f32], fmt: Format) {
        let t = tables::f32_table(fmt);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = t[usize::from(s)];
        }
    }

    /// Decode `src` into `dst` (equal lengths).
    pub fn decode_f64(src: &[u8], dst: &mut [f64], fmt: Format) {
        let t = tables::f64_table(fmt);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = t[usize::from(s)];
        }
    }

    /// Decode `src` into `dst` (equal lengths).
    pub fn decode_f16(src: &[u8], dst: &mut [f16], fmt: Format) {
        let t = tables::f16_table(fmt);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = t[usize::from(s)];
        }
    }

    /// Decode `src` into `dst` (equal lengths).
    pub fn decode_bf16(src: &[u8], dst: &mut [bf16], fmt: Format) {
        let t = tables::bf16_table(fmt);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = t[usize::from(s)];
        }
    }
}

#[cfg(test)]
mod tests;
