//! Configuration: ISA choice and thread count.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arch::{self, Isa};
use crate::threads;

/// Version, active ISA, available ISAs and thread count as a dict.
#[pyfunction]
fn config<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("isa", arch::active().name())?;
    let available: Vec<&str> = arch::available().iter().map(|i| i.name()).collect();
    d.set_item("available_isas", available)?;
    d.set_item("num_threads", threads::num_threads())?;
    d.set_item("target_arch", std::env::consts::ARCH)?;
    Ok(d)
}

/// Why `FP8FAST_ISA` or `FP8FAST_NUM_THREADS` was ignored (naming the variable and the values
/// it accepts), or `None` when both are usable. The package refuses to import in that case.
#[pyfunction]
fn env_error() -> Option<String> {
    arch::env_error().or_else(threads::env_error)
}

/// Force an instruction-set path (`scalar`, `avx2`, `avx512`, `avx512bf16`).
#[pyfunction]
fn set_isa(name: &str) -> PyResult<()> {
    arch::set_active(Isa::from_name(name)?)?;
    Ok(())
}

/// The active instruction-set path.
#[pyfunction]
fn get_isa() -> &'static str {
    arch::active().name()
}

/// The instruction-set paths this CPU can run, least capable first.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    arch::available().iter().map(|i| i.name()).collect()
}

/// Use `n` threads for large operations (any Python integer; outside 1..=MAX_THREADS is a
/// `ValueError` naming the range, never an `OverflowError`).
#[pyfunction]
fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    let range_error = || {
        crate::Error::value(format!(
            "number of threads must be from 1 to {}, got {}",
            threads::MAX_THREADS,
            n.str().map_or_else(|_| "?".into(), |s| s.to_string())
        ))
    };
    let n = n
        .extract::<i128>()
        .ok()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| (1..=threads::MAX_THREADS).contains(v))
        .ok_or_else(range_error)?;
    threads::set_num_threads(n)?;
    Ok(())
}

/// The number of threads large operations use.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MAX_THREADS", threads::MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(config, m)?)?;
    m.add_function(wrap_pyfunction!(env_error, m)?)?;
    m.add_function(wrap_pyfunction!(set_isa, m)?)?;
    m.add_function(wrap_pyfunction!(get_isa, m)?)?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    Ok(())
}
