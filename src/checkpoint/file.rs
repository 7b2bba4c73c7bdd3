//! Reading safetensors files: header validation and positional reads of tensor bytes.
//!
//! The header is parsed and checked by the `safetensors` crate (`Metadata`'s deserializer:
//! JSON shape, known dtypes, offsets that start at 0 and follow each other with no overlap and
//! no hole, `shape x dtype size == byte span`, checked shape products). What the crate does
//! not do, or does without naming the culprit, is added here:
//!
//! - the 8-byte length prefix is checked against the file size and the 100 MB limit *before*
//!   anything else is read, so a 2^63 length never allocates;
//! - the data section must end exactly at the end of the file (truncated data, trailing bytes);
//! - every error names the file and, where it applies, the tensor (the crate's
//!   `TensorInvalidInfo` / `ValidationOverflow` are re-diagnosed tensor by tensor).
//!
//! On local file systems (see [`super::fskind`]) conversions read a tensor through a memory
//! map of its byte range ([`SafetensorsFile::map_tensor`], `memmap2`), dropped when the tensor
//! is done: no copy out of the page cache, and the mapped pages count towards the resident
//! set for one tensor at a time only. The price of any file mapping: if another process
//! truncates the file during the conversion, the reads fault (`SIGBUS`) instead of failing;
//! the length is re-checked before each map to narrow that window. Elsewhere, and for small
//! reads (headers, scales), tensors are read with positional reads. Zero-copy access for Python users is done with Python's `mmap` over offsets this
//! module validated.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use crate::error::{Error, Result};

/// Length of the little-endian `u64` header-size prefix.
pub const PREFIX_LEN: u64 = 8;
/// Piece size of parallel positional reads.
pub(crate) const IO_PIECE: usize = 2 << 20;
/// Largest header the format allows (the `safetensors` crate's `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor of a validated file; `start..end` are absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name in the header.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Absolute offset of its first byte in the file.
    pub start: u64,
    /// Absolute offset one past its last byte.
    pub end: u64,
}

impl TensorEntry {
    /// Number of elements (the product was checked for overflow during validation).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of data bytes.
    pub fn nbytes(&self) -> u64 {
        self.end - self.start
    }
}

/// A safetensors file whose header has been validated, open for positional reads.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    header_len: u64,
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    metadata: Option<HashMap<String, String>>,
    /// Whether tensors may be memory-mapped (see [`super::fskind`]).
    mappable: bool,
}

/// The safetensors name of a dtype (`F8_E4M3`, `BF16`, ...).
pub fn dtype_name(d: Dtype) -> String {
    d.to_string()
}

/// Parse a safetensors dtype name.
pub fn parse_dtype(name: &str) -> Result<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| Error::value(format!("unknown safetensors dtype {name:?}")))
}

/// Bytes per element; `None` for the sub-byte dtypes (F4, F6_*).
pub fn dtype_size(d: Dtype) -> Option<usize> {
    let bits = d.bitsize();
    bits.is_multiple_of(8).then_some(bits / 8)
}

fn value_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::value(format!("{}: {msg}", path.display()))
}

impl SafetensorsFile {
    /// Open `path` and validate its whole header against the file size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
            .len();
        let mut prefix = [0u8; PREFIX_LEN as usize];
        if file_len >= PREFIX_LEN {
            read_exact_at(&file, &mut prefix, 0, path)?;
        }
        let header_len = check_prefix(prefix, file_len).map_err(|m| value_err(path, m))?;
        let mut header = crate::alloc::filled(header_len as usize, 0u8).map_err(|r| {
            Error::memory(format!(
                "{}: cannot allocate {} bytes for its header",
                path.display(),
                r.bytes
            ))
        })?;
        read_exact_at(&file, &mut header, PREFIX_LEN, path)?;
        let data_len = file_len - PREFIX_LEN - header_len;
        let (tensors, metadata) =
            parse_header(&header, data_len).map_err(|m| value_err(path, m))?;
        let tensors: Vec<TensorEntry> = tensors
            .into_iter()
            .map(|mut t| {
                t.start += PREFIX_LEN + header_len;
                t.end += PREFIX_LEN + header_len;
                t
            })
            .collect();
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mappable = super::fskind::can_map_for_reading(&file);
        Ok(SafetensorsFile {
            path: path.to_owned(),
            mappable,
            file,
            file_len,
            header_len,
            tensors,
            index,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes when it was validated.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Length of the JSON header (without the 8-byte prefix).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// The tensors in file (offset) order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` string map, if the header has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// A read-only memory map of tensor `t`'s bytes (its pages fault in as they are read), or
    /// `None` for a tensor of no bytes or a file on a file system where reads go through
    /// `pread` instead (see [`super::fskind`]).
    pub fn map_tensor(&self, t: &TensorEntry) -> Result<Option<memmap2::Mmap>> {
        let len = usize::try_from(t.nbytes())
            .map_err(|_| value_err(&self.path, format!("tensor {:?} is too large", t.name)))?;
        if len == 0 || !self.mappable {
            return Ok(None);
        }
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", self.path.display()), e))?
            .len();
        if now < t.end {
            return Err(value_err(
                &self.path,
                format!(
                    "the file shrank to {now} bytes since it was opened; tensor {:?} ends at {}",
                    t.name, t.end
                ),
            ));
        }
        // SAFETY: the range lies inside the file as it is now (checked just above) and the map
        // is only read. Should another process truncate or rewrite the file while the map
        // lives, reads would fault or see the new bytes: the caveat of every file mapping
        // (numpy.memmap, the safetensors package), documented at the top of this module.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(t.start)
                .len(len)
                .map(&self.file)
        };
        map.map(Some).map_err(|e| self.map_error(t, len, e))
    }

    /// What a failed `mmap` of tensor `t` means. A short file cannot cause it (the range was
    /// just checked, and a file truncated later makes reads fault, not the map fail): ENOMEM is
    /// the process running out of address space (`ulimit -v`) or of map slots.
    fn map_error(&self, t: &TensorEntry, len: usize, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::OutOfMemory {
            return Error::memory(format!(
                "{}: tensor {:?}: cannot map its {len} bytes: out of address space or memory \
                 (is a memory limit such as ulimit -v set?): {e}",
                self.path.display(),
                t.name
            ));
        }
        Error::io(
            format!("cannot map tensor {:?} of {}", t.name, self.path.display()),
            e,
        )
    }

    /// Read `buf.len()` bytes of tensor `t` starting `offset` bytes into it.
    pub fn read_tensor_part(&self, t: &TensorEntry, offset: u64, buf: &mut [u8]) -> Result<()> {
        offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= t.nbytes())
            .ok_or_else(|| {
                value_err(
                    &self.path,
                    format!("read past the end of tensor {:?}", t.name),
                )
            })?;
        read_exact_at(&self.file, buf, t.start + offset, &self.path).map_err(|e| match e {
            Error::Io { source, .. } => Error::io(
                format!(
                    "cannot read tensor {:?} of {} (was the file truncated?)",
                    t.name,
                    self.path.display()
                ),
                source,
            ),
            other => other,
        })
    }

    /// Read the whole of tensor `t` into `buf` (which must be exactly `t.nbytes()` long).
    pub fn read_tensor(&self, t: &TensorEntry, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 != t.nbytes() {
            return Err(Error::value(format!(
                "buffer of {} bytes for tensor {:?} of {} bytes",
                buf.len(),
                t.name,
                t.nbytes()
            )));
        }
        self.read_tensor_part_parallel(t, 0, buf)
    }

    /// [`read_tensor_part`](Self::read_tensor_part), split into pieces read concurrently by
    /// the pool when large: copying out of the page cache is CPU work.
    pub fn read_tensor_part_parallel(
        &self,
        t: &TensorEntry,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let piece = IO_PIECE;
        if buf.len() < 2 * piece || crate::threads::num_threads() == 1 {
            return self.read_tensor_part(t, offset, buf);
        }
        use rayon::prelude::*;
        crate::threads::run(|| {
            buf.par_chunks_mut(piece)
                .enumerate()
                .try_for_each(|(i, part)| {
                    self.read_tensor_part(t, offset + (i * piece) as u64, part)
                })
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64, path: &Path) -> Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => {
                return Err(Error::io(
                    format!("cannot read {}", path.display()),
                    std::io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }
    Ok(())
}

type ParsedHeader = (Vec<TensorEntry>, Option<HashMap<String, String>>);

/// Check the 8-byte length prefix of a file of `file_len` bytes (`prefix` is ignored when the
/// file is shorter than 8 bytes); returns the header length.
fn check_prefix(
    prefix: [u8; PREFIX_LEN as usize],
    file_len: u64,
) -> std::result::Result<u64, String> {
    if file_len < PREFIX_LEN {
        return Err(format!(
            "not a safetensors file: {file_len} bytes, shorter than the 8-byte header length"
        ));
    }
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "header length {header_len} exceeds the 100 MB safetensors limit"
        ));
    }
    if header_len > file_len - PREFIX_LEN {
        return Err(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes): truncated or not a safetensors file"
        ));
    }
    Ok(header_len)
}

/// Validate a whole file image held in memory, exactly as [`SafetensorsFile::open`] validates
/// a file; offsets in the result are absolute. The entry point of the header fuzzer
/// (`tests/fuzz`), which also checks that every returned range lies inside `image`.
pub fn validate_image(image: &[u8]) -> std::result::Result<ParsedHeader, String> {
    let mut prefix = [0u8; PREFIX_LEN as usize];
    if let Some(p) = image.get(..PREFIX_LEN as usize) {
        prefix.copy_from_slice(p);
    }
    let file_len = image.len() as u64;
    let header_len = check_prefix(prefix, file_len)?;
    let data_start = PREFIX_LEN + header_len;
    let header = &image[PREFIX_LEN as usize..data_start as usize];
    let (mut tensors, meta) = parse_header(header, file_len - data_start)?;
    for t in &mut tensors {
        t.start += data_start;
        t.end += data_start;
    }
    Ok((tensors, meta))
}

/// Validate a header (the JSON bytes after the length prefix) for a data section of
/// `data_len` bytes. Offsets in the result are relative to the data section. The error is a
/// message without the file name.
pub fn parse_header(header: &[u8], data_len: u64) -> std::result::Result<ParsedHeader, String> {
    let text = std::str::from_utf8(header)
        .map_err(|e| format!("header is not UTF-8 ({e}): not a safetensors file"))?;
    if !text.starts_with('{') {
        return Err("header is not a JSON object: not a safetensors file".into());
    }
    let metadata: Metadata = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Err(diagnose(text, &e.to_string())),
    };
    let mut tensors: Vec<TensorEntry> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: info.data_offsets.0 as u64,
            end: info.data_offsets.1 as u64,
        })
        .collect();
    tensors.sort_by_key(|t| (t.start, t.end));
    let end = metadata.data_len() as u64;
    if end != data_len {
        return Err(if end > data_len {
            let last = tensors.iter().rev().find(|t| t.end > data_len);
            format!(
                "tensor {:?} ends at data offset {end} but the file has only {data_len} data bytes (truncated file or offsets past the end)",
                last.map_or("?", |t| t.name.as_str())
            )
        } else {
            format!(
                "the tensors cover {end} data bytes but the file has {data_len}: {} unexplained bytes at the end",
                data_len - end
            )
        });
    }
    Ok((tensors, metadata.metadata().clone()))
}

/// Turn the crate's error into one naming the tensor at fault, by re-checking each tensor of
/// the raw JSON in offset order.
fn diagnose(text: &str, crate_msg: &str) -> String {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return format!("header is not valid JSON ({e})"),
    };
    let Some(obj) = value.as_object() else {
        return "header is not a JSON object".into();
    };
    let mut entries = Vec::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            let ok = v
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !ok {
                return "__metadata__ must be an object of strings".into();
            }
            continue;
        }
        let Some(t) = v.as_object() else {
            return format!("tensor {name:?}: entry is not an object");
        };
        let dtype = match t.get("dtype") {
            Some(serde_json::Value::String(s)) => match parse_dtype(s) {
                Ok(d) => d,
                Err(_) => return format!("tensor {name:?}: unknown dtype {s:?}"),
            },
            _ => return format!("tensor {name:?}: missing or non-string \"dtype\""),
        };
        let shape: Option<Vec<u64>> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect());
        let Some(shape) = shape else {
            return format!("tensor {name:?}: \"shape\" must be a list of non-negative integers");
        };
        let offsets: Option<Vec<u64>> = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect());
        let (begin, end) = match offsets.as_deref() {
            Some(&[b, e]) => (b, e),
            _ => return format!("tensor {name:?}: \"data_offsets\" must be [begin, end]"),
        };
        if let Some(extra) = t
            .keys()
            .find(|k| !["dtype", "shape", "data_offsets"].contains(&k.as_str()))
        {
            return format!("tensor {name:?}: unexpected field {extra:?}");
        }
        if end < begin {
            return format!("tensor {name:?}: data_offsets [{begin}, {end}] end before they begin");
        }
        let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let bits = elements.and_then(|n| n.checked_mul(dtype.bitsize() as u64));
        let Some(bits) = bits.filter(|&b| usize::try_from(b).is_ok()) else {
            return format!("tensor {name:?}: shape {shape:?} x {dtype} overflows");
        };
        if bits % 8 != 0 {
            return format!(
                "tensor {name:?}: {bits} bits of {dtype} is not a whole number of bytes"
            );
        }
        if bits / 8 != end - begin {
            return format!(
                "tensor {name:?}: shape {shape:?} of {dtype} needs {} bytes but data_offsets [{begin}, {end}] span {}",
                bits / 8,
                end - begin
            );
        }
        entries.push((begin, end, name.as_str()));
    }
    entries.sort();
    let mut expected = 0u64;
    for &(begin, end, name) in &entries {
        if begin < expected {
            return format!("tensor {name:?}: data_offsets [{begin}, {end}] overlap the previous tensor (which ends at {expected})");
        }
        if begin > expected {
            return format!("tensor {name:?}: data_offsets [{begin}, {end}] leave a hole after offset {expected}");
        }
        expected = end;
    }
    format!("invalid safetensors header: {crate_msg}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file image: prefix, header, data.
    pub(crate) fn image(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn open_bytes(bytes: &[u8]) -> Result<SafetensorsFile> {
        let p = std::env::temp_dir().join(format!(
            "fp8fast-file-test-{}-{}.safetensors",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&p, bytes).unwrap();
        let r = SafetensorsFile::open(&p);
        std::fs::remove_file(&p).unwrap();
        // The in-memory validation the fuzzer drives agrees with the file-based one.
        match (&r, validate_image(bytes)) {
            (Ok(f), Ok((tensors, meta))) => {
                assert_eq!(f.tensors(), &tensors[..]);
                assert_eq!(f.metadata(), meta.as_ref());
            }
            (Err(e), Err(m)) => assert!(e.to_string().ends_with(&m), "{e} vs {m}"),
            (a, b) => panic!("open and validate_image disagree: {a:?} vs {b:?}"),
        }
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn err_of(bytes: &[u8]) -> String {
        open_bytes(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_a_valid_file() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[4,6]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let f = open_bytes(&image(h, &[1, 2, 3, 4, 5, 6])).unwrap();
        let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = f.get("b").unwrap();
        assert_eq!(b.dtype, Dtype::F8_E4M3);
        assert_eq!(b.start, 8 + h.len() as u64 + 4);
        assert_eq!(f.metadata().unwrap()["format"], "pt");
    }

    #[test]
    fn empty_header_and_empty_tensors_are_valid() {
        assert!(open_bytes(&image("{}", &[])).unwrap().tensors().is_empty());
        let h = r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#;
        assert_eq!(
            open_bytes(&image(h, &[]))
                .unwrap()
                .get("e")
                .unwrap()
                .numel(),
            0
        );
    }

    #[test]
    fn each_malformation_names_the_problem() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "shorter than the 8-byte"),
            (vec![1, 2, 3], "shorter than the 8-byte"),
            (image("{}", &[])[..6].to_vec(), "shorter than the 8-byte"),
            ((1u64 << 63).to_le_bytes().to_vec(), "exceeds the 100 MB"),
            (
                50u64.to_le_bytes().iter().chain(b"{}").copied().collect(),
                "runs past the end",
            ),
            (image("[1, 2]", &[]), "not a JSON object"),
            (image("{not json", &[]), "not valid JSON"),
            (image("\u{0}\u{1}", &[]), "not a JSON object"),
            (
                image(
                    r#"{"x":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#,
                    &[0],
                ),
                "tensor \"x\": unknown dtype \"F7\"",
            ),
            (
                image(
                    r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    &[0; 8],
                ),
                "tensor \"x\": shape [3] of F32 needs 12 bytes",
            ),
            (
                image(
                    r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                    &[0; 8],
                ),
                "tensor \"x\": shape [4294967296, 4294967296, 16] x F32 overflows",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                    &[0; 4],
                ),
                "tensor \"x\" ends at data offset 8 but the file has only 4",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
                    &[0; 6],
                ),
                "2 unexplained bytes",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                    &[0; 6],
                ),
                "tensor \"y\": data_offsets [2, 6] overlap",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}"#,
                    &[0; 8],
                ),
                "tensor \"y\": data_offsets [6, 8] leave a hole",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                    &[0],
                ),
                "tensor \"x\": \"shape\" must be a list",
            ),
            (
                image(
                    r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#,
                    &[0],
                ),
                "end before they begin",
            ),
            (
                image(r#"{"x":3}"#, &[]),
                "tensor \"x\": entry is not an object",
            ),
            (
                image(r#"{"__metadata__":{"a":1}}"#, &[]),
                "__metadata__ must be an object of strings",
            ),
        ];
        for (bytes, want) in cases {
            let msg = err_of(&bytes);
            assert!(msg.contains(want), "expected {want:?} in {msg:?}");
            assert!(msg.contains(".safetensors"), "file not named in {msg:?}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = SafetensorsFile::open("/nonexistent/x.safetensors").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn parse_header_never_panics_on_mutations() {
        // A cheap deterministic mutation sweep; the long fuzz run is documented in tests/fuzz_header.rs.
        let h = br#"{"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[12,16]}}"#;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = h.to_vec();
            let pos = (state % m.len() as u64) as usize;
            m[pos] = (state >> 32) as u8;
            let _ = parse_header(&m, (state >> 40) % 32);
        }
    }
}
