//! A range of an immutable file as [`Bytes`] that point into the page cache: no read copy, no
//! zeroed buffer, no blocking-pool hop. Serving a cached blob then costs one kernel copy (page
//! cache to socket) instead of two, plus a zeroed 1 MiB buffer per read.
//!
//! Only ranges whose pages are all resident are mapped: touching a mapped page that is not in
//! memory would block an async worker on the disk. The caller reads the others with `pread` off
//! the runtime, which also brings them into the cache.

use std::fs::File;
use std::io;
use std::sync::OnceLock;

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions};

/// `len` bytes of `file` at `offset` without copying, or `None` when some page of the range is
/// not in the page cache.
///
/// The file must not shrink while the bytes live: reading a mapped page past the end of a
/// truncated file kills the process (SIGBUS). Shoal never truncates a committed blob (blobs are
/// written beside and renamed into place) or a partial one that has readers (only an unusable
/// partial is reset, when it is opened), and each mapping lives only as long as one chunk in
/// flight.
pub fn resident(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    if len == 0 {
        return Ok(Some(Bytes::new()));
    }
    // Past the end, a mapping reads zeros (in the last page) or kills the process (beyond it);
    // pread reports the short file instead.
    if file.metadata()?.len() < offset + len as u64 {
        return Ok(None);
    }
    // mmap offsets must be page-aligned: map from the page holding `offset`.
    let lead = (offset % page_size()) as usize;
    let options = {
        let mut options = MmapOptions::new();
        options.offset(offset - lead as u64).len(lead + len);
        options
    };
    // SAFETY: the mapping is read-only and private to this process, and the file is not truncated
    // while it lives (see above), so every byte of it stays readable and unchanged.
    #[allow(unsafe_code)]
    let map = unsafe { options.map(file)? };
    if !all_resident(&map)? {
        return Ok(None);
    }
    // Maps every page in one call, instead of a fault per 64 KiB when the bytes are first read.
    // Only an optimisation: kernels before 5.14 refuse it, and the pages then fault in as read.
    let _ = map.advise(Advice::PopulateRead);
    Ok(Some(Bytes::from_owner(Range { map, lead, len })))
}

/// A mapping and the part of it that was asked for.
struct Range {
    map: Mmap,
    lead: usize,
    len: usize,
}

impl AsRef<[u8]> for Range {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.lead..self.lead + self.len]
    }
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as u64,
        _ => 4096,
    })
}

/// Whether every page of `map` is in the page cache (`mincore`).
fn all_resident(map: &Mmap) -> io::Result<bool> {
    let pages = map.len().div_ceil(page_size() as usize);
    let mut state = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `map.len()` bytes starting at a page boundary, and `state`
    // holds one byte per page of it, which is what mincore writes.
    #[allow(unsafe_code)]
    let status = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), state.as_mut_ptr()) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(state.iter().all(|page| page & 1 == 1))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn a_resident_range_reads_the_same_bytes_as_pread_at_any_alignment() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_with(&bytes);
        for (offset, len) in [(0, 1), (1, 4095), (4095, 2), (4096, 8192), (12_345, 60_000)] {
            let mapped = resident(&file, offset, len).unwrap().expect("just written");
            let mut read = vec![0; len];
            file.read_exact_at(&mut read, offset).unwrap();
            assert_eq!(&mapped[..], &read[..], "offset {offset} len {len}");
        }
    }

    #[test]
    fn an_empty_range_is_empty() {
        let file = file_with(b"abc");
        assert!(resident(&file, 3, 0).unwrap().unwrap().is_empty());
    }

    #[test]
    fn a_hole_is_not_resident_so_the_caller_reads_it_itself() {
        // A sparse tail has no page-cache pages until something reads or writes it.
        let file = file_with(b"head");
        file.set_len(64 << 20).unwrap();
        assert_eq!(resident(&file, 32 << 20, 1 << 20).unwrap(), None);
        // The written head is resident.
        assert_eq!(&resident(&file, 0, 4).unwrap().unwrap()[..], b"head");
    }

    #[test]
    fn a_range_past_the_end_is_left_to_pread() {
        let file = file_with(b"short");
        assert_eq!(resident(&file, 0, 6).unwrap(), None);
        assert_eq!(resident(&file, 4096, 10).unwrap(), None);
    }

    #[test]
    fn the_bytes_outlive_the_file_handle() {
        let file = file_with(b"kept after close");
        let mapped = resident(&file, 5, 5).unwrap().unwrap();
        drop(file);
        assert_eq!(&mapped[..], b"after");
    }
}
