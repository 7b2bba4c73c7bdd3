//! The Python extension module `fp8fast._core`: argument checking, array conversion, GIL
//! release and error mapping only. All work happens in the plain Rust modules.

use pyo3::exceptions::{PyImportError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

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
