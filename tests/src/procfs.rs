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
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; `None` when the process is gone. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    // After the name: state (field 3), ppid (4), … utime (14), stime (15), … starttime (22).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: ticks(19)?,
        cpu_ticks: ticks(11)? + ticks(12)?,
    })
}

/// The CPU time (user + system) `pid` has used so far, in clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    Some(stat(pid)?.cpu_ticks)
}

/// Clock ticks per second, the unit of `/proc`'s CPU times.
pub fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        // Linux has reported USER_HZ = 100 on every architecture it runs this suite on.
        _ => 100.0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_working_process_is_charged_cpu_ticks_and_a_gone_one_has_none() {
        let me = std::process::id();
        let before = cpu_ticks(me).expect("this process is alive");
        let started = Instant::now();
        let mut spin = 0u64;
        while cpu_ticks(me).expect("this process is alive") <= before {
            for i in 0..100_000u64 {
                spin = std::hint::black_box(spin.wrapping_add(i).rotate_left(7));
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "30 s of spinning were never charged a tick"
            );
        }
        assert!(ticks_per_second() >= 1.0);
        // PIDs stop far below u32::MAX (pid_max is at most 2^22).
        assert_eq!(cpu_ticks(u32::MAX), None);
    }
}
