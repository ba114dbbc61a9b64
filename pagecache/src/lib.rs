//! Reads of file ranges the page cache already holds, done right on an async worker: one
//! `preadv2` with `RWF_NOWAIT`, which copies what is cached and refuses instead of waiting on
//! the disk. The caller reads the rest with `pread` off the runtime, which also brings it into
//! the cache.
//!
//! This replaced mapping each range (`mmap`, a `mincore` check, `MADV_POPULATE_READ`, `munmap`):
//! the copy costs less than setting up and tearing down a mapping per chunk, whose `munmap`
//! also interrupts every other core to flush its TLB (`docs/BENCHMARKS.md`: the piece exchange
//! went from 0.44× to 0.68× of a plain TCP copy, and a cached GET from 1.50× to 1.71× of
//! docker-registry's). A copy also cannot fault: a mapped page of a file truncated meanwhile
//! killed the process with SIGBUS.
//!
//! For the piece stream (`shoal_p2p`), [`resident`] asks whether a range is cached without
//! reading it, [`send`] hands such a range to a socket with `sendfile`, with no copy at all,
//! and [`set_recv_lowat`] spares its receiver a wake-up per arriving segment.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use bytes::{Bytes, BytesMut};

/// `len` bytes of `file` at `offset`, copied out of the page cache, or `None` when some of them
/// are not cached (reading them would wait on the disk), the file ends first, or the filesystem
/// cannot tell (no `RWF_NOWAIT` support).
pub fn cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let Ok(at) = libc::off_t::try_from(offset + buf.len() as u64) else {
            return Ok(None);
        };
        let left = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..left];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: `iov` describes `spare`, `left` writable bytes that `buf` owns and nothing
        // else borrows during the call; the kernel writes at most that many.
        #[allow(unsafe_code)]
        let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        match usize::try_from(read) {
            // The file ends before `len`: pread reports the short file to the caller.
            Ok(0) => return Ok(None),
            Ok(read) => {
                // SAFETY: the kernel initialised the first `read` (≤ `left`) spare bytes.
                #[allow(unsafe_code)]
                unsafe {
                    buf.set_len(buf.len() + read);
                }
            }
            Err(_) => {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // Not all cached, or a filesystem or kernel without RWF_NOWAIT for reads.
                    Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL) => return Ok(None),
                    _ => return Err(error),
                }
            }
        }
    }
    Ok(Some(buf.freeze()))
}

/// `cachestat(2)` (Linux 6.5): the same number on every architecture, and not yet in `libc`.
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `cachestat(2)`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `cachestat(2)`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `offset..offset + len` of `file` is in the page cache, asked of the
/// kernel without touching them (`cachestat`); false when some are not, or the kernel cannot
/// tell (before Linux 6.5). A range that is resident can be handed to a socket with [`send`]
/// right on an async worker: `sendfile` would otherwise wait on the disk there.
pub fn resident(file: &File, offset: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    // SAFETY: sysconf reads a constant of the system.
    #[allow(unsafe_code)]
    let page = match u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) {
        Ok(page) if page > 0 => page,
        _ => return false,
    };
    let Some(last) = offset.checked_add(len - 1) else {
        return false;
    };
    let pages = last / page - offset / page + 1;
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: both pointers are to live, properly laid out structs the call reads and fills;
    // the kernel writes nothing beyond `stat`.
    #[allow(unsafe_code)]
    let done = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    done == 0 && stat.nr_cache >= pages
}

/// Sends up to `len` bytes of `file` from `offset` to `socket` with `sendfile(2)`: the kernel
/// hands the page-cache pages to the socket, with no copy through user space. For a
/// non-blocking socket: returns the bytes sent (possibly fewer than `len`, 0 at the file's end),
/// or `WouldBlock` while the socket's send buffer is full. Check [`resident`] first: pages
/// that are not would be read from the disk within the call.
pub fn send(socket: &impl AsRawFd, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut at = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"))?;
    loop {
        // SAFETY: both descriptors are open for the call (borrowed), and `at` is a live
        // `off_t` the kernel advances; no user memory is read or written otherwise.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, len) };
        match usize::try_from(sent) {
            Ok(sent) => return Ok(sent),
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// Sets `socket`'s `SO_RCVLOWAT`: it reads as ready only once `bytes` are queued (or it
/// closed), so a reader that needs that many is woken once instead of per arriving segment.
pub fn set_recv_lowat(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes)
        .unwrap_or(libc::c_int::MAX)
        .max(1);
    // SAFETY: a valid descriptor (borrowed) and a live `c_int` of the size passed.
    #[allow(unsafe_code)]
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
    fn a_cached_range_reads_the_same_bytes_as_pread_at_any_alignment() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_with(&bytes);
        for (offset, len) in [(0, 1), (1, 4095), (4095, 2), (4096, 8192), (12_345, 60_000)] {
            let cached = cached(&file, offset, len).unwrap().expect("just written");
            let mut read = vec![0; len];
            file.read_exact_at(&mut read, offset).unwrap();
            assert_eq!(&cached[..], &read[..], "offset {offset} len {len}");
        }
    }

    #[test]
    fn an_empty_range_is_empty() {
        let file = file_with(b"abc");
        assert!(cached(&file, 3, 0).unwrap().unwrap().is_empty());
    }

    #[test]
    fn a_range_out_of_the_page_cache_is_left_to_pread() {
        let bytes = vec![9u8; 4 << 20];
        let file = file_with(&bytes);
        file.sync_all().unwrap();
        // SAFETY: fadvise only advises the kernel about the open file's cached pages.
        #[allow(unsafe_code)]
        let evicted =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(evicted, 0);
        // Clean pages just dropped: reading them would wait on the disk (tmpfs, which has no
        // disk behind it, would not qualify; tempfiles live on the test machine's disk).
        assert_eq!(cached(&file, 1 << 20, 1 << 20).unwrap(), None);
        // pread brings them back, and they are then read at once.
        let mut read = vec![0; 1 << 20];
        file.read_exact_at(&mut read, 1 << 20).unwrap();
        assert_eq!(
            &cached(&file, 1 << 20, 1 << 20).unwrap().expect("cached")[..],
            &read[..]
        );
    }

    #[test]
    fn a_hole_reads_as_zeros_since_no_disk_holds_it() {
        let file = file_with(b"head");
        file.set_len(64 << 20).unwrap();
        let zeros = cached(&file, 32 << 20, 4096)
            .unwrap()
            .expect("a hole needs no disk read");
        assert!(zeros.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_range_past_the_end_is_left_to_pread() {
        let file = file_with(b"short");
        assert_eq!(cached(&file, 0, 6).unwrap(), None);
        assert_eq!(cached(&file, 4096, 10).unwrap(), None);
    }

    #[test]
    fn residency_follows_the_page_cache() {
        let bytes = vec![7u8; 4 << 20];
        let file = file_with(&bytes);
        assert!(resident(&file, 0, 4 << 20), "just written");
        assert!(resident(&file, 4095, 2), "across a page boundary");
        assert!(resident(&file, 0, 0));
        file.sync_all().unwrap();
        // SAFETY: fadvise only advises the kernel about the open file's cached pages.
        #[allow(unsafe_code)]
        let evicted =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(evicted, 0);
        assert!(!resident(&file, 1 << 20, 1 << 20), "dropped from the cache");
        assert!(!resident(&file, u64::MAX - 1, 2), "no such range");
    }

    #[test]
    fn send_hands_a_range_of_the_file_to_a_socket() {
        use std::io::Read;
        use std::net::{TcpListener, TcpStream};

        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let file = file_with(&bytes);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            receiver.read_to_end(&mut received).unwrap();
            received
        });
        let (offset, len) = (12_345usize, 200_000usize);
        let mut sent = 0;
        while sent < len {
            // A blocking socket: every call sends something until the range is done.
            sent += send(&sender, &file, (offset + sent) as u64, len - sent).unwrap();
        }
        drop(sender);
        assert_eq!(reader.join().unwrap(), &bytes[offset..offset + len]);
        // At the file's end nothing more is sent.
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(send(&other, &file, bytes.len() as u64, 10).unwrap(), 0);
    }

    #[test]
    fn a_socket_with_a_receive_low_mark_reads_ready_only_once_that_much_is_queued() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        let ready = |socket: &TcpStream| {
            let mut poll = libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, and its count.
            #[allow(unsafe_code)]
            let n = unsafe { libc::poll(&raw mut poll, 1, 200) };
            n == 1
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        set_recv_lowat(&receiver, 100).unwrap();
        sender.write_all(&[7; 60]).unwrap();
        assert!(!ready(&receiver), "ready with 60 of 100 bytes");
        sender.write_all(&[7; 40]).unwrap();
        assert!(ready(&receiver), "not ready with 100 bytes");
        // Back to one byte: ready at once with what is there.
        set_recv_lowat(&receiver, 1).unwrap();
        assert!(ready(&receiver));
    }

    #[test]
    fn the_bytes_outlive_the_file_handle() {
        let file = file_with(b"kept after close");
        let bytes = cached(&file, 5, 5).unwrap().unwrap();
        drop(file);
        assert_eq!(&bytes[..], b"after");
    }
}
