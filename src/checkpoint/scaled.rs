//! Scaled quantization and dequantization of one 2-D weight, as the checkpoint drivers need it.
//!
//! Quantization is the quantization module's ([`crate::quant::quantize_stored`]): scale =
//! float32(amax / max_normal) per group (NaN and ±Inf ignored in the amax; an all-zero group
//! gets scale 1), rounded to the dtype the checkpoint stores it in, then codes = saturating
//! encode of `x * float32(1 / stored scale)`, nearest or stochastic rounding; MX: E8M0 scales.
//!
//! Dequantization is done here, exactly: `decode(q) * scale` is formed in float64 (a 4-bit by
//! 24-bit product, so exact) and rounded once to the output type. (The quantization module's
//! `dequantize` forms the product in float32 and rounds that to bfloat16/float16, which can
//! round twice; a checkpoint converter should give the values a float64 reference gives.)
//! Rounding to bfloat16/float16 goes through float32 with round-to-odd, which is equivalent to
//! a single rounding because float32 keeps more than two extra bits (Boldo & Melquiond,
//! "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to odd",
//! 2008). Each group has one scale, so the 256 possible results are tabulated once per group
//! and the conversion is a table lookup per byte: exact and about as fast as a copy.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::error::{Error, Result};
use crate::format::Format;
use crate::quant::{self, QuantKernels, Rounding, ScaleDtype};
use crate::scalar;
use crate::threads;

/// How one scale is shared by the elements of a `(rows, cols)` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per row (output channel).
    Channel,
    /// One scale per `(rows, cols)` block; edge blocks are partial.
    Block(usize, usize),
    /// OCP MX: 32 consecutive elements of a row share an E8M0 power-of-two scale.
    Mx,
}

/// Elements per MX group (OCP MX v1.0).
pub const MX_GROUP: usize = 32;

impl Granularity {
    /// The scale tensor's shape for a `(rows, cols)` weight.
    pub fn scale_shape(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Granularity::Tensor => vec![1],
            Granularity::Channel => vec![rows, 1],
            Granularity::Block(br, bc) => vec![rows.div_ceil(br), cols.div_ceil(bc)],
            Granularity::Mx => vec![rows, cols.div_ceil(MX_GROUP)],
        }
    }

    /// The index into the flattened scale tensor of element `(r, c)`.
    #[inline(always)]
    fn scale_index(self, r: usize, c: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Channel => r,
            Granularity::Block(br, bc) => (r / br) * cols.div_ceil(bc) + c / bc,
            Granularity::Mx => r * cols.div_ceil(MX_GROUP) + c / MX_GROUP,
        }
    }

    /// Length of the run of columns starting at `c` that share one scale.
    #[inline(always)]
    fn run_end(self, c: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor | Granularity::Channel => cols,
            Granularity::Block(_, bc) => ((c / bc + 1) * bc).min(cols),
            Granularity::Mx => ((c / MX_GROUP + 1) * MX_GROUP).min(cols),
        }
    }

    fn check(self) -> Result<()> {
        match self {
            Granularity::Block(0, _) | Granularity::Block(_, 0) => {
                Err(Error::value("block dimensions must be >= 1"))
            }
            _ => Ok(()),
        }
    }
}

/// A high-precision source element type of a weight (bfloat16, float16, float32).
pub trait Source: crate::quant::QuantInput + bytemuck::Pod {}

impl Source for f32 {}
impl Source for bf16 {}
impl Source for f16 {}

fn rows_per_task(rows: usize, cols: usize, align: usize) -> usize {
    let per = threads::chunk_len(rows.saturating_mul(cols.max(1)), 1).div_ceil(cols.max(1));
    per.max(1).div_ceil(align) * align
}

fn check_dims(len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::value(format!(
            "{len} elements do not form a ({rows}, {cols}) matrix"
        )));
    }
    Ok(())
}

/// Quantize a row-major `(rows, cols)` weight: returns the codes and the float32 scales in the
/// layout of `g` (see [`Granularity::scale_shape`]); MX is not offered here.
pub fn quantize_weight<T: Source>(
    x: &[T],
    rows: usize,
    cols: usize,
    fmt: Format,
    g: Granularity,
    rounding: Rounding,
) -> Result<(Vec<u8>, Vec<f32>)> {
    let mut codes = crate::alloc::filled_for(x.len(), 0u8, "the FP8 codes of a weight")?;
    match quantize_weight_into(x, rows, cols, fmt, g, rounding, ScaleDtype::F32, &mut codes)? {
        quant::Scales::F32(s) => Ok((codes, s)),
        quant::Scales::E8M0(_) => Err(Error::value("MX scales are not float32")),
    }
}

/// Quantize a weight into a caller's buffer of `x.len()` codes (reused across tensors by the
/// drivers, so that each tensor does not fault in fresh pages); returns the scales: float32
/// values exactly representable in `store` (the codes computed against them), or E8M0 codes
/// for MX.
#[allow(clippy::too_many_arguments)]
pub fn quantize_weight_into<T: Source>(
    x: &[T],
    rows: usize,
    cols: usize,
    fmt: Format,
    g: Granularity,
    rounding: Rounding,
    store: ScaleDtype,
    codes: &mut [u8],
) -> Result<quant::Scales> {
    quantize_rows_into(x, rows, cols, fmt, g, rounding, store, codes, 0)
}

/// How many rows a part of a weight quantized on its own must hold a multiple of, so that its
/// codes and scales are those of the whole weight (a part holds whole scale groups); `None`
/// for one scale per tensor, whose amax needs every row.
pub fn rows_per_part(g: Granularity) -> Option<usize> {
    match g {
        Granularity::Tensor => None,
        Granularity::Channel | Granularity::Mx => Some(1),
        Granularity::Block(br, _) => Some(br.max(1)),
    }
}

/// [`quantize_weight_into`] of `rows` consecutive rows of a larger weight, starting at its
/// element `first` (a multiple of [`rows_per_part`] rows, so the part holds whole scale
/// groups; stochastic rounding uses the whole weight's element indices). The scales returned
/// are the part's rows of the whole weight's scales.
#[allow(clippy::too_many_arguments)]
pub fn quantize_rows_into<T: Source>(
    x: &[T],
    rows: usize,
    cols: usize,
    fmt: Format,
    g: Granularity,
    rounding: Rounding,
    store: ScaleDtype,
    codes: &mut [u8],
    first: usize,
) -> Result<quant::Scales> {
    g.check()?;
    check_dims(x.len(), rows, cols)?;
    let qg = match g {
        Granularity::Tensor => quant::Granularity::Tensor,
        Granularity::Channel => quant::Granularity::Channel { axis: 0 },
        Granularity::Block(br, bc) => quant::Granularity::Block { rows: br, cols: bc },
        Granularity::Mx => quant::Granularity::Mx,
    };
    quant::quantize_stored_from(
        x,
        &[rows, cols],
        fmt,
        qg,
        rounding,
        store,
        codes,
        first as u64,
    )
}

/// An output element type of dequantization.
pub trait Target: Copy + Default + Send + Sync + bytemuck::Pod {
    /// Round exactly representable float64 values once to this type.
    fn round_from_f64(p: &[f64; 256], out: &mut [Self; 256]);

    /// `out[j] = table[codes[j]]`, with the kernels `k` where they apply.
    fn lookup(_k: &QuantKernels, codes: &[u8], table: &[Self; 256], out: &mut [Self]) {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = table[usize::from(c)];
        }
    }
}

/// The 16-bit lookup kernel of `k` on the bits of a 16-bit `Target`.
fn lookup_16<O: Target>(k: &QuantKernels, codes: &[u8], table: &[O; 256], out: &mut [O]) {
    let table: &[u16; 256] = bytemuck::cast_ref(table);
    (k.lookup_u16)(codes, table, bytemuck::cast_slice_mut(out));
}

/// Round to float32 with round-to-odd: truncate toward zero, then set the last bit if anything
/// was cut off. A later rounding to a type with at most 22 significand bits is then the single
/// correct rounding of `p`. Branch-free so that the 256-entry loops vectorize.
#[inline(always)]
fn f32_round_to_odd(p: f64) -> f32 {
    let r = p as f32;
    let back = f64::from(r);
    let inexact = back != p && !p.is_nan();
    // `p as f32` rounded to nearest; if that stepped away from zero, step back one ulp
    // (same sign, magnitude - 1), which is the truncation.
    let away = inexact && back.abs() > p.abs();
    f32::from_bits((r.to_bits() - u32::from(away)) | u32::from(inexact))
}

/// float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (quieted).
#[inline(always)]
fn bf16_bits_rne(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

impl Target for f32 {
    fn round_from_f64(p: &[f64; 256], out: &mut [Self; 256]) {
        for (o, &v) in out.iter_mut().zip(p) {
            *o = v as f32;
        }
    }
}

impl Target for bf16 {
    fn round_from_f64(p: &[f64; 256], out: &mut [Self; 256]) {
        for (o, &v) in out.iter_mut().zip(p) {
            *o = bf16::from_bits(bf16_bits_rne(f32_round_to_odd(v)));
        }
    }

    fn lookup(k: &QuantKernels, codes: &[u8], table: &[Self; 256], out: &mut [Self]) {
        lookup_16(k, codes, table, out);
    }
}

impl Target for f16 {
    fn round_from_f64(p: &[f64; 256], out: &mut [Self; 256]) {
        let mut odd = [0f32; 256];
        for (o, &v) in odd.iter_mut().zip(p) {
            *o = f32_round_to_odd(v);
        }
        out.convert_from_f32_slice(&odd);
    }

    fn lookup(k: &QuantKernels, codes: &[u8], table: &[Self; 256], out: &mut [Self]) {
        lookup_16(k, codes, table, out);
    }
}

/// The 256 results `decode(c) * scale` rounded once to `O`. Codes `c | 0x80` are the
/// negatives of codes `c` and rounding is symmetric, but the products are formed for all 256
/// codes anyway: a negative scale, or a NaN code, must come out as the reference says.
pub(crate) fn table<O: Target>(fmt: Format, scale: f64) -> [O; 256] {
    let decoded = scalar::tables::f64_table(fmt);
    let mut products = [0f64; 256];
    for (p, &d) in products.iter_mut().zip(decoded.iter()) {
        *p = d * scale;
    }
    let mut t = [O::default(); 256];
    O::round_from_f64(&products, &mut t);
    t
}

/// The value of an E8M0 scale code: 2^(code - 127), NaN for 0xFF (OCP MX v1.0).
pub fn e8m0_value(code: u8) -> f64 {
    if code == 0xFF {
        f64::NAN
    } else {
        2f64.powi(i32::from(code) - 127)
    }
}

/// Dequantize a row-major `(rows, cols)` weight of codes with scales laid out for `g`
/// (float64 values; for MX pass the E8M0 values from [`e8m0_value`]) into `out`, on all
/// threads.
pub fn dequantize_weight<O: Target>(
    codes: &[u8],
    rows: usize,
    cols: usize,
    fmt: Format,
    scales: &[f64],
    g: Granularity,
    out: &mut [O],
) -> Result<()> {
    Dequantizer::new(codes, rows, cols, fmt, scales, g)?.fill_all(out)
}

/// A checked dequantization of one weight that fills any run of its elements on the calling
/// thread ([`fill`](Self::fill)), so a caller can produce the output piece by piece.
pub struct Dequantizer<'a, O: Target> {
    codes: &'a [u8],
    rows: usize,
    cols: usize,
    fmt: Format,
    scales: &'a [f64],
    g: Granularity,
    /// MX scales take only 256 values: each one used is tabulated once for the whole tensor.
    mx_tables: Vec<Option<Box<[O; 256]>>>,
    kernels: &'static QuantKernels,
}

impl<'a, O: Target> Dequantizer<'a, O> {
    /// Check the shapes: `codes` is `(rows, cols)`, `scales` as `g` lays them out.
    pub fn new(
        codes: &'a [u8],
        rows: usize,
        cols: usize,
        fmt: Format,
        scales: &'a [f64],
        g: Granularity,
    ) -> Result<Self> {
        g.check()?;
        check_dims(codes.len(), rows, cols)?;
        let want: usize = g.scale_shape(rows, cols).iter().product();
        if scales.len() != want {
            return Err(Error::value(format!(
                "{} scales for a ({rows}, {cols}) weight with {g:?} scaling, expected {want}",
                scales.len()
            )));
        }
        let mx_tables = if g == Granularity::Mx {
            let mut used = [false; 256];
            for &s in scales {
                used[mx_code(s)] = true;
            }
            (0..256)
                .map(|code| used[code].then(|| Box::new(table::<O>(fmt, e8m0_value(code as u8)))))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Dequantizer {
            codes,
            rows,
            cols,
            fmt,
            scales,
            g,
            mx_tables,
            kernels: quant::quant_kernels(),
        })
    }

    /// Pieces that hold a multiple of this many elements build fewest tables in
    /// [`fill`](Self::fill): whole rows, and for block scales whole block rows. Any piece is
    /// correct.
    pub fn piece_align(&self) -> usize {
        let rows = match self.g {
            Granularity::Block(br, _) => br.min(self.rows),
            _ => 1,
        };
        rows.saturating_mul(self.cols).max(1)
    }

    /// Dequantize the whole weight into `out`, on all threads.
    pub fn fill_all(&self, out: &mut [O]) -> Result<()> {
        if out.len() != self.codes.len() {
            return Err(Error::value("output length differs from the input's"));
        }
        if out.is_empty() {
            return Ok(());
        }
        let align = self.piece_align() / self.cols;
        let per = rows_per_task(self.rows, self.cols, align) * self.cols;
        let tasks = out.chunks_mut(per).enumerate().collect();
        threads::for_each(tasks, |(task, os): (usize, &mut [O])| {
            self.fill(task * per, os)
        });
        Ok(())
    }

    /// Dequantize the `out.len()` elements from element `first` (in row-major order) into
    /// `out`, on the calling thread.
    ///
    /// # Panics
    /// If the elements run past the end of the weight.
    pub fn fill(&self, first: usize, out: &mut [O]) {
        let (cols, g) = (self.cols, self.g);
        let codes = &self.codes[first..first + out.len()];
        // One table per run of columns sharing a scale, kept while the next rows use it: a
        // 128x128 block's table is built once per call, not once for each of its rows, which
        // made building tables cost more than the lookups they serve.
        let mut cached: Vec<Option<(usize, [O; 256])>> = Vec::new();
        let mut k = 0;
        while k < codes.len() {
            let (r, c) = ((first + k) / cols, (first + k) % cols);
            let n = (g.run_end(c, cols) - c).min(codes.len() - k);
            let si = g.scale_index(r, c, cols);
            let t: &[O; 256] = if g == Granularity::Mx {
                self.mx_tables[mx_code(self.scales[si])]
                    .as_deref()
                    .expect("tabulated in new")
            } else {
                let run = match g {
                    Granularity::Block(_, bc) => c / bc,
                    _ => 0,
                };
                if cached.len() <= run {
                    cached.resize(run + 1, None);
                }
                let slot = &mut cached[run];
                if slot.as_ref().is_none_or(|(s, _)| *s != si) {
                    *slot = Some((si, table::<O>(self.fmt, self.scales[si])));
                }
                &slot.as_ref().expect("just set").1
            };
            O::lookup(self.kernels, &codes[k..k + n], t, &mut out[k..k + n]);
            k += n;
        }
    }
}

/// The E8M0 code of an MX scale value produced by [`e8m0_value`].
fn mx_code(s: f64) -> usize {
    if s.is_nan() {
        255
    } else {
        // s = 2^(code - 127) exactly; the exponent field of the f64 recovers the code.
        let e = ((s.to_bits() >> 52) & 0x7FF) as i64 - 1023;
        (e + 127).clamp(0, 254) as usize
    }
}

/// Quantization error of `y` as an approximation of `x`: (SQNR in dB, max relative error over
/// the nonzero finite elements of `x`). SQNR is +inf when the two are equal.
pub fn error_metrics(x: &[f32], y: &[f32]) -> (f64, f64) {
    let mut signal = 0f64;
    let mut noise = 0f64;
    let mut max_rel = 0f64;
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (f64::from(a), f64::from(b));
        if !a.is_finite() {
            continue;
        }
        let d = a - b;
        signal += a * a;
        noise += d * d;
        if a != 0.0 {
            max_rel = max_rel.max((d / a).abs());
        }
    }
    let sqnr = if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    };
    (sqnr, max_rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0
            })
            .collect()
    }

    /// A float64 reference written independently: group amax, scale, scalar encode of x/scale.
    fn reference(
        x: &[f32],
        rows: usize,
        cols: usize,
        fmt: Format,
        g: Granularity,
    ) -> (Vec<u8>, Vec<f32>) {
        let shape = g.scale_shape(rows, cols);
        let n: usize = shape.iter().product();
        let mut amax = vec![0f32; n];
        for r in 0..rows {
            for c in 0..cols {
                let i = g.scale_index(r, c, cols);
                let v = x[r * cols + c].abs();
                if v.is_finite() {
                    amax[i] = amax[i].max(v);
                }
            }
        }
        let scales: Vec<f32> = amax
            .iter()
            .map(|&a| {
                if a == 0.0 {
                    1.0
                } else {
                    // The quotient rounded once to float32 (exact in float64 first: a has 24
                    // significant bits, 448 and 57344 are small integers... the float64
                    // quotient is not exact, but its float32 rounding is what the quant
                    // module documents).
                    (f64::from(a) / fmt.max_normal()) as f32
                }
            })
            .collect();
        let codes = (0..rows * cols)
            .map(|k| {
                let s = scales[g.scale_index(k / cols, k % cols, cols)];
                scalar::encode_f32(x[k] * (1.0 / s), fmt, true)
            })
            .collect();
        (codes, scales)
    }

    #[test]
    fn quantize_matches_the_reference_for_every_granularity() {
        // Above threads::PARALLEL_MIN_ELEMENTS, so that 2 threads split the work.
        let (rows, cols) = (1100, 260);
        let mut x = lcg(rows * cols, 7);
        for v in &mut x[260..520] {
            *v = 0.0; // an all-zero row
        }
        x[5] = f32::NAN;
        x[700] = f32::INFINITY;
        for fmt in Format::ALL {
            for g in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Block(128, 128),
                Granularity::Block(7, 33),
            ] {
                for threads in [1, 2] {
                    threads::set_num_threads(threads).unwrap();
                    let (q, s) =
                        quantize_weight(&x, rows, cols, fmt, g, Rounding::Nearest).unwrap();
                    let (rq, rs) = reference(&x, rows, cols, fmt, g);
                    assert_eq!(s, rs, "{fmt} {g:?}");
                    assert_eq!(q, rq, "{fmt} {g:?}");
                    assert!(fmt.is_nan(q[5]));
                    assert_eq!(q[700], fmt.max_code());
                }
            }
        }
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let xw: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        let (q, s) = quantize_weight(
            &xb,
            rows,
            cols,
            Format::E4M3,
            Granularity::Channel,
            Rounding::Nearest,
        )
        .unwrap();
        assert_eq!(
            (q, s),
            reference(&xw, rows, cols, Format::E4M3, Granularity::Channel)
        );
    }

    /// `n` codes stepping through all 256 values by `step` (odd, so every code appears).
    fn example_codes(n: usize, step: usize) -> Vec<u8> {
        (0..n).map(|k| (k * step % 256) as u8).collect()
    }

    /// Scales of layout `g` for a `(rows, cols)` weight: `value(i)` for the i-th, or for MX
    /// E8M0 values cycling through 2^-27 .. 2^32.
    fn example_scales(
        g: Granularity,
        rows: usize,
        cols: usize,
        value: impl Fn(usize) -> f64,
    ) -> Vec<f64> {
        let n: usize = g.scale_shape(rows, cols).iter().product();
        if g == Granularity::Mx {
            (0..n).map(|i| e8m0_value((100 + i % 60) as u8)).collect()
        } else {
            (0..n).map(value).collect()
        }
    }

    #[test]
    fn dequantize_is_decode_times_scale_rounded_once() {
        let (rows, cols) = (67, 100);
        let codes = example_codes(rows * cols, 37);
        for g in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Block(16, 32),
            Granularity::Mx,
        ] {
            let scales = example_scales(g, rows, cols, |i| f64::from(0.013f32 * (i + 1) as f32));
            for fmt in Format::ALL {
                let mut o32 = vec![0f32; rows * cols];
                dequantize_weight(&codes, rows, cols, fmt, &scales, g, &mut o32).unwrap();
                let mut o16 = vec![bf16::ZERO; rows * cols];
                dequantize_weight(&codes, rows, cols, fmt, &scales, g, &mut o16).unwrap();
                for k in 0..rows * cols {
                    let p = scalar::decode_f64(codes[k], fmt)
                        * scales[g.scale_index(k / cols, k % cols, cols)];
                    let want = p as f32;
                    assert!(
                        o32[k] == want || (want.is_nan() && o32[k].is_nan()),
                        "{g:?} {k}"
                    );
                    // bf16 reference: nearest of the two bf16 neighbours of p, ties to even.
                    if p.is_finite() {
                        let lo = bf16::from_bits(bf16::from_f64(p).to_bits());
                        let cands = [
                            lo,
                            bf16::from_bits(lo.to_bits().wrapping_add(1)),
                            bf16::from_bits(lo.to_bits().wrapping_sub(1)),
                        ];
                        let best = cands
                            .iter()
                            .filter(|c| c.is_finite())
                            .min_by(|a, b| {
                                let da = (a.to_f64() - p).abs();
                                let db = (b.to_f64() - p).abs();
                                da.partial_cmp(&db)
                                    .unwrap()
                                    .then((a.to_bits() & 1).cmp(&(b.to_bits() & 1)))
                            })
                            .unwrap();
                        assert_eq!(o16[k].to_f64(), best.to_f64(), "{g:?} {k} p={p}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_blocks_spanning_tasks_use_each_blocks_scale() {
        // Large enough to be split into tasks of whole block rows, with partial blocks at the
        // right and bottom edges; every element is checked against its own block's scale.
        let (rows, cols) = (600, 520);
        let codes: Vec<u8> = (0..rows * cols).map(|k| (k * 101 % 255) as u8).collect();
        for g in [
            Granularity::Block(128, 128),
            Granularity::Block(7, 50),
            Granularity::Channel,
        ] {
            let scales = example_scales(g, rows, cols, |i| 0.5 + i as f64 / 64.0);
            let mut out = vec![0f32; rows * cols];
            dequantize_weight(&codes, rows, cols, Format::E4M3, &scales, g, &mut out).unwrap();
            for (k, &o) in out.iter().enumerate() {
                let (r, c) = (k / cols, k % cols);
                let want = (scalar::decode_f64(codes[k], Format::E4M3)
                    * scales[g.scale_index(r, c, cols)]) as f32;
                assert!(
                    o == want || (want.is_nan() && o.is_nan()),
                    "{g:?} ({r}, {c})"
                );
            }
        }
    }

    #[test]
    fn filling_any_range_matches_filling_the_whole() {
        let (rows, cols) = (300, 270);
        let codes = example_codes(rows * cols, 73);
        for g in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Block(128, 128),
            Granularity::Block(5, 7),
            Granularity::Mx,
        ] {
            let scales = example_scales(g, rows, cols, |i| 0.25 + i as f64 / 8.0);
            let d = Dequantizer::<bf16>::new(&codes, rows, cols, Format::E5M2, &scales, g).unwrap();
            let mut whole = vec![bf16::ZERO; rows * cols];
            d.fill_all(&mut whole).unwrap();
            // Ranges that start and end inside rows and blocks, and cross many of each.
            let mut first = 0;
            let mut step = 1;
            while first < rows * cols {
                let len = step.min(rows * cols - first);
                let mut part = vec![bf16::ZERO; len];
                d.fill(first, &mut part);
                let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&part),
                    bits(&whole[first..first + len]),
                    "{g:?} {first}+{len}"
                );
                first += len;
                step = step * 3 + 1;
            }
            d.fill(rows * cols, &mut []);
        }
    }

    #[test]
    fn round_to_odd_fixes_the_double_rounding_case() {
        // p = 1 + 2^-8 + 2^-30: above the bf16 midpoint between 1 and 1 + 2^-7, so it must round
        // up; rounding to float32 first would land exactly on the midpoint and tie to even (1).
        let p = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
        let mut out = [bf16::ZERO; 256];
        let mut ps = [0f64; 256];
        ps[0] = p;
        ps[1] = -p;
        ps[2] = f64::NAN;
        ps[3] = 1e300;
        ps[4] = 1.0 + 2f64.powi(-8); // an exact tie: to even (1)
        bf16::round_from_f64(&ps, &mut out);
        assert_eq!(out[0].to_f64(), 1.0 + 2f64.powi(-7));
        assert_eq!(out[1].to_f64(), -(1.0 + 2f64.powi(-7)));
        assert!(out[2].is_nan());
        assert_eq!(out[3], bf16::INFINITY);
        assert_eq!(out[4].to_f64(), 1.0);
        assert_eq!(bf16::from_f32(p as f32).to_f64(), 1.0);
    }

    #[test]
    fn bad_dimensions_are_errors() {
        assert!(quantize_weight(
            &[1f32; 6],
            4,
            2,
            Format::E4M3,
            Granularity::Tensor,
            Rounding::Nearest
        )
        .is_err());
        assert!(quantize_weight(
            &[1f32; 6],
            3,
            2,
            Format::E4M3,
            Granularity::Block(0, 2),
            Rounding::Nearest
        )
        .is_err());
        let mut o = [0f32; 6];
        assert!(dequantize_weight(
            &[0u8; 6],
            3,
            2,
            Format::E4M3,
            &[1.0; 2],
            Granularity::Tensor,
            &mut o
        )
        .is_err());
    }
}
