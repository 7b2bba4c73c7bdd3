//! Stochastic rounding to FP8 from a counter-based generator.
//!
//! # Definition
//!
//! For an input `x` (any of f64/f32/f16/bf16, all exact in f64) with magnitude `a`, format
//! parameters `m` (mantissa bits), `emin` (smallest normal exponent), `emax` (largest finite
//! exponent), and a 32-bit random draw `r` (see [`StochasticKey::draw`]):
//!
//! ```text
//! e    = max(floor(log2 a), emin)        binade of a (FP8 subnormals share emin's spacing)
//! n    = a / 2^(e - m)                   exact; 0 <= n < 2^(m+1)
//! lo   = floor(n),  frac = n - lo        the lower neighbour lo * 2^(e-m) and the fraction
//! F    = floor(frac * 2^32)              the fraction with 32-bit resolution
//! up   = F > r                           P(up) = F / 2^32 (= frac exactly whenever frac has
//!                                        at most 32 fraction bits: every input in the normal
//!                                        FP8 range of every input type)
//! v    = (lo + up) * 2^(e - m)           always one of the two neighbours of a
//! ```
//!
//! The ends of the range follow the nearest-rounding rules of OFP8 §5.2, applied to `v`:
//!
//! - NaN -> NaN with its sign.
//! - `e > emax` (|x| >= 2^(emax+1), including ±Inf) -> overflow: ±max_normal when saturating,
//!   else ±Inf (E5M2) / NaN (E4M3).
//! - The top gap: for max_normal < |x| < 2^(emax+1) the upper neighbour is the first point
//!   past the range (480 for E4M3, 65536 for E5M2). Saturating: the result is always
//!   ±max_normal. Non-saturating: ±max_normal with probability `1 - frac` and the overflow
//!   value (E4M3 NaN, E5M2 ±Inf) with probability `frac`, where `frac = (|x| - max) / step`.
//!   (Also for E4M3 480 <= |x| < 512, where the lower neighbour itself is past the range:
//!   saturating ±448, non-saturating NaN.)
//! - Results that are zero keep the sign of `x` (±0), as nearest rounding does.
//!
//! # Generator
//!
//! `r` depends only on (seed, element index), so the result is identical for any thread
//! count, chunking, ISA path and memory layout:
//!
//! ```text
//! (k0, k1) = low and high 32 bits of splitmix64(seed)
//! r(i)     = mix32(mix32(lo32(i) ^ k0) ^ mix32(hi32(i) ^ k1))
//! mix32(x) = x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
//! ```
//!
//! (mix32 is C. Wellons' "lowbias32" bijection; 32-bit multiplies keep the SIMD version on
//! AVX2, which lacks a 64-bit lane multiply.)

use crate::format::Format;
use crate::scalar::{binade, pow2};

/// splitmix64 finaliser (Steele, Lea, Flood 2014) of `x + golden gamma`.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 32-bit integer hash "lowbias32".
#[inline(always)]
pub const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The generator state derived from a seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StochasticKey {
    /// Low 32 bits of `splitmix64(seed)`, mixed with the low half of the index.
    pub k0: u32,
    /// High 32 bits of `splitmix64(seed)`, mixed with the high half of the index.
    pub k1: u32,
}

impl StochasticKey {
    /// The key of `seed`.
    pub const fn new(seed: u64) -> Self {
        let z = splitmix64(seed);
        StochasticKey {
            k0: z as u32,
            k1: (z >> 32) as u32,
        }
    }

    /// `mix32(hi ^ k1)`: constant over each run of 2^32 indices, so kernels compute it once.
    #[inline(always)]
    pub fn high_key(&self, hi: u32) -> u32 {
        mix32(hi ^ self.k1)
    }

    /// The 32-bit random draw of element `index`.
    #[inline(always)]
    pub fn draw(&self, index: u64) -> u32 {
        mix32(mix32(index as u32 ^ self.k0) ^ self.high_key((index >> 32) as u32))
    }
}

/// Everything a stochastic slice kernel needs besides the data.
#[derive(Clone, Copy, Debug)]
pub struct StochasticParams {
    /// Target format.
    pub fmt: Format,
    /// Saturating (`true`) or overflowing (`false`) ends of the range.
    pub saturate: bool,
    /// The generator key.
    pub key: StochasticKey,
    /// Global index of the slice's first element.
    pub start: u64,
}

/// The definition above written in exact `f64` arithmetic: the oracle for the kernels.
pub fn reference(x: f64, fmt: Format, saturate: bool, r: u32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return sign | fmt.nan_code();
    }
    let overflow = sign | fmt.overflow_code(saturate);
    let a = x.abs();
    if a.is_infinite() {
        return overflow;
    }
    let m = fmt.mantissa_bits() as i32;
    let e = binade(a, fmt);
    if e > fmt.max_exp() {
        return overflow;
    }
    let n = a * pow2(m - e); // exact: a power-of-two scaling into [0, 2^(m+1))
    let lo = n.floor();
    let frac = n - lo; // exact (Sterbenz, or lo = 0)
    let f = (frac * 4_294_967_296.0).floor() as u64; // exact scaling, then floor
    let up = f > u64::from(r);
    let v = (lo + f64::from(u8::from(up))) * pow2(e - m);
    if v > fmt.max_normal() {
        return overflow;
    }
    // `v` lies on the FP8 grid, so nearest rounding returns it unchanged.
    sign | crate::scalar::encode_f64(v, fmt, true)
}

#[inline(always)]
fn shr64(v: u64, s: u32) -> u64 {
    if s >= 64 {
        0
    } else {
        v >> s
    }
}

/// The definition on the bits of an IEEE value with `p` mantissa bits and exponent `bias`
/// (`biased_exp` is the raw exponent field, never all-ones here). This integer form is what
/// the SIMD kernels compute lane by lane; it is checked against [`reference`].
///
/// With `sig` the significand (implicit bit included for normals) and `ex` the exponent of its
/// leading bit position, `a = sig * 2^(ex - p)`, so `n = a / 2^(e-m) = sig / 2^S` with
/// `S = p - m + (e - ex)`: `lo = sig >> S` and the fraction is the low `S` bits of `sig`.
/// `F > r` is then `low > r >> (32 - S)` when `S <= 32`, and `(low >> (S - 32)) > r` otherwise.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn round_bits(
    negative: bool,
    biased_exp: i32,
    mantissa: u64,
    p: u32,
    bias: i32,
    fmt: Format,
    saturate: bool,
    r: u32,
) -> u8 {
    let sign = if negative { 0x80u8 } else { 0 };
    let m = fmt.mantissa_bits();
    let emin = fmt.min_normal_exp();
    let sig = if biased_exp > 0 {
        mantissa | (1u64 << p)
    } else {
        mantissa
    };
    let ex = biased_exp.max(1) - bias;
    let e = ex.max(emin);
    if e > fmt.max_exp() {
        return sign | fmt.overflow_code(saturate);
    }
    let s = p - m + (e - ex) as u32;
    let lo = shr64(sig, s);
    let low = if s >= 64 {
        sig
    } else {
        sig & ((1u64 << s) - 1)
    };
    let up = if s <= 32 {
        low > (u64::from(r) >> (32 - s))
    } else {
        shr64(low, s - 32) > u64::from(r)
    };
    let code = (((e - emin) as u32) << m) + lo as u32 + u32::from(up);
    if code > u32::from(fmt.max_code()) {
        return sign | fmt.overflow_code(saturate);
    }
    sign | code as u8
}

/// Stochastically round one `f32` with the draw `r`.
#[inline(always)]
pub fn round_f32(x: f32, fmt: Format, saturate: bool, r: u32) -> u8 {
    let bits = x.to_bits();
    let negative = bits >> 31 != 0;
    let a = bits & 0x7FFF_FFFF;
    if a > 0x7F80_0000 {
        return (u8::from(negative) << 7) | fmt.nan_code();
    }
    // Inf has biased exponent 255 > emax + 127 and overflows inside.
    round_bits(
        negative,
        (a >> 23) as i32,
        u64::from(a & 0x7F_FFFF),
        23,
        127,
        fmt,
        saturate,
        r,
    )
}

/// Stochastically round one `f64` with the draw `r`.
#[inline(always)]
pub fn round_f64(x: f64, fmt: Format, saturate: bool, r: u32) -> u8 {
    let bits = x.to_bits();
    let negative = bits >> 63 != 0;
    let a = bits & 0x7FFF_FFFF_FFFF_FFFF;
    if a > 0x7FF0_0000_0000_0000 {
        return (u8::from(negative) << 7) | fmt.nan_code();
    }
    round_bits(
        negative,
        (a >> 52) as i32,
        a & 0xF_FFFF_FFFF_FFFF,
        52,
        1023,
        fmt,
        saturate,
        r,
    )
}

/// Portable slice kernel for `f32` (also the tail of the SIMD kernels).
pub fn encode_f32(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
        let r = p.key.draw(p.start + i as u64);
        *d = round_f32(x, p.fmt, p.saturate, r);
    }
}

/// Slice kernel for `f64` (portable on every ISA: float64 is not a performance target).
pub fn encode_f64(src: &[f64], dst: &mut [u8], p: StochasticParams) {
    for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
        let r = p.key.draw(p.start + i as u64);
        *d = round_f64(x, p.fmt, p.saturate, r);
    }
}
