//! Checkpoint entry points: header reading, `save_file`, and the per-file conversion drivers.
//!
//! Conversions run with the GIL released; the progress callback re-attaches to Python once
//! per tensor to report progress and to let Ctrl-C (`KeyboardInterrupt`) abort the run, in
//! which case the writer's temporary file is removed before the exception propagates.

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::checkpoint::{
    self, file, Granularity, Layout, OutDtype, OutTensor, Progress, QuantizeOptions, Rounding,
    SafetensorsFile, SafetensorsWriter, ScaleDtype, Summary,
};
use crate::error::Error;
use crate::format::Format;

type TensorRow = (String, String, Vec<usize>, u64, u64);
type Header = (u64, Vec<TensorRow>, Option<HashMap<String, String>>);

/// Validate the header of `path`: returns `(file_len, [(name, dtype, shape, start, end)],
/// metadata or None)` with absolute byte offsets, tensors in file order.
#[pyfunction]
fn read_header(py: Python<'_>, path: PathBuf) -> PyResult<Header> {
    let f = py.detach(|| SafetensorsFile::open(&path))?;
    let rows = f
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.to_string(),
                t.shape.clone(),
                t.start,
                t.end,
            )
        })
        .collect();
    Ok((f.file_len(), rows, f.metadata().cloned()))
}

/// Write `tensors` = `[(name, dtype, shape, uint8 array of the bytes)]` to `path` atomically.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None, overwrite=true))]
fn write_file(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<(String, String, Vec<usize>, Bound<'_, PyAny>)>,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
) -> PyResult<()> {
    let mut plan = Vec::with_capacity(tensors.len());
    let mut arrays = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        plan.push(OutTensor::new(
            name.clone(),
            file::parse_dtype(dtype)?,
            shape.clone(),
        ));
        let a = data.cast::<PyArray1<u8>>().map_err(|_| {
            PyTypeError::new_err(format!("tensor {name:?}: data must be a 1-D uint8 array"))
        })?;
        arrays.push(
            a.try_readonly().map_err(|e| {
                Error::value(format!("tensor {name:?}: cannot read the array: {e}"))
            })?,
        );
    }
    let slices = arrays
        .iter()
        .zip(&tensors)
        .map(|(a, (name, ..))| {
            a.as_slice()
                .map_err(|_| Error::value(format!("tensor {name:?}: data must be contiguous")))
        })
        .collect::<Result<Vec<&[u8]>, Error>>()?;
    let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    py.detach(|| -> Result<(), Error> {
        let mut w = SafetensorsWriter::create(&path, plan, metadata, overwrite)?;
        for (s, name) in slices.iter().zip(&names) {
            if s.is_empty() {
                continue; // no bytes to write; the writer steps over empty tensors itself
            }
            match w.current_tensor() {
                Some(t) if t.name != *name => {
                    return Err(Error::value(format!(
                        "internal: tensor order broken at {name:?}"
                    )))
                }
                _ => {}
            }
            w.write(s)
                .map_err(|e| Error::value(format!("tensor {name:?}: {e}")))?;
        }
        w.finish()
    })?;
    Ok(())
}

/// Runs `f` with the GIL released and a progress callback that re-attaches to call `callback`
/// (if any) with `(tensors_done, tensors_total, bytes_done, bytes_total)` and check signals.
fn with_progress<R: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    f: impl FnOnce(&mut dyn FnMut(Progress) -> crate::Result<()>) -> crate::Result<R> + Send,
) -> PyResult<R> {
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut report = |p: Progress| -> crate::Result<()> {
            Python::attach(|py| {
                let r = py.check_signals().and_then(|()| match &callback {
                    Some(cb) => cb
                        .call1(
                            py,
                            (p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total),
                        )
                        .map(drop),
                    None => Ok(()),
                });
                r.map_err(|e| {
                    pending = Some(e);
                    Error::value("interrupted")
                })
            })
        };
        f(&mut report)
    });
    match (result, pending) {
        (Err(_), Some(e)) => Err(e),
        (r, _) => Ok(r?),
    }
}

fn summary_dict<'py>(py: Python<'py>, s: &Summary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("converted", PyList::new(py, &s.converted)?)?;
    d.set_item("written", s.written.clone())?;
    d.set_item("output_bytes", s.output_bytes)?;
    Ok(d)
}

fn parse_granularity(name: &str, block: (usize, usize)) -> PyResult<Granularity> {
    Ok(match name {
        "tensor" => Granularity::Tensor,
        "channel" => Granularity::Channel,
        "block" => Granularity::Block(block.0, block.1),
        "mx" => Granularity::Mx,
        _ => {
            return Err(Error::value(format!(
                "unknown granularity {name:?}: expected tensor, channel, block or mx"
            ))
            .into())
        }
    })
}

/// Quantize the tensors `targets` of the file `src` into `dst` (see `checkpoint::quantize_file`).
#[pyfunction]
#[pyo3(signature = (src, dst, targets, fmt, granularity, block, layout, metadata=None, overwrite=false, progress=None, seed=None, scale_dtype="auto"))]
#[allow(clippy::too_many_arguments)]
fn quantize_file<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    targets: Vec<String>,
    fmt: &str,
    granularity: &str,
    block: (usize, usize),
    layout: &str,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
    seed: Option<u64>,
    scale_dtype: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let format: Format = fmt.parse()?;
    let scale_dtype = match scale_dtype {
        "auto" => None,
        "f32" => Some(ScaleDtype::F32),
        "bf16" => Some(ScaleDtype::BF16),
        "f16" => Some(ScaleDtype::F16),
        _ => {
            return Err(Error::value(format!(
                "unknown scale dtype {scale_dtype:?}: expected auto, bf16, f16 or f32"
            ))
            .into())
        }
    };
    let granularity = parse_granularity(granularity, block)?;
    let layout = match layout {
        "compressed-tensors" => Layout::CompressedTensors,
        "fp8-block" => Layout::Fp8Block,
        _ => {
            return Err(Error::value(format!(
                "unknown layout {layout:?}: expected compressed-tensors or fp8-block"
            ))
            .into())
        }
    };
    let opts = QuantizeOptions {
        format,
        granularity,
        layout,
        rounding: seed.map_or(Rounding::Nearest, |seed| Rounding::Stochastic { seed }),
        scale_dtype,
    };
    let s = with_progress(py, progress, |cb| {
        checkpoint::quantize_file(&src, &dst, &targets, opts, metadata, overwrite, cb)
    })?;
    summary_dict(py, &s)
}

/// Dequantize the FP8 tensors of `src` into `dst` (see `checkpoint::dequantize_file`).
#[pyfunction]
#[pyo3(signature = (src, dst, dtype, scale_files=Vec::new(), block=None, metadata=None, overwrite=false, progress=None))]
#[allow(clippy::too_many_arguments)]
fn dequantize_file<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    dtype: &str,
    scale_files: Vec<PathBuf>,
    block: Option<(usize, usize)>,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = match dtype {
        "bf16" | "bfloat16" => OutDtype::BF16,
        "f16" | "float16" => OutDtype::F16,
        "f32" | "float32" => OutDtype::F32,
        _ => {
            return Err(Error::value(format!(
                "unknown dtype {dtype:?}: expected bf16, f16 or f32"
            ))
            .into())
        }
    };
    let s = with_progress(py, progress, |cb| {
        checkpoint::dequantize_file(
            &src,
            &dst,
            out,
            &scale_files,
            block,
            metadata,
            overwrite,
            cb,
        )
    })?;
    summary_dict(py, &s)
}

/// Inspect statistics of tensor `name` of `paths[0]` (other paths: shards holding scales):
/// a dict with `amax`, `scale_layout`, `sqnr_db`, `max_rel_err` (None where not applicable).
#[pyfunction]
#[pyo3(signature = (paths, name, block=None, error=None, source=None))]
fn tensor_report<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    name: String,
    block: Option<(usize, usize)>,
    error: Option<(String, String, (usize, usize))>,
    source: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let error = match &error {
        Some((f, g, b)) => Some((f.parse::<Format>()?, parse_granularity(g, *b)?)),
        None => None,
    };
    if paths.is_empty() {
        return Err(Error::value("no file given").into());
    }
    let r = py.detach(|| -> crate::Result<checkpoint::TensorReport> {
        let files = paths
            .iter()
            .map(SafetensorsFile::open)
            .collect::<crate::Result<Vec<_>>>()?;
        let src = source.as_deref().map(SafetensorsFile::open).transpose()?;
        checkpoint::tensor_report(&files, &name, block, error, src.as_ref())
    })?;
    let d = PyDict::new(py);
    d.set_item("amax", r.amax)?;
    d.set_item("scale_layout", r.scale_layout)?;
    d.set_item("sqnr_db", r.sqnr_db)?;
    d.set_item("max_rel_err", r.max_rel_err)?;
    Ok(d)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_header, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_file, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_file, m)?)?;
    m.add_function(wrap_pyfunction!(tensor_report, m)?)?;
    Ok(())
}
