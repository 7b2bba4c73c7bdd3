//! The GEMV path: `m <= GEMV_MAX_M` (32) rows times FP8 weights stored along K (`b = w.T` of an
//! `[out, in]` weight, so column `j` of `b` is the contiguous row `w[j]`).
//!
//! Each output is a dot product of an activation row with a weight row. The activation rows
//! (at most 8 x k floats) are converted to float32 once and stay in L1/L2; the weight rows are
//! streamed from memory exactly once, as bytes. Unlike the GEMM microkernel, these kernels
//! decode FP8 in registers: this path is bound by memory bandwidth (one multiply-add per
//! weight byte per row), so a few extra instructions per 16 bytes are free, while packing the
//! weights first would write and re-read 4x the bytes the path exists to avoid. Up to 32 rows
//! this beats packing: rows go in groups of 8 over 64-column slices of the weights that stay
//! in L2 between groups.
//!
//! One activation row times E4M3 weights (LLM decoding) has one more kernel where the CPU has
//! AVX-512 VBMI: `vpermi2b` looks up the bfloat16 pattern of 64 weight bytes at a time in two
//! 128-byte tables, and word unpacks widen it to float32 for FMA (`x86::dot_table_f32`). All
//! kernels prefetch the next column group's weights.
//!
//! Threads split the output columns; K is never split, and each column's sum is formed by the
//! same operations whatever the split, so results do not depend on the thread count.

use super::{CPtr, Elems, Mat, ScalePlan};
use crate::arch::Isa;
use crate::format::Format;
use crate::scalar::tables;
use crate::threads;

/// How a dot kernel reads the weight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Weights {
    /// E5M2 codes.
    E5M2,
    /// E4M3 codes.
    E4M3,
    /// E4M3 codes read as binary16 with E4M3's exponent field, i.e. the value times 2^-8, while
    /// the activations were multiplied by 2^8: both scalings are exact (no activation is
    /// within 2^8 of overflow, checked; the smallest E4M3 value, 2^-9, becomes 2^-17, a
    /// binary16 subnormal), so every product and sum is bit for bit the same, and the kernel
    /// saves a multiplication per 16 weights.
    E4M3TimesTwoPowMinus8,
}

/// Dot-product kernel: `out[r * ncols + j] = sum_p x[r * ldx + p] * decode(w[j * ldw + p])`
/// for `r < rows`, `j < ncols`, `p < klen`.
type DotFn = unsafe fn(usize, *const f32, usize, usize, *const u8, isize, usize, Weights, *mut f32);

/// Columns per work item.
const COLS_PER_ITEM: usize = 64;

/// Activation rows per kernel pass (the kernels' register blocking).
const ROW_GROUP: usize = 8;

/// # Safety
/// As [`super::compute`]; `b` is FP8 with `b.rs == 1` (or `k == 1`), `a.rows <= GEMV_MAX_M`.
pub(crate) unsafe fn gemv(isa: Isa, a: Mat, b: Mat, plan: &ScalePlan<'_>, c: CPtr, ldc: isize) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let Elems::Fp8(_, fmt) = b.elems else {
        unreachable!("the GEMV path is only taken for FP8 weights")
    };
    // Activation rows as contiguous float32.
    let mut x = vec![0.0f32; m * k];
    for (i, row) in x.chunks_exact_mut(k).enumerate() {
        // SAFETY: row i of A is inside A.
        unsafe { load_row(a, i, row) };
    }
    // Pre-scale the activations for the SIMD E4M3 kernels when exact (see `Weights`).
    let mut weights = if fmt == Format::E4M3 {
        Weights::E4M3
    } else {
        Weights::E5M2
    };
    // One row times E4M3 weights on AVX-512 with VBMI decodes the weights by table lookup
    // straight to float32 (`x86::dot_table_f32`). Measured on Zen 4, one thread,
    // 1 x 8192 x 8192 with prefetching: 3.3-3.4 ms against 4.2 ms for the binary16 decode of
    // `dot512`. (A variant multiplying table-decoded bfloat16 weights with `vdpbf16ps` against
    // activations split into three bfloat16 parts was 2-3% faster and much subtler: not kept.)
    #[cfg(target_arch = "x86_64")]
    let table_f32 = matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
        && m == 1
        && n >= TABLE_MIN_COLS
        && fmt == Format::E4M3
        && x86::has_vbmi();
    #[cfg(not(target_arch = "x86_64"))]
    let table_f32 = false;
    let safe = x.iter().all(|v| !v.is_finite() || v.abs() < 2f32.powi(119));
    if weights == Weights::E4M3 && isa != Isa::Scalar && safe && !table_f32 {
        x.iter_mut().for_each(|v| *v *= 256.0);
        weights = Weights::E4M3TimesTwoPowMinus8;
    }
    let dot: DotFn = match isa {
        Isa::Scalar => dot_scalar,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::dot_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => x86::dot_avx512,
        #[cfg(not(target_arch = "x86_64"))]
        _ => dot_scalar,
    };
    let seg = if plan.along_k() { plan.block } else { k };
    #[cfg(target_arch = "x86_64")]
    let seg_pad = seg.div_ceil(64) * 64;
    #[cfg(target_arch = "x86_64")]
    let xp = if table_f32 {
        permute_activations(&x, k, seg, seg_pad)
    } else {
        Vec::new()
    };
    #[cfg(target_arch = "x86_64")]
    let tables = x86::E4m3Bf16Tables::new();
    let items = n.div_ceil(COLS_PER_ITEM);
    let parallel = threads::num_threads() > 1 && items > 1 && m * n * k >= 1 << 18;
    let x = &x[..];
    let item = |it: usize| {
        let j0 = it * COLS_PER_ITEM;
        let ncols = COLS_PER_ITEM.min(n - j0);
        let mut part = [0.0f32; ROW_GROUP * COLS_PER_ITEM];
        let mut sa = [1.0f32; super::GEMV_MAX_M];
        let mut sb = [1.0f32; COLS_PER_ITEM];
        for (kb, k0) in (0..k).step_by(seg).enumerate() {
            let klen = seg.min(k - k0);
            plan.fill(kb, 0, &mut sa[..m], j0, &mut sb[..ncols]);
            let w = match b.elems {
                Elems::Fp8(p, _) => p.wrapping_offset(j0 as isize * b.cs + k0 as isize),
                _ => unreachable!("checked above"),
            };
            // Rows in groups of 8: the item's weight columns (COLS_PER_ITEM x k bytes) come
            // from memory for the first group and from L2 for the others.
            for g0 in (0..m).step_by(ROW_GROUP) {
                let rows = ROW_GROUP.min(m - g0);
                if table_f32 {
                    // SAFETY: as below; with `table_f32`, m == 1 and `xp` holds segment `kb`
                    // from `kb * seg_pad` on, ceil(klen / 64) blocks of 64; `table_f32` implies
                    // AVX-512 (the active ISA is at least that) and VBMI (detected).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::dot_table_f32(
                            klen,
                            xp[kb * seg_pad..].as_ptr(),
                            x[k0..].as_ptr(),
                            w,
                            b.cs,
                            ncols,
                            &tables,
                            part.as_mut_ptr(),
                        )
                    };
                } else {
                    // SAFETY: columns j0..j0+ncols of B, rows k0..k0+klen, are inside B
                    // (contiguous along K); x rows hold k floats; `part` holds rows * ncols
                    // floats; the kernel for `isa` was selected from an available ISA.
                    unsafe {
                        dot(
                            klen,
                            x[g0 * k + k0..].as_ptr(),
                            k,
                            rows,
                            w,
                            b.cs,
                            ncols,
                            weights,
                            part.as_mut_ptr(),
                        )
                    };
                }
                for r in 0..rows {
                    let i = g0 + r;
                    for j in 0..ncols {
                        let t = part[r * ncols + j] * sb[j];
                        // SAFETY: (i, j0 + j) is inside C; items write disjoint columns.
                        unsafe {
                            let d = c.at(i, j0 + j, ldc);
                            *d = if k0 == 0 { t * sa[i] } else { *d + t * sa[i] };
                        }
                    }
                }
            }
        }
    };
    if parallel {
        threads::for_each((0..items).collect(), item);
    } else {
        (0..items).for_each(item);
    }
}

#[cfg(target_arch = "x86_64")]
/// Fewest output columns for which the table kernel is used (its activations are permuted
/// once per call, serially; narrower products keep the binary16-decode kernels).
const TABLE_MIN_COLS: usize = 512;

/// One activation row in the order `dot_table_f32` multiplies it: per K segment of `seg`
/// (padded with zeros to `seg_pad`, a multiple of 64), per 64-element block, four vectors of
/// 16: the kernel's decoded weights come from a byte unpack (low / high per 128-bit lane) of the
/// two table lookups, widened from bfloat16 to float32 with word unpacks, so vector `v`, lane `L`, element `i < 4` holds block element
/// `16 L + 4 v + i`.
#[cfg(target_arch = "x86_64")]
fn permute_activations(x: &[f32], k: usize, seg: usize, seg_pad: usize) -> Vec<f32> {
    let mut xp = vec![0.0f32; k.div_ceil(seg) * seg_pad];
    for (s, seg_vals) in x[..k].chunks(seg).enumerate() {
        let seg_out = &mut xp[s * seg_pad..];
        for (p, &v) in seg_vals.iter().enumerate() {
            let (block, pos) = (p / 64, p % 64);
            let (lane, vec, i) = (pos / 16, pos % 16 / 4, pos % 4);
            seg_out[block * 64 + 16 * vec + 4 * lane + i] = v;
        }
    }
    xp
}

/// Row `i` of `a` as float32.
///
/// # Safety
/// `a` must address its whole matrix.
unsafe fn load_row(a: Mat, i: usize, row: &mut [f32]) {
    let base = i as isize * a.rs;
    macro_rules! gather {
        ($p:expr, $conv:expr) => {
            for (p, slot) in row.iter_mut().enumerate() {
                // SAFETY: (i, p) is inside A.
                *slot = $conv(unsafe { *$p.offset(base + p as isize * a.cs) });
            }
        };
    }
    match a.elems {
        Elems::Fp8(p, f) => {
            let t = tables::f32_table(f);
            gather!(p, |v: u8| t[usize::from(v)])
        }
        Elems::F32(p) => gather!(p, |v: f32| v),
        Elems::F16(p) => gather!(p, half::f16::to_f32),
        Elems::Bf16(p) => gather!(p, half::bf16::to_f32),
    }
}

/// Portable dot kernel: table decode, float64-formed multiply-add (see `kernels`).
///
/// # Safety
/// See [`DotFn`]: `x` holds `rows` rows of `klen` floats `ldx` apart, `w` `ncols` rows of
/// `klen` bytes `ldw` apart, `out` `rows * ncols` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_scalar(
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
    let t = match weights {
        Weights::E5M2 => tables::f32_table(Format::E5M2),
        Weights::E4M3 => tables::f32_table(Format::E4M3),
        Weights::E4M3TimesTwoPowMinus8 => unreachable!("only chosen for the SIMD kernels"),
    };
    for j in 0..ncols {
        // SAFETY: weight row j holds klen bytes.
        let wr = unsafe { std::slice::from_raw_parts(w.offset(j as isize * ldw), klen) };
        for r in 0..rows {
            // SAFETY: activation row r holds klen floats.
            let xr = unsafe { std::slice::from_raw_parts(x.add(r * ldx), klen) };
            let mut acc = 0.0f32;
            for (&xv, &wv) in xr.iter().zip(wr) {
                acc = (f64::from(acc) + f64::from(xv) * f64::from(t[usize::from(wv)])) as f32;
            }
            // SAFETY: (r, j) is inside `out`.
            unsafe { *out.add(r * ncols + j) = acc };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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

    use super::Weights;

    #[inline(always)]
    unsafe fn decode16_e5m2(bytes: __m128i) -> __m512 {
        // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VL.
        unsafe { _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8)) }
    }

    /// E4M3 -> float32 times 2^-8 (binary16 reading), NaN codes not handled.
    #[inline(always)]
    unsafe fn decode16_e4m3_scaled_no_nan(bytes: __m128i) -> __m512 {
        // SAFETY: register-only intrinsics; the caller enables AVX-512 F + BW + VL.
        unsafe {
            _mm512_cvtph_ps(_mm256_and_si256(
                _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
                _mm256_set1_epi16(0xBF80u16 as i16),
            ))
        }
    }

    #[inline(always)]
    unsafe fn decode16_e4m3(bytes: __m128i) -> __m512 {
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
    pub(super) unsafe fn dot_avx512(
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

    /// Prefetches into L2 the byte at offset `p` of the weight row `cols` rows after `row`: the
    /// row the next column group reads at this point. The kernels stream C rows side by side;
    /// requesting the next group's rows while this one is decoded keeps more DRAM requests in
    /// flight than the hardware prefetchers do on their own. Measured (1 thread, Zen 4),
    /// 1 x 8192 x 8192: bfloat16 kernel 3.8 -> 3.3 ms, AVX-512 E4M3 4.4 -> 4.2, E5M2 3.8 ->
    /// 3.45, AVX2 6.0 -> 5.5 / 5.3 -> 4.6; 8 x 4096 x 4096: AVX-512 3.6 -> 3.1 ms. A distance of
    /// two groups was no better. Past the last column the address is outside the weights:
    /// prefetches do not fault, and the pointer is formed with wrapping arithmetic.
    #[inline(always)]
    fn prefetch_next(row: *const u8, cols: usize, ldw: isize, p: usize) {
        let ahead = row.wrapping_offset(cols as isize * ldw + p as isize);
        // SAFETY: a prefetch is a hint; it reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.cast()) };
    }

    /// Whether the CPU has AVX-512 VBMI (`vpermi2b`), which `dot_table_f32` needs besides
    /// AVX-512 F + BW + VL.
    pub(super) fn has_vbmi() -> bool {
        std::arch::is_x86_feature_detected!("avx512vbmi")
    }

    /// The bfloat16 bit pattern of every E4M3 magnitude (code & 0x7F) as two 128-byte tables
    /// (high and low byte). Every finite E4M3 value is exact in bfloat16 (3 mantissa bits,
    /// exponents -9..8); the NaN magnitude 0x7F maps to the bfloat16 NaN 0x7FC0, whose high
    /// byte is above that of any finite magnitude (448 is 0x43E0): the kernel recognizes NaN
    /// by that byte alone.
    pub(super) struct E4m3Bf16Tables {
        high: [u8; 128],
        low: [u8; 128],
    }

    /// High bytes from here up belong to NaN only.
    const NAN_HIGH_BYTE: i8 = 0x44;

    impl E4m3Bf16Tables {
        pub(super) fn new() -> Self {
            let values = super::tables::f32_table(super::Format::E4M3);
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

    /// Weight columns per pass of `dot_table_f32`: one accumulator each, 8 streams from memory.
    /// Measured (1 x 8192 x 8192, Zen 4): 8 columns 3.85 ms, 4 columns with two accumulators
    /// each 4.3 ms, 16 columns 8.5 ms (register spills).
    const BF16_COLS: usize = 8;

    /// One activation row (permuted, see `permute_activations`) against `ncols` E4M3 weight
    /// rows decoded by the bfloat16 tables (`E4m3Bf16Tables`) and widened to float32 (a bfloat16
    /// is the top half of its float32), then float32 FMA: per 64 bytes two `vpermi2b`, a
    /// `vpternlogd`, two byte and four word unpacks instead of four sign extensions, shifts,
    /// masks and `vcvtph2ps`. Exact decode, so the sums are those of the float32 kernel up to
    /// order. A 64-byte block holding a NaN code sends the column group to the float32 kernel.
    ///
    /// # Safety
    /// AVX-512 F + BW + VL + VBMI available; `xp` holds ceil(klen / 64) blocks of 64 floats
    /// (zero past klen), `x` klen floats, `w` `ncols` rows of klen bytes `ldw` apart, `out`
    /// `ncols` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    pub(super) unsafe fn dot_table_f32(
        klen: usize,
        xp: *const f32,
        x: *const f32,
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
        // SAFETY: the features are enabled; weight loads are masked to klen bytes of the
        // caller's rows, activation blocks are inside `xp` (padded).
        unsafe {
            let high0 = _mm512_loadu_si512(tables.high.as_ptr().cast());
            let high1 = _mm512_loadu_si512(tables.high[64..].as_ptr().cast());
            let low0 = _mm512_loadu_si512(tables.low.as_ptr().cast());
            let low1 = _mm512_loadu_si512(tables.low[64..].as_ptr().cast());
            let sign = _mm512_set1_epi8(-128);
            let nan_high = _mm512_set1_epi8(NAN_HIGH_BYTE);
            let zero = _mm512_setzero_si512();
            let mut j = 0;
            while j < ncols {
                // Past the last column, the last one is computed again and not stored.
                let wr: [*const u8; C] =
                    std::array::from_fn(|c| w.offset((j + c).min(ncols - 1) as isize * ldw));
                let mut acc = [_mm512_setzero_ps(); C];
                let mut has_nan = false;
                for blk in 0..blocks {
                    let mask = if blk + 1 == blocks {
                        tail_mask
                    } else {
                        u64::MAX
                    };
                    for row in wr {
                        prefetch_next(row, C, ldw, 64 * blk);
                    }
                    // Decoded vectors go straight into the FMAs (4 x C would not fit the
                    // registers); a NaN found afterwards discards the group's sums anyway.
                    let xb = xp.add(64 * blk);
                    let xv: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(xb.add(16 * v)));
                    let mut nan = 0u64;
                    for c in 0..C {
                        let v = _mm512_maskz_loadu_epi8(mask, wr[c].add(64 * blk).cast());
                        let high = _mm512_permutex2var_epi8(high0, v, high1);
                        let low = _mm512_permutex2var_epi8(low0, v, low1);
                        nan |= _mm512_cmpge_epu8_mask(high, nan_high);
                        // high | (v & sign), ternary-logic truth table A | (B & C).
                        let high = _mm512_ternarylogic_epi32::<0xF8>(high, v, sign);
                        let h0 = _mm512_unpacklo_epi8(low, high);
                        let h1 = _mm512_unpackhi_epi8(low, high);
                        let d = [
                            _mm512_unpacklo_epi16(zero, h0),
                            _mm512_unpackhi_epi16(zero, h0),
                            _mm512_unpacklo_epi16(zero, h1),
                            _mm512_unpackhi_epi16(zero, h1),
                        ];
                        for (dv, xv) in d.into_iter().zip(xv) {
                            acc[c] = _mm512_fmadd_ps(_mm512_castsi512_ps(dv), xv, acc[c]);
                        }
                    }
                    if nan != 0 {
                        has_nan = true;
                        break;
                    }
                }
                let count = C.min(ncols - j);
                if has_nan {
                    dot512::<1, C, 1>(
                        klen,
                        x,
                        0,
                        w.offset(j as isize * ldw),
                        ldw,
                        count,
                        out.add(j),
                    );
                } else {
                    for c in 0..count {
                        *out.add(j + c) = _mm512_reduce_add_ps(acc[c]);
                    }
                }
                j += C;
            }
        }
    }

    #[inline(always)]
    unsafe fn decode8_e5m2(bytes: __m128i) -> __m256 {
        // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
        unsafe { _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8)) }
    }

    /// E4M3 -> float32 times 2^-8 (binary16 reading), NaN codes not handled.
    #[inline(always)]
    unsafe fn decode8_e4m3_scaled_no_nan(bytes: __m128i) -> __m256 {
        // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
        unsafe {
            _mm256_cvtph_ps(_mm_and_si128(
                _mm_slli_epi16(_mm_cvtepi8_epi16(bytes), 7),
                _mm_set1_epi16(0xBF80u16 as i16),
            ))
        }
    }

    #[inline(always)]
    unsafe fn decode8_e4m3(bytes: __m128i) -> __m256 {
        // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
        unsafe {
            let wide = _mm_cvtepi8_epi16(bytes);
            let h = _mm_and_si128(_mm_slli_epi16(wide, 7), _mm_set1_epi16(0xBF80u16 as i16));
            let nan = _mm_cmpeq_epi16(
                _mm_and_si128(wide, _mm_set1_epi16(0x7F)),
                _mm_set1_epi16(0x7F),
            );
            let h = _mm_blendv_epi8(h, _mm_set1_epi16(0x7E00), nan);
            _mm256_cvtph_ps(h)
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C available; as `DotFn`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_avx2(
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
                unsafe { dot256::<$r, $c>(klen, x, ldx, w, ldw, ncols, weights, out) }
            };
        }
        // R * C accumulators + C decoded vectors + one activation vector fit 16 ymm registers.
        match rows {
            1 => go!(1, 4),
            2 => go!(2, 4),
            3 => go!(3, 2),
            4 => go!(4, 2),
            5 => go!(5, 1),
            6 => go!(6, 1),
            7 => go!(7, 1),
            _ => go!(8, 1),
        }
    }

    /// `C` weight rows at a time against `R` activation rows, 8 weights per step.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn dot256<const R: usize, const C: usize>(
        klen: usize,
        x: *const f32,
        ldx: usize,
        w: *const u8,
        ldw: isize,
        ncols: usize,
        weights: Weights,
        out: *mut f32,
    ) {
        let main = klen - klen % 8;
        let mut j = 0;
        while j < ncols {
            // Past the last column, the last one is computed again and not stored.
            let cols: [usize; C] = std::array::from_fn(|c| (j + c).min(ncols - 1));
            // SAFETY: rows `cols` of w hold klen bytes, x rows klen floats; the tails are
            // copied into zero-padded buffers.
            unsafe {
                let wr: [*const u8; C] = cols.map(|c| w.offset(c as isize * ldw));
                let decode = |b: __m128i| match weights {
                    Weights::E5M2 => decode8_e5m2(b),
                    Weights::E4M3 => _mm256_mul_ps(decode8_e4m3(b), _mm256_set1_ps(256.0)),
                    Weights::E4M3TimesTwoPowMinus8 => decode8_e4m3(b),
                };
                let mut acc = [[_mm256_setzero_ps(); R]; C];
                let mut p = 0;
                if weights == Weights::E4M3TimesTwoPowMinus8 {
                    // As in `dot512`: look for NaN codes once per 32 bytes of the C rows, and
                    // decode without the fix-up while there are none.
                    let sign = _mm256_set1_epi8(-128);
                    let ones = _mm256_set1_epi8(-1);
                    while p + 32 <= main {
                        if p % 64 == 0 {
                            for row in wr {
                                prefetch_next(row, C, ldw, p);
                            }
                        }
                        let mut nan = _mm256_setzero_si256();
                        for row in wr {
                            let v = _mm256_loadu_si256(row.add(p).cast());
                            nan = _mm256_or_si256(
                                nan,
                                _mm256_cmpeq_epi8(_mm256_or_si256(v, sign), ones),
                            );
                        }
                        if _mm256_movemask_epi8(nan) != 0 {
                            break; // finish this row group with the NaN-aware loop below
                        }
                        for s in 0..4 {
                            let q = p + 8 * s;
                            let d: [__m256; C] = wr.map(|row| {
                                decode8_e4m3_scaled_no_nan(_mm_loadl_epi64(row.add(q).cast()))
                            });
                            for r in 0..R {
                                let xv = _mm256_loadu_ps(x.add(r * ldx + q));
                                for c in 0..C {
                                    acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                                }
                            }
                        }
                        p += 32;
                    }
                }
                while p < main {
                    if p % 64 == 0 {
                        for row in wr {
                            prefetch_next(row, C, ldw, p);
                        }
                    }
                    let d: [__m256; C] = wr.map(|row| decode(_mm_loadl_epi64(row.add(p).cast())));
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(x.add(r * ldx + p));
                        for c in 0..C {
                            acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                        }
                    }
                    p += 8;
                }
                if main < klen {
                    let n = klen - main;
                    let d: [__m256; C] = wr.map(|row| {
                        let mut tail = [0u8; 16];
                        std::ptr::copy_nonoverlapping(row.add(main), tail.as_mut_ptr(), n);
                        decode(_mm_loadl_epi64(tail.as_ptr().cast()))
                    });
                    for r in 0..R {
                        let mut tx = [0.0f32; 8];
                        std::ptr::copy_nonoverlapping(x.add(r * ldx + main), tx.as_mut_ptr(), n);
                        let xv = _mm256_loadu_ps(tx.as_ptr());
                        for c in 0..C {
                            acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                        }
                    }
                }
                for c in 0..C {
                    if j + c < ncols {
                        for r in 0..R {
                            // Fixed-order horizontal sum: (lo + hi) halves, then pairs.
                            let a = acc[c][r];
                            let s =
                                _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                            *out.add(r * ncols + j + c) = _mm_cvtss_f32(s);
                        }
                    }
                }
            }
            j += C;
        }
    }
}
