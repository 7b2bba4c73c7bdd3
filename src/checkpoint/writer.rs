//! Writing safetensors files: streaming (header first, then each tensor's bytes in order, so
//! only one tensor needs to be in memory) and atomic (a temporary name in the destination's
//! folder, `fsync`, then `rename`; a writer dropped before [`SafetensorsWriter::finish`]
//! removes its temporary file, so a failed or interrupted run leaves nothing at the
//! destination).
//!
//! The file is written by position (`pwrite`) or through maps of its ranges. A tensor's
//! bytes arrive in one of three ways:
//! - [`SafetensorsWriter::write`]: bytes in order (scales, copies where maps are not used).
//! - [`SafetensorsWriter::write_tensor_pipelined`] (dequantization on one or two threads):
//!   the calling thread converts the tensor in pieces of about 1 MiB into a few reused
//!   buffers while one writer thread ([`super::pipeline`]) writes them (on one thread, each
//!   piece is written when filled). The kernel serialises writes into one file (the inode
//!   lock), but one thread writing costs it about half the CPU of faulting the same new pages
//!   in through maps on every thread (tmpfs, 2 GiB on the 2-vCPU machine this was measured
//!   on: 0.64-0.75 s of one thread against 0.73-1.1 s of both, unmapping included). When no
//!   buffer is free, the calling thread, which would otherwise wait, writes the next piece
//!   itself through a map of its place in the file (populated first, in one call on that
//!   thread). Page faults do not take the inode lock, so they run beside the writer's
//!   `pwrite`s: the two threads share the kernel's page work as each has time for it. A
//!   dequantization writes 2-4 bytes per byte read and converts them with a table lookup, so
//!   the pages are most of its cost. Measured for 2 GiB of bf16, runs interleaved: 0.79-1.04 s
//!   with the writer thread alone, 0.69-0.99 s (median 0.80 s against 0.93 s) with the
//!   converting thread taking pieces when it would wait, 1.0-1.25 s through maps on both.
//! - [`SafetensorsWriter::write_tensor_with`] (quantization, copies, and dequantization on
//!   more threads): a whole tensor produced at once on all threads. On tmpfs (see
//!   [`super::fskind`]) it is produced straight into a memory map of its byte range in the
//!   output file, unmapped when done, so the threads that convert it also fault its pages in,
//!   in parallel. Quantization reads 2-4 bytes per byte written and needs a whole tensor's
//!   scales before its first code, so its conversion, not its pages, is most of its cost.
//!
//! Maps are used for writing on tmpfs only: on disk file systems populating a map of a new
//! file reads its holes in first, and positional writes measured faster (see `fskind`). A
//! write through a map that fails for lack of space would be a `SIGBUS`, so no byte is
//! written through a map before all its pages are in place: `MADV_POPULATE_WRITE` allocates
//! them (for a whole tensor on all threads, a MiB per call) and reports a full file system as
//! an error where a write would fault. This replaced preallocating the whole file with
//! `fallocate`, which on tmpfs costs a second pass over every page. Where the kernel lacks it
//! (before Linux 5.14) and off Linux, tensors are written from a buffer instead. Positional
//! writes cannot fault: a full disk is an error from `pwrite`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use super::file::{MAX_HEADER_LEN, PREFIX_LEN};
use super::pipeline::{Available, WriterThread};
use crate::error::{Error, Result};

/// A file created under a temporary name next to its destination and renamed into place by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is deleted.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

/// A temporary path in `dest`'s folder, unique within this process and across processes.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.fp8fast-tmp-{}-{n}", std::process::id()))
}

impl AtomicFile {
    /// Create the temporary file for `dest`. Refuses an existing `dest` unless `overwrite`.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        if !overwrite && dest.exists() {
            return Err(Error::value(format!(
                "{} already exists (use --force to overwrite)",
                dest.display()
            )));
        }
        let temp = temp_path_for(dest);
        // Readable too: a shared writable memory map needs a file opened for reading and writing.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::io(format!("cannot create {}", temp.display()), e))?;
        Ok(AtomicFile {
            dest: dest.to_owned(),
            temp,
            file: Some(file),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flush to disk and rename into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all()
            .map_err(|e| Error::io(format!("cannot sync {}", self.temp.display()), e))?;
        drop(file);
        std::fs::rename(&self.temp, &self.dest).map_err(|e| {
            Error::io(
                format!(
                    "cannot rename {} to {}",
                    self.temp.display(),
                    self.dest.display()
                ),
                e,
            )
        })?;
        // Make the rename itself durable; not every platform can open a directory, and a
        // failure here does not make the file wrong, so it is not an error.
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A tensor to be written: its header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl OutTensor {
    /// A header entry.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        OutTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    fn nbytes(&self) -> Result<u64> {
        let bits = self
            .shape
            .iter()
            .try_fold(self.dtype.bitsize() as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| {
                Error::value(format!(
                    "tensor {:?}: shape {:?} overflows",
                    self.name, self.shape
                ))
            })?;
        if bits % 8 != 0 {
            return Err(Error::value(format!(
                "tensor {:?}: {} elements of {} are not a whole number of bytes",
                self.name,
                bits / self.dtype.bitsize() as u64,
                self.dtype
            )));
        }
        Ok(bits / 8)
    }
}

/// The serialized header for `tensors` laid out in the given order, padded with spaces to a
/// multiple of 8 bytes (as the `safetensors` crate does, so the data section is aligned).
pub fn header_bytes(
    tensors: &[OutTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut offset = 0u64;
    let mut infos = Vec::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::value(format!("tensor {:?} appears twice", t.name)));
        }
        if t.name == "__metadata__" {
            return Err(Error::value("\"__metadata__\" cannot be a tensor name"));
        }
        let n = t.nbytes()?;
        let end = offset
            .checked_add(n)
            .ok_or_else(|| Error::value("total tensor size overflows"))?;
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| Error::value("total tensor size overflows"));
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (to_usize(offset)?, to_usize(end)?),
            },
        ));
        sizes.push(n);
        offset = end;
    }
    // The JSON is built here rather than with the crate's `Metadata` serializer: that one
    // passes a length hint of 0 to serde_json for zero tensors with an empty `__metadata__`,
    // and serde_json then writes `{}` before the entry, an invalid header (found by the
    // header fuzzer, tests/fuzz). The crate still checks the offsets.
    let mut map = serde_json::Map::new();
    if let Some(m) = &metadata {
        map.insert("__metadata__".into(), serde_json::json!(m));
    }
    for (name, info) in &infos {
        map.insert(
            name.clone(),
            serde_json::json!({
                "dtype": info.dtype.to_string(),
                "shape": info.shape,
                "data_offsets": [info.data_offsets.0, info.data_offsets.1],
            }),
        );
    }
    Metadata::new(metadata, infos)
        .map_err(|e| Error::value(format!("invalid tensor list: {e}")))?;
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map))
        .map_err(|e| Error::value(format!("cannot serialize the header: {e}")))?;
    let padded = json.len().div_ceil(8) * 8;
    json.resize(padded, b' ');
    if json.len() as u64 > MAX_HEADER_LEN {
        return Err(Error::value(format!(
            "header of {} bytes exceeds the 100 MB safetensors limit",
            json.len()
        )));
    }
    Ok((json, sizes))
}

/// Streams one safetensors file: the header is written at creation, then the bytes of each
/// tensor in the order given, then [`finish`](Self::finish) renames the file into place.
#[derive(Debug)]
pub struct SafetensorsWriter {
    // Dropped first: the writer thread is done and the file closed before the temporary name
    // is removed.
    pipeline: Option<WriterThread>,
    sink: Sink,
    atomic: AtomicFile,
    /// A pipelined write failed: bytes of earlier tensors may be missing, so nothing more is
    /// accepted and the file is never renamed into place.
    failed: bool,
    tensors: Vec<OutTensor>,
    sizes: Vec<u64>,
    current: usize,
    written: u64,
    /// Absolute file position of the next byte.
    pos: u64,
    /// A tensor produced off the map (unaligned for its type, or streamed).
    scratch: Vec<u64>,
}

/// The output file, written by position. With `map`, its length is already final and tensors
/// may also be written through maps of it (turned off when the kernel cannot populate maps).
#[derive(Debug)]
struct Sink {
    file: File,
    map: bool,
}

/// Pieces of pipelined tensors the filling thread wrote through a map itself (for tests).
#[cfg(test)]
static PIECES_WRITTEN_THROUGH_MAPS: AtomicU64 = AtomicU64::new(0);

/// Bytes per piece of [`SafetensorsWriter::write_tensor_pipelined`], and the most a piece may
/// grow to so that it holds a multiple of the caller's alignment.
const PIPELINE_PIECE_BYTES: usize = 1 << 20;
const PIPELINE_MAX_ALIGNED_BYTES: usize = 8 << 20;

#[cfg(unix)]
pub(super) fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
pub(super) fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fault in (allocate, and reserve the blocks of) every page of a fresh map on all threads, a
/// MiB per call. `Ok(false)`: the kernel cannot (before Linux 5.14, or off Linux). `Err`: a
/// page could not be had (a full disk), which a write through the map would turn into SIGBUS.
fn populate(map: &memmap2::MmapMut) -> std::io::Result<bool> {
    const PIECE: usize = 1 << 20;
    let len = map.len();
    let results = crate::threads::map((0..len.div_ceil(PIECE)).collect(), |i: usize| {
        populate_range(map, i * PIECE, PIECE.min(len - i * PIECE))
    });
    results.into_iter().try_fold(true, |all, r| Ok(all && r?))
}

/// [`populate`] for `len` bytes of `map` from `offset`, on the calling thread.
fn populate_range(map: &memmap2::MmapMut, offset: usize, len: usize) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        match map.advise_range(memmap2::Advice::PopulateWrite, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                Ok(false)
            }
            // EFAULT is how the kernel says "a write here would have raised SIGBUS".
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::FAULT.raw_os_error()) => {
                Err(std::io::Error::other(
                    "no room for the output (the file system is full, a quota or memory limit \
                     was reached, or the disk failed)",
                ))
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, offset, len);
        Ok(false)
    }
}

/// A writable map of `len > 0` bytes of `file` from `offset`.
fn map_range(file: &File, offset: u64, len: usize) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: the file is this writer's own temporary file (created with `create_new` under a
    // name no one else uses), already of its final length, and never truncated. Each byte of
    // it is handed out once, in increasing order: to a map (a whole tensor in
    // `write_tensor_with`, or one piece of a pipelined tensor in `write_pieces`) or to the
    // writer thread, never both. So while this map lives no other handle writes its `len`
    // bytes; the writer thread may `pwrite` bytes before `offset` (earlier pieces or tensors),
    // including other bytes of this map's first page, which the page cache holds once, so both
    // writes land, and no reference covers them (the map derefs only `offset..offset + len`).
    // The map is dropped before the next range is handed out, and a failed pipelined tensor
    // poisons the writer (`failed`), so no range is handed out twice. The caller writes
    // through the map only after `populate` / `populate_range` has put every page of it in
    // place, so a lack of space is an error from there, not a fault (maps are written only on
    // tmpfs, whose pages stay in memory, see `fskind`). A write can still fault if another
    // process truncates the file.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_mut(file)
    }
}

impl SafetensorsWriter {
    /// Start writing `dest` (under a temporary name) with this tensor list and metadata.
    pub fn create(
        dest: &Path,
        tensors: Vec<OutTensor>,
        metadata: Option<HashMap<String, String>>,
        overwrite: bool,
    ) -> Result<Self> {
        Self::create_with(dest, tensors, metadata, overwrite, true)
    }

    /// As [`create`](Self::create); `map` false forces the buffered, sequential path.
    pub(crate) fn create_with(
        dest: &Path,
        tensors: Vec<OutTensor>,
        metadata: Option<HashMap<String, String>>,
        overwrite: bool,
        map: bool,
    ) -> Result<Self> {
        if cfg!(target_endian = "big") {
            return Err(Error::value(
                "safetensors files are little-endian; this platform is not",
            ));
        }
        let (header, sizes) = header_bytes(&tensors, metadata)?;
        let mut atomic = AtomicFile::create(dest, overwrite)?;
        let io = |e| Error::io(format!("cannot write {}", dest.display()), e);
        let file = atomic.file().try_clone().map_err(io)?;
        let data_start = PREFIX_LEN + header.len() as u64;
        let total = data_start + sizes.iter().sum::<u64>();
        let mut prefix = (header.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header);
        let map = map && super::fskind::can_map_for_writing(&file);
        if map {
            file.set_len(total).map_err(io)?;
        }
        write_all_at(&file, &prefix, 0).map_err(io)?;
        let sink = Sink { file, map };
        let mut w = SafetensorsWriter {
            atomic,
            sink,
            tensors,
            sizes,
            current: 0,
            written: 0,
            pos: data_start,
            scratch: Vec::new(),
            pipeline: None,
            failed: false,
        };
        w.skip_empty();
        Ok(w)
    }

    fn skip_empty(&mut self) {
        while self.current < self.sizes.len() && self.written == self.sizes[self.current] {
            self.current += 1;
            self.written = 0;
        }
    }

    /// The tensor the next bytes belong to, if any remain.
    pub fn current_tensor(&self) -> Option<&OutTensor> {
        self.tensors.get(self.current)
    }

    /// Whether tensors are written in place through memory maps.
    pub fn is_mapped(&self) -> bool {
        self.sink.map
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::value(format!(
                "{}: an earlier write failed; nothing more can be written",
                self.atomic.dest().display()
            )));
        }
        Ok(())
    }

    fn context(&self) -> String {
        match self.tensors.get(self.current) {
            Some(t) => format!(
                "cannot write tensor {:?} to {}",
                t.name,
                self.atomic.dest().display()
            ),
            None => format!("cannot write {}", self.atomic.dest().display()),
        }
    }

    /// The error of a refused allocation for the current tensor.
    fn refused(&self, refused: crate::alloc::Refused, what: &str) -> Error {
        let name = self
            .tensors
            .get(self.current)
            .map_or("?", |t| t.name.as_str());
        refused.in_tensor(self.atomic.dest(), name, what)
    }

    /// Account for `n` bytes of the current tensor, after checking they fit.
    fn check_fits(&self, n: u64) -> Result<()> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(Error::value(format!(
                "{}: more bytes than the header declares",
                self.atomic.dest().display()
            )));
        };
        let left = self.sizes[self.current] - self.written;
        if n > left {
            return Err(Error::value(format!(
                "{}: {n} bytes for tensor {:?}, which has {left} left",
                self.atomic.dest().display(),
                t.name
            )));
        }
        Ok(())
    }

    fn advance(&mut self, n: u64) {
        self.pos += n;
        self.written += n;
        self.skip_empty();
    }

    /// Append bytes of the current tensor; they may not run past its end.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.check_fits(bytes.len() as u64)?;
        write_all_at(&self.sink.file, bytes, self.pos).map_err(|e| Error::io(self.context(), e))?;
        self.advance(bytes.len() as u64);
        Ok(())
    }

    /// Whether a whole next tensor of `size` bytes of `T` elements is to be produced: `false`
    /// for a tensor of no bytes (which the writer has already stepped over), an error if the
    /// element type cannot be written or the size is not the next tensor's.
    fn starts_whole_tensor<T>(&self, size: u64) -> Result<bool> {
        if std::mem::align_of::<T>() > std::mem::align_of::<u64>() {
            return Err(Error::type_error("tensor elements aligned beyond 8 bytes"));
        }
        if size == 0 && self.written == 0 {
            return Ok(false);
        }
        if self.sizes.get(self.current) != Some(&size) || self.written != 0 {
            return Err(Error::value(format!(
                "{}: a whole tensor of {size} bytes was produced where {} bytes were expected",
                self.atomic.dest().display(),
                self.sizes.get(self.current).map_or(0, |s| s - self.written)
            )));
        }
        Ok(true)
    }

    /// Produce the whole next tensor, of `elements` elements of `T` (none of its bytes written
    /// yet), with `fill`, which must write every element: in place in the file when it is mapped
    /// and the tensor's offset is aligned for `T`, else in a scratch buffer that is then written. A
    /// tensor of no bytes (which the writer has already stepped over) gets an empty slice. What
    /// `fill` returns is returned.
    pub fn write_tensor_with<T: bytemuck::Pod, R>(
        &mut self,
        elements: usize,
        fill: impl FnOnce(&mut [T]) -> Result<R>,
    ) -> Result<R> {
        self.check_usable()?;
        let size = (elements as u64).saturating_mul(std::mem::size_of::<T>() as u64);
        if !self.starts_whole_tensor::<T>(size)? {
            return fill(&mut []);
        }
        let len = usize::try_from(size).map_err(|_| Error::value("tensor too large"))?;
        let aligned = self.pos.is_multiple_of(std::mem::align_of::<T>() as u64);
        if self.sink.map && len > 0 && aligned {
            let io = |e| Error::io(self.context(), e);
            let mut map = map_range(&self.sink.file, self.pos, len).map_err(|e| {
                if e.kind() == std::io::ErrorKind::OutOfMemory {
                    let refused = crate::alloc::Refused::of::<u8>(len);
                    self.refused(refused, "a map of its place in the output")
                } else {
                    io(e)
                }
            })?;
            if populate(&map).map_err(io)? {
                let r = fill(bytemuck::cast_slice_mut(&mut map[..]))?;
                drop(map);
                self.advance(size);
                return Ok(r);
            }
            drop(map);
            // The kernel cannot populate maps: this and later tensors go through the buffer.
            self.sink.map = false;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Err(refused) = crate::alloc::grow(&mut scratch, len.div_ceil(8), 0) {
            self.scratch = scratch;
            return Err(self.refused(refused, "its output buffer"));
        }
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch)[..len];
        let r = fill(bytemuck::cast_slice_mut(bytes)).and_then(|r| self.write(bytes).map(|()| r));
        self.scratch = scratch;
        r
    }

    /// Produce the whole next tensor, of `elements` elements of `T`, in pieces: the calling
    /// thread fills piece after piece (`fill(first_element, piece)`, which must write every
    /// element of the piece) into reused buffers of about 1 MiB while a writer thread
    /// ([`super::pipeline`]) writes the filled ones into the file. When no buffer is free and
    /// the file is mapped (and the tensor's offset aligned for `T`), the next piece is filled
    /// in a populated map of its place in the file instead: `fill` may get a zeroed, slow to
    /// read slice. Pieces hold a multiple of
    /// `align` elements (but the last) unless that would make them larger than 8 MiB. Until a
    /// writer thread is started, when [`threads::num_threads`](crate::threads::num_threads)
    /// is 2 or more, each piece is written as soon as it is filled instead.
    ///
    /// A write may fail after this returns: [`finish`](Self::finish) waits for every byte and
    /// reports it. After any error here the writer accepts nothing more and never renames the
    /// file into place.
    pub fn write_tensor_pipelined<T: bytemuck::Pod>(
        &mut self,
        elements: usize,
        align: usize,
        fill: impl Fn(usize, &mut [T]) -> Result<()>,
    ) -> Result<()> {
        self.check_usable()?;
        let item = std::mem::size_of::<T>();
        let size = (elements as u64).saturating_mul(item as u64);
        if !self.starts_whole_tensor::<T>(size)? {
            return Ok(());
        }
        let align = if align.saturating_mul(item) <= PIPELINE_MAX_ALIGNED_BYTES {
            align.max(1)
        } else {
            1
        };
        let piece = (PIPELINE_PIECE_BYTES / item).div_ceil(align) * align;
        let r = self.write_pieces(elements, piece, item, &fill);
        if r.is_err() {
            // Pieces of this tensor may be in flight, or an earlier tensor's bytes missing.
            self.failed = true;
            if let Some(pipeline) = self.pipeline.take() {
                let _ = pipeline.finish();
            }
            return r;
        }
        self.advance(size);
        Ok(())
    }

    /// How many part buffers [`write_tensor_parallel`](Self::write_tensor_parallel) keeps in
    /// circulation on `threads` threads (each as large as a part): each filling thread holds
    /// one while others wait in the writer's queue. More buffers than filling threads, or a
    /// thread waiting for one could hold up the others.
    pub fn parallel_buffers(threads: usize) -> usize {
        2 * threads.max(1) + 2
    }

    /// Produce the whole next tensor, of `elements` elements of `T`, in parts of `part`
    /// elements (the last may be shorter), filled on the pool's threads: each thread calls
    /// `fill(first_element, part)` (which must write every element of the part) on a buffer
    /// and hands it to the writer thread ([`super::pipeline`]), which writes the parts by
    /// position and returns the buffers; on one thread, each part is written as soon as it is
    /// filled. Returns what `fill` returned, in part order.
    ///
    /// For producers that are most of the work, like quantization: every thread has work for
    /// the whole tensor (one wake-up of the pool per tensor, not per piece), and no filling
    /// thread waits in the kernel: the kernel serialises writes into one file, and two threads
    /// writing cost it half as much again as one (measured here: 0.64 against 0.42 CPU-s of
    /// system time for 1 GiB written into tmpfs). A write may fail after this returns:
    /// [`finish`](Self::finish) waits for every byte and reports it. After any error the writer
    /// accepts nothing more and never renames the file into place.
    pub fn write_tensor_parallel<T: bytemuck::Pod, R: Send>(
        &mut self,
        elements: usize,
        part: usize,
        fill: impl Fn(usize, &mut [T]) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        self.check_usable()?;
        let item = std::mem::size_of::<T>();
        let size = (elements as u64).saturating_mul(item as u64);
        if !self.starts_whole_tensor::<T>(size)? {
            return Ok(Vec::new());
        }
        let threads = crate::threads::num_threads();
        let context = self.context();
        let io = |e| Error::io(context.clone(), e);
        if self.pipeline.is_none() && threads >= 2 {
            let own = self.sink.file.try_clone().map_err(io)?;
            let buffers = Self::parallel_buffers(threads);
            self.pipeline = Some(WriterThread::with_buffers(own, buffers).map_err(io)?);
        }
        let part = part.max(1);
        let start = self.pos;
        // Without a writer thread (one thread): this thread's buffer, written in place.
        let spare = Mutex::new(std::mem::take(&mut self.scratch));
        let pipeline = Mutex::new(self.pipeline.take());
        let stop = AtomicBool::new(false);
        let file = &self.sink.file;
        let name = self
            .tensors
            .get(self.current)
            .map_or("?", |t| t.name.as_str());
        let dest = self.atomic.dest();
        let refused = |r: crate::alloc::Refused| r.in_tensor(dest, name, "an output buffer");
        let stopped = || {
            Error::io(
                context.clone(),
                std::io::Error::other("the writer thread stopped"),
            )
        };
        let results = crate::threads::map((0..elements).step_by(part).collect(), |first| {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let len = part.min(elements - first) * item;
            let at = start + (first * item) as u64;
            let r = (|| {
                let mut queue = pipeline.lock().unwrap_or_else(|e| e.into_inner());
                let Some(writer) = queue.as_mut() else {
                    drop(queue);
                    let mut buf = spare.lock().unwrap_or_else(|e| e.into_inner());
                    crate::alloc::grow(&mut buf, len.div_ceil(8), 0).map_err(refused)?;
                    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..len];
                    let r = fill(first, bytemuck::cast_slice_mut(bytes))?;
                    write_all_at(file, bytes, at).map_err(io)?;
                    return Ok(r);
                };
                // Waits (asleep) for the writer to give a buffer back when all are out.
                let mut buf = writer.buffer(len.div_ceil(8)).ok_or_else(stopped)?;
                drop(queue);
                let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..len];
                let r = fill(first, bytemuck::cast_slice_mut(bytes))?;
                let mut queue = pipeline.lock().unwrap_or_else(|e| e.into_inner());
                let sent = queue.as_mut().is_some_and(|w| w.send(buf, len, at));
                if sent {
                    Ok(r)
                } else {
                    Err(stopped())
                }
            })();
            if r.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            Some(r)
        });
        self.scratch = spare.into_inner().unwrap_or_else(|e| e.into_inner());
        self.pipeline = pipeline.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                // Skipped after another part failed.
                None => {}
            }
        }
        if failure.is_some() || out.len() != elements.div_ceil(part) {
            // Parts of this tensor may be in flight: stop the writer, report its error first.
            self.failed = true;
            let written = self.pipeline.take().map(WriterThread::finish);
            return Err(match (written, failure) {
                (Some(Err(e)), _) => io(e),
                (_, Some(e)) => e,
                _ => Error::value(format!("{context}: a part was not written")),
            });
        }
        self.advance(size);
        Ok(out)
    }

    fn write_pieces<T: bytemuck::Pod>(
        &mut self,
        elements: usize,
        piece: usize,
        item: usize,
        fill: &impl Fn(usize, &mut [T]) -> Result<()>,
    ) -> Result<()> {
        let start = self.pos;
        let io = |e| Error::io(format!("cannot write {}", self.atomic.dest().display()), e);
        if self.pipeline.is_none() && crate::threads::num_threads() >= 2 {
            let own = self.sink.file.try_clone().map_err(io)?;
            self.pipeline = Some(WriterThread::start(own).map_err(io)?);
        }
        let mut first = 0;
        let Some(pipeline) = self.pipeline.as_mut() else {
            let mut scratch = std::mem::take(&mut self.scratch);
            let mut r = Ok(());
            while first < elements && r.is_ok() {
                let len = piece.min(elements - first) * item;
                if let Err(refused) = crate::alloc::grow(&mut scratch, len.div_ceil(8), 0) {
                    r = Err(self.refused(refused, "an output buffer"));
                    break;
                }
                let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch)[..len];
                r = fill(first, bytemuck::cast_slice_mut(bytes)).and_then(|()| {
                    let at = start + (first * item) as u64;
                    write_all_at(&self.sink.file, bytes, at).map_err(io)
                });
                first += len / item;
            }
            self.scratch = scratch;
            return r;
        };
        // When every buffer is with the writer thread, this thread does not wait: it writes
        // the next piece itself, into a map of its place in the file (where maps are used).
        // The two threads then share the kernel's page work as each has time for it.
        let align_ok = start.is_multiple_of(std::mem::align_of::<T>() as u64);
        while first < elements {
            let len = piece.min(elements - first) * item;
            let at = start + (first * item) as u64;
            let buf = if self.sink.map && align_ok {
                match pipeline.buffer_now(len.div_ceil(8)) {
                    Available::Free(buf) => Some(buf),
                    Available::Busy => {
                        let mut map = map_range(&self.sink.file, at, len).map_err(io)?;
                        if populate_range(&map, 0, len).map_err(io)? {
                            #[cfg(test)]
                            PIECES_WRITTEN_THROUGH_MAPS.fetch_add(1, Ordering::Relaxed);
                            fill(first, bytemuck::cast_slice_mut(&mut map[..]))?;
                            first += len / item;
                            continue;
                        }
                        // The kernel cannot populate maps: wait for the writer from now on.
                        self.sink.map = false;
                        pipeline.buffer(len.div_ceil(8))
                    }
                    Available::Stopped => None,
                }
            } else {
                pipeline.buffer(len.div_ceil(8))
            };
            let Some(mut buf) = buf else {
                break;
            };
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..len];
            fill(first, bytemuck::cast_slice_mut(bytes))?;
            if !pipeline.send(buf, len, at) {
                break;
            }
            first += len / item;
        }
        if first < elements {
            // The writer thread stopped on an error (maybe in an earlier tensor): report it.
            let stopped = self.pipeline.take().expect("running").finish();
            return Err(io(stopped.err().unwrap_or_else(|| {
                std::io::Error::other("the writer thread stopped")
            })));
        }
        Ok(())
    }

    /// Check that every tensor was written in full, then sync and rename into place.
    pub fn finish(mut self) -> Result<()> {
        self.check_usable()?;
        if let Some(t) = self.tensors.get(self.current) {
            return Err(Error::value(format!(
                "{}: tensor {:?} was not written in full",
                self.atomic.dest().display(),
                t.name
            )));
        }
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.finish().map_err(|e| {
                Error::io(format!("cannot write {}", self.atomic.dest().display()), e)
            })?;
        }
        drop(self.sink);
        self.atomic.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::file::SafetensorsFile;

    fn tensor_bytes(f: &SafetensorsFile, name: &str) -> Vec<u8> {
        let t = f.get(name).unwrap();
        let mut b = vec![0u8; t.nbytes() as usize];
        f.read_tensor(t, &mut b).unwrap();
        b
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let base = crate::checkpoint::fskind::test_dir_base().0;
        let d = base.join(format!("fp8fast-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_and_reads_back() {
        let d = tmpdir("rw");
        let p = d.join("a.safetensors");
        let tensors = vec![
            OutTensor::new("w", Dtype::F8_E4M3, vec![2, 3]),
            OutTensor::new("empty", Dtype::F32, vec![0]),
            OutTensor::new("s", Dtype::F32, vec![]),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = SafetensorsWriter::create(&p, tensors, Some(meta), false).unwrap();
        w.write(&[1, 2, 3]).unwrap();
        w.write(&[4, 5, 6]).unwrap();
        assert_eq!(w.current_tensor().unwrap().name, "s");
        w.write(&1.5f32.to_le_bytes()).unwrap();
        assert!(w.write(&[0]).is_err());
        w.finish().unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!((f.header_len() + 8) % 8, 0);
        let t = f.get("w").unwrap();
        let mut buf = vec![0; 6];
        f.read_tensor(t, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.metadata().unwrap()["format"], "pt");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        // No overwrite without permission.
        assert!(SafetensorsWriter::create(&p, vec![], None, false).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mapped_and_streamed_files_hold_the_same_bytes() {
        let d = tmpdir("sinks");
        // An odd-sized U8 tensor first, so the F32 tensors after it start unaligned and take
        // the scratch path; an empty tensor; pieces and whole tensors mixed.
        let plan = vec![
            OutTensor::new("odd", Dtype::U8, vec![3 << 20 | 5]),
            OutTensor::new("f_unaligned", Dtype::F32, vec![1000]),
            OutTensor::new("empty", Dtype::F32, vec![0]),
            OutTensor::new("pad", Dtype::U8, vec![3]),
            OutTensor::new("f_aligned", Dtype::F32, vec![1 << 20]),
            OutTensor::new("tail", Dtype::U8, vec![17]),
        ];
        let odd: Vec<u8> = (0..(3 << 20 | 5))
            .map(|i: usize| (i * 31 + (i >> 13)) as u8)
            .collect();
        let mut images = vec![];
        for map in [false, true] {
            let p = d.join(format!("m{map}.safetensors"));
            let mut w = SafetensorsWriter::create_with(&p, plan.clone(), None, false, map).unwrap();
            assert_eq!(
                w.is_mapped(),
                map && crate::checkpoint::fskind::test_dir_base().1
            );
            w.write(&odd[..1 << 20]).unwrap();
            w.write(&odd[1 << 20..]).unwrap();
            let n = w
                .write_tensor_with(1000, |x: &mut [f32]| {
                    x.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
                    Ok(x.len())
                })
                .unwrap();
            assert_eq!(n, 1000);
            // The empty tensor was stepped over; producing it anyway changes nothing.
            let seen = w.write_tensor_with(0, |x: &mut [f32]| Ok(x.len())).unwrap();
            assert_eq!(seen, 0);
            w.write(&[7, 8, 9]).unwrap();
            w.write_tensor_with(1 << 20, |x: &mut [f32]| {
                x.iter_mut().enumerate().for_each(|(i, v)| *v = -(i as f32));
                Ok(())
            })
            .unwrap();
            // A whole tensor must have the next tensor's size, may not follow part of one, nor
            // run past the end.
            assert!(w.write_tensor_with(16, |_: &mut [u8]| Ok(())).is_err());
            w.write(&[1]).unwrap();
            assert!(w.write_tensor_with(16, |_: &mut [u8]| Ok(())).is_err());
            w.write(&[2; 16]).unwrap();
            assert!(w.write_tensor_with(1, |_: &mut [u8]| Ok(())).is_err());
            w.finish().unwrap();
            let f = SafetensorsFile::open(&p).unwrap();
            let read = |name: &str| tensor_bytes(&f, name);
            assert!(read("odd") == odd);
            let fl: Vec<f32> = read("f_unaligned")
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(fl.iter().enumerate().all(|(i, &v)| v == i as f32));
            let fa: Vec<f32> = read("f_aligned")
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(fa.iter().enumerate().all(|(i, &v)| v == -(i as f32)));
            assert_eq!(read("tail"), [&[1u8][..], &[2; 16]].concat());
            images.push(std::fs::read(&p).unwrap());
        }
        assert!(images[0] == images[1]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pipelined_tensors_are_written_whole_in_order_with_the_rest() {
        let d = tmpdir("pipelined");
        // Pipelined tensors after an odd-sized one (unaligned in the file), not a whole number
        // of pieces, between tensors written the other ways; on both sinks.
        let n_a = 700_001;
        let n_c = (3 << 19) + 7;
        let plan = vec![
            OutTensor::new("odd", Dtype::U8, vec![13]),
            OutTensor::new("a", Dtype::F32, vec![n_a]),
            OutTensor::new("b", Dtype::F32, vec![1000]),
            OutTensor::new("c", Dtype::U16, vec![n_c]),
            OutTensor::new("empty", Dtype::U16, vec![0]),
            OutTensor::new("tail", Dtype::U8, vec![3]),
        ];
        let value_a = |i: usize| (i as f32).mul_add(0.5, -3.0);
        let value_c = |i: usize| (i.wrapping_mul(40503) >> 3) as u16;
        let mut images = vec![];
        for map in [false, true] {
            let p = d.join(format!("p{map}.safetensors"));
            let mut w = SafetensorsWriter::create_with(&p, plan.clone(), None, false, map).unwrap();
            w.write(&[5; 13]).unwrap();
            let pieces = std::sync::Mutex::new(vec![]);
            w.write_tensor_pipelined(n_a, 1000, |first, x: &mut [f32]| {
                pieces.lock().unwrap().push((first, x.len()));
                x.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = value_a(first + i));
                Ok(())
            })
            .unwrap();
            let pieces = pieces.into_inner().unwrap();
            assert!(pieces.len() > 2, "{pieces:?}");
            let mut next = 0;
            for &(first, len) in &pieces {
                assert_eq!(first, next);
                assert!(first % 1000 == 0 && (len % 1000 == 0 || first + len == n_a));
                next += len;
            }
            assert_eq!(next, n_a);
            w.write_tensor_with(1000, |x: &mut [f32]| {
                x.fill(2.5);
                Ok(())
            })
            .unwrap();
            // A whole tensor must have the next tensor's size.
            assert!(w
                .write_tensor_pipelined(n_c + 1, 1, |_, _: &mut [u16]| Ok(()))
                .is_err());
            w.write_tensor_pipelined(n_c, 1, |first, x: &mut [u16]| {
                x.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = value_c(first + i));
                Ok(())
            })
            .unwrap();
            w.write_tensor_pipelined(0, 1, |_, _: &mut [u16]| Ok(()))
                .unwrap();
            w.write(&[1, 2, 3]).unwrap();
            w.finish().unwrap();
            let f = SafetensorsFile::open(&p).unwrap();
            let read = |name: &str| tensor_bytes(&f, name);
            let a = read("a");
            assert!(a
                .chunks(4)
                .enumerate()
                .all(|(i, c)| f32::from_le_bytes(c.try_into().unwrap()) == value_a(i)));
            let c = read("c");
            assert!(c
                .chunks(2)
                .enumerate()
                .all(|(i, b)| u16::from_le_bytes(b.try_into().unwrap()) == value_c(i)));
            assert_eq!(read("tail"), [1, 2, 3]);
            images.push(std::fs::read(&p).unwrap());
        }
        assert!(images[0] == images[1]);
        // A fill that fails part-way leaves nothing, with pieces already sent to the thread.
        for map in [false, true] {
            let p = d.join("failed.safetensors");
            let plan = vec![OutTensor::new("a", Dtype::F32, vec![n_a])];
            let mut w = SafetensorsWriter::create_with(&p, plan, None, false, map).unwrap();
            let r = w.write_tensor_pipelined(n_a, 1, |first, _: &mut [f32]| {
                if first > n_a / 2 {
                    Err(Error::value("bad input"))
                } else {
                    Ok(())
                }
            });
            assert!(r.is_err());
            // Pieces were in flight: the writer takes nothing more and cannot be finished.
            assert!(w.write(&[0; 4]).is_err());
            assert!(w.write_tensor_with(n_a, |_: &mut [f32]| Ok(())).is_err());
            assert!(w.finish().is_err());
            assert_eq!(
                std::fs::read_dir(&d).unwrap().count(),
                2,
                "only the two images"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_pipelined_tensor_faster_to_fill_than_to_write_is_shared_with_the_map() {
        // 64 pieces filled much faster than the writer thread writes them: the filling
        // thread writes some itself through maps, and every byte lands once, in place.
        let d = tmpdir("steal");
        let p = d.join("s.safetensors");
        let n = (64 << 20) + 3;
        let plan = vec![
            OutTensor::new("pad", Dtype::U8, vec![5]),
            OutTensor::new("a", Dtype::U8, vec![n]),
        ];
        let mut w = SafetensorsWriter::create(&p, plan, None, false).unwrap();
        // The writer thread, whatever thread count other tests have set meanwhile.
        w.pipeline = Some(WriterThread::start(w.sink.file.try_clone().unwrap()).unwrap());
        w.write(&[1; 5]).unwrap();
        // Pieces start at multiples of 1 MiB: each is filled with one byte (a memset).
        let value = |i: usize| (i >> 20) as u8 ^ 0x5A;
        let before = PIECES_WRITTEN_THROUGH_MAPS.load(Ordering::Relaxed);
        w.write_tensor_pipelined(n, 1, |first, x: &mut [u8]| {
            assert_eq!(first % (1 << 20), 0);
            x.fill(value(first));
            Ok(())
        })
        .unwrap();
        let stolen = PIECES_WRITTEN_THROUGH_MAPS.load(Ordering::Relaxed) - before;
        let mapped = w.is_mapped();
        w.finish().unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        let back = tensor_bytes(&f, "a");
        assert!(back.iter().enumerate().all(|(i, &v)| v == value(i)));
        if mapped {
            assert!(stolen > 0, "no piece was written through a map");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn large_tensors_written_through_maps_read_back_intact() {
        let d = tmpdir("reserve");
        let p = d.join("big.safetensors");
        let big = (130 << 20) + 12345;
        let plan = vec![
            OutTensor::new("a", Dtype::U8, vec![big]),
            OutTensor::new("b", Dtype::U8, vec![5]),
            OutTensor::new("c", Dtype::U8, vec![big]),
        ];
        let mut w = SafetensorsWriter::create(&p, plan, None, false).unwrap();
        let pattern = |k: usize, i: usize| (i.wrapping_mul(2654435761) >> 7) as u8 ^ k as u8;
        let fill = |k: usize| {
            move |x: &mut [u8]| {
                x.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = pattern(k, i));
                Ok(())
            }
        };
        w.write_tensor_with(big, fill(1)).unwrap();
        w.write(&[9; 5]).unwrap();
        w.write_tensor_with(big, fill(3)).unwrap();
        w.finish().unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        for (name, k) in [("a", 1), ("c", 3)] {
            let mut back = vec![0u8; big];
            f.read_tensor(f.get(name).unwrap(), &mut back).unwrap();
            assert!(
                back.iter().enumerate().all(|(i, &v)| v == pattern(k, i)),
                "{name}"
            );
        }
        // A writer dropped part-way removes its file.
        let plan = vec![OutTensor::new("a", Dtype::U8, vec![4 * big])];
        let mut w = SafetensorsWriter::create(&d.join("dropped.safetensors"), plan, None, false);
        w.as_mut().unwrap().write(&[1; 100]).unwrap();
        drop(w);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parallel_parts_land_at_their_offsets_and_a_failed_part_poisons_the_writer() {
        let d = tmpdir("parallel");
        let p = d.join("p.safetensors");
        for threads in [1, 2, 3] {
            crate::threads::set_num_threads(threads).unwrap();
            for map in [false, true] {
                // A tensor of 1000 u16 in parts of 64 (the last shorter), between two others.
                let plan = vec![
                    OutTensor::new("a", Dtype::U8, vec![3]),
                    OutTensor::new("w", Dtype::U16, vec![1000]),
                    OutTensor::new("z", Dtype::U8, vec![5]),
                ];
                let mut w = SafetensorsWriter::create_with(&p, plan, None, true, map).unwrap();
                w.write(&[1, 2, 3]).unwrap();
                let firsts = w
                    .write_tensor_parallel(1000, 64, |first, part: &mut [u16]| {
                        for (j, v) in part.iter_mut().enumerate() {
                            *v = (first + j) as u16 * 3;
                        }
                        Ok(first)
                    })
                    .unwrap();
                assert_eq!(
                    firsts,
                    (0..1000).step_by(64).collect::<Vec<_>>(),
                    "part order"
                );
                w.write(&[9; 5]).unwrap();
                w.finish().unwrap();
                let f = SafetensorsFile::open(&p).unwrap();
                let want: Vec<u16> = (0..1000).map(|i| i * 3).collect();
                assert_eq!(
                    tensor_bytes(&f, "w"),
                    bytemuck::cast_slice::<u16, u8>(&want)
                );
                assert_eq!(tensor_bytes(&f, "a"), [1, 2, 3]);
                assert_eq!(tensor_bytes(&f, "z"), [9; 5]);

                let q = d.join("fail.safetensors");
                let plan = vec![OutTensor::new("w", Dtype::U8, vec![1000])];
                let mut w = SafetensorsWriter::create_with(&q, plan, None, false, map).unwrap();
                let r = w.write_tensor_parallel(1000, 100, |first, part: &mut [u8]| {
                    if first == 500 {
                        return Err(Error::value("bad part"));
                    }
                    part.fill(1);
                    Ok(())
                });
                assert!(r.unwrap_err().to_string().contains("bad part"));
                assert!(w.write(&[0; 10]).is_err(), "nothing more is accepted");
                assert!(w.finish().is_err());
                assert!(!q.exists());
            }
        }
        crate::threads::set_num_threads(1).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_fill_leaves_nothing() {
        let d = tmpdir("fill");
        let p = d.join("c.safetensors");
        for map in [false, true] {
            let plan = vec![OutTensor::new("w", Dtype::F32, vec![1 << 16])];
            let mut w = SafetensorsWriter::create_with(&p, plan, None, false, map).unwrap();
            let r: Result<()> =
                w.write_tensor_with(1 << 16, |_: &mut [f32]| Err(Error::value("bad input")));
            assert!(r.is_err());
            drop(w);
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn headers_with_no_tensors_are_valid_json() {
        // The fuzzer's find: no tensors and an empty (but present) __metadata__.
        for meta in [
            None,
            Some(HashMap::new()),
            Some(HashMap::from([("a".into(), "b".into())])),
        ] {
            let (h, _) = header_bytes(&[], meta.clone()).unwrap();
            let mut image = (h.len() as u64).to_le_bytes().to_vec();
            image.extend_from_slice(&h);
            let (tensors, back) = crate::checkpoint::file::validate_image(&image).unwrap();
            assert!(tensors.is_empty());
            assert_eq!(back, meta);
        }
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let d = tmpdir("drop");
        let p = d.join("b.safetensors");
        {
            let mut w = SafetensorsWriter::create(
                &p,
                vec![OutTensor::new("w", Dtype::U8, vec![4])],
                None,
                false,
            )
            .unwrap();
            w.write(&[1, 2]).unwrap();
        }
        let w = SafetensorsWriter::create(
            &p,
            vec![OutTensor::new("w", Dtype::U8, vec![4])],
            None,
            false,
        )
        .unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        assert!(header_bytes(
            &[
                OutTensor::new("x", Dtype::U8, vec![1]),
                OutTensor::new("x", Dtype::U8, vec![1])
            ],
            None
        )
        .is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
