//! Matrix multiplication with FP8 operands: `C = (A * scale_a) @ (B * scale_b)`.
//!
//! Products are formed exactly (FP8 x FP8 in float32 or bfloat16 -> float32 dot products,
//! wider operands through fused multiply-add) and accumulated in float32, so every output is
//! within `(k + 2) * 2^-23 * (|A| @ |B|)` of the float64 reference.
//!
//! # The loop nest (BLIS, with the operands' cache roles swapped)
//!
//! ```text
//! for i0 in (0..m).step_by(MC)                     // A block of MC rows (4088: every m of
//!                                                  // a usual call is one block)
//!   for k0 in (0..k).step_by(KC)                   // whole scale blocks if scales vary along K
//!     pack A[i0.., k0..] into MR-tall panels       // once per call and K chunk, all threads
//!     parallel for (column block, row part) items  // threads over N (and M), never over K
//!       pack B[k0.., j0..j0+NC] into NR panels     // FP8 decoded here, kept in the thread's L2
//!       for each MR panel of A                     // A micro-panel stays in L1
//!         for each NR panel of the B block         // B streamed from L2
//!           microkernel, per scale block t of the K block (one if no scale varies along K):
//!             tile = A_t @ B_t (registers); C = (first ? 0 : C) + tile * sb_t[col] * sa_t[row]
//! ```
//!
//! The vector operand (B, NR = 32 floats per K step on AVX-512) is the one streamed from L2
//! and the broadcast one (A, MR = 14) the one kept in L1, so that K chunks can be long (few
//! passes over C) while the L1-resident micro-panel stays small: 14 x 512 floats = 28 KiB.
//! A is packed once per K chunk for every column block (earlier the A block was packed
//! again for every NC block of B), and each B block is packed into an L2-sized buffer by
//! the thread that uses it (earlier into one multi-MiB buffer, written out to L3 and read
//! back). Measured on the Intel Xeon (one thread, k = n = 4096, float32 x E4M3, against the
//! old nest in the same run): m = 128 1.06-1.13x / 2048 1.05-1.10x faster.
//!
//! Every output tile is computed by the same sequence of operations whatever the thread count
//! (tile boundaries are multiples of MR / NR from the origin, the K partition is fixed), so
//! results are bitwise independent of the number of threads. The first K block overwrites C
//! (beta = 0), so whatever `out` held before (NaN included) never leaks into the result.
//!
//! Small `m` with FP8 weights stored along K (`b = w.T`) takes the GEMV path (`gemv.rs`), and
//! with FP8 weights stored `[in, out]` (unit column stride) the axpy path (`axpy.rs`); both
//! stream the FP8 bytes straight from memory. The crossovers are measured ([`crossovers`]).

use half::{bf16, f16};
use ndarray::{ArrayView2, ArrayViewD, ArrayViewMutD};

use crate::arch::{self, Isa};
use crate::error::{Error, Result};
use crate::format::Format;

pub(crate) mod axpy;
pub(crate) mod driver;
pub(crate) mod gemv;
mod pack;
mod scratch;
#[cfg(test)]
mod tests;

/// A matrix operand (or a stack of them: leading dimensions are batch dimensions).
#[derive(Clone, Debug)]
pub enum Operand<'a> {
    /// FP8 bit patterns in the given format.
    Fp8(ArrayViewD<'a, u8>, Format),
    /// float32.
    F32(ArrayViewD<'a, f32>),
    /// float16.
    F16(ArrayViewD<'a, f16>),
    /// bfloat16.
    Bf16(ArrayViewD<'a, bf16>),
}

/// The output array (same shape as the result of `numpy.matmul`).
#[derive(Debug)]
pub enum Output<'a> {
    /// float32.
    F32(ArrayViewMutD<'a, f32>),
    /// float16 (rounded to nearest even from the float32 result).
    F16(ArrayViewMutD<'a, f16>),
    /// bfloat16 (rounded to nearest even from the float32 result).
    Bf16(ArrayViewMutD<'a, bf16>),
}

/// Scales of both operands, as 2-D float32 arrays (a per-tensor scale is `1 x 1`).
///
/// `scale_a` has shape `(1 | m | ceil(m/block), 1 | ceil(k/block))`,
/// `scale_b` has shape `(1 | ceil(k/block), 1 | n | ceil(n/block))`. They are shared by
/// every matrix of a batch.
#[derive(Clone, Debug, Default)]
pub struct Scales<'a> {
    /// Dequantization multipliers of `a` (`None`: 1).
    pub a: Option<ArrayView2<'a, f32>>,
    /// Dequantization multipliers of `b` (`None`: 1).
    pub b: Option<ArrayView2<'a, f32>>,
    /// Block size of block scales (DeepSeek-V3: 128).
    pub block: usize,
}

impl Operand<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Operand::Fp8(v, _) => v.shape(),
            Operand::F32(v) => v.shape(),
            Operand::F16(v) => v.shape(),
            Operand::Bf16(v) => v.shape(),
        }
    }

    fn strides(&self) -> &[isize] {
        match self {
            Operand::Fp8(v, _) => v.strides(),
            Operand::F32(v) => v.strides(),
            Operand::F16(v) => v.strides(),
            Operand::Bf16(v) => v.strides(),
        }
    }

    /// The element pointer with the batch offset `offset` (in elements) applied.
    fn elems(&self, offset: isize) -> Elems {
        // `wrapping_offset`: the offset is inside the array (computed from valid indices), and
        // is only dereferenced through the packing routines.
        match self {
            Operand::Fp8(v, f) => Elems::Fp8(v.as_ptr().wrapping_offset(offset), *f),
            Operand::F32(v) => Elems::F32(v.as_ptr().wrapping_offset(offset)),
            Operand::F16(v) => Elems::F16(v.as_ptr().wrapping_offset(offset)),
            Operand::Bf16(v) => Elems::Bf16(v.as_ptr().wrapping_offset(offset)),
        }
    }
}

impl Output<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Output::F32(v) => v.shape(),
            Output::F16(v) => v.shape(),
            Output::Bf16(v) => v.shape(),
        }
    }
}

/// Typed pointer to the first element of a matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Elems {
    Fp8(*const u8, Format),
    F32(*const f32),
    F16(*const f16),
    Bf16(*const bf16),
}

/// A strided matrix view without a lifetime, for the packing routines.
/// `elem(r, c)` is at `ptr + r * rs + c * cs` (in elements).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub elems: Elems,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: `Elems` (and `Mat`) are only built from array views that outlive the call using
// them, and are only read through; sharing read-only pointers between the worker threads is
// sound.
unsafe impl Send for Elems {}
// SAFETY: as above, the pointed-to data is never written while an `Elems` exists.
unsafe impl Sync for Elems {}

impl Mat {
    pub(crate) fn is_fp8(&self) -> bool {
        matches!(self.elems, Elems::Fp8(..))
    }

    /// Element `(r, c)` as float64.
    ///
    /// # Safety
    /// `(r, c)` must be inside the matrix, whose pointer addresses all of it.
    unsafe fn get(&self, r: usize, c: usize) -> f64 {
        let off = r as isize * self.rs + c as isize * self.cs;
        // SAFETY: forwarded from the caller.
        unsafe {
            match self.elems {
                Elems::Fp8(p, f) => {
                    f64::from(crate::scalar::tables::f32_table(f)[usize::from(*p.offset(off))])
                }
                Elems::F32(p) => f64::from(*p.offset(off)),
                Elems::F16(p) => f64::from((*p.offset(off)).to_f32()),
                Elems::Bf16(p) => f64::from((*p.offset(off)).to_f32()),
            }
        }
    }
}

/// How one dimension of a scale array maps an index to a scale entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScaleMap {
    /// Length 1: the same scale everywhere.
    Broadcast,
    /// One scale per index.
    Full,
    /// One scale per `block` indices.
    Blocked,
}

impl ScaleMap {
    fn index(self, i: usize, block: usize) -> usize {
        match self {
            ScaleMap::Broadcast => 0,
            ScaleMap::Full => i,
            ScaleMap::Blocked => i / block,
        }
    }
}

/// A validated scale array of one operand: `outer` maps the M (for `a`) or N (for `b`) index,
/// `along_k` says whether the scale changes every `block` steps of K.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleSpec<'a> {
    view: ArrayView2<'a, f32>,
    outer: ScaleMap,
    along_k: bool,
    /// True for `a` (shape `(outer, k)`), false for `b` (shape `(k, outer)`).
    is_a: bool,
}

impl ScaleSpec<'_> {
    /// The scale of outer index `i` in K block `kb`.
    #[inline]
    pub(crate) fn at(&self, i: usize, kb: usize, block: usize) -> f32 {
        let o = self.outer.index(i, block);
        let kk = if self.along_k { kb } else { 0 };
        if self.is_a {
            self.view[[o, kk]]
        } else {
            self.view[[kk, o]]
        }
    }
}

/// Validated scales of both operands for an `m x k @ k x n` product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalePlan<'a> {
    pub a: Option<ScaleSpec<'a>>,
    pub b: Option<ScaleSpec<'a>>,
    pub block: usize,
}

impl ScalePlan<'_> {
    /// Whether a scale changes along K, so that every K block must be scaled on its own.
    pub(crate) fn along_k(&self) -> bool {
        self.a.is_some_and(|s| s.along_k) || self.b.is_some_and(|s| s.along_k)
    }

    /// Fill `sa[i] = scale_a(i0 + i, kb)` and `sb[j] = scale_b(kb, j0 + j)` (1 when absent).
    pub(crate) fn fill(&self, kb: usize, i0: usize, sa: &mut [f32], j0: usize, sb: &mut [f32]) {
        for (i, s) in sa.iter_mut().enumerate() {
            *s = self.a.map_or(1.0, |a| a.at(i0 + i, kb, self.block));
        }
        for (j, s) in sb.iter_mut().enumerate() {
            *s = self.b.map_or(1.0, |b| b.at(j0 + j, kb, self.block));
        }
    }
}

fn shape_str(s: &[usize]) -> String {
    match s {
        [x] => format!("({x},)"),
        _ => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn dim_map(len: usize, full: usize, block: usize) -> Option<ScaleMap> {
    if len == 1 {
        Some(ScaleMap::Broadcast)
    } else if len == full {
        Some(ScaleMap::Full)
    } else if len == full.div_ceil(block) {
        Some(ScaleMap::Blocked)
    } else {
        None
    }
}

/// The 2-D scale shapes accepted for an operand with `outer` rows (`a`) or columns (`b`)
/// and `kb` K blocks, listed plainly: `"(1, 1), (3, 1) or (3, 2)"`.
fn accepted_scale_shapes(is_a: bool, outer: usize, kb: usize, block: usize) -> String {
    let mut outers = vec![1, outer, outer.div_ceil(block)];
    outers.dedup();
    outers.sort_unstable();
    outers.dedup();
    let mut ks = vec![1, kb];
    ks.dedup();
    let mut shapes: Vec<String> = Vec::new();
    for &o in &outers {
        for &kk in &ks {
            let s = if is_a {
                format!("({o}, {kk})")
            } else {
                format!("({kk}, {o})")
            };
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
    }
    match shapes.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => shapes.concat(),
    }
}

fn check_scale<'a>(
    name: &str,
    view: ArrayView2<'a, f32>,
    is_a: bool,
    outer: usize,
    k: usize,
    block: usize,
    operand: &[usize],
) -> Result<ScaleSpec<'a>> {
    let (o_len, k_len) = if is_a {
        (view.nrows(), view.ncols())
    } else {
        (view.ncols(), view.nrows())
    };
    let kb = k.div_ceil(block);
    let outer_map = dim_map(o_len, outer, block);
    let k_ok = k_len == 1 || k_len == kb;
    let (Some(outer_map), true) = (outer_map, k_ok) else {
        let shapes = accepted_scale_shapes(is_a, outer, kb, block);
        return Err(Error::value(format!(
            "{name} has shape {} but {} has shape {} (block {block}): expected a scalar or \
             one of the shapes {shapes}",
            shape_str(view.shape()),
            if is_a { "a" } else { "b" },
            shape_str(operand),
        )));
    };
    Ok(ScaleSpec {
        view,
        outer: outer_map,
        along_k: k_len > 1,
        is_a,
    })
}

/// Which microkernel family a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelChoice {
    Scalar,
    Avx2,
    Avx512,
    Avx512Bf16,
    Neon,
    NeonBf16,
}

/// The kernel for operands `a`, `b` on ISA `isa`: the bfloat16 dot-product kernel only when
/// both operands are exact in bfloat16 with products that are never denormal (`a_exact`,
/// `b_exact`, see [`bf16_dot_exact`]): FP8 operands, and bfloat16 activations times FP8
/// weights. Every FP8 value is exact in bfloat16 and products of two of them are exact in
/// float32, and their magnitudes (>= 2^-32) are far above float32's denormal range, so
/// `vdpbf16ps`' flush-to-zero of denormal inputs and outputs can never change a result.
/// float32 / float16 activations take the float32 kernel: a float32 value needs three
/// bfloat16 parts (three dot products, no faster than float32 FMA), a float16 needs two.
pub(crate) fn kernel_choice(isa: Isa, a_exact: bool, b_exact: bool) -> KernelChoice {
    match isa {
        Isa::Scalar => KernelChoice::Scalar,
        Isa::Avx2 => KernelChoice::Avx2,
        Isa::Avx512 => KernelChoice::Avx512,
        Isa::Avx512Bf16 if a_exact && b_exact => KernelChoice::Avx512Bf16,
        Isa::Avx512Bf16 => KernelChoice::Avx512,
        Isa::Neon => KernelChoice::Neon,
        Isa::NeonBf16 if a_exact && b_exact => KernelChoice::NeonBf16,
        Isa::NeonBf16 => KernelChoice::Neon,
    }
}

/// Smallest magnitude of a bfloat16 operand multiplied by FP8 on the bfloat16 dot-product
/// kernel, as a biased exponent: 2^-100. Such a value is a multiple of 2^-107 and an FP8
/// value one of 2^-16, so every product and every partial sum of them is zero or at least
/// 2^-123 in magnitude, never a float32 denormal that `vdpbf16ps` would flush to zero.
const BF16_DOT_MIN_EXPONENT: u16 = 127 - 100;

/// Whether `x` may go through the bfloat16 dot-product kernel exactly: FP8, or bfloat16 times
/// an FP8 `other` with every finite nonzero element of magnitude at least 2^-100 (one pass
/// over `x`; smaller values keep the float32 kernel).
///
/// # Safety
/// `x` must address its whole matrix.
unsafe fn bf16_dot_exact(x: &Mat, other: &Mat) -> bool {
    match x.elems {
        Elems::Fp8(..) => true,
        Elems::Bf16(p) if other.is_fp8() => (0..x.rows).all(|r| {
            (0..x.cols).all(|c| {
                // SAFETY: (r, c) is inside the matrix.
                let bits = unsafe { *p.offset(r as isize * x.rs + c as isize * x.cs) }.to_bits();
                let exp = (bits >> 7) & 0xFF;
                bits & 0x7FFF == 0 || exp >= BF16_DOT_MIN_EXPONENT
            })
        }),
        _ => false,
    }
}

/// Largest `m` per small-m path, by the kind of activations: the blocked GEMM takes over
/// above. Crossovers measured with 4096 x 4096 E4M3 weights, one thread, small-m path time
/// against blocked time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossovers {
    /// GEMV (weights stored along K, `w.T`), float32 / float16 / bfloat16 activations.
    pub gemv: usize,
    /// GEMV, FP8 activations (or bfloat16 ones on the `vdpbf16ps` kernel).
    pub gemv_fp8: usize,
    /// Axpy (weights stored `[in, out]`, `x @ w`), wider activations.
    pub axpy: usize,
    /// Axpy, FP8 activations.
    pub axpy_fp8: usize,
}

/// Where the bfloat16 dot-product kernel is the fast one (AMD Zen 4, measured 2026-11-29):
/// the GEMV path (rows in groups of 8, the weights re-read from L2) beats packing the weights
/// into float32 panels up to m = 128, and the twice-as-fast bfloat16 kernel for FP8
/// activations from m = 32. (Axpy: as below, not measured on Zen 4.)
pub const CROSSOVERS_BF16_DOT: Crossovers = Crossovers {
    gemv: 128,
    gemv_fp8: 32,
    axpy: 24,
    axpy_fp8: 16,
};

/// Elsewhere (Intel Xeon, Sapphire/Emerald-Rapids class, measured 2026-12-06 against the
/// blocked GEMM that packs A once and keeps B blocks in L2; ms, small-m / blocked, one
/// thread, best of 15 interleaved):
/// - GEMV, float32: m = 16 5.9-8.1 / 8.7, 24 11.9 / 9.9, 32 15.7 / 11.6, 48 24.2 / 14.9;
/// - GEMV, E4M3 (blocked on the FMA kernel): m = 16 5.9-7.9 / 8.4-8.6, 24 11.8 / 9.7,
///   32 11.8 / 11.4, 48 23.6 / 14.6;
/// - axpy, since AVX-512 decodes each weight tile once for all rows above 8 rows (same day,
///   later, thread CPU time, best of 15, two runs; float32 / bfloat16 / E4M3 activations):
///   m = 12 5.2-5.5 / 6.5-6.6, 16 6.1-6.6 / 7.7-8.0, 24 8.3-9.2 / 8.9-10.2, 32 10.5-15.9 /
///   11.0-12.0 (even within the noise), 48 17.2-18.6 / 14.8-15.8.
///
/// - axpy with the 64 x 64 tiles and 6-row register passes (later the same day, float32
///   activations, thread CPU time, best of 8-15): m = 32 7.7 / 7.8 (blocked taking the axpy
///   packing's gains), 40 9.6 / 12.4, 48 11.2 / 13.9, 64 15.1 / 17.8, 96 22.5 / 24.4,
///   128 28.5-29.5 / 31.3-31.9, 192 43.3 / 43.8, 256 55.3 / 57.9, 384 85.2 / 79.5. The
///   crossover is kept at 128 (`SMALL_M_MAX`), where the gain is clear.
///
/// (Before the blocked GEMM packed A once per call, its times were 23.8 ms at m = 32 and
/// 27.0 at 48 for the float32 GEMV shapes, and the crossovers 48 / 64 / 24 / 16. Before the
/// axpy tiles, axpy lost from m = 12: 8.4 / 6.4 ms; with the first tiles (16 x 192, 8-row
/// passes) the crossover was 32.)
pub const CROSSOVERS_FMA: Crossovers = Crossovers {
    gemv: 16,
    gemv_fp8: 16,
    axpy: 128,
    axpy_fp8: 128,
};

/// The crossovers of this CPU.
pub fn crossovers() -> Crossovers {
    #[cfg(target_arch = "x86_64")]
    if arch::x86_64::bf16_dot_is_fast() {
        return CROSSOVERS_BF16_DOT;
    }
    CROSSOVERS_FMA
}

/// Largest `m` of any small-m path (buffers of that many rows).
pub const SMALL_M_MAX: usize = 128;

/// `out = (a * scale_a) @ (b * scale_b)` with `numpy.matmul` shapes: `a` is `(..., m, k)`,
/// `b` is `(..., k, n)`, the batch dimensions broadcast, `out` is `(batch..., m, n)`.
/// Both operands have at least two dimensions (the caller promotes 1-D operands).
///
/// Uses the active ISA ([`arch::active`]) and the worker pool; the result does not depend on
/// the number of threads.
pub fn matmul(
    a: &Operand<'_>,
    b: &Operand<'_>,
    scales: &Scales<'_>,
    out: Output<'_>,
) -> Result<()> {
    matmul_isa(arch::active(), a, b, scales, out)
}

/// [`matmul`] on a given (available) ISA.
pub(crate) fn matmul_isa(
    isa: Isa,
    a: &Operand<'_>,
    b: &Operand<'_>,
    scales: &Scales<'_>,
    out: Output<'_>,
) -> Result<()> {
    let (ash, bsh) = (a.shape(), b.shape());
    if ash.len() < 2 || bsh.len() < 2 {
        return Err(Error::value(format!(
            "matmul operands need at least 2 dimensions, got a {} and b {}",
            shape_str(ash),
            shape_str(bsh)
        )));
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (kb, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != kb {
        return Err(Error::value(format!(
            "matmul: inner dimensions differ: a has shape {} (k = {k}) and b has shape {} \
             (k = {kb})",
            shape_str(ash),
            shape_str(bsh)
        )));
    }
    let batch = broadcast_batch(&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]).ok_or_else(|| {
        Error::value(format!(
            "matmul: batch dimensions of a {} and b {} do not broadcast",
            shape_str(ash),
            shape_str(bsh)
        ))
    })?;
    let mut expected = batch.clone();
    expected.extend([m, n]);
    if out.shape() != expected.as_slice() {
        return Err(Error::value(format!(
            "out has shape {} but a {} @ b {} has shape {}",
            shape_str(out.shape()),
            shape_str(ash),
            shape_str(bsh),
            shape_str(&expected)
        )));
    }
    if scales.block == 0 {
        return Err(Error::value("block must be >= 1"));
    }
    let plan = ScalePlan {
        a: scales
            .a
            .map(|v| check_scale("scale_a", v, true, m, k, scales.block, ash))
            .transpose()?,
        b: scales
            .b
            .map(|v| check_scale("scale_b", v, false, n, k, scales.block, bsh))
            .transpose()?,
        block: scales.block,
    };
    let nbatch: usize = batch.iter().product();
    let a_bstr = batch_strides(&batch, &ash[..ash.len() - 2], a.strides());
    let b_bstr = batch_strides(&batch, &bsh[..bsh.len() - 2], b.strides());
    let (a_rs, a_cs) = (a.strides()[ash.len() - 2], a.strides()[ash.len() - 1]);
    let (b_rs, b_cs) = (b.strides()[bsh.len() - 2], b.strides()[bsh.len() - 1]);
    let mut out = out;
    let mut tmp: Vec<f32> = Vec::new();
    // The float32 buffer `write_one` computes a float16 / bfloat16 or column-strided output in,
    // allocated fallibly here (its `resize` then reuses this capacity).
    let direct = matches!(&out, Output::F32(o) if n == 1 || o.strides().last() == Some(&1));
    if !direct && nbatch > 0 {
        let len = m.saturating_mul(n);
        crate::alloc::grow(&mut tmp, len, 0.0)
            .map_err(|r| r.for_what("the float32 result of a matmul"))?;
    }
    for bi in 0..nbatch {
        let (mut a_off, mut b_off) = (0isize, 0isize);
        let mut rest = bi;
        let mut idx = vec![0usize; batch.len()];
        for d in (0..batch.len()).rev() {
            idx[d] = rest % batch[d];
            rest /= batch[d];
            a_off += idx[d] as isize * a_bstr[d];
            b_off += idx[d] as isize * b_bstr[d];
        }
        let am = Mat {
            elems: a.elems(a_off),
            rows: m,
            cols: k,
            rs: a_rs,
            cs: a_cs,
        };
        let bm = Mat {
            elems: b.elems(b_off),
            rows: k,
            cols: n,
            rs: b_rs,
            cs: b_cs,
        };
        write_one(isa, am, bm, &plan, &mut out, &idx, &mut tmp)?;
    }
    Ok(())
}

/// Compute one matrix of the batch into `out[idx]`: straight into a float32 output whose
/// columns are contiguous, otherwise through a float32 buffer and a rounding copy.
fn write_one(
    isa: Isa,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    out: &mut Output<'_>,
    idx: &[usize],
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if let Output::F32(o) = out {
        let mut o2 = o.view_mut();
        for &i in idx {
            o2.index_axis_inplace(ndarray::Axis(0), i);
        }
        let (rs, cs) = (o2.strides()[0], o2.strides()[1]);
        if cs == 1 || n == 1 {
            let c = CPtr(o2.as_mut_ptr());
            // SAFETY: `c` addresses the m x n view `o2` (rows `rs` apart, columns contiguous),
            // borrowed mutably for the duration of the call.
            return unsafe { compute(isa, a, b, plan, c, rs) };
        }
    }
    tmp.clear();
    tmp.resize(m * n, 0.0);
    let c = CPtr(tmp.as_mut_ptr());
    // SAFETY: `tmp` holds m * n floats, row-major with row stride n.
    unsafe { compute(isa, a, b, plan, c, n as isize) }?;
    let src = ArrayView2::from_shape((m, n), &tmp[..]).expect("m * n buffer");
    macro_rules! copy_out {
        ($o:expr, $conv:expr) => {{
            let mut o2 = $o.view_mut();
            for &i in idx {
                o2.index_axis_inplace(ndarray::Axis(0), i);
            }
            ndarray::Zip::from(&mut o2)
                .and(&src.into_dyn())
                .for_each(|d, &s| *d = $conv(s));
        }};
    }
    match out {
        Output::F32(o) => copy_out!(o, |s: f32| s),
        Output::F16(o) => copy_out!(o, f16::from_f32),
        Output::Bf16(o) => copy_out!(o, bf16::from_f32),
    }
    Ok(())
}

/// Pointer to a float32 output matrix with unit column stride, shared by the worker threads,
/// each of which writes a disjoint set of tiles.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CPtr(pub *mut f32);

impl CPtr {
    /// The element `(i, j)` of C with row stride `ldc` (a method, so that closures capture the
    /// `Sync` wrapper rather than the raw pointer field).
    #[inline(always)]
    pub(crate) fn at(self, i: usize, j: usize, ldc: isize) -> *mut f32 {
        self.0.wrapping_offset(i as isize * ldc + j as isize)
    }
}
// SAFETY: the threads sharing a `CPtr` write disjoint elements (distinct M/N tiles).
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

/// `C = A @ B` for one `m x k @ k x n` product into C (`m x n`, row stride `ldc`, unit column
/// stride), choosing the GEMV path or the blocked GEMM.
///
/// # Safety
/// `c` must be valid for writes of the `m x n` matrix with row stride `ldc` and not overlap
/// `a` or `b`, whose pointers must address their whole (strided) matrices.
/// Buffers sized by the operands (activation rows, scale rows) are allocated fallibly: an
/// error is a `MemoryError`, never an abort.
unsafe fn compute(
    isa: Isa,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe {
        compute_finite(isa, a, b, plan, c, ldc)?;
        apply_nonfinite_scales(a, b, plan, c, ldc);
    }
    Ok(())
}

/// [`compute`] with the scales applied to the float32 sums of each K block.
///
/// # Safety
/// As [`compute`].
unsafe fn compute_finite(
    isa: Isa,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<()> {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside C.
                unsafe { *c.0.offset(i as isize * ldc + j as isize) = 0.0 };
            }
        }
        return Ok(());
    }
    // Which operands may run on the bfloat16 dot-product kernel: on AVX-512 BF16, FP8 and
    // bfloat16 activations in range (`vdpbf16ps` rounds to nearest); on NEON BF16 FP8 only
    // (`bfdot`'s intermediate rounding is argued for FP8 products, see `neon_bf16::gemm`).
    let (a_exact, b_exact) = match isa {
        // SAFETY: a and b address their whole matrices (the caller's contract).
        Isa::Avx512Bf16 => unsafe { (bf16_dot_exact(&a, &b), bf16_dot_exact(&b, &a)) },
        Isa::NeonBf16 => (a.is_fp8(), b.is_fp8()),
        _ => (false, false),
    };
    let cross = crossovers();
    let (gemv_max, axpy_max) = if a.is_fp8() || a_exact {
        (cross.gemv_fp8, cross.axpy_fp8)
    } else {
        (cross.gemv, cross.axpy)
    };
    if m <= gemv_max && b.is_fp8() && (b.rs == 1 || k == 1) {
        // SAFETY: forwarded from the caller.
        return unsafe { gemv::gemv(isa, a, b, plan, c, ldc) };
    }
    let axpy_max = axpy::max_rows(isa, axpy_max);
    if m <= axpy_max && b.is_fp8() && (b.cs == 1 || n == 1) {
        // SAFETY: forwarded from the caller.
        return unsafe { axpy::axpy(isa, a, b, plan, c, ldc) };
    }
    let choice = kernel_choice(isa, a_exact, b_exact);
    // SAFETY: forwarded from the caller.
    unsafe { driver::gemm(choice, a, b, plan, c, ldc) }
}

/// Recompute the outputs that a non-finite scale (infinity or NaN) touches the way the
/// float64 reference does, scaling every element before its product: `0 * inf` is NaN, so
/// `scale_a = inf` turns a row holding a zero into NaN, where scaling the float32 sum
/// would give an infinity. Every term of a K block with a non-finite scale is itself an
/// infinity or NaN, so such an output is NaN or an infinity whatever the summation order,
/// and one float64 pass over its terms gives the reference's value exactly (and the same
/// value for any thread count). Finite scales leave this a scan of the scale arrays.
///
/// # Safety
/// As [`compute`], with C already holding the finite-scale result.
unsafe fn apply_nonfinite_scales(a: Mat, b: Mat, plan: &ScalePlan<'_>, c: CPtr, ldc: isize) {
    let all_finite =
        |s: Option<ScaleSpec<'_>>| s.is_none_or(|s| s.view.iter().all(|v| v.is_finite()));
    if all_finite(plan.a) && all_finite(plan.b) {
        return;
    }
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let block = plan.block;
    let nkb = if plan.along_k() { k.div_ceil(block) } else { 1 };
    let sa = |i: usize, kb: usize| plan.a.map_or(1.0, |s| s.at(i, kb, block));
    let sb = |kb: usize, j: usize| plan.b.map_or(1.0, |s| s.at(j, kb, block));
    for i in 0..m {
        for j in 0..n {
            if (0..nkb).all(|kb| sa(i, kb).is_finite() && sb(kb, j).is_finite()) {
                continue;
            }
            let mut sum = 0.0f64;
            for p in 0..k {
                let kb = p / block;
                // SAFETY: (i, p) is inside A and (p, j) inside B.
                let (x, y) = unsafe { (a.get(i, p), b.get(p, j)) };
                sum += x * f64::from(sa(i, kb)) * (y * f64::from(sb(kb, j)));
                if sum.is_nan() {
                    break;
                }
            }
            // SAFETY: (i, j) is inside C.
            unsafe { *c.at(i, j, ldc) = sum as f32 };
        }
    }
}

fn broadcast_batch(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let nd = a.len().max(b.len());
    let mut out = vec![0; nd];
    for (d, slot) in out.iter_mut().enumerate() {
        let da = if d + a.len() >= nd {
            a[d + a.len() - nd]
        } else {
            1
        };
        let db = if d + b.len() >= nd {
            b[d + b.len() - nd]
        } else {
            1
        };
        *slot = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Strides of an operand's batch dimensions aligned to the broadcast batch shape (0 where the
/// operand is broadcast).
fn batch_strides(batch: &[usize], own: &[usize], strides: &[isize]) -> Vec<isize> {
    let nd = batch.len();
    (0..nd)
        .map(|d| {
            if d + own.len() < nd {
                0
            } else {
                let od = d + own.len() - nd;
                if own[od] == 1 {
                    0
                } else {
                    strides[od]
                }
            }
        })
        .collect()
}
