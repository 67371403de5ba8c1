//! Reading [`ProcessStats`] from `/proc` on Linux.

use std::io;
use std::path::Path;

use super::ProcessStats;

/// What `/proc/self/stat` gives (fields after the command name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// User time, clock ticks (field 14).
    pub(crate) utime: u64,
    /// System time, clock ticks (field 15).
    pub(crate) stime: u64,
    /// Threads (field 20).
    pub(crate) threads: u64,
    /// Start time, clock ticks after boot (field 22).
    pub(crate) starttime: u64,
    /// Virtual memory, bytes (field 23).
    pub(crate) vsize: u64,
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // Field 3 (the state) is the first after the name: field n is at index n - 3.
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
    })
}

/// The value in kB of the `key:` line of `/proc/<pid>/status`, in bytes.
pub(crate) fn status_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = rest.split_ascii_whitespace();
        let value = words.next()?.parse::<u64>().ok()?;
        match words.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// The boot time, seconds since the epoch, from the `btime` line of `/proc/stat`.
pub(crate) fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn read_file(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|error| io::Error::new(error.kind(), format!("cannot read {path}: {error}")))
}

fn malformed(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {path}: unexpected format"),
    )
}

/// Descriptors open now: the entries of `/proc/self/fd`, less the one the listing holds.
fn open_fds() -> io::Result<u64> {
    let path = Path::new("/proc/self/fd");
    let entries = std::fs::read_dir(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot list {}: {error}", path.display()),
        )
    })?;
    let count = entries.count() as u64;
    Ok(count.saturating_sub(1))
}

/// The soft limit of the `Max open files` line of `/proc/<pid>/limits` (the process's
/// `RLIMIT_NOFILE`): `Some(None)` when unlimited.
pub(crate) fn parse_max_open_files(text: &str) -> Option<Option<u64>> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(None);
    }
    soft.parse().ok().map(Some)
}

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel's `USER_HZ`, 100 on every
/// architecture tokio runs on (the Prometheus Go client's procfs assumes the same).
const USER_HZ: f64 = 100.0;

pub(super) fn read() -> io::Result<ProcessStats> {
    const STAT: &str = "/proc/self/stat";
    const STATUS: &str = "/proc/self/status";
    const SYSTEM: &str = "/proc/stat";
    const LIMITS: &str = "/proc/self/limits";
    let stat = parse_stat(&read_file(STAT)?).ok_or_else(|| malformed(STAT))?;
    let status = read_file(STATUS)?;
    let resident = status_bytes(&status, "VmRSS").ok_or_else(|| malformed(STATUS))?;
    let boot = parse_btime(&read_file(SYSTEM)?).ok_or_else(|| malformed(SYSTEM))?;
    let max_fds = parse_max_open_files(&read_file(LIMITS)?).ok_or_else(|| malformed(LIMITS))?;
    let hz = USER_HZ;
    Ok(ProcessStats {
        open_fds: open_fds()?,
        max_fds,
        resident_memory_bytes: resident,
        virtual_memory_bytes: stat.vsize,
        cpu_seconds: (stat.utime + stat.stime) as f64 / hz,
        start_time_seconds: boot as f64 + stat.starttime as f64 / hz,
        threads: stat.threads,
    })
}
