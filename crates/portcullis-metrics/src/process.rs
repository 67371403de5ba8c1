//! Process metrics under the Prometheus client libraries' standard names, read from `/proc`
//! when `/metrics` is scraped (Linux; elsewhere the section is empty).
//!
//! Gathering at scrape time costs nothing between scrapes and is never stale: the values are
//! those of the moment Prometheus asked. One scrape reads `/proc/self/stat`,
//! `/proc/self/status`, `/proc/stat` and the entries of `/proc/self/fd`, and calls
//! `getrlimit` once: tens of microseconds for a process with thousands of descriptors.

use std::fmt::Write as _;
use std::io;

/// Descriptors open now (gauge).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The soft descriptor limit, `RLIMIT_NOFILE` (gauge; absent when unlimited).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// [`PROCESS_OPEN_FDS`] over [`PROCESS_MAX_FDS`], 0 to 1 (gauge): the one to alert on, since
/// a process at its limit accepts nobody new.
pub const PROCESS_FDS_UTILIZATION: &str = "portcullis_process_fds_utilization";
/// Resident memory, bytes (gauge).
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Virtual memory, bytes (gauge).
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// User and system CPU time, seconds (counter).
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// When the process started, seconds since the Unix epoch (gauge).
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// Threads of the process (gauge).
pub const PROCESS_THREADS: &str = "process_threads";

/// One reading of the process's resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ProcessStats {
    /// Descriptors open now.
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Resident memory, bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_memory_bytes: u64,
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Threads.
    pub threads: u64,
}

impl ProcessStats {
    /// Reads the current process's resources.
    ///
    /// # Errors
    ///
    /// A file of `/proc` that cannot be read or parsed (its path in the message), and on
    /// systems other than Linux always ([`io::ErrorKind::Unsupported`]).
    pub fn read() -> io::Result<Self> {
        read()
    }

    /// Open descriptors over the limit, 0 to 1; `None` when the limit is unlimited or zero.
    #[must_use]
    pub fn fds_utilization(&self) -> Option<f64> {
        self.max_fds
            .filter(|max| *max > 0)
            .map(|max| self.open_fds as f64 / max as f64)
    }

    /// Appends the Prometheus text exposition of these values to `out`.
    pub fn render(&self, out: &mut String) {
        gauge(
            out,
            PROCESS_OPEN_FDS,
            "Open file descriptors.",
            self.open_fds as f64,
        );
        if let Some(max) = self.max_fds {
            gauge(
                out,
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors (soft RLIMIT_NOFILE).",
                max as f64,
            );
        }
        if let Some(utilization) = self.fds_utilization() {
            gauge(
                out,
                PROCESS_FDS_UTILIZATION,
                "Open file descriptors over their limit, 0 to 1.",
                utilization,
            );
        }
        gauge(
            out,
            PROCESS_RESIDENT_MEMORY,
            "Resident memory size in bytes.",
            self.resident_memory_bytes as f64,
        );
        gauge(
            out,
            PROCESS_VIRTUAL_MEMORY,
            "Virtual memory size in bytes.",
            self.virtual_memory_bytes as f64,
        );
        sample(
            out,
            PROCESS_CPU_SECONDS,
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        gauge(
            out,
            PROCESS_START_TIME,
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds,
        );
        gauge(
            out,
            PROCESS_THREADS,
            "Number of OS threads in the process.",
            self.threads as f64,
        );
    }
}

/// Appends one unlabelled sample with its `HELP` and `TYPE` lines.
pub(crate) fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    sample(out, name, "gauge", help, value);
}

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux::read;

#[cfg(not(target_os = "linux"))]
fn read() -> io::Result<ProcessStats> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "process metrics are read from /proc, on Linux only",
    ))
}

#[cfg(test)]
mod tests;
