//! Which file systems a file may be memory-mapped on, for reading and for writing.
//!
//! A memory map turns an I/O error into a `SIGBUS` that kills the Python process, where
//! `pread` / `pwrite` return an error. Maps are therefore used only where that cannot happen in
//! normal operation: on local file systems for reading (a network file system can fail a page
//! read), and for writing only where a page, once allocated and its blocks reserved (the
//! writer populates every page before writing, see `writer`), needs no more space when it is
//! written again: ext4, XFS and tmpfs, not copy-on-write file systems such as btrfs or ZFS,
//! whose pages need new space each time they are dirtied after a write-back. Everything else
//! is read and written with positional I/O.

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

/// Whether writes through a map of `file`, after its pages were populated, cannot fail for
/// lack of space.
pub fn can_map_for_writing(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use magic::*;
        matches!(fs_magic(file), Some(EXT4 | XFS | TMPFS))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
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
