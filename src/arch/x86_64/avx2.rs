//! AVX2 + F16C codec kernels, 8 f32 lanes or 16 f16 lanes per register.
//!
//! The rounding derivations are in `super::common`. Differences from the AVX-512 level: no
//! mask registers (blends are `vpblendvb`), no embedded rounding (the subnormal range rounds
//! with `vroundps` and an explicit immediate; f64 -> f32 round-to-odd corrects whatever
//! MXCSR.RC did), and no masked loads for the tails: the last `< 32` elements of a slice go
//! through the scalar reference, element by element.
//!
//! Every kernel is reachable only through [`codec_kernels`], which `arch::codec_kernels_for`
//! hands out only after `has_avx2()` confirmed AVX2 and F16C (FMA is detected for the level's
//! GEMM kernels; the codecs do not use it).

use core::arch::x86_64::*;

use half::{bf16, f16};

use super::common::FmtConsts;
use crate::arch::{CodecKernels, Isa};
use crate::format::Format;
use crate::scalar;

/// Round to nearest even, exceptions suppressed: independent of MXCSR.RC.
const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// Elements per main-loop iteration (4 ymm of f32, packed into one 32-byte store).
const BLOCK: usize = 32;

static CODEC: CodecKernels = CodecKernels {
    isa: Isa::Avx2,
    encode_f32,
    encode_f64,
    encode_f16,
    encode_bf16,
    decode_f32,
    decode_f64,
    decode_f16,
    decode_bf16,
};

/// The codec kernels of this level. Only call when the CPU has it (`has_avx2()`).
pub fn codec_kernels() -> &'static CodecKernels {
    &CODEC
}

const fn format(e5: bool) -> Format {
    if e5 {
        Format::E5M2
    } else {
        Format::E4M3
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// `x >> (23 - m)`.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn srl_mant<const E5: bool>(x: __m256i) -> __m256i {
    if E5 {
        _mm256_srli_epi32::<21>(x)
    } else {
        _mm256_srli_epi32::<20>(x)
    }
}

/// 8 f32 bit patterns -> the 8 FP8 codes of their magnitudes (0..=0x7F) in 32-bit lanes (see
/// [`super::common`]).
///
/// The subnormal candidate is computed for every lane from `min(abs, min_normal)` so that
/// lanes that do not use it never overflow or convert a NaN (no spurious MXCSR flags).
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn encode_abs_lanes<const E5: bool, const SAT: bool>(bits: __m256i) -> __m256i {
    let c = FmtConsts::get(E5, SAT);
    let abs = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFF_FFFF));
    let lsb = _mm256_and_si256(srl_mant::<E5>(abs), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(_mm256_add_epi32(abs, _mm256_set1_epi32(c.round_add)), lsb);
    let mut code = _mm256_min_epi32(srl_mant::<E5>(rounded), _mm256_set1_epi32(c.overflow));
    if c.nan != c.overflow {
        let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
        code = _mm256_blendv_epi8(code, _mm256_set1_epi32(c.nan), is_nan);
    }
    let min_normal = _mm256_set1_epi32(c.min_normal_bits);
    let is_small = _mm256_cmpgt_epi32(min_normal, abs);
    let small = _mm256_castsi256_ps(_mm256_min_epi32(abs, min_normal));
    let scaled = _mm256_mul_ps(
        small,
        _mm256_castsi256_ps(_mm256_set1_epi32(c.sub_scale_bits)),
    );
    let sub_code = _mm256_cvttps_epi32(_mm256_round_ps::<RNE>(scaled));
    _mm256_blendv_epi8(code, sub_code, is_small)
}

/// Encode 32 f32 bit patterns (four vectors) to 32 signed codes in order.
///
/// The magnitude codes are narrowed with `vpackusdw`/`vpackuswb`, the bit patterns with the
/// signed-saturating `vpackssdw`/`vpacksswb` (which keep each sign in its byte's sign bit), so
/// the signs are merged once per 32 codes. Both packs work per 128-bit lane: dword `4l + v`
/// holds the four elements of lane `l` of input `v`; `vpermd` moves it to `2v + l`.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn encode_block<const E5: bool, const SAT: bool>(bits: [__m256i; 4]) -> __m256i {
    let codes = [
        encode_abs_lanes::<E5, SAT>(bits[0]),
        encode_abs_lanes::<E5, SAT>(bits[1]),
        encode_abs_lanes::<E5, SAT>(bits[2]),
        encode_abs_lanes::<E5, SAT>(bits[3]),
    ];
    let narrow_codes = _mm256_packus_epi16(
        _mm256_packus_epi32(codes[0], codes[1]),
        _mm256_packus_epi32(codes[2], codes[3]),
    );
    let narrow_signs = _mm256_packs_epi16(
        _mm256_packs_epi32(bits[0], bits[1]),
        _mm256_packs_epi32(bits[2], bits[3]),
    );
    let signed = _mm256_or_si256(
        narrow_codes,
        _mm256_and_si256(narrow_signs, _mm256_set1_epi8(0x80u8 as i8)),
    );
    _mm256_permutevar8x32_epi32(signed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// 4 f64 -> 4 f32 bit patterns rounded to odd (see [`super::common`]): convert with whatever
/// MXCSR.RC says, step one ulp toward zero if that went away from zero, set the last bit if
/// inexact.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn f64_to_f32_odd(x: __m256d) -> __m128i {
    let y = _mm256_cvtpd_ps(x);
    let back = _mm256_cvtps_pd(y);
    let sign = _mm256_set1_pd(-0.0);
    let away = _mm256_cmp_pd::<_CMP_GT_OQ>(_mm256_andnot_pd(sign, back), _mm256_andnot_pd(sign, x));
    let inexact = _mm256_cmp_pd::<_CMP_NEQ_UQ>(back, x);
    // 64-bit all-ones/zero masks -> 32-bit masks: keep the low dword of each.
    let narrow = |m: __m256d| {
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
            _mm256_castpd_si256(m),
            _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6),
        ))
    };
    // bits + (-1) steps the magnitude down by one ulp for either sign (and Inf to f32::MAX).
    let stepped = _mm_add_epi32(_mm_castps_si128(y), narrow(away));
    _mm_or_si128(stepped, _mm_and_si128(narrow(inexact), _mm_set1_epi32(1)))
}

/// 16 f16 bit patterns -> 16 E5M2 codes in 16-bit lanes (round the low byte away).
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn encode_f16_e5m2_lanes<const SAT: bool>(h: __m256i) -> __m256i {
    let c = FmtConsts::get(true, SAT);
    let abs = _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF));
    let lsb = _mm256_and_si256(_mm256_srli_epi16::<8>(abs), _mm256_set1_epi16(1));
    let rounded = _mm256_add_epi16(_mm256_add_epi16(abs, _mm256_set1_epi16(0x7F)), lsb);
    let mut code = _mm256_min_epu16(
        _mm256_srli_epi16::<8>(rounded),
        _mm256_set1_epi16(c.overflow as i16),
    );
    let is_nan = _mm256_cmpgt_epi16(abs, _mm256_set1_epi16(0x7C00));
    code = _mm256_blendv_epi8(code, _mm256_set1_epi16(c.nan as i16), is_nan);
    let sign = _mm256_and_si256(_mm256_srli_epi16::<8>(h), _mm256_set1_epi16(0x80));
    _mm256_or_si256(code, sign)
}

/// Scalar-reference tail: elements `start..n`.
#[inline(always)]
fn encode_tail<T: Copy>(
    src: &[T],
    dst: &mut [u8],
    start: usize,
    fmt: Format,
    sat: bool,
    f: fn(T, Format, bool) -> u8,
) {
    for (d, &s) in dst[start..].iter_mut().zip(&src[start..]) {
        *d = f(s, fmt, sat);
    }
}

/// f32, bf16 and f16 (to E4M3) share the f32 body; `$load` widens 8 elements at a pointer.
macro_rules! encode_via_f32_kernel {
    ($name:ident, $ty:ty, $scalar:path, |$p:ident| $load:expr) => {
        /// # Safety
        /// Needs the CPU features of this level.
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn $name<const E5: bool, const SAT: bool>(src: &[$ty], dst: &mut [u8]) {
            let n = src.len().min(dst.len());
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            let mut i = 0;
            while i + BLOCK <= n {
                // SAFETY: i + 32 <= n: the 32 elements read and 32 bytes written are in bounds.
                unsafe {
                    let load = |$p: *const $ty| -> __m256i { $load };
                    let bits = [
                        load(s.add(i)),
                        load(s.add(i + 8)),
                        load(s.add(i + 16)),
                        load(s.add(i + 24)),
                    ];
                    _mm256_storeu_si256(d.add(i).cast(), encode_block::<E5, SAT>(bits));
                }
                i += BLOCK;
            }
            encode_tail(&src[..n], &mut dst[..n], i, format(E5), SAT, $scalar);
        }
    };
}

encode_via_f32_kernel!(encode_f32_kernel, f32, scalar::encode_f32, |p| {
    _mm256_loadu_si256(p.cast())
});
encode_via_f32_kernel!(encode_bf16_kernel, bf16, scalar::encode_bf16, |p| {
    // bf16 is the top half of an f32: widening is a shift.
    _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))
});
encode_via_f32_kernel!(encode_f16_e4m3_kernel, f16, scalar::encode_f16, |p| {
    // vcvtph2ps is exact and keeps NaN a NaN.
    _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128(p.cast())))
});

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_f64_kernel<const E5: bool, const SAT: bool>(src: &[f64], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 32 <= n: eight 4-double loads and one 32-byte store, in bounds.
        unsafe {
            let load = |j: usize| {
                let lo = f64_to_f32_odd(_mm256_loadu_pd(s.add(j)));
                let hi = f64_to_f32_odd(_mm256_loadu_pd(s.add(j + 4)));
                _mm256_set_m128i(hi, lo)
            };
            let bits = [load(i), load(i + 8), load(i + 16), load(i + 24)];
            _mm256_storeu_si256(d.add(i).cast(), encode_block::<E5, SAT>(bits));
        }
        i += BLOCK;
    }
    encode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        format(E5),
        SAT,
        scalar::encode_f64,
    );
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_f16_e5m2_kernel<const SAT: bool>(src: &[f16], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 32 <= n: two 16-half loads and one 32-byte store, in bounds.
        unsafe {
            let a = encode_f16_e5m2_lanes::<SAT>(_mm256_loadu_si256(s.add(i).cast()));
            let b = encode_f16_e5m2_lanes::<SAT>(_mm256_loadu_si256(s.add(i + 16).cast()));
            // vpackuswb interleaves per 128-bit lane: qwords [a0, b0, a1, b1] -> [a0, a1, b0, b1].
            let packed = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(a, b));
            _mm256_storeu_si256(d.add(i).cast(), packed);
        }
        i += BLOCK;
    }
    encode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        Format::E5M2,
        SAT,
        scalar::encode_f16,
    );
}

macro_rules! dispatch_encode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr, $sat:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_avx2()` detected every feature the
        // kernel is compiled with. The kernels touch only min(src.len(), dst.len()) elements.
        unsafe {
            match ($fmt, $sat) {
                (Format::E4M3, false) => $kernel::<false, false>($src, $dst),
                (Format::E4M3, true) => $kernel::<false, true>($src, $dst),
                (Format::E5M2, false) => $kernel::<true, false>($src, $dst),
                (Format::E5M2, true) => $kernel::<true, true>($src, $dst),
            }
        }
    };
}

fn encode_f32(src: &[f32], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_f32_kernel, src, dst, fmt, saturate)
}

fn encode_f64(src: &[f64], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_f64_kernel, src, dst, fmt, saturate)
}

fn encode_bf16(src: &[bf16], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_bf16_kernel, src, dst, fmt, saturate)
}

fn encode_f16(src: &[f16], dst: &mut [u8], fmt: Format, saturate: bool) {
    // SAFETY: as in `dispatch_encode!`: reachable only when `has_avx2()` holds; the kernels
    // touch only min(src.len(), dst.len()) elements.
    unsafe {
        match (fmt, saturate) {
            (Format::E5M2, false) => encode_f16_e5m2_kernel::<false>(src, dst),
            (Format::E5M2, true) => encode_f16_e5m2_kernel::<true>(src, dst),
            (Format::E4M3, false) => encode_f16_e4m3_kernel::<false, false>(src, dst),
            (Format::E4M3, true) => encode_f16_e4m3_kernel::<false, true>(src, dst),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// 16 codes -> 16 binary16 patterns: E5M2 exactly (NaN payload kept), E4M3 scaled by 2^-8
/// with canonical NaN. Same construction as the AVX-512 level's `codes_to_half`.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn codes_to_half<const E5: bool>(codes: __m128i) -> __m256i {
    if E5 {
        _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(codes))
    } else {
        let h = _mm256_and_si256(
            _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(codes)),
            _mm256_set1_epi16(0xBFFFu16 as i16),
        );
        let is_nan = _mm256_cmpeq_epi16(_mm256_slli_epi16::<1>(h), _mm256_set1_epi16(0x7F00));
        _mm256_add_epi16(h, _mm256_and_si256(is_nan, _mm256_set1_epi16(0x3E80)))
    }
}

/// 8 binary16 patterns (from [`codes_to_half`]) -> 8 f32 with canonical NaN.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn half_to_f32<const E5: bool>(h: __m128i) -> __m256 {
    let f = _mm256_cvtph_ps(h);
    if E5 {
        let is_nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(f, f);
        let nan = _mm256_or_ps(
            _mm256_and_ps(f, _mm256_set1_ps(-0.0)),
            _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0_0000)),
        );
        _mm256_blendv_ps(f, nan, is_nan)
    } else {
        _mm256_mul_ps(f, _mm256_set1_ps(256.0))
    }
}

/// 16 codes -> two vectors of 8 f32.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn codes_to_f32<const E5: bool>(codes: __m128i) -> (__m256, __m256) {
    let h = codes_to_half::<E5>(codes);
    (
        half_to_f32::<E5>(_mm256_castsi256_si128(h)),
        half_to_f32::<E5>(_mm256_extracti128_si256::<1>(h)),
    )
}

/// Scalar-reference tail from a decode table: elements `start..n`.
#[inline(always)]
fn decode_tail<T: Copy>(src: &[u8], dst: &mut [T], start: usize, table: &[T; 256]) {
    for (d, &s) in dst[start..].iter_mut().zip(&src[start..]) {
        *d = table[usize::from(s)];
    }
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_f32_kernel<const E5: bool>(src: &[u8], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 32 <= n: two 16-byte loads and four 8-float stores, in bounds.
        unsafe {
            for j in [0, 16] {
                let (lo, hi) = codes_to_f32::<E5>(_mm_loadu_si128(s.add(i + j).cast()));
                _mm256_storeu_ps(d.add(i + j), lo);
                _mm256_storeu_ps(d.add(i + j + 8), hi);
            }
        }
        i += BLOCK;
    }
    decode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        scalar::tables::f32_table(format(E5)),
    );
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_f64_kernel<const E5: bool>(src: &[u8], dst: &mut [f64]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: a 16-byte load and four 4-double stores, in bounds.
        unsafe {
            let (lo, hi) = codes_to_f32::<E5>(_mm_loadu_si128(s.add(i).cast()));
            // Exact widening; the canonical f32 NaN widens to the canonical f64 NaN.
            for (j, f) in [(0, lo), (8, hi)] {
                _mm256_storeu_pd(d.add(i + j), _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
                let upper = _mm256_extractf128_ps::<1>(f);
                _mm256_storeu_pd(d.add(i + j + 4), _mm256_cvtps_pd(upper));
            }
        }
        i += 16;
    }
    decode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        scalar::tables::f64_table(format(E5)),
    );
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_f16_kernel<const E5: bool>(src: &[u8], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: a 16-byte load and a 16-half store, in bounds.
        unsafe {
            let codes = _mm_loadu_si128(s.add(i).cast());
            let h = if E5 {
                let h = codes_to_half::<true>(codes);
                let is_nan = _mm256_cmpgt_epi16(
                    _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF)),
                    _mm256_set1_epi16(0x7C00),
                );
                let nan = _mm256_or_si256(
                    _mm256_and_si256(h, _mm256_set1_epi16(i16::MIN)),
                    _mm256_set1_epi16(0x7E00),
                );
                _mm256_blendv_epi8(h, nan, is_nan)
            } else {
                // Every E4M3 value is a binary16 normal: the conversion is exact.
                let (lo, hi) = codes_to_f32::<false>(codes);
                _mm256_set_m128i(
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(hi),
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(lo),
                )
            };
            _mm256_storeu_si256(d.add(i).cast(), h);
        }
        i += 16;
    }
    decode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        scalar::tables::f16_table(format(E5)),
    );
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_bf16_kernel<const E5: bool>(src: &[u8], dst: &mut [bf16]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: a 16-byte load and a 16-half store, in bounds.
        unsafe {
            let (lo, hi) = codes_to_f32::<E5>(_mm_loadu_si128(s.add(i).cast()));
            // The exact top halves; vpackusdw works per 128-bit lane, vpermq restores order.
            let lo = _mm256_srli_epi32::<16>(_mm256_castps_si256(lo));
            let hi = _mm256_srli_epi32::<16>(_mm256_castps_si256(hi));
            let packed = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi32(lo, hi));
            _mm256_storeu_si256(d.add(i).cast(), packed);
        }
        i += 16;
    }
    decode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        scalar::tables::bf16_table(format(E5)),
    );
}

macro_rules! dispatch_decode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_avx2()` detected every feature the
        // kernel is compiled with. The kernels touch only min(src.len(), dst.len()) elements.
        unsafe {
            match $fmt {
                Format::E4M3 => $kernel::<false>($src, $dst),
                Format::E5M2 => $kernel::<true>($src, $dst),
            }
        }
    };
}

fn decode_f32(src: &[u8], dst: &mut [f32], fmt: Format) {
    dispatch_decode!(decode_f32_kernel, src, dst, fmt)
}

fn decode_f64(src: &[u8], dst: &mut [f64], fmt: Format) {
    dispatch_decode!(decode_f64_kernel, src, dst, fmt)
}

fn decode_f16(src: &[u8], dst: &mut [f16], fmt: Format) {
    dispatch_decode!(decode_f16_kernel, src, dst, fmt)
}

fn decode_bf16(src: &[u8], dst: &mut [bf16], fmt: Format) {
    dispatch_decode!(decode_bf16_kernel, src, dst, fmt)
}
