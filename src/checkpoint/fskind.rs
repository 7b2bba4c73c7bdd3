//! Which file systems a file may be memory-mapped on, for reading and for writing.
//!
//! A memory map turns an I/O error into a `SIGBUS` that kills the Python process, where
//! `pread` / `pwrite` return an error. Maps are therefore used only where that cannot happen in
//! normal operation: on local file systems for reading (a network file system can fail a page
//! read), and for writing only on tmpfs, where a page, once allocated (the writer populates
//! every page before writing, see `writer`), stays in memory with nothing more to allocate
//! or read. On disk file systems a page populated in a map of a new file is first read in
//! (its hole, through readahead) and can be written back and faulted in again; measured on
//! ext4 (2 GiB, fsync included), positional writes took 1.09-1.44 s for a dequantization
//! against 1.92-2.0 s through maps, and 0.86-1.05 s against 1.27-1.6 s for a quantization.
//! Everything else is read and written with positional I/O.
//!
//! Off Linux (macOS and Windows, which CI compiles but nothing here has run on) there is no
//! probe: both functions answer `false`, so checkpoints are read and written with positional
//! I/O only (`pread` / `pwrite` on macOS; `ReadFile` / `WriteFile` at an explicit offset on
//! Windows, which several threads may issue on one handle: the kernel serialises them on a
//! synchronous handle, and nothing here uses the file position they move). That is the
//! conservative choice: positional I/O reports a failed read or a full disk as an error,
//! where a map turns it into SIGBUS (macOS) or an in-page-error exception (Windows) that ends
//! the process, and telling safe file systems from the rest there (APFS from SMB or NFS
//! mounts, NTFS from network shares) would need probes (`fstatfs`'s `f_fstypename`,
//! `GetVolumeInformationByHandleW`) that no one has tested. What it may cost is speed, not
//! correctness.

use std::fs::File;

#[cfg(target_os = "linux")]
mod magic {
    // From linux/magic.h.
    pub const EXT4: u32 = 0xEF53;
    pub const XFS: u32 = 0x5846_5342;
    pub const TMPFS: u32 = 0x0102_1994;
    pub const BTRFS: u32 = 0x9123_683E;
}

#[cfg(target_os = "linux")]
fn fs_magic(file: &File) -> Option<u32> {
    // The kernel's f_type is a word holding a 32-bit magic number.
    rustix::fs::fstatfs(file)
        .ok()
        .map(|s| (s.f_type as u64 & 0xFFFF_FFFF) as u32)
}

/// Whether `file` lives on a local file system whose pages can be mapped for reading.
pub fn can_map_for_reading(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use magic::*;
        matches!(fs_magic(file), Some(EXT4 | XFS | TMPFS | BTRFS))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Whether `file` is best written through maps: its pages, once populated, cannot fail a
/// write for lack of space or an I/O error, and populating them is cheap (tmpfs).
pub fn can_map_for_writing(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        fs_magic(file) == Some(magic::TMPFS)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Where tests put files: `/dev/shm` when it is tmpfs with 1 GiB free, so that the map paths
/// run, else the temporary folder; and whether files there are written through maps.
#[cfg(test)]
pub(crate) fn test_dir_base() -> (std::path::PathBuf, bool) {
    #[cfg(target_os = "linux")]
    {
        let shm = std::path::Path::new("/dev/shm");
        let roomy = rustix::fs::statvfs(shm)
            .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= 1 << 30);
        if roomy && File::open(shm).is_ok_and(|f| can_map_for_writing(&f)) {
            return (shm.to_path_buf(), true);
        }
    }
    let tmp = std::env::temp_dir();
    let map = File::open(&tmp).is_ok_and(|f| can_map_for_writing(&f));
    (tmp, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn tmpfs_and_the_temp_dir_are_recognised() {
        // /dev/shm is tmpfs on Linux systems that have it; the answer must match statfs.
        if let Ok(f) = File::open("/dev/shm") {
            assert_eq!(fs_magic(&f), Some(magic::TMPFS));
            assert!(can_map_for_reading(&f) && can_map_for_writing(&f));
        }
        // /proc is neither: maps are refused there.
        let f = File::open("/proc/self/status").unwrap();
        assert!(!can_map_for_reading(&f) && !can_map_for_writing(&f));
    }
}
