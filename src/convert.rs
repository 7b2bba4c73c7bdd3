//! The safe conversion API: slices and n-dimensional arrays of any strides, split across the
//! worker pool for large inputs, each piece handed to the active ISA's slice kernel.
//!
//! Strided arrays are never copied whole: they are walked one lane (a 1-D line along one axis)
//! at a time, and a lane that is not contiguous is gathered into a small stack buffer, converted
//! and scattered, [`LANE_BLOCK`] elements at a time.

use half::{bf16, f16};
use ndarray::{ArrayViewD, ArrayViewMutD, Axis, Zip};

use crate::arch::{codec_kernels, CodecKernels};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::threads;

/// Elements gathered per step when a lane is not contiguous.
pub const LANE_BLOCK: usize = 512;

/// A high-precision element type FP8 converts from and to.
pub trait Wide: Copy + Default + Send + Sync + 'static {
    /// The numpy-style name (`float32`, `float64`, `float16`, `bfloat16`).
    const NAME: &'static str;
    /// The kernel encoding slices of this type in `k`.
    fn encoder(k: &CodecKernels) -> fn(&[Self], &mut [u8], Format, bool);
    /// The kernel decoding into slices of this type in `k`.
    fn decoder(k: &CodecKernels) -> fn(&[u8], &mut [Self], Format);
}

macro_rules! impl_wide {
    ($ty:ty, $name:literal, $enc:ident, $dec:ident) => {
        impl Wide for $ty {
            const NAME: &'static str = $name;
            fn encoder(k: &CodecKernels) -> fn(&[Self], &mut [u8], Format, bool) {
                k.$enc
            }
            fn decoder(k: &CodecKernels) -> fn(&[u8], &mut [Self], Format) {
                k.$dec
            }
        }
    };
}

impl_wide!(f32, "float32", encode_f32, decode_f32);
impl_wide!(f64, "float64", encode_f64, decode_f64);
impl_wide!(f16, "float16", encode_f16, decode_f16);
impl_wide!(bf16, "bfloat16", encode_bf16, decode_bf16);

fn check_len(src: usize, dst: usize) -> Result<()> {
    if src == dst {
        Ok(())
    } else {
        Err(Error::value(format!(
            "output has {dst} elements but the input has {src}"
        )))
    }
}

/// Apply a slice kernel to equal-length slices, split across the pool when large.
pub fn map_slices<A: Sync, B: Send>(src: &[A], dst: &mut [B], f: impl Fn(&[A], &mut [B]) + Sync) {
    let chunk = threads::chunk_len(src.len(), 64);
    if chunk >= src.len() {
        f(src, dst);
        return;
    }
    let pieces = src.chunks(chunk).zip(dst.chunks_mut(chunk)).collect();
    threads::for_each(pieces, |(s, d)| f(s, d));
}

/// The axis to walk lanes along: the one with the smallest source stride among those longer
/// than 1 (the last axis when there is a tie), so that gathers read memory as closely as possible.
fn lane_axis<A>(src: &ArrayViewD<'_, A>) -> Axis {
    let mut best = src.ndim() - 1;
    for ax in (0..src.ndim()).rev() {
        let (len, stride) = (src.shape()[ax], src.strides()[ax].unsigned_abs());
        let best_len = src.shape()[best];
        if len > 1 && (best_len <= 1 || stride < src.strides()[best].unsigned_abs()) {
            best = ax;
        }
    }
    Axis(best)
}

/// Apply a slice kernel elementwise to two arrays of the same shape and any strides.
pub fn map_arrays<A, B>(
    src: ArrayViewD<'_, A>,
    mut dst: ArrayViewMutD<'_, B>,
    f: impl Fn(&[A], &mut [B]) + Sync,
) -> Result<()>
where
    A: Copy + Default + Sync,
    B: Copy + Default + Send,
{
    if src.shape() != dst.shape() {
        return Err(Error::value(format!(
            "output shape {:?} does not match input shape {:?}",
            dst.shape(),
            src.shape()
        )));
    }
    if src.is_empty() {
        return Ok(());
    }
    // Same memory order in both (C, Fortran, or any matching permutation): one flat slice each.
    if src.strides() == dst.strides() {
        if let (Some(s), Some(d)) = (src.as_slice_memory_order(), dst.as_slice_memory_order_mut()) {
            map_slices(s, d, f);
            return Ok(());
        }
    }
    let (src, mut dst) = if src.ndim() == 0 {
        (src.insert_axis(Axis(0)), dst.insert_axis(Axis(0)))
    } else {
        (src, dst)
    };
    let axis = lane_axis(&src);
    let lane = |s: ndarray::ArrayView1<'_, A>, mut d: ndarray::ArrayViewMut1<'_, B>| {
        if let (Some(s), Some(d)) = (s.as_slice(), d.as_slice_mut()) {
            f(s, d);
            return;
        }
        let mut sbuf = [A::default(); LANE_BLOCK];
        let mut dbuf = [B::default(); LANE_BLOCK];
        let n = s.len();
        let mut start = 0;
        while start < n {
            let end = (start + LANE_BLOCK).min(n);
            let len = end - start;
            let sblock = s.slice(ndarray::s![start..end]);
            let sb = match sblock.as_slice() {
                Some(contiguous) => contiguous,
                None => {
                    for (b, &v) in sbuf.iter_mut().zip(sblock.iter()) {
                        *b = v;
                    }
                    &sbuf[..len]
                }
            };
            let mut dblock = d.slice_mut(ndarray::s![start..end]);
            match dblock.as_slice_mut() {
                Some(contiguous) => f(sb, contiguous),
                None => {
                    f(sb, &mut dbuf[..len]);
                    for (o, &v) in dblock.iter_mut().zip(dbuf.iter()) {
                        *o = v;
                    }
                }
            }
            start = end;
        }
    };
    let zip = Zip::from(src.lanes(axis)).and(dst.lanes_mut(axis));
    if src.len() >= threads::PARALLEL_MIN_ELEMENTS && threads::num_threads() > 1 {
        threads::run(|| zip.par_for_each(lane));
    } else {
        zip.for_each(lane);
    }
    Ok(())
}

/// Encode a slice with the active ISA's kernel (multi-threaded when large).
pub fn encode_slice<T: Wide>(src: &[T], dst: &mut [u8], fmt: Format, saturate: bool) -> Result<()> {
    check_len(src.len(), dst.len())?;
    let kernel = T::encoder(codec_kernels());
    map_slices(src, dst, |s, d| kernel(s, d, fmt, saturate));
    Ok(())
}

/// Decode a slice with the active ISA's kernel (multi-threaded when large).
pub fn decode_slice<T: Wide>(src: &[u8], dst: &mut [T], fmt: Format) -> Result<()> {
    check_len(src.len(), dst.len())?;
    let kernel = T::decoder(codec_kernels());
    map_slices(src, dst, |s, d| kernel(s, d, fmt));
    Ok(())
}

/// Encode an array of any shape and strides into `dst` of the same shape.
pub fn encode_array<T: Wide>(
    src: ArrayViewD<'_, T>,
    dst: ArrayViewMutD<'_, u8>,
    fmt: Format,
    saturate: bool,
) -> Result<()> {
    let kernel = T::encoder(codec_kernels());
    map_arrays(src, dst, |s, d| kernel(s, d, fmt, saturate))
}

/// Decode an array of any shape and strides into `dst` of the same shape.
pub fn decode_array<T: Wide>(
    src: ArrayViewD<'_, u8>,
    dst: ArrayViewMutD<'_, T>,
    fmt: Format,
) -> Result<()> {
    let kernel = T::decoder(codec_kernels());
    map_arrays(src, dst, |s, d| kernel(s, d, fmt))
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::scalar;

    #[test]
    fn strided_and_reversed_arrays_match_elementwise_reference() {
        let data: Vec<f32> = (0..6 * 7 * 5).map(|i| (i as f32 - 100.0) * 1.37).collect();
        let a = ArrayD::from_shape_vec(IxDyn(&[6, 7, 5]), data).unwrap();
        let views = [
            a.view(),
            a.slice(ndarray::s![..;2, ..;-1, 1..]).into_dyn(),
            a.view().reversed_axes(),
            a.slice(ndarray::s![3, .., 2]).into_dyn(),
            a.slice(ndarray::s![3, 4, 2]).into_dyn(),
        ];
        for v in views {
            let mut out = ArrayD::<u8>::zeros(v.raw_dim());
            encode_array(v.view(), out.view_mut(), Format::E4M3, false).unwrap();
            for (x, q) in v.iter().zip(out.iter()) {
                assert_eq!(*q, scalar::encode_f32(*x, Format::E4M3, false));
            }
            // Into a transposed output as well.
            let reversed_shape: Vec<usize> = v.shape().iter().rev().copied().collect();
            let mut out_t = ArrayD::<u8>::zeros(IxDyn(&reversed_shape));
            let out_t_view = out_t.view_mut().reversed_axes();
            encode_array(v.view(), out_t_view, Format::E4M3, false).unwrap();
            assert_eq!(out_t.view().reversed_axes(), out.view());
            let mut back = ArrayD::<f32>::zeros(v.raw_dim());
            decode_array(out.view(), back.view_mut(), Format::E4M3).unwrap();
            for (q, y) in out.iter().zip(back.iter()) {
                assert_eq!(*y, scalar::decode_f32(*q, Format::E4M3));
            }
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[3, 4]));
        let mut out = ArrayD::<u8>::zeros(IxDyn(&[4, 3]));
        assert!(encode_array(a.view(), out.view_mut(), Format::E5M2, true).is_err());
        assert!(encode_slice(&[1.0f32; 3], &mut [0u8; 2], Format::E5M2, true).is_err());
    }
}
