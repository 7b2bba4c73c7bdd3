//! The Python extension module `fp8fast._core`: argument checking, array conversion, GIL
//! release and error mapping only. All work happens in the plain Rust modules.

use pyo3::exceptions::{PyMemoryError, PyOSError, PyTypeError, PyValueError};
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
            Error::Memory(m) => PyMemoryError::new_err(m),
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

/// A new zero-filled C-ordered array of `shape`, or numpy's `MemoryError` when it cannot be
/// allocated (rust-numpy's `PyArray::zeros` panics on the null pointer numpy then returns).
/// Zero-filled arrays come from `calloc`, so their pages cost nothing until written.
pub(crate) fn zeros<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
) -> PyResult<Bound<'py, numpy::PyArrayDyn<T>>> {
    use numpy::npyffi::{npy_intp, PY_ARRAY_API};
    use numpy::PyArrayDescrMethods;
    let mut dims = shape
        .iter()
        .map(|&d| npy_intp::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::memory("array dimensions exceed the address space"))?;
    let ndim = std::os::raw::c_int::try_from(dims.len())
        .map_err(|_| Error::value("too many dimensions"))?;
    // SAFETY: `dims` holds `ndim` extents; PyArray_Zeros steals the descriptor reference
    // `into_dtype_ptr` hands it and returns a new reference, or null with an exception set
    // (`from_owned_ptr_or_err` turns that into the `PyErr`).
    let obj = unsafe {
        let ptr = PY_ARRAY_API.PyArray_Zeros(
            py,
            ndim,
            dims.as_mut_ptr(),
            T::get_dtype(py).into_dtype_ptr(),
            0,
        );
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    Ok(obj.cast_into::<numpy::PyArrayDyn<T>>()?)
}

/// rust-numpy refused a borrow (an output that overlaps an input, or is not writeable).
pub(crate) fn borrow_error(e: impl std::fmt::Display) -> PyErr {
    Error::value(format!("cannot use the array: {e}")).into()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A bad FP8FAST_ISA / FP8FAST_NUM_THREADS does not fail this import: `env_error()` reports
    // it, the package raises ImportError for it and the command line prints one line instead
    // (see `fp8fast/__init__.py`).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    config::register(m)?;
    codec::register(m)?;
    gemm::register(m)?;
    checkpoint::register(m)?;
    quant::register(m)?;
    Ok(())
}
