//! `matmul_into`: the array entry point of the GEMM.
//!
//! The Python wrapper (`fp8fast._gemm.matmul`) promotes 1-D operands, views FP8 dtypes as
//! `uint8`, turns scales into 2-D float32 arrays and allocates or checks `out=` (and never
//! passes an `out` that overlaps an operand); here the element types are matched, the arrays
//! borrowed, and the product computed with the GIL released.

use half::{bf16, f16};
use numpy::{PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::format::Format;
use crate::gemm::{self, Operand, Output, Scales};

use super::{borrow_error, dtype_name, maybe_detach};

/// A borrowed operand of one of the supported element types.
enum Borrowed<'py> {
    Fp8(PyReadonlyArrayDyn<'py, u8>, Format),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    Bf16(PyReadonlyArrayDyn<'py, bf16>),
}

impl Borrowed<'_> {
    fn operand(&self) -> Operand<'_> {
        match self {
            Borrowed::Fp8(a, f) => Operand::Fp8(a.as_array(), *f),
            Borrowed::F32(a) => Operand::F32(a.as_array()),
            Borrowed::F16(a) => Operand::F16(a.as_array()),
            Borrowed::Bf16(a) => Operand::Bf16(a.as_array()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Borrowed::Fp8(a, _) => a.as_array().len(),
            Borrowed::F32(a) => a.as_array().len(),
            Borrowed::F16(a) => a.as_array().len(),
            Borrowed::Bf16(a) => a.as_array().len(),
        }
    }
}

fn borrow_operand<'py>(
    name: &str,
    x: &Bound<'py, PyAny>,
    fmt: Option<&str>,
) -> PyResult<Borrowed<'py>> {
    if let Ok(a) = x.cast::<PyArrayDyn<u8>>() {
        let Some(fmt) = fmt else {
            return Err(PyTypeError::new_err(format!(
                "{name} is a uint8 array: name its FP8 format with fmt_{name}='e4m3' or 'e5m2'"
            )));
        };
        let fmt: Format = fmt.parse()?;
        return Ok(Borrowed::Fp8(a.try_readonly().map_err(borrow_error)?, fmt));
    }
    if let Ok(a) = x.cast::<PyArrayDyn<f32>>() {
        return Ok(Borrowed::F32(a.try_readonly().map_err(borrow_error)?));
    }
    if let Ok(a) = x.cast::<PyArrayDyn<f16>>() {
        return Ok(Borrowed::F16(a.try_readonly().map_err(borrow_error)?));
    }
    if let Ok(a) = x.cast::<PyArrayDyn<bf16>>() {
        return Ok(Borrowed::Bf16(a.try_readonly().map_err(borrow_error)?));
    }
    Err(PyTypeError::new_err(format!(
        "matmul: unsupported dtype {} for {name}: expected float8_e4m3fn, float8_e5m2, uint8 \
         (with fmt_{name}), float32, float16 or bfloat16",
        dtype_name(x)
    )))
}

fn borrow_scale<'py>(
    name: &str,
    s: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<PyReadonlyArray2<'py, f32>>> {
    s.map(|s| {
        let a = s.cast::<PyArray2<f32>>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{name} must be a 2-D float32 array, got {}",
                dtype_name(s)
            ))
        })?;
        a.try_readonly().map_err(borrow_error)
    })
    .transpose()
}

/// `out[...] = (a * scale_a) @ (b * scale_b)` with `numpy.matmul` shapes (operands of at
/// least two dimensions; `uint8` operands with `fmt_a` / `fmt_b`; scales 2-D float32).
#[pyfunction]
#[pyo3(signature = (a, b, out, fmt_a=None, fmt_b=None, scale_a=None, scale_b=None, block=128))]
#[allow(clippy::too_many_arguments)]
fn matmul_into(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    fmt_a: Option<&str>,
    fmt_b: Option<&str>,
    scale_a: Option<&Bound<'_, PyAny>>,
    scale_b: Option<&Bound<'_, PyAny>>,
    block: usize,
) -> PyResult<()> {
    let ba = borrow_operand("a", a, fmt_a)?;
    let bb = borrow_operand("b", b, fmt_b)?;
    let sa = borrow_scale("scale_a", scale_a)?;
    let sb = borrow_scale("scale_b", scale_b)?;
    let scales = Scales {
        a: sa.as_ref().map(|s| s.as_array()),
        b: sb.as_ref().map(|s| s.as_array()),
        block,
    };
    let (oa, ob) = (ba.operand(), bb.operand());
    let work = ba.len().max(bb.len());
    macro_rules! go {
        ($arr:expr, $variant:ident) => {{
            let mut o = $arr.try_readwrite().map_err(borrow_error)?;
            let view = o.as_array_mut();
            maybe_detach(py, work, || {
                gemm::matmul(&oa, &ob, &scales, Output::$variant(view))
            })?;
            Ok(())
        }};
    }
    if let Ok(o) = out.cast::<PyArrayDyn<f32>>() {
        go!(o, F32)
    } else if let Ok(o) = out.cast::<PyArrayDyn<f16>>() {
        go!(o, F16)
    } else if let Ok(o) = out.cast::<PyArrayDyn<bf16>>() {
        go!(o, Bf16)
    } else {
        Err(PyTypeError::new_err(format!(
            "matmul: unsupported output dtype {}: expected float32, float16 or bfloat16",
            dtype_name(out)
        )))
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul_into, m)?)?;
    Ok(())
}
