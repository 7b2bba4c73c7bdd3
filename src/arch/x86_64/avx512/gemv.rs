//! FP8 -> float32 in registers, 16 (AVX-512) or 8 (AVX2) bytes at a time:
//! - E5M2 is the top byte of a binary16: `f16 = byte << 8`, then `vcvtph2ps` (exact, with
//!   subnormals, infinities and NaN).
//! - E4M3: `f16 = sign << 15 | (byte & 0x7F) << 7` reads the E4M3 exponent with the
//!   binary16 bias (15 instead of 7) and the same mantissa, so the float32 value is the
//!   E4M3 value times 2^-8, subnormals included. Either multiply by 2^8 (exact), or, as
//!   `gemv` does whenever no activation is within 2^8 of overflow, multiply the
//!   activations by 2^8 once instead ([`Weights::E4M3TimesTwoPowMinus8`]). The NaN codes
//!   (0x7F, 0xFF) must become a binary16 NaN: the AVX-512 kernel checks each 64-byte
//!   block of C rows at once and fixes codes up only in blocks that hold one.

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::gemv::prefetch_next;
use crate::format::Format;
use crate::gemm::gemv::Weights;
use crate::scalar::tables;

#[inline(always)]
pub(crate) unsafe fn decode16_e5m2(bytes: __m128i) -> __m512 {
    // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VL.
    unsafe { _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8)) }
}

/// E4M3 -> float32 times 2^-8 (binary16 reading), NaN codes not handled.
#[inline(always)]
pub(crate) unsafe fn decode16_e4m3_scaled_no_nan(bytes: __m128i) -> __m512 {
    // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VL.
    unsafe {
        _mm512_cvtph_ps(_mm256_and_si256(
            _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
            _mm256_set1_epi16(0xBF80u16 as i16),
        ))
    }
}

#[inline(always)]
pub(crate) unsafe fn decode16_e4m3(bytes: __m128i) -> __m512 {
    // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VL.
    unsafe {
        // Sign-extended bytes shifted by 7: mantissa and exponent in bits 7..13, the sign in
        // bits 14 and 15; clearing bit 14 leaves `sign << 15 | mag << 7`.
        let h = _mm256_and_si256(
            _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
            _mm256_set1_epi16(0xBF80u16 as i16),
        );
        let nan = _mm_cmpeq_epi8_mask(
            _mm_and_si128(bytes, _mm_set1_epi8(0x7F)),
            _mm_set1_epi8(0x7F),
        );
        let h = _mm256_mask_mov_epi16(h, nan, _mm256_set1_epi16(0x7E00));
        _mm512_cvtph_ps(h)
    }
}

/// # Safety
/// AVX-512 F + BW + VL available; as `DotFn`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_avx512(
    klen: usize,
    x: *const f32,
    ldx: usize,
    rows: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
) {
    macro_rules! go {
        ($r:literal, $c:literal) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                match weights {
                    Weights::E5M2 => dot512::<$r, $c, 0>(klen, x, ldx, w, ldw, ncols, out),
                    Weights::E4M3 => dot512::<$r, $c, 1>(klen, x, ldx, w, ldw, ncols, out),
                    Weights::E4M3TimesTwoPowMinus8 => {
                        dot512::<$r, $c, 2>(klen, x, ldx, w, ldw, ncols, out)
                    }
                }
            }
        };
    }
    match rows {
        1 => go!(1, 8),
        2 => go!(2, 8),
        3 => go!(3, 4),
        4 => go!(4, 4),
        5 => go!(5, 2),
        6 => go!(6, 2),
        7 => go!(7, 2),
        _ => go!(8, 2),
    }
}

/// `C` weight rows at a time against `R` activation rows (`R * C` accumulators): several
/// weight streams in flight keep the memory system busy, and each decoded vector is used
/// `R` times. `KIND`: 0 E5M2, 1 E4M3, 2 E4M3 times 2^-8 (see [`Weights`]).
///
/// For KIND 2 the NaN codes are looked for once per 64 bytes of each row (a compare over
/// a whole zmm); blocks without one (all of them, in practice) skip the NaN fix-up.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // acc[c][r] reads clearer than nested iterators
unsafe fn dot512<const R: usize, const C: usize, const KIND: u8>(
    klen: usize,
    x: *const f32,
    ldx: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    out: *mut f32,
) {
    // Full decode (NaN handled), value as the kernel's activations expect it.
    let decode = |b: __m128i| {
        // SAFETY: the features are enabled in this function.
        unsafe {
            match KIND {
                0 => decode16_e5m2(b),
                1 => _mm512_mul_ps(decode16_e4m3(b), _mm512_set1_ps(256.0)),
                _ => decode16_e4m3(b),
            }
        }
    };
    let tail = klen % 16;
    let tail_mask: u16 = if tail == 0 { 0 } else { (1u16 << tail) - 1 };
    let mut j = 0;
    while j < ncols {
        // Past the last column, the last one is computed again and not stored.
        let cols: [usize; C] = std::array::from_fn(|c| (j + c).min(ncols - 1));
        // SAFETY: rows `cols` of w hold klen bytes; x rows hold klen floats; the tail
        // loads are masked to the remaining elements.
        unsafe {
            let wr: [*const u8; C] = cols.map(|c| w.offset(c as isize * ldw));
            let mut acc = [[_mm512_setzero_ps(); R]; C];
            let mut p = 0;
            if KIND == 2 {
                let low7 = _mm512_set1_epi8(0x7F);
                while p + 64 <= klen {
                    // A lane can hold a NaN code (0x7F / 0xFF) only if the largest low-7-bit
                    // value over the rows is 0x7F there: one compare for all C rows.
                    let mut top = _mm512_setzero_si512();
                    for row in wr {
                        prefetch_next(row, C, ldw, p);
                    }
                    for row in wr {
                        let v = _mm512_loadu_si512(row.add(p).cast());
                        top = _mm512_max_epu8(top, _mm512_and_si512(v, low7));
                    }
                    if _mm512_cmpeq_epi8_mask(top, low7) != 0 {
                        break; // finish this row group with the NaN-aware loop below
                    }
                    for s in 0..4 {
                        let q = p + 16 * s;
                        let d: [__m512; C] = wr.map(|row| {
                            decode16_e4m3_scaled_no_nan(_mm_loadu_si128(row.add(q).cast()))
                        });
                        for r in 0..R {
                            let xv = _mm512_loadu_ps(x.add(r * ldx + q));
                            for c in 0..C {
                                acc[c][r] = _mm512_fmadd_ps(xv, d[c], acc[c][r]);
                            }
                        }
                    }
                    p += 64;
                }
            }
            while p + 16 <= klen {
                if p % 64 == 0 {
                    for row in wr {
                        prefetch_next(row, C, ldw, p);
                    }
                }
                let d: [__m512; C] = wr.map(|row| decode(_mm_loadu_si128(row.add(p).cast())));
                for r in 0..R {
                    let xv = _mm512_loadu_ps(x.add(r * ldx + p));
                    for c in 0..C {
                        acc[c][r] = _mm512_fmadd_ps(xv, d[c], acc[c][r]);
                    }
                }
                p += 16;
            }
            if tail != 0 {
                let d: [__m512; C] =
                    wr.map(|row| decode(_mm_maskz_loadu_epi8(tail_mask, row.add(p).cast())));
                for r in 0..R {
                    let xv = _mm512_maskz_loadu_ps(tail_mask, x.add(r * ldx + p));
                    for c in 0..C {
                        acc[c][r] = _mm512_fmadd_ps(xv, d[c], acc[c][r]);
                    }
                }
            }
            for c in 0..C {
                if j + c < ncols {
                    for r in 0..R {
                        *out.add(r * ncols + j + c) = _mm512_reduce_add_ps(acc[c][r]);
                    }
                }
            }
        }
        j += C;
    }
}

/// The bfloat16 bit pattern of every E4M3 magnitude (code & 0x7F) as two 128-byte tables
/// (high and low byte). Every finite E4M3 value is exact in bfloat16 (3 mantissa bits,
/// exponents -9..8); the NaN magnitude 0x7F maps to the bfloat16 NaN 0x7FC0, whose
/// product with any activation is NaN.
pub(crate) struct E4m3Bf16Tables {
    pub(crate) high: [u8; 128],
    pub(crate) low: [u8; 128],
}

impl E4m3Bf16Tables {
    pub(crate) fn new() -> Self {
        let values = tables::f32_table(Format::E4M3);
        let mut t = Self {
            high: [0; 128],
            low: [0; 128],
        };
        for (mag, value) in values.iter().take(128).enumerate() {
            let bits = value.to_bits();
            t.high[mag] = (bits >> 24) as u8;
            t.low[mag] = (bits >> 16) as u8;
        }
        t
    }
}

/// The four 128-byte tables of [`E4m3Bf16Tables`] in registers, and the constants the
/// decode uses.
pub(crate) struct TableRegs {
    high0: __m512i,
    high1: __m512i,
    low0: __m512i,
    low1: __m512i,
    sign: __m512i,
    top_half: __m512i,
}

impl TableRegs {
    /// # Safety
    /// AVX-512 F available.
    #[inline(always)]
    pub(crate) unsafe fn load(tables: &E4m3Bf16Tables) -> Self {
        // SAFETY: the loads read the 128-byte tables; the caller enables AVX-512 F.
        unsafe {
            Self {
                high0: _mm512_loadu_si512(tables.high.as_ptr().cast()),
                high1: _mm512_loadu_si512(tables.high[64..].as_ptr().cast()),
                low0: _mm512_loadu_si512(tables.low.as_ptr().cast()),
                low1: _mm512_loadu_si512(tables.low[64..].as_ptr().cast()),
                sign: _mm512_set1_epi8(-128),
                top_half: _mm512_set1_epi32(0xFFFF_0000u32 as i32),
            }
        }
    }
}

/// 64 E4M3 codes to float32, exactly (NaN codes to NaN), in the order [`table_position`]
/// gives: two `vpermi2b` look up the high and low byte of each code's bfloat16 pattern, a
/// `vpternlogd` adds the sign, two byte unpacks (within 128-bit lanes) pair them into bfloat16
/// words, and each 32-bit lane's two words become two float32 by a shift (the low word) and
/// a mask (the high word) instead of four more unpacks, which would compete with the lookups
/// for the one 512-bit shuffle port of Intel cores. Measured on an Intel Xeon (Emerald Rapids
/// class), one thread, 1 x 4096 x 4096 (weights in L3), together with dropping the per-block
/// NaN check: 1.11 -> 1.07-1.08 ms. This decode bounds the m = 1 kernels there: with
/// `vpermb` (one uop, 64 entries, wrong values) in place of the two-uop `vpermi2b`, a
/// microbenchmark of the same loop ran 20% faster, and a loop that only loads the bytes
/// and multiplies them streams the 16 MiB from L3 in 0.63-0.67 ms.
///
/// # Safety
/// AVX-512 F + BW + VBMI available.
#[inline(always)]
pub(crate) unsafe fn decode64_e4m3_table(t: &TableRegs, v: __m512i) -> [__m512; 4] {
    // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VBMI.
    unsafe {
        let high = _mm512_permutex2var_epi8(t.high0, v, t.high1);
        let low = _mm512_permutex2var_epi8(t.low0, v, t.low1);
        // high | (v & sign), ternary-logic truth table A | (B & C).
        let high = _mm512_ternarylogic_epi32::<0xF8>(high, v, t.sign);
        let h0 = _mm512_unpacklo_epi8(low, high);
        let h1 = _mm512_unpackhi_epi8(low, high);
        [
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h0)),
            _mm512_castsi512_ps(_mm512_and_si512(h0, t.top_half)),
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h1)),
            _mm512_castsi512_ps(_mm512_and_si512(h1, t.top_half)),
        ]
    }
}

/// Where [`decode64_e4m3_table`] puts code `p` (< 64) of its 64: at element `16 v + 4 L + d`
/// (vector `v`, 128-bit lane `L`, 32-bit element `d`) for `p = 16 L + 8 (v / 2) + 2 d + v % 2`
/// (the byte unpacks take bytes 0-7 / 8-15 of each lane, the shift / mask the even / odd one
/// of each pair).
pub(crate) const fn table_position(p: usize) -> usize {
    let (lane, r) = (p / 16, p % 16);
    let (half, d, odd) = (r / 8, r % 8 / 2, r % 2);
    16 * (2 * half + odd) + 4 * lane + d
}

/// Weight columns per pass of `dot_table_f32`: one accumulator each, 8 streams from memory.
/// Measured (1 x 8192 x 8192, Zen 4): 8 columns 3.85 ms, 4 columns with two accumulators
/// each 4.3 ms, 16 columns 8.5 ms (register spills).
const BF16_COLS: usize = 8;

/// One activation row (permuted, see `permute_activations`) against `ncols` E4M3 weight
/// rows decoded by [`decode64_e4m3_table`], then float32 FMA. Exact decode, so the sums are
/// those of the float32 kernel up to order. A NaN code decodes to NaN, which the FMAs carry
/// into its column's sum (as in the reference); no check is needed.
///
/// # Safety
/// AVX-512 F + BW + VL + VBMI available; `xp` holds ceil(klen / 64) blocks of 64 floats
/// (zero past klen), `w` `ncols` rows of klen bytes `ldw` apart, `out` `ncols` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn dot_table_f32(
    klen: usize,
    xp: *const f32,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    tables: &E4m3Bf16Tables,
    out: *mut f32,
) {
    const C: usize = BF16_COLS;
    let blocks = klen.div_ceil(64);
    let tail_mask = match klen % 64 {
        0 => u64::MAX,
        t => (1u64 << t) - 1,
    };
    // SAFETY: the features are enabled; weight blocks are loaded unmasked only when all 64
    // bytes lie inside the caller's rows (every block but a partial last one), the last one
    // masked to klen bytes; activation blocks are inside `xp` (padded).
    unsafe {
        let t = TableRegs::load(tables);
        let mut j = 0;
        while j < ncols {
            // Past the last column, the last one is computed again and not stored.
            let wr: [*const u8; C] =
                std::array::from_fn(|c| w.offset((j + c).min(ncols - 1) as isize * ldw));
            let mut acc = [_mm512_setzero_ps(); C];
            for blk in 0..blocks {
                let mask = if blk + 1 == blocks {
                    tail_mask
                } else {
                    u64::MAX
                };
                for row in wr {
                    prefetch_next(row, C, ldw, 64 * blk);
                }
                let xb = xp.add(64 * blk);
                let xv: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(xb.add(16 * v)));
                for c in 0..C {
                    // Unmasked where the block is whole: a zero-masked load costs a vector
                    // ALU uop on Intel cores, on the ports this decode saturates.
                    let v = if mask == u64::MAX {
                        _mm512_loadu_si512(wr[c].add(64 * blk).cast())
                    } else {
                        _mm512_maskz_loadu_epi8(mask, wr[c].add(64 * blk).cast())
                    };
                    let d = decode64_e4m3_table(&t, v);
                    for (dv, xv) in d.into_iter().zip(xv) {
                        acc[c] = _mm512_fmadd_ps(dv, xv, acc[c]);
                    }
                }
            }
            for c in 0..C.min(ncols - j) {
                *out.add(j + c) = _mm512_reduce_add_ps(acc[c]);
            }
            j += C;
        }
    }
}
