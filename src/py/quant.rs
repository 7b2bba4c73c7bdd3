//! Entry points of scaled quantization: `quantize`, `dequantize`, `amax_rows`,
//! `encode_stochastic_into`.
//!
//! The Python wrappers (`fp8fast._quant`, `fp8fast._codec`) resolve defaults, infer layouts and
//! view FP8 arrays as `uint8`; here dtypes are matched, arrays borrowed (non-contiguous inputs
//! copied to C order once), the work run with the GIL released for large inputs, and errors mapped.

use half::{bf16, f16};
use ndarray::{ArrayViewD, CowArray, IxDyn};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::format::Format;
use crate::quant::{self, DequantOutput, Granularity, QuantInput, Rounding, Scales};

use super::{borrow_error, dtype_name, maybe_detach, zeros};

/// A seed: a Python int in [0, 2^64), or None for a fresh one from the OS-seeded hasher.
fn parse_seed(seed: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    match seed {
        None => Ok(fresh_seed()),
        Some(s) if s.is_none() => Ok(fresh_seed()),
        Some(s) => s.extract::<u64>().map_err(|_| {
            PyValueError::new_err(format!(
                "seed must be an integer in [0, 2**64), got {}",
                s.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        }),
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A C-ordered view of `a` (borrowed when it already is, copied otherwise).
fn c_order<'a, T: Clone>(a: ArrayViewD<'a, T>) -> crate::Result<CowArray<'a, T, IxDyn>> {
    if a.is_standard_layout() {
        Ok(CowArray::from(a))
    } else {
        quant::ensure_allocatable(a.len(), std::mem::size_of::<T>())?;
        Ok(CowArray::from(a.as_standard_layout().into_owned()))
    }
}

fn quantize_typed<'py, T: QuantInput + numpy::Element>(
    py: Python<'py>,
    x: &Bound<'py, PyArrayDyn<T>>,
    fmt: Format,
    granularity: Granularity,
    rounding: Rounding,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let ro = x.try_readonly().map_err(borrow_error)?;
    let view = ro.as_array();
    let shape = view.shape().to_vec();
    let layout = quant::Layout::new(&shape, granularity)?;
    let n = view.len();
    // numpy's allocator (large arrays get huge pages) rather than a Vec: first-touch page
    // faults of a fresh 4 KiB-page allocation cost more than the quantization itself.
    let q = zeros::<u8>(py, &shape)?;
    let mut qrw = q.try_readwrite().map_err(borrow_error)?;
    let qs = qrw.as_slice_mut().map_err(borrow_error)?;
    let scales = maybe_detach(py, n, || -> crate::Result<Scales> {
        let c = c_order(view)?;
        let xs = c.as_slice().expect("standard layout is contiguous");
        quant::quantize(xs, &shape, fmt, granularity, rounding, qs)
    })?;
    drop(qrw);
    let q = q.into_any();
    let s = match scales {
        Scales::F32(v) => PyArray1::from_vec(py, v)
            .reshape(layout.scale_shape)?
            .into_any(),
        Scales::E8M0(v) => PyArray1::from_vec(py, v)
            .reshape(layout.scale_shape)?
            .into_any(),
    };
    Ok((q, s))
}

/// Quantize `x` (float64/float32/float16/bfloat16) to FP8 codes with scales.
///
/// Returns `(q, scale)`: `q` a uint8 array of x's shape, `scale` float32 (uint8 E8M0 codes
/// for `"mx"`) in the layout's shape.
#[pyfunction]
#[pyo3(signature = (x, fmt, granularity, axis, block, rounding, seed=None))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    fmt: &str,
    granularity: &str,
    axis: i64,
    block: (i64, i64),
    rounding: &str,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let fmt: Format = fmt.parse()?;
    let ndim = x
        .getattr("ndim")
        .and_then(|d| d.extract::<usize>())
        .unwrap_or(0);
    let block = (
        usize::try_from(block.0).unwrap_or(0),
        usize::try_from(block.1).unwrap_or(0),
    );
    let granularity = Granularity::parse(granularity, ndim, axis, block)?;
    let rounding = match rounding {
        "nearest" => Rounding::Nearest,
        "stochastic" => Rounding::Stochastic {
            seed: parse_seed(seed)?,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown rounding {other:?}: expected \"nearest\" or \"stochastic\""
            )))
        }
    };
    with_float_array!(x, a => quantize_typed(py, a, fmt, granularity, rounding), otherwise => {
        Err(PyTypeError::new_err(format!(
            "cannot quantize {}: expected float64, float32, float16 or bfloat16",
            dtype_name(x)
        )))
    })
}

fn dequantize_typed<'py, T: DequantOutput + numpy::Element>(
    py: Python<'py>,
    q: ArrayViewD<'_, u8>,
    fmt: Format,
    granularity: Granularity,
    scales: &[f32],
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = q.shape().to_vec();
    let n = q.len();
    let out = match out {
        // numpy's allocator, as in `quantize_typed`.
        None => zeros::<T>(py, &shape)?,
        Some(o) => {
            let o = o.cast::<PyArrayDyn<T>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "out has dtype {} but dtype={} was asked for",
                    dtype_name(o),
                    T::NAME
                ))
            })?;
            if o.shape() != shape.as_slice() || !o.is_c_contiguous() {
                return Err(PyValueError::new_err(format!(
                    "out must be a C-contiguous array of shape {}",
                    shape_str(&shape)
                )));
            }
            o.clone()
        }
    };
    let mut orw = out.try_readwrite().map_err(borrow_error)?;
    let os = orw.as_slice_mut().map_err(borrow_error)?;
    maybe_detach(py, n, || -> crate::Result<()> {
        let c = c_order(q)?;
        let qs = c.as_slice().expect("standard layout is contiguous");
        quant::dequantize(qs, &shape, fmt, granularity, scales, os)
    })?;
    drop(orw);
    Ok(out.into_any())
}

fn shape_str(s: &[usize]) -> String {
    match s.len() {
        1 => format!("({},)", s[0]),
        _ => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `decode(q) * scale` with the scale broadcast per `granularity`, as `dtype`.
///
/// `q` is uint8 codes; `scale` float32 (uint8 E8M0 codes for `"mx"`); `out`, if given, a
/// C-contiguous array of q's shape and of `dtype`, written and returned.
#[pyfunction]
#[pyo3(signature = (q, scale, fmt, granularity, axis, block, dtype, out=None))]
#[allow(clippy::too_many_arguments)]
fn dequantize<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    fmt: &str,
    granularity: &str,
    axis: i64,
    block: (i64, i64),
    dtype: &str,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let fmt: Format = fmt.parse()?;
    let q = q.cast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "FP8 input must be viewed as uint8, got {}",
            dtype_name(q)
        ))
    })?;
    let block = (
        usize::try_from(block.0).unwrap_or(0),
        usize::try_from(block.1).unwrap_or(0),
    );
    let granularity = Granularity::parse(granularity, q.ndim(), axis, block)?;
    let qro = q.try_readonly().map_err(borrow_error)?;
    let qv = qro.as_array();
    let layout = quant::Layout::new(qv.shape(), granularity)?;
    // The scale values in layout order, as float32.
    let scales: Vec<f32> = if granularity == Granularity::Mx {
        let s = scale.cast::<PyArrayDyn<u8>>().map_err(|_| {
            PyValueError::new_err(format!(
                "mx scales must be float8_e8m0fnu (or uint8 codes), got {}",
                dtype_name(scale)
            ))
        })?;
        let ro = s.try_readonly().map_err(borrow_error)?;
        check_scale_shape(ro.as_array().shape(), &layout, granularity)?;
        quant::ensure_allocatable(ro.len(), 4)?;
        ro.as_array()
            .iter()
            .map(|&c| quant::e8m0_value(c))
            .collect()
    } else {
        let s = scale.cast::<PyArrayDyn<f32>>().map_err(|_| {
            PyValueError::new_err(format!(
                "scales must be float32, got {} (expected shape {})",
                dtype_name(scale),
                shape_str(&layout.scale_shape)
            ))
        })?;
        let ro = s.try_readonly().map_err(borrow_error)?;
        check_scale_shape(ro.as_array().shape(), &layout, granularity)?;
        quant::ensure_allocatable(ro.len(), 4)?;
        ro.as_array().iter().copied().collect()
    };
    match dtype {
        "float32" => dequantize_typed::<f32>(py, qv, fmt, granularity, &scales, out),
        "float64" => dequantize_typed::<f64>(py, qv, fmt, granularity, &scales, out),
        "float16" => dequantize_typed::<f16>(py, qv, fmt, granularity, &scales, out),
        "bfloat16" => dequantize_typed::<bf16>(py, qv, fmt, granularity, &scales, out),
        other => Err(PyTypeError::new_err(format!(
            "cannot dequantize to {other}: expected float32, float64, float16 or bfloat16"
        ))),
    }
}

fn check_scale_shape(got: &[usize], layout: &quant::Layout, g: Granularity) -> PyResult<()> {
    let ok = if g == Granularity::Tensor {
        got.iter().product::<usize>() == 1
    } else {
        got == layout.scale_shape.as_slice()
    };
    if ok {
        return Ok(());
    }
    let expected = if g == Granularity::Tensor {
        "() or (1,)".to_string()
    } else {
        shape_str(&layout.scale_shape)
    };
    let name = match g {
        Granularity::Tensor => "tensor",
        Granularity::Channel { .. } => "channel",
        Granularity::Block { .. } => "block",
        Granularity::Mx => "mx",
    };
    Err(PyValueError::new_err(format!(
        "scale has shape {} but {name} granularity on this array expects shape {expected}",
        shape_str(got)
    )))
}

fn amax_typed<'py, T: QuantInput + numpy::Element>(
    py: Python<'py>,
    x: &Bound<'py, PyArrayDyn<T>>,
    ignore_nan: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let ro = x.try_readonly().map_err(borrow_error)?;
    let view = ro.as_array();
    if view.ndim() != 2 {
        return Err(PyValueError::new_err("amax_rows needs a 2-D array"));
    }
    let (rows, cols) = (view.shape()[0], view.shape()[1]);
    let out = maybe_detach(py, view.len(), || {
        let c = c_order(view)?;
        let xs = c.as_slice().expect("standard layout is contiguous");
        quant::amax_rows(xs, rows, cols, ignore_nan)
    })?;
    Ok(PyArray1::from_vec(py, out).into_any())
}

/// Largest magnitude of each row of a 2-D array, as float64 (exact values of the input type).
#[pyfunction]
fn amax_rows<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    ignore_nan: bool,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(x, a => amax_typed(py, a, ignore_nan), otherwise => {
        Err(PyTypeError::new_err(format!(
            "amax needs float64, float32, float16 or bfloat16, got {}",
            dtype_name(x)
        )))
    })
}

fn stochastic_typed<T: QuantInput + numpy::Element>(
    py: Python<'_>,
    src: &Bound<'_, PyArrayDyn<T>>,
    dst: &Bound<'_, PyArrayDyn<u8>>,
    fmt: Format,
    saturate: bool,
    seed: u64,
) -> PyResult<()> {
    let sro = src.try_readonly().map_err(borrow_error)?;
    let mut drw = dst.try_readwrite().map_err(borrow_error)?;
    let (s, mut d) = (sro.as_array(), drw.as_array_mut());
    if s.shape() != d.shape() {
        return Err(PyValueError::new_err(format!(
            "output shape {} does not match input shape {}",
            shape_str(d.shape()),
            shape_str(s.shape())
        )));
    }
    let n = s.len();
    maybe_detach(py, n, || -> crate::Result<()> {
        // Element i of the C-order traversal uses draw i, whatever the strides.
        let c = c_order(s)?;
        let xs = c.as_slice().expect("standard layout is contiguous");
        if let Some(ds) = d.as_slice_mut() {
            return quant::encode_stochastic(xs, ds, fmt, saturate, seed, 0);
        }
        let mut tmp = crate::alloc::filled_for(n, 0u8, "the codes of a strided output")?;
        quant::encode_stochastic(xs, &mut tmp, fmt, saturate, seed, 0)?;
        for (o, v) in d.iter_mut().zip(tmp) {
            *o = v;
        }
        Ok(())
    })?;
    Ok(())
}

/// Stochastically round `src` (float32/float64/float16/bfloat16, any shape and strides) into
/// the uint8 array `dst` of the same shape; element `i` in C order uses draw `i` of `seed`.
#[pyfunction]
#[pyo3(signature = (src, dst, fmt, saturate, seed=None))]
fn encode_stochastic_into(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    fmt: &str,
    saturate: bool,
    seed: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let fmt: Format = fmt.parse()?;
    let seed = parse_seed(seed)?;
    let dst = dst.cast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "output must be a uint8 array, got {}",
            dtype_name(dst)
        ))
    })?;
    with_float_array!(src, a => stochastic_typed(py, a, dst, fmt, saturate, seed), otherwise => {
        Err(PyTypeError::new_err(format!(
            "cannot encode {} to FP8: expected float64, float32, float16 or bfloat16",
            dtype_name(src)
        )))
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(amax_rows, m)?)?;
    m.add_function(wrap_pyfunction!(encode_stochastic_into, m)?)?;
    Ok(())
}
