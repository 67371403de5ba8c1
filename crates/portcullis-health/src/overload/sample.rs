//! Reading the monitors' inputs from `/proc` and the cgroup filesystem, without a syscall on
//! any request's path: the manager calls these on its own tick.

use std::io;

/// Descriptors open now: the entries of `/proc/self/fd` less the listing's own. `Err` with
/// the OS error when the listing cannot be opened: at `EMFILE` that is itself the answer
/// (every descriptor is in use), which the caller reads from [`is_exhausted`].
pub(crate) fn open_fds() -> io::Result<u64> {
    let entries = std::fs::read_dir("/proc/self/fd")?;
    Ok((entries.count() as u64).saturating_sub(1))
}

/// Whether `error` says the process (`EMFILE`) or the system (`ENFILE`) ran out of
/// descriptors.
pub(crate) fn is_exhausted(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// The soft `RLIMIT_NOFILE` from `/proc/self/limits`; `None` when unlimited or unreadable.
pub(crate) fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_fd_limit(&text)
}

/// The soft limit of the `Max open files` line of a `/proc/<pid>/limits`.
pub(crate) fn parse_fd_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|&limit| limit > 0)
}

/// Resident memory in bytes, from the `VmRSS` line of `/proc/self/status`.
pub(crate) fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss(&text)
}

/// The `VmRSS:` value (kB) of a `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_rss(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = rest.split_ascii_whitespace();
    let kb: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kb.saturating_mul(1024))
}

/// The tightest `memory.max` of the process's cgroup (v2) and its ancestors; `None` outside
/// a cgroup with a limit.
pub(crate) fn cgroup_memory_max() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut path = std::path::PathBuf::from("/sys/fs/cgroup");
    path.push(parse_cgroup_path(&text)?.trim_start_matches('/'));
    let mut tightest: Option<u64> = None;
    loop {
        if let Ok(max) = std::fs::read_to_string(path.join("memory.max"))
            && let Some(max) = parse_memory_max(&max)
        {
            tightest = Some(tightest.map_or(max, |t| t.min(max)));
        }
        if path == std::path::Path::new("/sys/fs/cgroup") || !path.pop() {
            return tightest;
        }
    }
}

/// The path of the unified (v2) hierarchy's line, `0::PATH`, of a `/proc/<pid>/cgroup`.
pub(crate) fn parse_cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// A `memory.max` file's value: bytes, or `None` for `max` (no limit).
pub(crate) fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&max| max > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_proc_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            256                  4096                 files\n";
        assert_eq!(parse_fd_limit(limits), Some(256));
        assert_eq!(
            parse_fd_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t   12345 kB\n"),
            Some(12345 * 1024)
        );
        assert_eq!(parse_rss("VmRSS:\t12\n"), None);
        assert_eq!(
            parse_cgroup_path("0::/system.slice/app.service\n"),
            Some("/system.slice/app.service")
        );
        assert_eq!(parse_cgroup_path("12:memory:/x\n"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
    }

    #[test]
    fn reads_this_process() {
        let open = open_fds().expect("/proc/self/fd");
        assert!(open >= 3, "stdin, stdout, stderr at least: {open}");
        assert!(resident_bytes().expect("VmRSS") > 0);
        assert!(fd_limit().is_none_or(|limit| limit >= open));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let _ = parse_fd_limit(&text);
            let _ = parse_rss(&text);
            let _ = parse_cgroup_path(&text);
            let _ = parse_memory_max(&text);
        }
    }
}
