//! The Python extension module `fp8fast._core`: argument checking, array conversion, GIL
//! release and error mapping only. All work happens in the plain Rust modules.

use pyo3::exceptions::{PyImportError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

/// Evaluate `$body` with `$arr` bound to `$obj` cast to the array type of whichever float
/// element it holds (float32, float64, float16, bfloat16), or `$otherwise` if none: the one
/// place the PyO3 layer turns a dtype into a Rust type parameter.
macro_rules! with_float_array {
    ($obj:expr, $arr:ident => $body:expr, otherwise => $otherwise:expr) => {
        if let Ok($arr) = $obj.cast::<numpy::PyArrayDyn<f32>>() {
            $body
        } else if let Ok($arr) = $obj.cast::<numpy::PyArrayDyn<f64>>() {
            $body
        } else if let Ok($arr) = $obj.cast::<numpy::PyArrayDyn<half::f16>>() {
            $body
        } else if let Ok($arr) = $obj.cast::<numpy::PyArrayDyn<half::bf16>>() {
            $body
        } else {
            $otherwise
        }
    };
}

mod checkpoint;
mod codec;
mod config;
mod gemm;
mod quant;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Value(m) => PyValueError::new_err(m),
            Error::Type(m) => PyTypeError::new_err(m),
            e @ Error::Io { .. } => PyOSError::new_err(e.to_string()),
        }
    }
}

/// Inputs at least this large are converted with the GIL released.
pub(crate) const RELEASE_GIL_MIN: usize = 1 << 14;

/// Run `f` with the GIL released when `n` elements are worth it.
pub(crate) fn maybe_detach<R: Send>(py: Python<'_>, n: usize, f: impl FnOnce() -> R + Send) -> R {
    if n >= RELEASE_GIL_MIN {
        py.detach(f)
    } else {
        f()
    }
}

/// The dtype of an array-like (or its type name), for error messages.
pub(crate) fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| {
            obj.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        })
}

/// rust-numpy refused a borrow (an output that overlaps an input, or is not writeable).
pub(crate) fn borrow_error(e: impl std::fmt::Display) -> PyErr {
    Error::value(format!("cannot use the array: {e}")).into()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if let Some(e) = crate::arch::env_error().or_else(crate::threads::env_error) {
        return Err(PyImportError::new_err(format!("fp8fast: {e}")));
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    config::register(m)?;
    codec::register(m)?;
    gemm::register(m)?;
    checkpoint::register(m)?;
    quant::register(m)?;
    Ok(())
}
