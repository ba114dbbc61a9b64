//! What `/proc` says about processes a test started indirectly (the children of `shoal
//! devcluster`): who a process's children are, and whether a PID still names the same live
//! process. Linux only, like the rest of the suite.

use std::path::Path;

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot when it started: with the PID, names the process even if the PID
    /// is later reused.
    pub start_time: u64,
}

/// The fields of `/proc/<pid>/stat` a test needs.
struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`; `None` when the process is gone. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    // After the name: state (field 3), ppid (4), … starttime (22).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every live process whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<ProcessId> {
    all_pids()
        .filter_map(|pid| {
            let stat = stat(pid)?;
            (stat.ppid == parent && stat.state != 'Z').then_some(ProcessId {
                pid,
                start_time: stat.start_time,
            })
        })
        .collect()
}

/// Whether `process` still runs: its PID exists, was not reused, and is not a zombie.
pub fn is_alive(process: ProcessId) -> bool {
    stat(process.pid).is_some_and(|s| s.start_time == process.start_time && s.state != 'Z')
}

/// Every live process whose command line mentions `needle` (a test's unique temp dir, say).
pub fn processes_mentioning(needle: &Path) -> Vec<ProcessId> {
    let needle = needle.as_os_str().as_encoded_bytes();
    all_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .filter_map(|pid| {
            let stat = stat(pid)?;
            (stat.state != 'Z').then_some(ProcessId {
                pid,
                start_time: stat.start_time,
            })
        })
        .collect()
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}
