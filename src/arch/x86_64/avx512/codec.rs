//! AVX-512 (F + BW + VL) codec kernels, 16 f32 lanes or 32 f16 lanes per register.
//!
//! The arithmetic is the same as the AVX2 level (see `arch::x86_64::common` for the derivations);
//! AVX-512 adds what makes it cheaper: mask registers for blends and for the tails (masked
//! loads and stores, so the tail is vectorised and never touches memory past the slices),
//! embedded rounding (`{rn-sae}`, `{rz-sae}`) so that no result depends on MXCSR, and
//! narrowing stores (`vpmovdb`).
//!
//! Every kernel is reachable only through [`codec_kernels`], which `arch::codec_kernels_for`
//! hands out only after `has_avx512()` confirmed AVX-512 F, BW, VL and AVX2 + F16C (the
//! `target_feature` set below; VBMI and BF16 are not used).
//!
//! Main loops handle 64 elements (4 zmm of f32) per iteration and narrow the four code vectors
//! into one 64-byte store with `vpackusdw`/`vpackuswb`/`vpermd`, merging the 64 signs with one
//! `vpternlogd` after narrowing the inputs with the signed-saturating packs (see
//! `pack_signed_codes`); tails use masked loads and `vpmovdb` masked stores.
//! Merging the signs once per 64 codes instead of a shift + ternlog per vector measured about
//! 10% faster on data in cache (`FP8FAST_BENCH_LOG2N=15 cargo run --release --example
//! codec_speed`, 7.4 -> 8.2 G elements/s for f32 -> E5M2).

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::x86_64::common::FmtConsts;
use crate::arch::{CodecKernels, Isa};
use crate::format::Format;

/// Round to nearest even, exceptions suppressed: independent of MXCSR.RC.
const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
/// Round toward zero, exceptions suppressed.
const RZ: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;

/// Elements per main-loop iteration.
pub(super) const BLOCK: usize = 64;

static CODEC: CodecKernels = CodecKernels {
    isa: Isa::Avx512,
    encode_f32,
    encode_f64,
    encode_f16,
    encode_bf16,
    decode_f32,
    decode_f64,
    decode_f16,
    decode_bf16,
};

/// The codec kernels of this level. Only call when the CPU has it (`has_avx512()`).
pub fn codec_kernels() -> &'static CodecKernels {
    &CODEC
}

/// `k` with the lowest `n` bits set (`n <= 16`).
#[inline(always)]
pub(super) fn mask16(n: usize) -> __mmask16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as __mmask16
}

/// `k` with the lowest `n` bits set (`n <= 8`).
#[inline(always)]
fn mask8(n: usize) -> __mmask8 {
    debug_assert!(n <= 8);
    ((1u32 << n) - 1) as __mmask8
}

/// `k` with the lowest `n` bits set (`n <= 32`).
#[inline(always)]
fn mask32(n: usize) -> __mmask32 {
    debug_assert!(n <= 32);
    ((1u64 << n) - 1) as __mmask32
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// 16 f32 bit patterns -> 16 FP8 codes of their magnitudes, one per 32-bit lane (0..=0x7F).
///
/// Normal results: round-to-nearest-even on the integer bit pattern (see
/// [`FmtConsts::round_add`]); the rounded value carries into the exponent field, so
/// the code is monotonic and overflow is a single `min` with the overflow code (which is
/// `max_code` when saturating and `max_code + 1` = Inf (E5M2) / NaN (E4M3) otherwise: every
/// magnitude above the max normal, Inf included, lands on it).
/// Results below the smallest normal: `|x| + 2^(24-b-m)` in f32 with embedded
/// round-to-nearest-even; that sum lies in the binade of the magic number, whose ulp is the FP8
/// subnormal spacing `2^(1-b-m)`, so its low mantissa bits are the rounded subnormal code
/// (0..=2^m, 2^m being the smallest normal). Under DAZ an f32 subnormal reads as 0, which is
/// its correct FP8 result anyway (< 2^-126 rounds to 0).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn encode_abs_lanes<const E5: bool, const SAT: bool>(bits: __m512i) -> __m512i {
    let c = FmtConsts::get(E5, SAT);
    let abs = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF));
    let lsb = _mm512_and_si512(srl_mant::<E5>(abs), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(_mm512_add_epi32(abs, _mm512_set1_epi32(c.round_add)), lsb);
    let mut code = _mm512_min_epi32(srl_mant::<E5>(rounded), _mm512_set1_epi32(c.overflow));
    if c.nan != c.overflow {
        let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
        code = _mm512_mask_mov_epi32(code, is_nan, _mm512_set1_epi32(c.nan));
    }
    let is_small = _mm512_cmplt_epi32_mask(abs, _mm512_set1_epi32(c.min_normal_bits));
    let magic = _mm512_set1_epi32(c.sub_magic_bits);
    let sum = _mm512_add_round_ps::<RNE>(_mm512_castsi512_ps(abs), _mm512_castsi512_ps(magic));
    _mm512_mask_sub_epi32(code, is_small, _mm512_castps_si512(sum), magic)
}

/// [`encode_abs_lanes`] with the sign: `code | ((bits >> 24) & 0x80)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
pub(super) fn encode_f32_lanes<const E5: bool, const SAT: bool>(bits: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0xF8>(
        encode_abs_lanes::<E5, SAT>(bits),
        _mm512_srli_epi32::<24>(bits),
        _mm512_set1_epi32(0x80),
    )
}

/// `x >> (23 - m)`: the f32 mantissa bits below the FP8 mantissa.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn srl_mant<const E5: bool>(x: __m512i) -> __m512i {
    if E5 {
        _mm512_srli_epi32::<21>(x)
    } else {
        _mm512_srli_epi32::<20>(x)
    }
}

/// Four vectors of 16 magnitude codes (0..=0x7F in 32-bit lanes) and the four f32 bit patterns
/// they came from -> 64 signed codes in order.
///
/// `vpackusdw`/`vpackuswb` narrow the codes; `vpackssdw`/`vpacksswb` narrow the bit patterns
/// with signed saturation, which keeps each one's sign in the sign bit of its byte, so one
/// `vpternlogd` puts all 64 signs in place (instead of a shift and a ternlog per vector).
/// The packs work per 128-bit lane, so the packed vector holds, in dword `4l + v`, the 4
/// elements of lane `l` of input `v`; `vpermd` puts dword `4l + v` at position `4v + l`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn pack_signed_codes(codes: [__m512i; 4], bits: [__m512i; 4]) -> __m512i {
    let narrow_codes = _mm512_packus_epi16(
        _mm512_packus_epi32(codes[0], codes[1]),
        _mm512_packus_epi32(codes[2], codes[3]),
    );
    let narrow_signs = _mm512_packs_epi16(
        _mm512_packs_epi32(bits[0], bits[1]),
        _mm512_packs_epi32(bits[2], bits[3]),
    );
    // codes | (signs & 0x80)
    let signed = _mm512_ternarylogic_epi32::<0xF8>(
        narrow_codes,
        narrow_signs,
        _mm512_set1_epi8(0x80u8 as i8),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_epi32(order, signed)
}

/// Encode 64 f32 bit patterns (four vectors) to 64 codes in order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
pub(super) fn encode_block<const E5: bool, const SAT: bool>(bits: [__m512i; 4]) -> __m512i {
    let codes = [
        encode_abs_lanes::<E5, SAT>(bits[0]),
        encode_abs_lanes::<E5, SAT>(bits[1]),
        encode_abs_lanes::<E5, SAT>(bits[2]),
        encode_abs_lanes::<E5, SAT>(bits[3]),
    ];
    pack_signed_codes(codes, bits)
}

/// Widen 16 bf16 bit patterns to f32 bit patterns (exact: bf16 is the top half of an f32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
pub(super) fn bf16_to_f32_bits(h: __m256i) -> __m512i {
    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))
}

/// Widen 16 f16 values to f32 bit patterns. `vcvtph2ps` is exact (f16 subnormals become f32
/// normals; it ignores MXCSR.DAZ, checked by the FTZ/DAZ test) and keeps NaN a NaN.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn f16_to_f32_bits(h: __m256i) -> __m512i {
    _mm512_castps_si512(_mm512_cvtph_ps(h))
}

/// Round 8 f64 to f32 with round-to-odd: truncate (`{rz-sae}`), then set the lowest bit if
/// that was inexact. See `arch::x86_64::common` for why a second rounding of the result to FP8 is exact.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn f64_to_f32_odd(x: __m512d) -> __m256i {
    let t = _mm512_cvt_roundpd_ps::<RZ>(x);
    let inexact = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(_mm512_cvtps_pd(t), x);
    let t = _mm256_castps_si256(t);
    _mm256_mask_or_epi32(t, inexact, t, _mm256_set1_epi32(1))
}

/// 32 f16 bit patterns -> 32 E5M2 codes in 16-bit lanes: E5M2 is the top byte of binary16, so
/// this is round-to-nearest-even of the low byte away, subnormals included, with the same
/// `min` overflow trick as [`encode_f32_lanes`]. `abs + 0x80 <= 0x807F` cannot wrap.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn encode_f16_e5m2_lanes<const SAT: bool>(h: __m512i) -> __m512i {
    let c = FmtConsts::get(true, SAT);
    let abs = _mm512_and_si512(h, _mm512_set1_epi16(0x7FFF));
    let lsb = _mm512_and_si512(_mm512_srli_epi16::<8>(abs), _mm512_set1_epi16(1));
    let rounded = _mm512_add_epi16(_mm512_add_epi16(abs, _mm512_set1_epi16(0x7F)), lsb);
    let mut code = _mm512_min_epu16(
        _mm512_srli_epi16::<8>(rounded),
        _mm512_set1_epi16(c.overflow as i16),
    );
    let is_nan = _mm512_cmpgt_epi16_mask(abs, _mm512_set1_epi16(0x7C00));
    code = _mm512_mask_mov_epi16(code, is_nan, _mm512_set1_epi16(c.nan as i16));
    _mm512_ternarylogic_epi32::<0xF8>(code, _mm512_srli_epi16::<8>(h), _mm512_set1_epi16(0x80))
}

/// The f32-body encoders (f32, bf16, f16 -> E4M3): `|p| full` loads 16 elements at `p` and
/// widens them to f32 bit patterns; `|p, k| masked` does the same loading only the lanes in `k`.
macro_rules! encode_via_f32_kernel {
    ($name:ident, $ty:ty, |$p:ident| $full:expr, |$q:ident, $k:ident| $masked:expr) => {
        /// # Safety
        /// Needs the CPU features of this level.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
        unsafe fn $name<const E5: bool, const SAT: bool>(src: &[$ty], dst: &mut [u8]) {
            let n = src.len().min(dst.len());
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            let mut i = 0;
            while i + BLOCK <= n {
                // SAFETY: i + 64 <= n: the 64 elements read and the 64 bytes written are in
                // bounds of both slices.
                unsafe {
                    let load = |$p: *const $ty| -> __m512i { $full };
                    let bits = [
                        load(s.add(i)),
                        load(s.add(i + 16)),
                        load(s.add(i + 32)),
                        load(s.add(i + 48)),
                    ];
                    _mm512_storeu_si512(d.add(i).cast(), encode_block::<E5, SAT>(bits));
                }
                i += BLOCK;
            }
            while i < n {
                let len = (n - i).min(16);
                let $k = mask16(len);
                // SAFETY: masked load and store touch only the `len` elements from i, all in
                // bounds (i + len <= n); masked-off lanes are not accessed (fault-suppressed).
                unsafe {
                    let $q = s.add(i);
                    let codes = encode_f32_lanes::<E5, SAT>($masked);
                    _mm512_mask_cvtepi32_storeu_epi8(d.add(i).cast(), $k, codes);
                }
                i += len;
            }
        }
    };
}

encode_via_f32_kernel!(
    encode_f32_kernel,
    f32,
    |p| _mm512_loadu_si512(p.cast()),
    |p, k| _mm512_maskz_loadu_epi32(k, p.cast())
);
encode_via_f32_kernel!(
    encode_bf16_kernel,
    bf16,
    |p| bf16_to_f32_bits(_mm256_loadu_si256(p.cast())),
    |p, k| bf16_to_f32_bits(_mm256_maskz_loadu_epi16(k, p.cast()))
);
encode_via_f32_kernel!(
    encode_f16_e4m3_kernel,
    f16,
    |p| f16_to_f32_bits(_mm256_loadu_si256(p.cast())),
    |p, k| f16_to_f32_bits(_mm256_maskz_loadu_epi16(k, p.cast()))
);

/// 16 f64 (two halves, `lo` first) -> round-to-odd f32 bit patterns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn f64x16_to_f32_odd(lo: __m512d, hi: __m512d) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(f64_to_f32_odd(lo)),
        f64_to_f32_odd(hi),
    )
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn encode_f64_kernel<const E5: bool, const SAT: bool>(src: &[f64], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 64 <= n: every load and the 64-byte store are in bounds.
        unsafe {
            let load = |j: usize| {
                f64x16_to_f32_odd(_mm512_loadu_pd(s.add(j)), _mm512_loadu_pd(s.add(j + 8)))
            };
            let bits = [load(i), load(i + 16), load(i + 32), load(i + 48)];
            _mm512_storeu_si512(d.add(i).cast(), encode_block::<E5, SAT>(bits));
        }
        i += BLOCK;
    }
    while i < n {
        let len = (n - i).min(16);
        let (len_lo, len_hi) = (len.min(8), len.saturating_sub(8));
        // SAFETY: the masked loads read elements i..i+len only, the masked store writes bytes
        // i..i+len only; i + len <= n.
        unsafe {
            let lo = _mm512_maskz_loadu_pd(mask8(len_lo), s.add(i));
            // wrapping_add: with len <= 8 this address may lie past the slice; the mask is 0
            // then and nothing is read, but `add` past the allocation would be UB.
            let hi = _mm512_maskz_loadu_pd(mask8(len_hi), s.wrapping_add(i + 8));
            let codes = encode_f32_lanes::<E5, SAT>(f64x16_to_f32_odd(lo, hi));
            _mm512_mask_cvtepi32_storeu_epi8(d.add(i).cast(), mask16(len), codes);
        }
        i += len;
    }
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn encode_f16_e5m2_kernel<const SAT: bool>(src: &[f16], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 64 <= n: two 32-element loads and one 64-byte store, all in bounds.
        unsafe {
            let a = encode_f16_e5m2_lanes::<SAT>(_mm512_loadu_si512(s.add(i).cast()));
            let b = encode_f16_e5m2_lanes::<SAT>(_mm512_loadu_si512(s.add(i + 32).cast()));
            // vpackuswb interleaves per 128-bit lane: qword 2l is lane l of a, 2l+1 of b.
            let packed = _mm512_packus_epi16(a, b);
            let order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
            _mm512_storeu_si512(d.add(i).cast(), _mm512_permutexvar_epi64(order, packed));
        }
        i += BLOCK;
    }
    while i < n {
        let len = (n - i).min(32);
        let k = mask32(len);
        // SAFETY: masked load/store of elements i..i+len, in bounds.
        unsafe {
            let codes = encode_f16_e5m2_lanes::<SAT>(_mm512_maskz_loadu_epi16(k, s.add(i).cast()));
            _mm512_mask_cvtepi16_storeu_epi8(d.add(i).cast(), k, codes);
        }
        i += len;
    }
}

/// Dispatch on `(format, saturate)` once per slice into the monomorphized kernel.
macro_rules! dispatch_encode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr, $sat:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_avx512()` detected every feature
        // the kernel is compiled with. The kernels touch only min(src.len(), dst.len()) elements.
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
    // SAFETY: as in `dispatch_encode!`: reachable only when `has_avx512()` holds; the kernels
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

/// 16 codes -> 16 binary16 bit patterns whose value is the code's value times `2^-8` (E4M3) or
/// exactly the code's value (E5M2), NaN already canonical for E4M3 only (E5M2 NaN stays a NaN
/// with its payload; callers canonicalise).
///
/// E4M3 `s eeee mmm` placed at bits 14..7 of a binary16 reads as `2^(e-15) (1 + m/8)`, the
/// E4M3 value `2^(e-7) (1 + m/8)` times `2^-8`, and E4M3 subnormals land on binary16 subnormals
/// with the same scale, so no case analysis is needed. The sign is moved from bit 14 to 15 by
/// sign-extending the byte and clearing bit 14. The NaN code (magnitude 0x7F -> 0x3F80) is
/// turned into the binary16 quiet NaN 0x7E00 by adding 0x3E80 (no carry into the sign).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn codes_to_half<const E5: bool>(codes: __m128i) -> __m256i {
    if E5 {
        _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(codes))
    } else {
        let h = _mm256_and_si256(
            _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(codes)),
            _mm256_set1_epi16(0xBFFFu16 as i16),
        );
        let is_nan = _mm256_cmpeq_epi16_mask(_mm256_slli_epi16::<1>(h), _mm256_set1_epi16(0x7F00));
        _mm256_mask_add_epi16(h, is_nan, h, _mm256_set1_epi16(0x3E80))
    }
}

/// 16 codes -> 16 f32, NaN canonical (`0x7FC00000` with the code's sign).
///
/// `vcvtph2ps` is exact and ignores MXCSR.DAZ (the FTZ/DAZ test checks that), then E4M3 is
/// scaled by `2^8`: its inputs are >= 2^-17 in magnitude and the products >= 2^-9, all normal,
/// so FTZ/DAZ cannot touch it, and a quiet NaN operand passes through `vmulps` unchanged.
/// E5M2 NaNs come out of `vcvtph2ps` as quiet NaNs carrying the payload; they are replaced by
/// `(x & sign) | 0x7FC00000`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn codes_to_f32<const E5: bool>(codes: __m128i) -> __m512 {
    let f = _mm512_cvtph_ps(codes_to_half::<E5>(codes));
    if E5 {
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(f, f);
        // (A & B) | C with A = f, B = sign mask, C = quiet NaN: imm 0xEA.
        _mm512_castsi512_ps(_mm512_mask_ternarylogic_epi32::<0xEA>(
            _mm512_castps_si512(f),
            is_nan,
            _mm512_set1_epi32(i32::MIN),
            _mm512_set1_epi32(0x7FC0_0000),
        ))
    } else {
        _mm512_mul_ps(f, _mm512_set1_ps(256.0))
    }
}

/// Two f32 vectors -> 32 bf16 (their exact top halves) in order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn f32x32_to_bf16(a: __m512, b: __m512) -> __m512i {
    let a = _mm512_srli_epi32::<16>(_mm512_castps_si512(a));
    let b = _mm512_srli_epi32::<16>(_mm512_castps_si512(b));
    // vpackusdw interleaves per 128-bit lane: qword 2l is lane l of a, 2l+1 of b.
    let order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    _mm512_permutexvar_epi64(order, _mm512_packus_epi32(a, b))
}

/// 16 canonical f32 -> 16 f16 bit patterns. Every FP8 value is exact in binary16 and none is a
/// binary16 subnormal after E4M3 scaling back, so round-to-nearest is never used; NaN
/// `0x7FC00000` becomes `0x7E00` with its sign.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn f32_to_half(f: __m512) -> __m256i {
    _mm512_cvtps_ph::<RNE>(f)
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn decode_f32_kernel<const E5: bool>(src: &[u8], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 64 <= n: four 16-byte loads and four 16-float stores, in bounds.
        unsafe {
            for j in (0..BLOCK).step_by(16) {
                let codes = _mm_loadu_si128(s.add(i + j).cast());
                _mm512_storeu_ps(d.add(i + j), codes_to_f32::<E5>(codes));
            }
        }
        i += BLOCK;
    }
    while i < n {
        let len = (n - i).min(16);
        let k = mask16(len);
        // SAFETY: masked load/store of elements i..i+len, in bounds.
        unsafe {
            let codes = _mm_maskz_loadu_epi8(k, s.add(i).cast());
            _mm512_mask_storeu_ps(d.add(i), k, codes_to_f32::<E5>(codes));
        }
        i += len;
    }
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn decode_f64_kernel<const E5: bool>(src: &[u8], dst: &mut [f64]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // f32 -> f64 widening is exact; the canonical f32 NaN widens to the canonical f64 NaN.
    let halves = |f: __m512| {
        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
        let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(f),
        )));
        (lo, hi)
    };
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: a 16-byte load and two 8-double stores, in bounds.
        unsafe {
            let (lo, hi) = halves(codes_to_f32::<E5>(_mm_loadu_si128(s.add(i).cast())));
            _mm512_storeu_pd(d.add(i), lo);
            _mm512_storeu_pd(d.add(i + 8), hi);
        }
        i += 16;
    }
    if i < n {
        let len = n - i;
        // SAFETY: masked load/stores of elements i..n only.
        unsafe {
            let codes = _mm_maskz_loadu_epi8(mask16(len), s.add(i).cast());
            let (lo, hi) = halves(codes_to_f32::<E5>(codes));
            _mm512_mask_storeu_pd(d.add(i), mask8(len.min(8)), lo);
            // wrapping_add: past the slice when len <= 8, where the mask is 0 (no access).
            let d_hi = d.wrapping_add(i + 8);
            _mm512_mask_storeu_pd(d_hi, mask8(len.saturating_sub(8)), hi);
        }
    }
}

/// 16 E5M2 codes -> binary16 with canonical NaN (`0x7E00 | sign`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
#[inline]
fn e5m2_to_half_canonical(codes: __m128i) -> __m256i {
    let h = codes_to_half::<true>(codes);
    let is_nan = _mm256_cmpgt_epi16_mask(
        _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF)),
        _mm256_set1_epi16(0x7C00),
    );
    let nan = _mm256_ternarylogic_epi32::<0xEA>(
        h,
        _mm256_set1_epi16(i16::MIN),
        _mm256_set1_epi16(0x7E00),
    );
    _mm256_mask_mov_epi16(h, is_nan, nan)
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn decode_f16_kernel<const E5: bool>(src: &[u8], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let convert = |codes: __m128i| {
        if E5 {
            e5m2_to_half_canonical(codes)
        } else {
            f32_to_half(codes_to_f32::<false>(codes))
        }
    };
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: a 16-byte load and a 16-half store, in bounds.
        unsafe {
            let h = convert(_mm_loadu_si128(s.add(i).cast()));
            _mm256_storeu_si256(d.add(i).cast(), h);
        }
        i += 16;
    }
    if i < n {
        let k = mask16(n - i);
        // SAFETY: masked load/store of elements i..n only.
        unsafe {
            let h = convert(_mm_maskz_loadu_epi8(k, s.add(i).cast()));
            _mm256_mask_storeu_epi16(d.add(i).cast(), k, h);
        }
    }
}

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn decode_bf16_kernel<const E5: bool>(src: &[u8], dst: &mut [bf16]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 64 <= n: four 16-byte loads and two 32-half stores, in bounds.
        unsafe {
            for j in [0, 32] {
                let a = codes_to_f32::<E5>(_mm_loadu_si128(s.add(i + j).cast()));
                let b = codes_to_f32::<E5>(_mm_loadu_si128(s.add(i + j + 16).cast()));
                _mm512_storeu_si512(d.add(i + j).cast(), f32x32_to_bf16(a, b));
            }
        }
        i += BLOCK;
    }
    while i < n {
        let len = (n - i).min(16);
        let k = mask16(len);
        // SAFETY: masked load/store of elements i..i+len only.
        unsafe {
            let f = codes_to_f32::<E5>(_mm_maskz_loadu_epi8(k, s.add(i).cast()));
            let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(f)));
            _mm256_mask_storeu_epi16(d.add(i).cast(), k, h);
        }
        i += len;
    }
}

macro_rules! dispatch_decode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_avx512()` detected every feature
        // the kernel is compiled with. The kernels touch only min(src.len(), dst.len()) elements.
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
