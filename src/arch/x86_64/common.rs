//! Constants and derivations shared by the AVX2 and AVX-512 codec kernels.
//!
//! # f32 -> FP8 (m mantissa bits, exponent bias b), on the bit pattern
//!
//! Let `abs` be the f32 bit pattern without the sign and `s = 23 - m` the number of f32
//! mantissa bits that do not fit. For `|x| >= 2^(1-b)` (an FP8 normal or overflow):
//!
//! ```text
//! code = ((abs + 2^(s-1) - 1 + lsb) >> s) - ((127 - b) << m)      lsb = (abs >> s) & 1
//! ```
//!
//! is round-to-nearest-even of the integer `abs / 2^s` (`2^(s-1) - 1 + lsb` rounds a remainder
//! above half up, below half down, and exactly half up only when the kept part is odd), then
//! the f32 exponent bias is swapped for the FP8 one. A carry out of the mantissa increments the
//! exponent field, which is exactly the next binade's first value, so `code` is monotonic in
//! `|x|`: every magnitude that rounds above the max normal (Inf included, whose mantissa is 0)
//! gives a code above `max_code`, and overflow is `min(code, overflow_code)`. The bias swap is
//! folded into the added constant ([`FmtConsts::round_add`]; `(127 - b) << 23` is a multiple of
//! `2^s`, so subtracting it before the shift is the same as after). NaN (`abs > 0x7F800000`)
//! also lands above max_code and is then replaced by the NaN code (for non-saturating E4M3 the
//! overflow code already is the NaN code 0x7F). No intermediate wraps: `abs + round_add + 1`
//! is at most `0x7FFFFFFF + 2^19 - (112 << 23)`.
//!
//! For `|x| < 2^(1-b)` the FP8 spacing is constant, `2^(1-b-m)`. Adding the magic number
//! `M = 2^(24-b-m)` in f32 with round-to-nearest-even puts `M + |x|` in `[M, 2M)`, whose f32
//! spacing is `M * 2^-23 = 2^(1-b-m)`: the addition performs exactly the FP8 rounding, and
//! `bits(M + |x|) - bits(M)` is the code, 0..=2^m (2^m being the smallest normal, correct too).
//! AVX-512 uses embedded rounding (`{rn-sae}`); AVX2 has none, so it instead computes
//! `round(|x| * 2^(b-1+m))` with `vroundps` (explicit immediate, also independent of MXCSR).
//! Under DAZ an f32 subnormal input reads as zero; its exact FP8 result is zero as well
//! (`|x| < 2^-126` is far below half the smallest FP8 subnormal), so DAZ cannot change results;
//! the results of these operations are normal or zero, so FTZ cannot either.
//!
//! # f64 -> FP8: rounded once, via round-to-odd
//!
//! `y = RO(x)`, the f64 rounded to f32 toward zero with the lowest mantissa bit set if that was
//! inexact, then the f32 kernel above. Round-to-odd to a binary format with `p` bits followed by
//! round-to-nearest-even to `q <= p - 2` bits equals direct rounding (Boldo & Melquiond 2008):
//! every FP8 midpoint (a multiple of half an FP8 ulp) is a representable f32 with an even last
//! bit wherever `|x| >= 2^-126` (f32 has 24 bits there, FP8 at most 4, and even at the FP8
//! subnormal spacing 2^-17 f32 has 2^-40 resolution), so RO never moves a value across or onto
//! a midpoint: an inexact `y` has an odd last bit and lies strictly between the same two f32
//! neighbours of `x` as `x` does, and hence on the same side of every midpoint. The edges:
//!
//! - `|x| > f32::MAX` (finite): truncation gives `±f32::MAX` (inexact: odd bit already set),
//!   far above every FP8 overflow threshold, so it overflows exactly as `x` does.
//! - `±Inf` converts exactly to `±Inf`; NaN to a NaN (the sticky bit keeps it a NaN), sign kept.
//! - `|x| < 2^-126` (f64 subnormals and values below the f32 normal range): `y` is a signed
//!   zero or f32 subnormal (possibly flushed to a signed zero by FTZ, or read as zero by DAZ);
//!   every such value encodes to a signed zero, as does `x` (half the smallest FP8 subnormal is
//!   2^-10 or 2^-17), and the sign survives truncation.
//! - On AVX2, `vcvtpd2ps` rounds with MXCSR.RC, so the kernel converts back (exact) and steps
//!   the f32 one ulp toward zero (integer `bits - 1`) when `|back| > |x|`, which turns any
//!   rounding mode into truncation; for `|x| > f32::MAX` that maps Inf to `f32::MAX`.
//!
//! # FP8 -> f16 / f32 / f64 / bf16
//!
//! No arithmetic on subnormal floats: codes are first turned into binary16 bit patterns with
//! integer operations (E5M2 is a shift, E4M3 a shift with a 2^-8 scale, see the kernels), then
//! widened exactly by `vcvtph2ps` (Intel SDM, VCVTPH2PS: "in case of a denormal operand, the
//! correct normal result is returned. MXCSR.DAZ is ignored"; the FTZ/DAZ test checks it on every
//! level) and, for E4M3, scaled by 2^8 (all operands and results normal). f64 and bf16 come
//! from the f32 result (exact: widening, and the top half of an f32 with at most 4 significant
//! bits); NaN is canonicalised in the f16 or f32 domain before that, so each output type gets
//! its canonical quiet NaN with the code's sign.

pub(crate) use crate::arch::portable::codec::FmtConsts;
