//! Streaming, atomic conversion of safetensors checkpoints to and from FP8 (DESIGN.md §6).
//!
//! - [`mod@file`]: header validation and positional reads of one `.safetensors` file.
//! - [`writer`]: the streaming, atomic writer.
//! - [`scaled`]: scaled quantization / exact dequantization of one 2-D weight.
//! - this module: the per-file drivers [`quantize_file`], [`dequantize_file`] and the
//!   statistics `fp8fast inspect` shows ([`tensor_report`]).
//!
//! One file is converted tensor by tensor in file order: the output header is planned up
//! front (every output shape is known from the input header), then each tensor is read,
//! converted with all worker threads and appended. Peak memory is therefore one input tensor
//! plus its output (1.5x the larger of the two for 16-bit <-> 8-bit), plus a fixed 8 MiB copy
//! buffer. Directories, shards, `config.json` and the index are handled by the Python driver
//! (`fp8fast._checkpoint`), which calls these functions once per shard.

pub mod file;
pub mod fskind;
pub mod pipeline;
pub mod scaled;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;

pub use file::{SafetensorsFile, TensorEntry};
pub use scaled::Granularity;
pub use writer::{OutTensor, SafetensorsWriter};

use crate::alloc::Refused;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::quant;
pub use crate::quant::{Rounding, ScaleDtype};

/// Where the scales of a quantized checkpoint go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// compressed-tensors (vLLM / llm-compressor): `<w>_scale` (`weight_scale`) in the weight's
    /// dtype by default, `(1,)`, `(out, 1)`, blocks, or MX exponents `(out, in/32)` as `U8`.
    CompressedTensors,
    /// DeepSeek-V3 / transformers FineGrainedFP8: `<w>_scale_inv`, float32 blocks.
    Fp8Block,
}

impl Layout {
    /// The scale tensor's name for weight `name`.
    pub fn scale_name(self, name: &str) -> String {
        match self {
            Layout::CompressedTensors => format!("{name}_scale"),
            Layout::Fp8Block => format!("{name}_scale_inv"),
        }
    }
}

/// Options of [`quantize_file`].
#[derive(Clone, Copy, Debug)]
pub struct QuantizeOptions {
    /// Target format.
    pub format: Format,
    /// Scale granularity.
    pub granularity: Granularity,
    /// Scale naming / layout.
    pub layout: Layout,
    /// Nearest, or stochastic with a seed; each tensor's stream is keyed by the seed and the
    /// tensor's name (see [`tensor_seed`]), so results do not depend on sharding or threads.
    pub rounding: Rounding,
    /// The dtype float scales are stored in (the codes are computed against the stored
    /// scale); `None`: the weight's own dtype in the compressed-tensors layout (as
    /// compressed-tensors keeps it), float32 in the fp8-block layout. MX scales are E8M0
    /// exponents stored as `U8`, as compressed-tensors' `mxfp8-quantized` format has them.
    pub scale_dtype: Option<ScaleDtype>,
}

impl QuantizeOptions {
    /// The dtype the scales of a weight of dtype `weight` are stored in.
    fn scale_store(&self, weight: Dtype) -> ScaleDtype {
        match (self.scale_dtype, self.layout, weight) {
            (Some(s), ..) => s,
            (None, Layout::Fp8Block, _) => ScaleDtype::F32,
            (None, Layout::CompressedTensors, Dtype::BF16) => ScaleDtype::BF16,
            (None, Layout::CompressedTensors, Dtype::F16) => ScaleDtype::F16,
            (None, Layout::CompressedTensors, _) => ScaleDtype::F32,
        }
    }

    /// The safetensors dtype of the scales of a weight of dtype `weight`.
    fn scale_file_dtype(&self, weight: Dtype) -> Dtype {
        if self.granularity == Granularity::Mx {
            return Dtype::U8;
        }
        match self.scale_store(weight) {
            ScaleDtype::F32 => Dtype::F32,
            ScaleDtype::BF16 => Dtype::BF16,
            ScaleDtype::F16 => Dtype::F16,
        }
    }
}

/// The bytes of `scales` as stored in `store` (float scales are exactly representable in it).
fn scale_bytes(scales: quant::Scales, store: ScaleDtype) -> Vec<u8> {
    match scales {
        quant::Scales::E8M0(codes) => codes,
        quant::Scales::F32(s) => match store {
            ScaleDtype::F32 => bytemuck::cast_slice(&s).to_vec(),
            ScaleDtype::BF16 => {
                let v: Vec<bf16> = s.iter().map(|&x| bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            ScaleDtype::F16 => {
                let v: Vec<f16> = s.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
        },
    }
}

/// The stochastic-rounding seed of tensor `name`: `seed` mixed with the FNV-1a hash of the
/// name, so that equal tensors in different places get independent draws.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    seed ^ h
}

/// Progress of a conversion: tensors and source bytes done out of the totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Tensors done.
    pub tensors_done: usize,
    /// Tensors in the file.
    pub tensors_total: usize,
    /// Source bytes done.
    pub bytes_done: u64,
    /// Source bytes in the file's tensors.
    pub bytes_total: u64,
}

impl Progress {
    /// Count source tensor `t` as done.
    fn tensor_done(&mut self, t: &TensorEntry) {
        self.tensors_done += 1;
        self.bytes_done += t.nbytes();
    }
}

/// What a conversion wrote.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Names of the tensors converted (quantized or dequantized).
    pub converted: Vec<String>,
    /// Output tensor names with their dtype names and shapes, in file order.
    pub written: Vec<(String, String, Vec<usize>)>,
    /// Bytes of the output file.
    pub output_bytes: u64,
}

/// A progress callback; an error from it (e.g. Ctrl-C seen by Python) aborts the run.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress) -> Result<()>;

/// Copy buffer size for tensors copied unchanged.
const COPY_CHUNK: usize = 8 << 20;
/// Piece of a tensor copied map to map by one thread.
const COPY_PIECE: usize = 1 << 20;

fn fp8_dtype(fmt: Format) -> Dtype {
    match fmt {
        Format::E4M3 => Dtype::F8_E4M3,
        Format::E5M2 => Dtype::F8_E5M2,
    }
}

fn fmt_of(d: Dtype) -> Option<Format> {
    match d {
        Dtype::F8_E4M3 => Some(Format::E4M3),
        Dtype::F8_E5M2 => Some(Format::E5M2),
        _ => None,
    }
}

/// Refuse to write over any of the inputs (the same file under another name included).
fn check_not_input(dst: &Path, inputs: &[&Path]) -> Result<()> {
    let canon_dst = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| std::env::current_dir().ok(), |p| p.canonicalize().ok())
        .zip(dst.file_name())
        .map(|(d, n)| d.join(n));
    for src in inputs {
        let same = match (src.canonicalize().ok(), &canon_dst) {
            (Some(a), Some(b)) => &a == b,
            _ => false,
        };
        if same {
            return Err(Error::value(format!(
                "destination {} is the source: refusing to overwrite the input",
                dst.display()
            )));
        }
    }
    Ok(())
}

fn view<T: bytemuck::Pod>(buf: &mut Vec<u64>, elements: usize) -> Result<&mut [T], Refused> {
    let bytes = elements
        .checked_mul(std::mem::size_of::<T>())
        .ok_or(Refused::of::<T>(elements))?;
    let words = bytes.div_ceil(8);
    crate::alloc::grow(buf, words, 0)?;
    let all: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[..words]);
    Ok(bytemuck::cast_slice_mut(&mut all[..bytes]))
}

/// How many `T` tensor `t`'s bytes hold (an error if not a whole number).
fn element_count<T>(f: &SafetensorsFile, t: &TensorEntry) -> Result<usize> {
    let size = std::mem::size_of::<T>() as u64;
    if !t.nbytes().is_multiple_of(size) {
        return Err(Error::value(format!(
            "{}: tensor {:?} has {} bytes, not a multiple of {size}",
            f.path().display(),
            t.name,
            t.nbytes()
        )));
    }
    usize::try_from(t.nbytes() / size)
        .map_err(|_| Error::value(format!("tensor {:?} is too large", t.name)))
}

/// Read tensor `t` into `buf` viewed as elements of `T`. `buf` is reused from tensor to tensor
/// (8-byte words, so it can be viewed as any element type): a fresh allocation per tensor would
/// fault in and zero new pages every time. It grows to the largest input tensor, which the
/// memory bound allows.
fn read_into<'a, T: bytemuck::Pod>(
    f: &SafetensorsFile,
    t: &TensorEntry,
    buf: &'a mut Vec<u64>,
) -> Result<&'a mut [T]> {
    let v = view::<T>(buf, element_count::<T>(f, t)?)
        .map_err(|r| r.in_tensor(f.path(), &t.name, "its data"))?;
    f.read_tensor(t, bytemuck::cast_slice_mut(v))?;
    Ok(v)
}

/// Call `use_elems` with tensor `t`'s elements as `T`: straight from a memory map of the file
/// when the tensor's offset is aligned for `T`, else read into `buf` (see [`read_into`]).
fn with_tensor<T: bytemuck::Pod, R>(
    f: &SafetensorsFile,
    t: &TensorEntry,
    buf: &mut Vec<u64>,
    use_elems: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    if t.start.is_multiple_of(std::mem::align_of::<T>() as u64)
        && t.nbytes().is_multiple_of(std::mem::size_of::<T>() as u64)
    {
        if let Some(map) = f.map_tensor(t)? {
            return use_elems(bytemuck::cast_slice(&map[..]));
        }
    }
    use_elems(read_into::<T>(f, t, buf)?)
}

/// Read a tensor's bytes into a freshly allocated, suitably aligned vector of `T`.
fn read_as<T: bytemuck::Pod + Default>(f: &SafetensorsFile, t: &TensorEntry) -> Result<Vec<T>> {
    let mut v = crate::alloc::filled(element_count::<T>(f, t)?, T::default())
        .map_err(|r| r.in_tensor(f.path(), &t.name, "its data"))?;
    f.read_tensor(t, bytemuck::cast_slice_mut(&mut v))?;
    Ok(v)
}

/// Tensor `t` read as `T` and converted element by element (into memory allocated fallibly).
fn read_converted<T: bytemuck::Pod + Default, U>(
    f: &SafetensorsFile,
    t: &TensorEntry,
    convert: impl Fn(T) -> U,
) -> Result<Vec<U>> {
    let v = read_as::<T>(f, t)?;
    crate::alloc::collect(v.len(), v.into_iter().map(convert))
        .map_err(|r| r.in_tensor(f.path(), &t.name, "its values"))
}

/// A zeroed float32 buffer for the values of tensor `t` of `f`.
fn f32_buffer(f: &SafetensorsFile, t: &TensorEntry, len: usize) -> Result<Vec<f32>> {
    crate::alloc::filled(len, 0f32).map_err(|r| r.in_tensor(f.path(), &t.name, "its values"))
}

fn copy_tensor(
    f: &SafetensorsFile,
    t: &TensorEntry,
    w: &mut SafetensorsWriter,
    buf: &mut Vec<u8>,
) -> Result<()> {
    if w.is_mapped() {
        // Map to map, in pieces on all threads (faulting in the output pages is most of it).
        let len = usize::try_from(t.nbytes())
            .map_err(|_| Error::value(format!("tensor {:?} is too large", t.name)))?;
        return w.write_tensor_with(len, |dst: &mut [u8]| {
            let Some(src) = f.map_tensor(t)? else {
                return f.read_tensor_part_parallel(t, 0, dst);
            };
            let pieces = src
                .chunks(COPY_PIECE)
                .zip(dst.chunks_mut(COPY_PIECE))
                .collect();
            crate::threads::for_each(pieces, |(s, d): (&[u8], &mut [u8])| d.copy_from_slice(s));
            Ok(())
        });
    }
    let mut off = 0u64;
    while off < t.nbytes() {
        let n = (t.nbytes() - off).min(COPY_CHUNK as u64) as usize;
        buf.resize(n, 0);
        f.read_tensor_part_parallel(t, off, &mut buf[..n])?;
        w.write(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn matrix_dims(f: &SafetensorsFile, t: &TensorEntry) -> Result<(usize, usize)> {
    match t.shape[..] {
        [r, c] => Ok((r, c)),
        _ => Err(Error::value(format!(
            "{}: tensor {:?} has shape {:?}; only 2-D weights can be quantized",
            f.path().display(),
            t.name,
            t.shape
        ))),
    }
}

/// Quantize the tensors named in `targets` of the file `src` into `dst`; everything else is
/// copied byte for byte. `metadata` replaces the source's `__metadata__` when given.
pub fn quantize_file(
    src: &Path,
    dst: &Path,
    targets: &[String],
    opts: QuantizeOptions,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
    progress: ProgressFn<'_>,
) -> Result<Summary> {
    if opts.granularity == Granularity::Mx && opts.layout != Layout::CompressedTensors {
        return Err(Error::value(
            "MX scales are stored in the compressed-tensors layout only",
        ));
    }
    if opts.layout == Layout::Fp8Block && !matches!(opts.granularity, Granularity::Block(..)) {
        return Err(Error::value(
            "the fp8-block layout stores block scales: use --granularity block",
        ));
    }
    check_not_input(dst, &[src])?;
    let f = SafetensorsFile::open(src)?;
    let targets: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    let mut plan = Vec::new();
    let mut summary = Summary::default();
    for name in &targets {
        if f.get(name).is_none() {
            return Err(Error::value(format!(
                "{}: no tensor {name:?} to quantize",
                src.display()
            )));
        }
    }
    for t in f.tensors() {
        if targets.contains(t.name.as_str()) {
            let (rows, cols) = matrix_dims(&f, t)?;
            if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                return Err(Error::type_error(format!(
                    "{}: tensor {:?} is {}; only BF16, F16 and F32 weights can be quantized",
                    src.display(),
                    t.name,
                    t.dtype
                )));
            }
            let scale_name = opts.layout.scale_name(&t.name);
            if f.get(&scale_name).is_some() {
                return Err(Error::value(format!(
                    "{}: tensor {:?} already exists: is this checkpoint already quantized?",
                    src.display(),
                    scale_name
                )));
            }
            plan.push(OutTensor::new(
                t.name.clone(),
                fp8_dtype(opts.format),
                t.shape.clone(),
            ));
            plan.push(OutTensor::new(
                scale_name,
                opts.scale_file_dtype(t.dtype),
                opts.granularity.scale_shape(rows, cols),
            ));
        } else {
            plan.push(OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
        }
    }
    let metadata = metadata.or_else(|| f.metadata().cloned());
    summary.written = plan
        .iter()
        .map(|t| (t.name.clone(), t.dtype.to_string(), t.shape.clone()))
        .collect();
    let (mut w, mut p) = start_output(&f, dst, plan, metadata, overwrite, progress)?;
    let mut buf = Vec::new();
    let mut input = Vec::new();
    for t in f.tensors() {
        if targets.contains(t.name.as_str()) {
            let (rows, cols) = matrix_dims(&f, t)?;
            let (fmt, g) = (opts.format, opts.granularity);
            let store = opts.scale_store(t.dtype);
            let rounding = match opts.rounding {
                Rounding::Stochastic { seed } => Rounding::Stochastic {
                    seed: tensor_seed(seed, &t.name),
                },
                nearest => nearest,
            };
            let part = QuantizeJob {
                rows,
                cols,
                fmt,
                g,
                rounding,
                store,
            };
            let scales = match t.dtype {
                Dtype::BF16 => with_tensor(&f, t, &mut input, |x: &[bf16]| part.run(x, &mut w)),
                Dtype::F16 => with_tensor(&f, t, &mut input, |x: &[f16]| part.run(x, &mut w)),
                _ => with_tensor(&f, t, &mut input, |x: &[f32]| part.run(x, &mut w)),
            }?;
            w.write(&scales)?;
            summary.converted.push(t.name.clone());
        } else {
            copy_tensor(&f, t, &mut w, &mut buf)?;
        }
        p.tensor_done(t);
        progress(p)?;
    }
    w.finish()?;
    summary.output_bytes = std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

/// Codes per part of a weight quantized in parts (rounded to whole scale groups of rows).
/// Measured on tmpfs, 2 GiB of bf16 on two threads, interleaved: 128 KiB parts 0.74-0.78 s,
/// 256 KiB 0.56-0.63, 512 KiB 0.57-0.61, 1 MiB 0.53-0.57, 2 MiB 0.54-0.57, 4 MiB 0.59-0.65
/// (fewer, larger writes cost the kernel less; past 2 MiB the input of a part leaves L2).
const PART_CODES: usize = 1 << 20;

/// The most bytes of parts in flight (filling, queued and being written), within the 200 MB
/// the memory bound allows beside two input tensors: 2 x 65 threads + 2 buffers of 1 MiB.
const PARTS_IN_FLIGHT_MAX: usize = 132 << 20;

/// Parts quantized through [`SafetensorsWriter::write_tensor_parallel`] (tests check that it
/// ran).
#[cfg(test)]
static PARTS_QUANTIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The codes per part of a weight of `cols` columns quantized in parts on `threads` threads:
/// whole scale groups of rows, about [`PART_CODES`]. `None`: quantize it whole, for one scale
/// per tensor, or when the parts in flight would take more memory than the bound allows
/// beside the input (block rows of a very wide weight on many threads).
fn part_len(g: Granularity, cols: usize, threads: usize) -> Option<usize> {
    let buffers = SafetensorsWriter::parallel_buffers(threads);
    scaled::rows_per_part(g)
        .and_then(|r| r.checked_mul(cols))
        .filter(|&unit| unit > 0)
        .map(|unit| (PART_CODES / unit).max(1) * unit)
        .filter(|&part| part.saturating_mul(buffers) <= PARTS_IN_FLIGHT_MAX)
}

/// The quantization of one weight into the writer's next tensor.
struct QuantizeJob {
    rows: usize,
    cols: usize,
    fmt: Format,
    g: Granularity,
    rounding: Rounding,
    store: ScaleDtype,
}

impl QuantizeJob {
    /// Write the codes of `x` as the writer's next tensor; returns the scales' bytes.
    ///
    /// Where scale groups allow (every granularity but one scale per tensor), the weight is
    /// quantized in parts of whole groups of rows, about 1 MiB of codes each
    /// ([`PART_CODES`]), by every pool thread: a thread takes a part's amax and encodes it
    /// while its rows are in its caches, then queues it for the writer thread
    /// ([`SafetensorsWriter::write_tensor_parallel`]). Against quantizing each tensor whole
    /// (an amax pass, then an encoding pass that reads the input from memory again, into a
    /// populated map of the output): the input is read from memory once, and `pwrite` costs
    /// the kernel about 0.4 CPU-s per GiB of output where populating a map cost about 0.5
    /// (tmpfs, 2-vCPU VM). Against the pipelined path of dequantization (this thread fills
    /// pieces, the pool splits each): the pool wakes once per tensor, not once per piece
    /// (profiled there: the calling thread did 60% of the work, the pool's second thread under
    /// 3%). One scale per tensor needs the whole tensor's amax first, so it is quantized whole
    /// into the writer's buffer or map.
    fn run<T: scaled::Source>(&self, x: &[T], w: &mut SafetensorsWriter) -> Result<Vec<u8>> {
        let QuantizeJob {
            rows,
            cols,
            fmt,
            g,
            rounding,
            store,
        } = *self;
        match part_len(g, cols, crate::threads::num_threads()) {
            Some(part) => {
                let scales =
                    w.write_tensor_parallel(x.len(), part, |first, codes: &mut [u8]| {
                        #[cfg(test)]
                        PARTS_QUANTIZED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        scaled::quantize_rows_into(
                            &x[first..first + codes.len()],
                            codes.len() / cols,
                            cols,
                            fmt,
                            g,
                            rounding,
                            store,
                            codes,
                            first,
                        )
                    })?;
                Ok(scales
                    .into_iter()
                    .flat_map(|s| scale_bytes(s, store))
                    .collect())
            }
            _ => {
                let s = w.write_tensor_with(x.len(), |codes: &mut [u8]| {
                    scaled::quantize_weight_into(x, rows, cols, fmt, g, rounding, store, codes)
                })?;
                Ok(scale_bytes(s, store))
            }
        }
    }
}

/// Create the writer of `plan` at `dst` and report the starting progress of converting `f`.
fn start_output(
    f: &SafetensorsFile,
    dst: &Path,
    plan: Vec<OutTensor>,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
    progress: ProgressFn<'_>,
) -> Result<(SafetensorsWriter, Progress)> {
    let w = SafetensorsWriter::create(dst, plan, metadata, overwrite)?;
    let p = Progress {
        tensors_total: f.tensors().len(),
        bytes_total: f.tensors().iter().map(TensorEntry::nbytes).sum(),
        ..Progress::default()
    };
    progress(p)?;
    Ok((w, p))
}

/// Output dtype of dequantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    /// bfloat16.
    BF16,
    /// float16.
    F16,
    /// float32.
    F32,
}

impl OutDtype {
    fn dtype(self) -> Dtype {
        match self {
            OutDtype::BF16 => Dtype::BF16,
            OutDtype::F16 => Dtype::F16,
            OutDtype::F32 => Dtype::F32,
        }
    }
}

/// A located scale tensor: in which file, which entry.
struct ScaleRef<'a> {
    file: &'a SafetensorsFile,
    entry: &'a TensorEntry,
}

/// The scale of FP8 tensor `name` among `files` (the source first): `<name>_scale`
/// (compressed-tensors) or `<name>_scale_inv` (fp8-block / DeepSeek).
fn find_scale<'a>(files: &'a [SafetensorsFile], name: &str) -> Option<ScaleRef<'a>> {
    for suffix in ["_scale", "_scale_inv"] {
        let sname = format!("{name}{suffix}");
        for file in files {
            if let Some(entry) = file.get(&sname) {
                return Some(ScaleRef { file, entry });
            }
        }
    }
    None
}

/// Read a scale tensor as float64 values (E8M0 decoded to powers of two).
fn read_scales(s: &ScaleRef<'_>) -> Result<Vec<f64>> {
    let (f, t) = (s.file, s.entry);
    Ok(match t.dtype {
        Dtype::F32 => read_converted::<f32, _>(f, t, f64::from)?,
        Dtype::F64 => read_as::<f64>(f, t)?,
        Dtype::BF16 => read_converted::<bf16, _>(f, t, f64::from)?,
        Dtype::F16 => read_converted::<f16, _>(f, t, f64::from)?,
        Dtype::F8_E8M0 | Dtype::U8 => read_converted::<u8, _>(f, t, scaled::e8m0_value)?,
        other => {
            return Err(Error::type_error(format!(
                "{}: scale tensor {:?} has dtype {other}; expected F32, BF16, F16, F64, or F8_E8M0 / U8 (MX exponents)",
                f.path().display(),
                t.name
            )))
        }
    })
}

/// Work out the granularity of a scale tensor from its shape and dtype for a `(rows, cols)`
/// weight. `block` is the block size from the config (`weight_block_size`), if known.
fn infer_granularity(
    weight: &str,
    rows: usize,
    cols: usize,
    scale: &TensorEntry,
    block: Option<(usize, usize)>,
) -> Result<Granularity> {
    let shape = &scale.shape[..];
    let numel: usize = shape.iter().product();
    // E8M0 exponents: as F8_E8M0, or as U8 (compressed-tensors' mxfp8-quantized format).
    if matches!(scale.dtype, Dtype::F8_E8M0 | Dtype::U8) {
        let want = [rows, cols.div_ceil(scaled::MX_GROUP)];
        if shape == want {
            return Ok(Granularity::Mx);
        }
        return Err(Error::value(format!(
            "E8M0 scale {:?} of weight {weight:?} ({rows}, {cols}) has shape {shape:?}; MX needs {want:?}",
            scale.name
        )));
    }
    if numel == 1 {
        return Ok(Granularity::Tensor);
    }
    if shape == [rows, 1] || shape == [rows] {
        return Ok(Granularity::Channel);
    }
    let (br, bc) = block.unwrap_or((128, 128));
    if br > 0 && bc > 0 && shape == [rows.div_ceil(br), cols.div_ceil(bc)] {
        return Ok(Granularity::Block(br, bc));
    }
    Err(Error::value(format!(
        "scale {:?} of weight {weight:?} ({rows}, {cols}) has shape {shape:?}: expected (1,), ({rows}, 1) or {br}x{bc} blocks ({}, {})",
        scale.name,
        rows.div_ceil(br.max(1)),
        cols.div_ceil(bc.max(1))
    )))
}

/// Dequantize FP8 tensor `t` of `f` with its scale: `emit` gets the checked
/// [`scaled::Dequantizer`] over its codes (read through `input`) and produces the output;
/// returns the scale layout found.
fn dequantize_entry<O: scaled::Target>(
    f: &SafetensorsFile,
    t: &TensorEntry,
    scale: &ScaleRef<'_>,
    block: Option<(usize, usize)>,
    input: &mut Vec<u64>,
    emit: impl FnOnce(&scaled::Dequantizer<'_, O>) -> Result<()>,
) -> Result<Granularity> {
    let fmt = fmt_of(t.dtype).expect("caller checks the dtype");
    let (rows, cols) = match t.shape[..] {
        [r, c] => (r, c),
        [n] => (1, n),
        [] => (1, 1),
        _ => {
            return Err(Error::value(format!(
            "{}: FP8 tensor {:?} has shape {:?}; only 0-, 1- and 2-D tensors can be dequantized",
            f.path().display(),
            t.name,
            t.shape
        )))
        }
    };
    let g = infer_granularity(&t.name, rows, cols, scale.entry, block)
        .map_err(|e| Error::value(format!("{}: {e}", f.path().display())))?;
    let scales = read_scales(scale)?;
    with_tensor(f, t, input, |codes: &[u8]| {
        emit(&scaled::Dequantizer::new(
            codes, rows, cols, fmt, &scales, g,
        )?)
    })?;
    Ok(g)
}

/// Dequantize `t` into the writer's next tensor.
///
/// On one or two threads: converted piece by piece on this thread while a writer thread writes them
/// ([`SafetensorsWriter::write_tensor_pipelined`]; when the writer has every buffer, this thread
/// writes the next piece itself through a map; on one thread, each piece is written when filled). A
/// dequantization writes 2-4 bytes per byte it reads and converts with a table lookup, so providing
/// the output's pages is most of its cost, and writing them costs the kernel about half what
/// faulting them in through maps does. Measured on a 2-vCPU VM, 2 GiB of bf16 on tmpfs, runs
/// interleaved: 2 threads 0.69-0.99 s pipelined against 1.0-1.25 s through maps; 1 thread 1.06-1.23
/// s against 1.8-1.94 s. With more threads: converted on all of them into a map of the output,
/// which spreads the page work over every thread where a single writing thread would cap it (not
/// measured: the machine had two cores).
fn dequantize_into<O: scaled::Target + bytemuck::Pod>(
    f: &SafetensorsFile,
    t: &TensorEntry,
    scale: &ScaleRef<'_>,
    block: Option<(usize, usize)>,
    input: &mut Vec<u64>,
    w: &mut SafetensorsWriter,
) -> Result<()> {
    let pipelined = crate::threads::num_threads() <= 2;
    dequantize_entry::<O>(f, t, scale, block, input, |d| {
        if pipelined {
            w.write_tensor_pipelined(t.numel(), d.piece_align(), |first, out: &mut [O]| {
                d.fill(first, out);
                Ok(())
            })
        } else {
            w.write_tensor_with(t.numel(), |out: &mut [O]| d.fill_all(out))
        }
    })
    .map(|_| ())
}

/// Names a dequantized checkpoint drops: the scales of FP8 tensors (found in `files`) and the
/// static activation scales (`*.input_scale`) of layers whose weight is FP8.
fn is_dropped(files: &[SafetensorsFile], name: &str) -> bool {
    let is_fp8 = |n: &str| {
        files
            .iter()
            .any(|f| f.get(n).is_some_and(|t| fmt_of(t.dtype).is_some()))
    };
    if let Some(stem) = name
        .strip_suffix("_scale_inv")
        .or_else(|| name.strip_suffix("_scale"))
    {
        if is_fp8(stem) {
            return true;
        }
    }
    if let Some(layer) = name.strip_suffix(".input_scale") {
        return is_fp8(&format!("{layer}.weight"));
    }
    false
}

/// Dequantize every FP8 tensor of `src` into `out` dtype, dropping the scale tensors.
/// `scale_files` are other shards of the checkpoint in which scales may live.
/// `block` is the block size declared by the config, if any.
#[allow(clippy::too_many_arguments)]
pub fn dequantize_file(
    src: &Path,
    dst: &Path,
    out: OutDtype,
    scale_files: &[PathBuf],
    block: Option<(usize, usize)>,
    metadata: Option<HashMap<String, String>>,
    overwrite: bool,
    progress: ProgressFn<'_>,
) -> Result<Summary> {
    let mut inputs: Vec<&Path> = vec![src];
    inputs.extend(scale_files.iter().map(PathBuf::as_path));
    check_not_input(dst, &inputs)?;
    let mut files = vec![SafetensorsFile::open(src)?];
    for p in scale_files {
        files.push(SafetensorsFile::open(p)?);
    }
    let f = &files[0];
    let mut plan = Vec::new();
    for t in f.tensors() {
        if is_dropped(&files, &t.name) {
            continue;
        }
        if fmt_of(t.dtype).is_some() {
            if find_scale(&files, &t.name).is_none() {
                return Err(Error::value(format!(
                    "{}: FP8 tensor {:?} has no scale ({name}_scale or {name}_scale_inv) in this checkpoint",
                    src.display(),
                    t.name,
                    name = t.name
                )));
            }
            plan.push(OutTensor::new(t.name.clone(), out.dtype(), t.shape.clone()));
        } else {
            plan.push(OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
        }
    }
    let mut summary = Summary {
        written: plan
            .iter()
            .map(|t| (t.name.clone(), t.dtype.to_string(), t.shape.clone()))
            .collect(),
        ..Summary::default()
    };
    let metadata = metadata.or_else(|| f.metadata().cloned());
    let (mut w, mut p) = start_output(f, dst, plan, metadata, overwrite, progress)?;
    let mut buf = Vec::new();
    let mut input = Vec::new();
    for t in f.tensors() {
        if !is_dropped(&files, &t.name) {
            if fmt_of(t.dtype).is_some() {
                let scale = find_scale(&files, &t.name).expect("checked while planning");
                match out {
                    OutDtype::BF16 => {
                        dequantize_into::<bf16>(f, t, &scale, block, &mut input, &mut w)?
                    }
                    OutDtype::F16 => {
                        dequantize_into::<f16>(f, t, &scale, block, &mut input, &mut w)?
                    }
                    OutDtype::F32 => {
                        dequantize_into::<f32>(f, t, &scale, block, &mut input, &mut w)?
                    }
                };
                summary.converted.push(t.name.clone());
            } else {
                copy_tensor(f, t, &mut w, &mut buf)?;
            }
        }
        p.tensor_done(t);
        progress(p)?;
    }
    w.finish()?;
    summary.output_bytes = std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

/// What `fp8fast inspect` shows for one tensor.
#[derive(Clone, Debug, Default)]
pub struct TensorReport {
    /// Largest finite magnitude of the (dequantized) values; `None` for non-float tensors.
    pub amax: Option<f64>,
    /// Scale layout of an FP8 tensor (`tensor`, `channel`, `block 128x128`, `mx`).
    pub scale_layout: Option<String>,
    /// SQNR in dB of the quantization (asked for, or the existing one against a source).
    pub sqnr_db: Option<f64>,
    /// Max relative error of the same.
    pub max_rel_err: Option<f64>,
}

/// Read any float tensor as float32 (FP8 tensors dequantized with their scale when found).
fn read_f32(
    files: &[SafetensorsFile],
    f: &SafetensorsFile,
    t: &TensorEntry,
    block: Option<(usize, usize)>,
) -> Result<Option<(Vec<f32>, Option<String>)>> {
    Ok(Some(match t.dtype {
        Dtype::F32 => (read_as::<f32>(f, t)?, None),
        Dtype::BF16 => (read_converted::<bf16, _>(f, t, f32::from)?, None),
        Dtype::F16 => (read_converted::<f16, _>(f, t, f32::from)?, None),
        Dtype::F64 => (read_converted(f, t, |v: f64| v as f32)?, None),
        Dtype::F8_E8M0 => (
            read_converted(f, t, |c: u8| scaled::e8m0_value(c) as f32)?,
            None,
        ),
        Dtype::F8_E4M3 | Dtype::F8_E5M2 => match find_scale(files, &t.name) {
            Some(scale) => {
                let mut v = f32_buffer(f, t, t.numel())?;
                let g =
                    dequantize_entry(f, t, &scale, block, &mut Vec::new(), |d| d.fill_all(&mut v))?;
                let layout = match g {
                    Granularity::Tensor => "tensor".to_string(),
                    Granularity::Channel => "channel".to_string(),
                    Granularity::Block(a, b) => format!("block {a}x{b}"),
                    Granularity::Mx => "mx".to_string(),
                };
                (v, Some(layout))
            }
            None => {
                let fmt = fmt_of(t.dtype).expect("FP8");
                let codes = read_as::<u8>(f, t)?;
                let mut v = f32_buffer(f, t, codes.len())?;
                crate::convert::decode_slice(&codes, &mut v, fmt)?;
                (v, Some("none".to_string()))
            }
        },
        _ => return Ok(None),
    }))
}

/// The inspect row of tensor `name` of `files[0]`; with `error` set, also the error that
/// quantizing it with `error.0`/`error.1` would cause. With `source` given (the original
/// high-precision checkpoint's file holding `name`), the error of the FP8 tensor against it.
pub fn tensor_report(
    files: &[SafetensorsFile],
    name: &str,
    block: Option<(usize, usize)>,
    error: Option<(Format, Granularity)>,
    source: Option<&SafetensorsFile>,
) -> Result<TensorReport> {
    let f = &files[0];
    let t = f
        .get(name)
        .ok_or_else(|| Error::value(format!("{}: no tensor {name:?}", f.path().display())))?;
    let mut r = TensorReport::default();
    let Some((values, layout)) = read_f32(files, f, t, block)? else {
        return Ok(r);
    };
    r.scale_layout = layout;
    r.amax = Some(
        values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f64, |m, &v| m.max(f64::from(v).abs())),
    );
    if let Some(src) = source {
        let st = src.get(name).ok_or_else(|| {
            Error::value(format!(
                "{}: source has no tensor {name:?}",
                src.path().display()
            ))
        })?;
        if st.shape != t.shape {
            return Err(Error::value(format!(
                "tensor {name:?}: shape {:?} in the source, {:?} here",
                st.shape, t.shape
            )));
        }
        if let Some((x, _)) = read_f32(std::slice::from_ref(src), src, st, None)? {
            let (s, m) = scaled::error_metrics(&x, &values);
            r.sqnr_db = Some(s);
            r.max_rel_err = Some(m);
        }
    } else if let Some((fmt, g)) = error {
        if t.shape.len() == 2 && fmt_of(t.dtype).is_none() {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (codes, scales) =
                scaled::quantize_weight(&values, rows, cols, fmt, g, Rounding::Nearest)?;
            let scales: Vec<f64> = scales.into_iter().map(f64::from).collect();
            let mut y = f32_buffer(f, t, codes.len())?;
            scaled::dequantize_weight(&codes, rows, cols, fmt, &scales, g, &mut y)?;
            let (s, m) = scaled::error_metrics(&values, &y);
            r.sqnr_db = Some(s);
            r.max_rel_err = Some(m);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests;
