//! Scaled FP8 quantization: magnitude maxima, scales in the four layouts of DESIGN §4, the
//! fused scale-and-encode pass, the fused decode-and-scale pass, stochastic rounding.
//!
//! # Definitions (the Python tests re-implement exactly these)
//!
//! The scale is the *dequantization multiplier*: `x ≈ decode(q) * scale`.
//!
//! - Group maximum `amax` = the largest finite magnitude of the group (NaN and ±Inf ignored).
//! - tensor / channel / block: `scale = float32(amax / max_normal)` (the quotient rounded once
//!   to float32), `1` when `amax == 0` (all zeros, or nothing finite), clamped to
//!   `[2^-126, float32 max]` so that its reciprocal is finite (only reachable from float64
//!   input, or from float32 groups whose amax is below `448 * 2^-126`).
//! - MX (OCP MX v1.0): `X = clamp(floor(log2 amax) - emax_elem, -127, 127)`, `0` when
//!   `amax == 0`; the E8M0 code is `X + 127` (so a zero group gets scale 1, code 127). The
//!   group's largest magnitudes then land in `[2^emax, 2^(emax+1))` and those above max_normal
//!   saturate to it (the clipping OCP MX accepts for power-of-two scales).
//! - Encode: `q = encode_saturating(x * inv)`, rounded once from the product:
//!   - float32 / float16 / bfloat16 input: `inv = float32(1) / scale` in float32 arithmetic, and
//!     the product `x * inv` is one float32 multiply (input widened exactly to float32 first).
//!     For MX, `inv = 2^-X` exactly.
//!   - float64 input: `inv = 1.0 / float64(scale)` and the product in float64 (`2^-X` for MX),
//!     then encoded from float64 directly (rounded once).
//!
//!   Multiplying by the reciprocal (rather than dividing) is the convention of FP8 training
//!   recipes (the "quantization scale" `1/scale` is what the hardware multiplies by) and keeps
//!   the pass a multiply; for power-of-two scales (MX) both are identical. Either way the result
//!   stays within half an FP8 step (plus float32 rounding of the product, far smaller) of `x/scale`.
//!   Rounding is saturating: ±Inf becomes ±max_normal, NaN stays NaN.
//! - Decode: `y = decode(q) * scale` as one float32 multiply for float32 / float16 / bfloat16
//!   output (then rounded to float16 / bfloat16, nearest-even), exactly in float64 for float64
//!   output. E8M0 scales are `2^(code - 127)` (0xFF is NaN).
//!
//! # Passes
//!
//! `quantize` reads the input twice: one magnitude-maximum pass (integer max over the
//! sign-cleared bits, exact, so any split across threads gives the same result) and one fused
//! pass that multiplies an L1-resident tile of [`TILE`] elements into a stack buffer and hands
//! it to the active ISA's encode kernel. `dequantize` reads the codes once the same way.
//! Elementwise work is split across the pool at arbitrary points; every element's result
//! depends only on its value, its scale and (stochastic rounding) its global index.

pub mod kernels;
pub mod stochastic;
#[cfg(test)]
mod tests;

use std::ops::Mul;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::arch::{codec_kernels, CodecKernels};
use crate::convert::Wide;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::threads;

pub use kernels::{quant_kernels, quant_kernels_for, AbsMaxKeys, QuantKernels};
pub use stochastic::{StochasticKey, StochasticParams};

/// Elements per tile of the fused passes: a tile and its scaled copy stay in L1.
pub const TILE: usize = 2048;

/// Elements sharing one MX scale (OCP MX v1.0 block size).
pub const MX_BLOCK: usize = 32;

/// Which elements share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole array.
    Tensor,
    /// One scale per index along `axis`.
    Channel {
        /// The axis whose indices get their own scale.
        axis: usize,
    },
    /// 2-D blocks of `rows x cols` (edge blocks partial).
    Block {
        /// Block height.
        rows: usize,
        /// Block width.
        cols: usize,
    },
    /// 32 consecutive elements along the last axis share an E8M0 power of two.
    Mx,
}

impl Granularity {
    /// Build from the Python-level name, `axis` (may be negative) and `block`.
    pub fn parse(name: &str, ndim: usize, axis: i64, block: (usize, usize)) -> Result<Self> {
        match name {
            "tensor" => Ok(Granularity::Tensor),
            "channel" => Ok(Granularity::Channel {
                axis: normalize_axis(axis, ndim)?,
            }),
            "block" => Ok(Granularity::Block {
                rows: block.0,
                cols: block.1,
            }),
            "mx" => Ok(Granularity::Mx),
            _ => Err(Error::value(format!(
                "unknown granularity {name:?}: expected \"tensor\", \"channel\", \"block\" or \"mx\""
            ))),
        }
    }
}

/// `axis` in `[-ndim, ndim)` as a non-negative index.
pub fn normalize_axis(axis: i64, ndim: usize) -> Result<usize> {
    let n = ndim as i64;
    if axis < -n || axis >= n {
        return Err(Error::value(format!(
            "axis {axis} is out of bounds for an array of dimension {ndim}"
        )));
    }
    Ok(if axis < 0 { axis + n } else { axis } as usize)
}

/// How rounding after scaling is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest, ties to even.
    Nearest,
    /// Stochastic rounding keyed by (seed, element index); see [`stochastic`].
    Stochastic {
        /// The generator seed.
        seed: u64,
    },
}

/// The scales `quantize` returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// float32 dequantization multipliers (tensor, channel, block).
    F32(Vec<f32>),
    /// E8M0 codes (`2^(code - 127)`), MX.
    E8M0(Vec<u8>),
}

/// The input viewed as `rows x cols` (C order) with a grid of `srows x groups` scales:
/// element `(r, c)` uses scale `(srow(r), c / group)` with `srow(r) = (r / srow_div) % srow_mod`.
///
/// ```text
/// tensor            rows 1,           cols n,     group n,     srow = 0
/// channel (inner>1) rows outer*C,     cols inner, group inner, srow = r % C
/// channel (last)    rows outer,       cols C,     group 1,     srow = 0
/// block br x bc     rows R,           cols C,     group bc,    srow = r / br
/// mx                rows prod(lead),  cols last,  group 32,    srow = r
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Rows of the 2-D view.
    pub rows: usize,
    /// Columns of the 2-D view.
    pub cols: usize,
    /// Consecutive columns sharing a scale (>= 1).
    pub group: usize,
    /// Scales per scale row: `ceil(cols / group)`.
    pub groups: usize,
    /// Rows per scale row before wrapping.
    pub srow_div: usize,
    /// Number of distinct scale rows the row index wraps around (>= 1).
    pub srow_mod: usize,
    /// Scale rows.
    pub srows: usize,
    /// The shape of the scale array returned to / expected from Python.
    pub scale_shape: Vec<usize>,
}

/// Fail with an error instead of aborting the process when `count` records of `bytes_each`
/// bytes cannot be allocated: a zero-size input can still ask for 2^40 row scales, and a
/// stride-0 view for a huge copy. The probe reserves address space only and frees it at once.
pub fn ensure_allocatable(count: usize, bytes_each: usize) -> Result<()> {
    let mut probe: Vec<u8> = Vec::new();
    match count
        .checked_mul(bytes_each)
        .map(|b| probe.try_reserve_exact(b))
    {
        Some(Ok(())) => Ok(()),
        _ => Err(Error::memory(format!(
            "out of memory: {count} elements of {bytes_each} bytes cannot be allocated"
        ))),
    }
}

impl Layout {
    /// The layout of `granularity` on an array of `shape`.
    pub fn new(shape: &[usize], granularity: Granularity) -> Result<Layout> {
        let lay = Self::new_unchecked(shape, granularity)?;
        // Per group: amax keys, reciprocal and scale (and slack): see `quantize`.
        ensure_allocatable(lay.n_scales(), 48)?;
        Ok(lay)
    }

    fn new_unchecked(shape: &[usize], granularity: Granularity) -> Result<Layout> {
        let n: usize = shape.iter().product();
        let ndim = shape.len();
        Ok(match granularity {
            Granularity::Tensor => Layout {
                rows: 1,
                cols: n,
                group: n.max(1),
                groups: 1,
                srow_div: 1,
                srow_mod: 1,
                srows: 1,
                scale_shape: vec![],
            },
            Granularity::Channel { axis } => {
                if axis >= ndim {
                    return Err(Error::value(format!(
                        "axis {axis} is out of bounds for an array of dimension {ndim}"
                    )));
                }
                let outer: usize = shape[..axis].iter().product();
                let c = shape[axis];
                let inner: usize = shape[axis + 1..].iter().product();
                let mut scale_shape = vec![1; ndim];
                scale_shape[axis] = c;
                if inner == 1 {
                    Layout {
                        rows: outer,
                        cols: c,
                        group: 1,
                        groups: c,
                        srow_div: 1,
                        srow_mod: 1,
                        srows: 1,
                        scale_shape,
                    }
                } else {
                    Layout {
                        rows: outer * c,
                        cols: inner,
                        group: inner.max(1),
                        groups: 1,
                        srow_div: 1,
                        srow_mod: c.max(1),
                        srows: c,
                        scale_shape,
                    }
                }
            }
            Granularity::Block { rows: br, cols: bc } => {
                if ndim != 2 {
                    return Err(Error::value(format!(
                        "block granularity needs a 2-D array, got shape {shape:?}"
                    )));
                }
                if br == 0 || bc == 0 {
                    return Err(Error::value(format!(
                        "block sizes must be >= 1, got ({br}, {bc})"
                    )));
                }
                let (r, c) = (shape[0], shape[1]);
                let (sr, sg) = (r.div_ceil(br), c.div_ceil(bc));
                Layout {
                    rows: r,
                    cols: c,
                    group: bc,
                    groups: sg,
                    srow_div: br,
                    srow_mod: sr.max(1),
                    srows: sr,
                    scale_shape: vec![sr, sg],
                }
            }
            Granularity::Mx => {
                if ndim == 0 {
                    return Err(Error::value(
                        "mx granularity needs at least 1 dimension, got a 0-d array",
                    ));
                }
                let rows: usize = shape[..ndim - 1].iter().product();
                let cols = shape[ndim - 1];
                let groups = cols.div_ceil(MX_BLOCK);
                let mut scale_shape = shape[..ndim - 1].to_vec();
                scale_shape.push(groups);
                Layout {
                    rows,
                    cols,
                    group: MX_BLOCK,
                    groups,
                    srow_div: 1,
                    srow_mod: rows.max(1),
                    srows: rows,
                    scale_shape,
                }
            }
        })
    }

    /// The scale row of row `r`.
    #[inline]
    pub fn srow(&self, r: usize) -> usize {
        (r / self.srow_div) % self.srow_mod
    }

    /// Number of scales.
    pub fn n_scales(&self) -> usize {
        self.srows * self.groups
    }
}

/// The float type the scaled values are formed in: `f32` for 32-bit and narrower inputs.
pub trait Work: Copy + Default + Send + Sync + Mul<Output = Self> + 'static {
    /// The nearest-rounding encode kernel for this type.
    fn encoder(ck: &CodecKernels) -> fn(&[Self], &mut [u8], Format, bool);
    /// The stochastic-rounding kernel for this type.
    fn stochastic(qk: &QuantKernels) -> fn(&[Self], &mut [u8], StochasticParams);
    /// The reciprocal of a float32 scale, in this type.
    fn recip(scale: f32) -> Self;
    /// `2^k`, exact (`-127 <= k <= 127`).
    fn pow2(k: i32) -> Self;
}

impl Work for f32 {
    fn encoder(ck: &CodecKernels) -> fn(&[f32], &mut [u8], Format, bool) {
        ck.encode_f32
    }
    fn stochastic(qk: &QuantKernels) -> fn(&[f32], &mut [u8], StochasticParams) {
        qk.stochastic_f32
    }
    fn recip(scale: f32) -> f32 {
        1.0 / scale
    }
    fn pow2(k: i32) -> f32 {
        pow2_f32(k)
    }
}

impl Work for f64 {
    fn encoder(ck: &CodecKernels) -> fn(&[f64], &mut [u8], Format, bool) {
        ck.encode_f64
    }
    fn stochastic(_: &QuantKernels) -> fn(&[f64], &mut [u8], StochasticParams) {
        stochastic::encode_f64
    }
    fn recip(scale: f32) -> f64 {
        1.0 / f64::from(scale)
    }
    fn pow2(k: i32) -> f64 {
        f64::from(pow2_f32(k))
    }
}

/// An input type of `quantize` / `amax` / stochastic encode.
pub trait QuantInput: Wide {
    /// The type the scaled value is formed in.
    type W: Work;
    /// The magnitude key of +Inf (keys above it are NaN).
    const INF_KEY: u64;
    /// The magnitude-maxima kernel for this type.
    fn absmax(k: &QuantKernels) -> fn(&[Self]) -> AbsMaxKeys;
    /// The per-group finite-maximum kernel for this type.
    fn group_max(k: &QuantKernels) -> fn(&[Self], usize, &mut [u64]);
    /// The sign-cleared bits.
    fn abs_key(self) -> u64;
    /// The magnitude a key stands for (exact).
    fn key_value(key: u64) -> f64;
    /// `dst[j] = widen(src[j]) * s[(col0 + j) / group]`.
    fn scale_into(
        src: &[Self],
        col0: usize,
        group: usize,
        s: &[Self::W],
        dst: &mut [Self::W],
        k: &QuantKernels,
    );
    /// `scale_into` and the saturating nearest encoding to `fmt` in one pass, where the level
    /// has such a kernel for this type; `false` (nothing written) where it has not.
    fn scale_encode(
        _src: &[Self],
        _col0: usize,
        _group: usize,
        _s: &[Self::W],
        _dst: &mut [u8],
        _fmt: Format,
        _k: &QuantKernels,
    ) -> bool {
        false
    }
    /// Stochastically encode `src` (no scaling) with the active kernels; `buf` is scratch.
    fn stochastic_tile(
        src: &[Self],
        dst: &mut [u8],
        p: StochasticParams,
        k: &QuantKernels,
        buf: &mut [Self::W],
    );
}

impl QuantInput for f32 {
    type W = f32;
    const INF_KEY: u64 = 0x7F80_0000;
    fn absmax(k: &QuantKernels) -> fn(&[f32]) -> AbsMaxKeys {
        k.absmax_f32
    }
    fn group_max(k: &QuantKernels) -> fn(&[f32], usize, &mut [u64]) {
        k.group_max_f32
    }
    fn abs_key(self) -> u64 {
        u64::from(self.to_bits() & 0x7FFF_FFFF)
    }
    fn key_value(key: u64) -> f64 {
        f64::from(f32::from_bits(key as u32))
    }
    fn scale_into(
        src: &[f32],
        col0: usize,
        group: usize,
        s: &[f32],
        dst: &mut [f32],
        k: &QuantKernels,
    ) {
        (k.scale_groups_f32)(src, col0, group, s, dst)
    }
    fn stochastic_tile(
        src: &[f32],
        dst: &mut [u8],
        p: StochasticParams,
        k: &QuantKernels,
        _: &mut [f32],
    ) {
        (k.stochastic_f32)(src, dst, p)
    }
}

impl QuantInput for f64 {
    type W = f64;
    const INF_KEY: u64 = 0x7FF0_0000_0000_0000;
    fn absmax(k: &QuantKernels) -> fn(&[f64]) -> AbsMaxKeys {
        k.absmax_f64
    }
    fn group_max(k: &QuantKernels) -> fn(&[f64], usize, &mut [u64]) {
        k.group_max_f64
    }
    fn abs_key(self) -> u64 {
        self.to_bits() & 0x7FFF_FFFF_FFFF_FFFF
    }
    fn key_value(key: u64) -> f64 {
        f64::from_bits(key)
    }
    fn scale_into(
        src: &[f64],
        col0: usize,
        group: usize,
        s: &[f64],
        dst: &mut [f64],
        _: &QuantKernels,
    ) {
        let mut j = 0;
        while j < src.len() {
            let g = (col0 + j) / group;
            let end = ((g + 1) * group - col0).min(src.len());
            let s = s[g];
            for (d, &x) in dst[j..end].iter_mut().zip(&src[j..end]) {
                *d = x * s;
            }
            j = end;
        }
    }
    fn stochastic_tile(
        src: &[f64],
        dst: &mut [u8],
        p: StochasticParams,
        _: &QuantKernels,
        _: &mut [f64],
    ) {
        stochastic::encode_f64(src, dst, p)
    }
}

macro_rules! impl_half_input {
    ($t:ty, $inf:expr, $absmax:ident, $group_max:ident, $scale_groups:ident $(, $fused:ident)?) => {
        impl QuantInput for $t {
            type W = f32;
            const INF_KEY: u64 = $inf;
            fn absmax(k: &QuantKernels) -> fn(&[$t]) -> AbsMaxKeys {
                k.$absmax
            }
            fn group_max(k: &QuantKernels) -> fn(&[$t], usize, &mut [u64]) {
                k.$group_max
            }
            fn abs_key(self) -> u64 {
                u64::from(self.to_bits() & 0x7FFF)
            }
            fn key_value(key: u64) -> f64 {
                <$t>::from_bits(key as u16).to_f64()
            }
            fn scale_into(
                src: &[$t],
                col0: usize,
                group: usize,
                s: &[f32],
                dst: &mut [f32],
                k: &QuantKernels,
            ) {
                (k.$scale_groups)(src, col0, group, s, dst)
            }
            $(
            fn scale_encode(
                src: &[$t],
                col0: usize,
                group: usize,
                s: &[f32],
                dst: &mut [u8],
                fmt: Format,
                k: &QuantKernels,
            ) -> bool {
                k.$fused.map(|f| f(src, col0, group, s, dst, fmt)).is_some()
            }
            )?
            fn stochastic_tile(
                src: &[$t],
                dst: &mut [u8],
                p: StochasticParams,
                k: &QuantKernels,
                buf: &mut [f32],
            ) {
                // Widening is exact, and the rounding is defined on the exact value.
                let buf = &mut buf[..src.len()];
                src.convert_to_f32_slice(buf);
                (k.stochastic_f32)(buf, dst, p)
            }
        }
    };
}

impl_half_input!(f16, 0x7C00, absmax_f16, group_max_f16, scale_groups_f16);
impl_half_input!(
    bf16,
    0x7F80,
    absmax_bf16,
    group_max_bf16,
    scale_groups_bf16,
    scale_encode_bf16
);

/// Apply `f(offset, src_piece, dst_piece)` to equal-length slices, split across the pool at
/// multiples of [`TILE`] when large.
fn par_ranges<A: Sync, B: Send>(
    src: &[A],
    dst: &mut [B],
    f: impl Fn(usize, &[A], &mut [B]) + Sync,
) {
    let chunk = threads::chunk_len(src.len(), TILE);
    if chunk >= src.len() {
        f(0, src, dst);
        return;
    }
    let pieces = src
        .chunks(chunk)
        .zip(dst.chunks_mut(chunk))
        .enumerate()
        .collect();
    threads::for_each(pieces, |(i, (s, d))| f(i * chunk, s, d));
}

/// Magnitude maxima of a whole slice (multi-threaded when large; exact for any split).
pub fn absmax_all<T: QuantInput>(x: &[T]) -> AbsMaxKeys {
    let kernel = T::absmax(quant_kernels());
    let chunk = threads::chunk_len(x.len(), 64);
    if chunk >= x.len() {
        return kernel(x);
    }
    threads::map(x.chunks(chunk).collect(), kernel)
        .into_iter()
        .fold(AbsMaxKeys::default(), AbsMaxKeys::merge)
}

/// Magnitude maxima of each row of a `rows x cols` C-ordered slice.
pub fn absmax_rows<T: QuantInput>(x: &[T], rows: usize, cols: usize) -> Result<Vec<AbsMaxKeys>> {
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(Error::value(format!(
            "{rows} x {cols} rows do not match {} elements",
            x.len()
        )));
    }
    ensure_allocatable(rows, std::mem::size_of::<AbsMaxKeys>())?;
    if rows == 1 {
        return Ok(vec![absmax_all(x)]);
    }
    if cols == 0 {
        return Ok(vec![AbsMaxKeys::default(); rows]);
    }
    let kernel = T::absmax(quant_kernels());
    let rows_per_task = threads::chunk_len(x.len(), cols).div_ceil(cols);
    let tasks = x.chunks(rows_per_task * cols).collect();
    let per_task = threads::map(tasks, |rows| {
        rows.chunks(cols).map(kernel).collect::<Vec<_>>()
    });
    Ok(per_task.into_iter().flatten().collect())
}

/// `amax` per row as `f64` (exact values of the input type): NaN-ignoring, or NaN for rows
/// holding a NaN when `ignore_nan` is false. Rows with no elements give 0.
pub fn amax_rows<T: QuantInput>(
    x: &[T],
    rows: usize,
    cols: usize,
    ignore_nan: bool,
) -> Result<Vec<f64>> {
    Ok(absmax_rows(x, rows, cols)?
        .into_iter()
        .map(|k| {
            if !ignore_nan && k.all > T::INF_KEY {
                f64::NAN
            } else {
                T::key_value(k.non_nan)
            }
        })
        .collect())
}

/// The largest finite magnitude of every group of `layout`, as keys, in scale order.
fn group_finite_keys<T: QuantInput>(x: &[T], lay: &Layout) -> Vec<u64> {
    if lay.n_scales() == 1 {
        return vec![absmax_all(x).finite];
    }
    let mut grid = vec![0u64; lay.n_scales()];
    if x.is_empty() {
        return grid;
    }
    let group_max = T::group_max(quant_kernels());
    let rows_per_task = (threads::PARALLEL_MIN_ELEMENTS / 4 / lay.cols.max(1)).max(1);
    let tasks: Vec<(usize, usize)> = (0..lay.rows)
        .step_by(rows_per_task)
        .map(|r0| (r0, (r0 + rows_per_task).min(lay.rows)))
        .collect();
    // Each task reduces its rows into a dense partial grid over the scale rows it touches.
    let task = |&(r0, r1): &(usize, usize)| -> (usize, Vec<u64>) {
        let (first, last) = (r0 / lay.srow_div, (r1 - 1) / lay.srow_div);
        let (s_lo, s_hi) = if last - first + 1 >= lay.srow_mod || lay.srow(r0) > lay.srow(r1 - 1) {
            (0, lay.srows - 1)
        } else {
            (lay.srow(r0), lay.srow(r1 - 1))
        };
        let mut part = vec![0u64; (s_hi - s_lo + 1) * lay.groups];
        for r in r0..r1 {
            let row = &x[r * lay.cols..(r + 1) * lay.cols];
            let prow = &mut part[(lay.srow(r) - s_lo) * lay.groups..][..lay.groups];
            if lay.group >= 8 {
                group_max(row, lay.group, prow);
            } else {
                for (c, &v) in row.iter().enumerate() {
                    let key = v.abs_key();
                    let slot = &mut prow[c / lay.group];
                    if key < T::INF_KEY && key > *slot {
                        *slot = key;
                    }
                }
            }
        }
        (s_lo, part)
    };
    let partials: Vec<(usize, Vec<u64>)> = if x.len() >= threads::PARALLEL_MIN_ELEMENTS {
        threads::map(tasks, |t| task(&t))
    } else {
        tasks.iter().map(task).collect()
    };
    for (s_lo, part) in partials {
        for (g, p) in grid[s_lo * lay.groups..].iter_mut().zip(part) {
            *g = (*g).max(p);
        }
    }
    grid
}

/// The float32 scale of a group with largest finite magnitude `amax` (see the module docs).
pub fn scale_from_amax(amax: f64, fmt: Format) -> f32 {
    if amax == 0.0 {
        return 1.0;
    }
    ((amax / fmt.max_normal()) as f32).clamp(f32::MIN_POSITIVE, f32::MAX)
}

/// The precision a checkpoint stores its tensor / channel / block scales in. The codes are
/// computed against the scale as stored, so `decode(q) * stored_scale` is what any reader gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDtype {
    /// float32 (the scale as computed).
    F32,
    /// bfloat16, as compressed-tensors keeps scales of bf16 weights.
    BF16,
    /// float16, as compressed-tensors keeps scales of f16 weights.
    F16,
}

impl ScaleDtype {
    /// `scale` rounded to nearest-even in this type, clamped to its positive finite range
    /// (f16: `[2^-24, 65504]`, so that a tiny group keeps a usable, finite reciprocal).
    pub fn round(self, scale: f32) -> f32 {
        match self {
            ScaleDtype::F32 => scale,
            ScaleDtype::BF16 => bf16::from_f32(scale)
                .to_f32()
                .clamp(f32::MIN_POSITIVE, bf16::MAX.to_f32()),
            ScaleDtype::F16 => f16::from_f32(scale)
                .to_f32()
                .clamp(f16::from_bits(1).to_f32(), f16::MAX.to_f32()),
        }
    }

    /// [`Self::round`] for the scale of a group whose largest code is `fmt`'s max normal: a
    /// float16 scale rounded up could make `max_normal * scale` overflow float16 (a group
    /// with amax 65504 gets 146.25, and 448 * 146.25 = 65520 is infinite in float16, for the
    /// client's `q.half() * scale` as for a float16 dequantization); it steps down one float16
    /// value then, and the group's largest elements saturate to the max code instead.
    pub fn round_for(self, scale: f32, fmt: Format) -> f32 {
        let s = self.round(scale);
        if self == ScaleDtype::F16 && f64::from(s) * fmt.max_normal() > f64::from(f16::MAX.to_f32())
        {
            return f16::from_bits(f16::from_f32(s).to_bits() - 1).to_f32();
        }
        s
    }
}

/// The MX shared exponent `X` of a group with largest finite magnitude `amax`.
pub fn mx_exponent(amax: f64, fmt: Format) -> i32 {
    if amax == 0.0 {
        return 0;
    }
    // Anything below 2^-1022 clamps to -127 below anyway.
    let floor_log2 = if amax < f64::MIN_POSITIVE {
        -1023
    } else {
        ((amax.to_bits() >> 52) & 0x7FF) as i32 - 1023
    };
    (floor_log2 - fmt.max_exp()).clamp(-127, 127)
}

/// `2^k` for `-127 <= k <= 127`, exact, from the bits (`2^-127` is the one subnormal).
#[inline]
pub fn pow2_f32(k: i32) -> f32 {
    debug_assert!((-127..=127).contains(&k));
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << 22)
    }
}

/// The value of an E8M0 scale code: `2^(code - 127)`, NaN for 0xFF.
pub fn e8m0_value(code: u8) -> f32 {
    if code == 0xFF {
        f32::NAN
    } else {
        pow2_f32(i32::from(code) - 127)
    }
}

enum Encoder<W> {
    Nearest(fn(&[W], &mut [u8], Format, bool)),
    Stochastic(fn(&[W], &mut [u8], StochasticParams), StochasticKey),
}

/// The fused pass over the flat range `[start, start + x.len())`: tile, scale, encode.
/// Stochastic rounding draws for element `start + i` the draw of global index `first + start +
/// i`.
#[allow(clippy::too_many_arguments)]
fn encode_range<T: QuantInput>(
    x: &[T],
    q: &mut [u8],
    start: usize,
    first: u64,
    lay: &Layout,
    inv: &[T::W],
    fmt: Format,
    enc: &Encoder<T::W>,
    qk: &QuantKernels,
) {
    let mut buf = [T::W::default(); TILE];
    let mut pos = 0;
    while pos < x.len() {
        let flat = start + pos;
        let (r, c) = (flat / lay.cols, flat % lay.cols);
        let take = TILE.min(lay.cols - c).min(x.len() - pos);
        let inv_row = &inv[lay.srow(r) * lay.groups..][..lay.groups];
        let out = &mut q[pos..pos + take];
        if let Encoder::Nearest(_) = enc {
            if T::scale_encode(&x[pos..pos + take], c, lay.group, inv_row, out, fmt, qk) {
                pos += take;
                continue;
            }
        }
        let b = &mut buf[..take];
        T::scale_into(&x[pos..pos + take], c, lay.group, inv_row, b, qk);
        match *enc {
            Encoder::Nearest(f) => f(b, out, fmt, true),
            Encoder::Stochastic(f, key) => f(
                b,
                out,
                StochasticParams {
                    fmt,
                    saturate: true,
                    key,
                    start: first + flat as u64,
                },
            ),
        }
        pos += take;
    }
}

fn check_elements(shape: &[usize], len: usize, what: &str) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::value(format!("shape {shape:?} is too large")))?;
    if n != len {
        return Err(Error::value(format!(
            "{what} has {len} elements but shape {shape:?} needs {n}"
        )));
    }
    Ok(n)
}

/// Quantize the C-ordered array `x` of `shape` into `q` (same length); returns the scales in
/// the layout's order (`Layout::new(shape, granularity).scale_shape`).
pub fn quantize<T: QuantInput>(
    x: &[T],
    shape: &[usize],
    fmt: Format,
    granularity: Granularity,
    rounding: Rounding,
    q: &mut [u8],
) -> Result<Scales> {
    quantize_stored(x, shape, fmt, granularity, rounding, ScaleDtype::F32, q)
}

/// [`quantize`] with the float scales rounded to `store` first (see [`ScaleDtype::round`]) and
/// the codes computed against the rounded scales; the returned float32 scales are exactly
/// representable in `store`. MX scales are powers of two and unaffected.
pub fn quantize_stored<T: QuantInput>(
    x: &[T],
    shape: &[usize],
    fmt: Format,
    granularity: Granularity,
    rounding: Rounding,
    store: ScaleDtype,
    q: &mut [u8],
) -> Result<Scales> {
    quantize_stored_from(x, shape, fmt, granularity, rounding, store, q, 0)
}

/// [`quantize_stored`] of a part of a larger array that starts at element `first` of it:
/// stochastic rounding uses the draws of the larger array's indices, so quantizing it part by
/// part (whole scale groups each) gives the codes of quantizing it at once.
#[allow(clippy::too_many_arguments)]
pub fn quantize_stored_from<T: QuantInput>(
    x: &[T],
    shape: &[usize],
    fmt: Format,
    granularity: Granularity,
    rounding: Rounding,
    store: ScaleDtype,
    q: &mut [u8],
    first: u64,
) -> Result<Scales> {
    check_elements(shape, x.len(), "input")?;
    check_elements(shape, q.len(), "output")?;
    let lay = Layout::new(shape, granularity)?;
    let keys = group_finite_keys(x, &lay);
    let (scales, inv): (Scales, Vec<T::W>) = if granularity == Granularity::Mx {
        let exps: Vec<i32> = keys
            .iter()
            .map(|&k| mx_exponent(T::key_value(k), fmt))
            .collect();
        let inv = exps.iter().map(|&e| T::W::pow2(-e)).collect();
        let codes = exps.iter().map(|&e| (e + 127) as u8).collect();
        (Scales::E8M0(codes), inv)
    } else {
        let s: Vec<f32> = keys
            .iter()
            .map(|&k| store.round_for(scale_from_amax(T::key_value(k), fmt), fmt))
            .collect();
        let inv = s.iter().map(|&s| T::W::recip(s)).collect();
        (Scales::F32(s), inv)
    };
    if x.is_empty() {
        return Ok(scales);
    }
    let qk = quant_kernels();
    let enc = match rounding {
        Rounding::Nearest => Encoder::Nearest(T::W::encoder(codec_kernels())),
        Rounding::Stochastic { seed } => {
            Encoder::Stochastic(T::W::stochastic(qk), StochasticKey::new(seed))
        }
    };
    par_ranges(x, q, |start, xs, qs| {
        encode_range(xs, qs, start, first, &lay, &inv, fmt, &enc, qk)
    });
    Ok(scales)
}

/// Stochastically round `src` (no scaling) into `dst`; element `i` uses the draw of global
/// index `start + i`. Multi-threaded when large; the result does not depend on the split.
pub fn encode_stochastic<T: QuantInput>(
    src: &[T],
    dst: &mut [u8],
    fmt: Format,
    saturate: bool,
    seed: u64,
    start: u64,
) -> Result<()> {
    if src.len() != dst.len() {
        return Err(Error::value(format!(
            "output has {} elements but the input has {}",
            dst.len(),
            src.len()
        )));
    }
    let qk = quant_kernels();
    let key = StochasticKey::new(seed);
    par_ranges(src, dst, |off, s, d| {
        let mut buf = [T::W::default(); TILE];
        for (i, (st, dt)) in s.chunks(TILE).zip(d.chunks_mut(TILE)).enumerate() {
            let p = StochasticParams {
                fmt,
                saturate,
                key,
                start: start + (off + i * TILE) as u64,
            };
            T::stochastic_tile(st, dt, p, qk, &mut buf);
        }
    });
    Ok(())
}

/// An output type of `dequantize`.
pub trait DequantOutput: Wide {
    /// Decode `q` into `out` and multiply by the scales (`col0` is the column of `q[0]`).
    #[allow(clippy::too_many_arguments)]
    fn tile(
        q: &[u8],
        out: &mut [Self],
        fmt: Format,
        col0: usize,
        group: usize,
        scale_row: &[f32],
        ck: &CodecKernels,
        qk: &QuantKernels,
        buf: &mut [f32],
    );
}

impl DequantOutput for f32 {
    fn tile(
        q: &[u8],
        out: &mut [f32],
        fmt: Format,
        col0: usize,
        group: usize,
        scale_row: &[f32],
        ck: &CodecKernels,
        qk: &QuantKernels,
        _: &mut [f32],
    ) {
        (ck.decode_f32)(q, out, fmt);
        (qk.scale_groups_inplace_f32)(out, col0, group, scale_row);
    }
}

impl DequantOutput for f64 {
    fn tile(
        q: &[u8],
        out: &mut [f64],
        fmt: Format,
        col0: usize,
        group: usize,
        scale_row: &[f32],
        ck: &CodecKernels,
        _: &QuantKernels,
        _: &mut [f32],
    ) {
        (ck.decode_f64)(q, out, fmt);
        // Exact: a 4-bit FP8 significand times a 24-bit scale fits in 53 bits.
        let mut j = 0;
        while j < out.len() {
            let g = (col0 + j) / group;
            let end = ((g + 1) * group - col0).min(out.len());
            let s = f64::from(scale_row[g]);
            for v in &mut out[j..end] {
                *v *= s;
            }
            j = end;
        }
    }
}

macro_rules! impl_half_output {
    ($t:ty) => {
        impl DequantOutput for $t {
            fn tile(
                q: &[u8],
                out: &mut [$t],
                fmt: Format,
                col0: usize,
                group: usize,
                scale_row: &[f32],
                ck: &CodecKernels,
                qk: &QuantKernels,
                buf: &mut [f32],
            ) {
                let buf = &mut buf[..q.len()];
                (ck.decode_f32)(q, buf, fmt);
                (qk.scale_groups_inplace_f32)(buf, col0, group, scale_row);
                out.convert_from_f32_slice(buf);
            }
        }
    };
}

impl_half_output!(f16);
impl_half_output!(bf16);

/// Dequantize the C-ordered codes `q` of `shape` into `out`: `decode(q) * scale`, with the
/// float32 scale values (E8M0 codes converted by [`e8m0_value`]) in the layout's order.
pub fn dequantize<T: DequantOutput>(
    q: &[u8],
    shape: &[usize],
    fmt: Format,
    granularity: Granularity,
    scales: &[f32],
    out: &mut [T],
) -> Result<()> {
    check_elements(shape, q.len(), "input")?;
    check_elements(shape, out.len(), "output")?;
    let lay = Layout::new(shape, granularity)?;
    if scales.len() != lay.n_scales() {
        return Err(Error::value(format!(
            "expected {} scales (shape {:?}) for shape {shape:?}, got {}",
            lay.n_scales(),
            lay.scale_shape,
            scales.len()
        )));
    }
    if q.is_empty() {
        return Ok(());
    }
    let (ck, qk) = (codec_kernels(), quant_kernels());
    par_ranges(q, out, |start, qs, os| {
        let mut buf = [0f32; TILE];
        let mut pos = 0;
        while pos < qs.len() {
            let flat = start + pos;
            let (r, c) = (flat / lay.cols, flat % lay.cols);
            let take = TILE.min(lay.cols - c).min(qs.len() - pos);
            let scale_row = &scales[lay.srow(r) * lay.groups..][..lay.groups];
            T::tile(
                &qs[pos..pos + take],
                &mut os[pos..pos + take],
                fmt,
                c,
                lay.group,
                scale_row,
                ck,
                qk,
                &mut buf,
            );
            pos += take;
        }
    });
    Ok(())
}
