//! `encode_into` / `decode_into`: the array entry points of the codecs.
//!
//! The Python wrapper allocates or checks `out=` and views FP8 arrays as `uint8`; here the
//! element types are matched, both arrays borrowed (rust-numpy refuses overlapping mutable
//! borrows), and the work runs with the GIL released when the input is large.

use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::convert::{self, Wide};
use crate::format::Format;

use super::{borrow_error, dtype_name, maybe_detach};

fn encode_typed<T: Wide + numpy::Element>(
    py: Python<'_>,
    src: &Bound<'_, PyArrayDyn<T>>,
    dst: &Bound<'_, PyArrayDyn<u8>>,
    fmt: Format,
    saturate: bool,
) -> PyResult<()> {
    let src = src.try_readonly().map_err(borrow_error)?;
    let mut dst = dst.try_readwrite().map_err(borrow_error)?;
    let (s, d) = (src.as_array(), dst.as_array_mut());
    let n = s.len();
    maybe_detach(py, n, || convert::encode_array(s, d, fmt, saturate))?;
    Ok(())
}

fn decode_typed<T: Wide + numpy::Element>(
    py: Python<'_>,
    src: &Bound<'_, PyArrayDyn<u8>>,
    dst: &Bound<'_, PyArrayDyn<T>>,
    fmt: Format,
) -> PyResult<()> {
    let src = src.try_readonly().map_err(borrow_error)?;
    let mut dst = dst.try_readwrite().map_err(borrow_error)?;
    let (s, d) = (src.as_array(), dst.as_array_mut());
    let n = s.len();
    maybe_detach(py, n, || convert::decode_array(s, d, fmt))?;
    Ok(())
}

/// Encode `src` (float32/float64/float16/bfloat16, any shape and strides) into the `uint8`
/// array `dst` of the same shape.
#[pyfunction]
fn encode_into(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    fmt: &str,
    saturate: bool,
) -> PyResult<()> {
    let fmt: Format = fmt.parse()?;
    let dst = dst.cast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "output must be a uint8 array, got {}",
            dtype_name(dst)
        ))
    })?;
    with_float_array!(src, a => encode_typed(py, a, dst, fmt, saturate), otherwise => {
        Err(PyTypeError::new_err(format!(
            "cannot encode {} to FP8: expected float64, float32, float16 or bfloat16",
            dtype_name(src)
        )))
    })
}

/// Decode the `uint8` array `src` of FP8 codes into `dst` (float32/float64/float16/bfloat16)
/// of the same shape.
#[pyfunction]
fn decode_into(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    fmt: &str,
) -> PyResult<()> {
    let fmt: Format = fmt.parse()?;
    let src = src.cast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "FP8 input must be viewed as uint8, got {}",
            dtype_name(src)
        ))
    })?;
    with_float_array!(dst, a => decode_typed(py, src, a, fmt), otherwise => {
        Err(PyTypeError::new_err(format!(
            "cannot decode FP8 to {}: expected float32, float64, float16 or bfloat16",
            dtype_name(dst)
        )))
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_into, m)?)?;
    m.add_function(wrap_pyfunction!(decode_into, m)?)?;
    Ok(())
}
