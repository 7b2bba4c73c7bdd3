//! Slice kernels of the quantization passes, one table per ISA (like [`crate::arch::CodecKernels`]).
//!
//! The bodies here are `#[inline(always)]` so that the x86-64 modules can instantiate them
//! inside `#[target_feature]` functions (where they vectorise with the level's registers);
//! the stochastic-rounding kernels are written with intrinsics in `arch::x86_64::*::quant`.

use half::{bf16, f16};

use super::stochastic::StochasticParams;
use crate::arch::{self, Isa};
use crate::format::Format;

/// Largest magnitudes of a slice, as "magnitude keys": the IEEE bits with the sign cleared,
/// which order exactly like the magnitudes (NaNs above +Inf), widened to `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbsMaxKeys {
    /// Largest finite magnitude (0 if none).
    pub finite: u64,
    /// Largest non-NaN magnitude (Inf included; 0 if none).
    pub non_nan: u64,
    /// Largest key of all (above the Inf key exactly when a NaN is present).
    pub all: u64,
}

impl AbsMaxKeys {
    /// Combine two partial results (exact and order-independent: it is a max).
    #[inline(always)]
    pub fn merge(self, o: AbsMaxKeys) -> AbsMaxKeys {
        AbsMaxKeys {
            finite: self.finite.max(o.finite),
            non_nan: self.non_nan.max(o.non_nan),
            all: self.all.max(o.all),
        }
    }
}

/// A fused scaling and encoding kernel: `(src, col0, group, s, codes, fmt)`.
pub type ScaleEncodeBf16 = fn(&[bf16], usize, usize, &[f32], &mut [u8], Format);

/// Slice kernels of one ISA for quantization.
#[derive(Clone, Copy)]
pub struct QuantKernels {
    /// The level these kernels belong to.
    pub isa: Isa,
    /// Magnitude maxima of an `f32` slice.
    pub absmax_f32: fn(&[f32]) -> AbsMaxKeys,
    /// Magnitude maxima of an `f64` slice.
    pub absmax_f64: fn(&[f64]) -> AbsMaxKeys,
    /// Magnitude maxima of an `f16` slice.
    pub absmax_f16: fn(&[f16]) -> AbsMaxKeys,
    /// Magnitude maxima of a `bf16` slice.
    pub absmax_bf16: fn(&[bf16]) -> AbsMaxKeys,
    /// Per group of `group` consecutive elements of an `f32` row: `out[g] = max(out[g],
    /// largest finite magnitude key of group g)`.
    pub group_max_f32: fn(&[f32], usize, &mut [u64]),
    /// As `group_max_f32` for `f64`.
    pub group_max_f64: fn(&[f64], usize, &mut [u64]),
    /// As `group_max_f32` for `f16`.
    pub group_max_f16: fn(&[f16], usize, &mut [u64]),
    /// As `group_max_f32` for `bf16`.
    pub group_max_bf16: fn(&[bf16], usize, &mut [u64]),
    /// `dst[j] = src[j] * s[(col0 + j) / group]` (one IEEE multiply each, never fused), with
    /// arguments `(src, col0, group, s, dst)`.
    pub scale_groups_f32: fn(&[f32], usize, usize, &[f32], &mut [f32]),
    /// `buf[j] *= s[(col0 + j) / group]`, with arguments `(buf, col0, group, s)`.
    pub scale_groups_inplace_f32: fn(&mut [f32], usize, usize, &[f32]),
    /// `dst[j] = f32(src[j]) * s[(col0 + j) / group]`: the exact widening and one IEEE
    /// multiply, in one pass (arguments as `scale_groups_f32`).
    pub scale_groups_bf16: fn(&[bf16], usize, usize, &[f32], &mut [f32]),
    /// As `scale_groups_bf16` for `f16`.
    pub scale_groups_f16: fn(&[f16], usize, usize, &[f32], &mut [f32]),
    /// `scale_groups_bf16` and the saturating round-to-nearest encoding of its result to
    /// `fmt` in one pass, `(src, col0, group, s, codes, fmt)`, where a level has it (else the
    /// two passes run over a tile in the caches).
    pub scale_encode_bf16: Option<ScaleEncodeBf16>,
    /// Stochastic rounding of `f32` to FP8 (see [`super::stochastic`]).
    pub stochastic_f32: fn(&[f32], &mut [u8], StochasticParams),
    /// `out[j] = table[codes[j]]` for 16-bit results (a dequantization table of bfloat16 or
    /// float16 bits), over the shorter of the two slices.
    pub lookup_u16: fn(&[u8], &[u16; 256], &mut [u16]),
}

/// `out[j] = table[codes[j]]`.
#[inline(always)]
pub fn lookup_u16_body(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = table[usize::from(c)];
    }
}

macro_rules! absmax_body {
    ($name:ident, $t:ty, $u:ty, $inf:expr) => {
        /// Magnitude maxima by integer max over the sign-cleared bits; written so it vectorises.
        #[inline(always)]
        pub fn $name(x: &[$t]) -> AbsMaxKeys {
            const MAG: $u = <$u>::MAX >> 1;
            const INF: $u = $inf;
            let (mut finite, mut non_nan, mut all): ($u, $u, $u) = (0, 0, 0);
            for v in x {
                let k = v.to_bits() & MAG;
                all = all.max(k);
                non_nan = non_nan.max(if k <= INF { k } else { 0 });
                finite = finite.max(if k < INF { k } else { 0 });
            }
            AbsMaxKeys {
                finite: finite as u64,
                non_nan: non_nan as u64,
                all: all as u64,
            }
        }
    };
}

macro_rules! group_max_body {
    ($name:ident, $t:ty, $u:ty, $inf:expr) => {
        /// Largest finite magnitude key per group, merged into `out` (one slot per group).
        #[inline(always)]
        pub fn $name(row: &[$t], group: usize, out: &mut [u64]) {
            const MAG: $u = <$u>::MAX >> 1;
            const INF: $u = $inf;
            for (slot, seg) in out.iter_mut().zip(row.chunks(group.max(1))) {
                let mut finite: $u = 0;
                for v in seg {
                    let k = v.to_bits() & MAG;
                    finite = finite.max(if k < INF { k } else { 0 });
                }
                *slot = (*slot).max(finite as u64);
            }
        }
    };
}

group_max_body!(group_max_f32_body, f32, u32, 0x7F80_0000);
group_max_body!(group_max_f64_body, f64, u64, 0x7FF0_0000_0000_0000);
group_max_body!(group_max_f16_body, f16, u16, 0x7C00);
group_max_body!(group_max_bf16_body, bf16, u16, 0x7F80);

absmax_body!(absmax_f32_body, f32, u32, 0x7F80_0000);
absmax_body!(absmax_f64_body, f64, u64, 0x7FF0_0000_0000_0000);
absmax_body!(absmax_f16_body, f16, u16, 0x7C00);
absmax_body!(absmax_bf16_body, bf16, u16, 0x7F80);

/// Calls `f(start, end, group index)` for the runs of equal scale in columns
/// `col0..col0 + len` (groups of `group` columns).
#[inline(always)]
fn for_each_group_run(
    len: usize,
    col0: usize,
    group: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let mut j = 0;
    while j < len {
        let g = (col0 + j) / group;
        let end = ((g + 1) * group - col0).min(len);
        f(j, end, g);
        j = end;
    }
}

/// `dst[j] = src[j] * s[(col0 + j) / group]`.
#[inline(always)]
pub fn scale_groups_f32_body(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    if group == 1 {
        for ((d, &x), &s) in dst.iter_mut().zip(src).zip(&s[col0..]) {
            *d = x * s;
        }
        return;
    }
    for_each_group_run(src.len().min(dst.len()), col0, group, |a, b, g| {
        let s = s[g];
        for (d, &x) in dst[a..b].iter_mut().zip(&src[a..b]) {
            *d = x * s;
        }
    });
}

/// The exact `f32` value of bfloat16 bits (its top half).
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// The exact `f32` value of float16 bits, in integer and float operations that vectorise on
/// every level (F16C's `vcvtph2ps` is not in the portable or NEON tables' reach, and `half`'s
/// own conversion picks its instruction per call). Normal values rebias the exponent;
/// subnormals are normalised by one exact subtraction; Inf and NaN keep their payload (a
/// signalling NaN stays one until the multiply that follows quiets it).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    const EXP: u32 = 0x7C00 << 13;
    let h = u32::from(h);
    let shifted = (h & 0x7FFF) << 13;
    let exp = shifted & EXP;
    let rebiased = shifted + ((127 - 15) << 23);
    let magnitude = if exp == EXP {
        f32::from_bits(rebiased + ((128 - 16) << 23))
    } else if exp == 0 {
        // 2^-14 * 0.m, by placing m under the exponent of 2^-14 and subtracting the 1.
        f32::from_bits(rebiased + (1 << 23)) - f32::from_bits(113 << 23)
    } else {
        f32::from_bits(rebiased)
    };
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

macro_rules! scale_groups_half_body {
    ($name:ident, $t:ty, $widen:ident) => {
        /// `dst[j] = widen(src[j]) * s[(col0 + j) / group]`.
        #[inline(always)]
        pub fn $name(src: &[$t], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
            if group == 1 {
                for ((d, x), &s) in dst.iter_mut().zip(src).zip(&s[col0..]) {
                    *d = $widen(x.to_bits()) * s;
                }
                return;
            }
            for_each_group_run(src.len().min(dst.len()), col0, group, |a, b, g| {
                let s = s[g];
                for (d, x) in dst[a..b].iter_mut().zip(&src[a..b]) {
                    *d = $widen(x.to_bits()) * s;
                }
            });
        }
    };
}

scale_groups_half_body!(scale_groups_bf16_body, bf16, bf16_bits_to_f32);
scale_groups_half_body!(scale_groups_f16_body, f16, f16_bits_to_f32);

/// `buf[j] *= s[(col0 + j) / group]`.
#[inline(always)]
pub fn scale_groups_inplace_f32_body(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    if group == 1 {
        for (v, &s) in buf.iter_mut().zip(&s[col0..]) {
            *v *= s;
        }
        return;
    }
    for_each_group_run(buf.len(), col0, group, |a, b, g| {
        let s = s[g];
        for v in &mut buf[a..b] {
            *v *= s;
        }
    });
}

/// The quantization kernels of `isa`, or `None` if this CPU lacks it.
pub fn quant_kernels_for(isa: Isa) -> Option<&'static QuantKernels> {
    if !isa.is_available() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(&arch::portable::quant::QUANT),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(arch::x86_64::avx2::quant::quant_kernels()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => Some(arch::x86_64::avx512::quant::quant_kernels()),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonBf16 => Some(arch::aarch64::neon::quant::quant_kernels()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The quantization kernels of the active level.
pub fn quant_kernels() -> &'static QuantKernels {
    quant_kernels_for(arch::active()).unwrap_or(&arch::portable::quant::QUANT)
}
