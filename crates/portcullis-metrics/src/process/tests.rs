use super::*;

#[cfg(target_os = "linux")]
mod linux {
    use super::super::linux::{parse_btime, parse_max_open_files, parse_stat, status_bytes};
    use super::*;
    use proptest::prelude::*;

    /// A real line of `/proc/<pid>/stat`, fields 3 to 52 after the name.
    const AFTER_NAME: &str = "S 1 1 0 0 -1 4194560 2051 4096 12 3 250 75 9 4 20 0 7 0 \
        1134440 31334400 3970 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 1 \
        0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        for name in ["hardened", "a b", "x) (y", ")", "((", "tokio-runtime-w"] {
            let text = format!("4242 ({name}) {AFTER_NAME}\n");
            let stat = parse_stat(&text).expect("parses");
            assert_eq!(stat.utime, 250, "{name}");
            assert_eq!(stat.stime, 75);
            assert_eq!(stat.threads, 7);
            assert_eq!(stat.starttime, 1_134_440);
            assert_eq!(stat.vsize, 31_334_400);
        }
        assert_eq!(parse_stat("4242 (no closing"), None);
        assert_eq!(parse_stat("4242 (short) S 1 2 3"), None);
    }

    proptest! {
        #[test]
        fn any_command_name_leaves_the_fields_intact(name in ".{0,16}", utime in any::<u32>()) {
            let text = format!("7 ({name}) S 1 1 0 0 -1 0 0 0 0 0 {utime} 5 0 0 20 0 3 0 99 4096 1 0\n");
            let stat = parse_stat(&text).expect("parses");
            prop_assert_eq!(stat.utime, u64::from(utime));
            prop_assert_eq!((stat.stime, stat.threads, stat.starttime, stat.vsize), (5, 3, 99, 4096));
        }

        #[test]
        fn parsers_never_panic(text in ".{0,200}") {
            let _ = parse_stat(&text);
            let _ = status_bytes(&text, "VmRSS");
            let _ = parse_btime(&text);
            let _ = parse_max_open_files(&text);
        }
    }

    #[test]
    fn status_limits_and_boot_time_lines() {
        let status = "Name:\thardened\nVmSize:\t  30600 kB\nVmRSS:\t    3880 kB\nThreads:\t7\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(3880 * 1024));
        assert_eq!(status_bytes(status, "VmSize"), Some(30600 * 1024));
        assert_eq!(status_bytes(status, "Threads"), Some(7));
        assert_eq!(status_bytes(status, "VmSwap"), None);
        assert_eq!(status_bytes("VmRSS:\t12 MB\n", "VmRSS"), None);

        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
            Max processes             96363                96363                processes\n\
            Max open files            4096                 20000                files\n";
        assert_eq!(parse_max_open_files(limits), Some(Some(4096)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), Some(None));
        assert_eq!(parse_max_open_files("Max processes 1 1 processes\n"), None);

        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1764700000\nprocesses 9\n"),
            Some(1_764_700_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn a_live_reading_sees_descriptors_opened_and_closed() {
        let before = ProcessStats::read().expect("read /proc");
        let files: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/stat").expect("open"))
            .collect();
        let during = ProcessStats::read().expect("read /proc");
        drop(files);
        // Other tests of this binary run on other threads and may hold a few of their own.
        let opened = during.open_fds as i64 - before.open_fds as i64;
        assert!(
            (45..=60).contains(&opened),
            "50 files opened, {opened} seen"
        );
        assert!(during.max_fds.is_some_and(|max| max >= during.open_fds));
        assert!(during.resident_memory_bytes > 1024 * 1024);
        assert!(during.virtual_memory_bytes >= during.resident_memory_bytes);
        assert!(during.threads >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            during.start_time_seconds <= now + 1.0 && during.start_time_seconds > now - 3600.0,
            "started at {}, now {now}",
            during.start_time_seconds
        );
        assert!(during.cpu_seconds >= 0.0 && during.cpu_seconds < 3600.0);
    }
}

#[test]
fn utilization_and_the_exposition() {
    let stats = ProcessStats {
        open_fds: 64,
        max_fds: Some(256),
        resident_memory_bytes: 4096,
        virtual_memory_bytes: 8192,
        cpu_seconds: 1.25,
        start_time_seconds: 1_764_700_000.5,
        threads: 3,
    };
    assert_eq!(stats.fds_utilization(), Some(0.25));
    assert_eq!(
        ProcessStats {
            max_fds: None,
            ..stats
        }
        .fds_utilization(),
        None
    );
    let mut out = String::new();
    stats.render(&mut out);
    assert!(
        out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n")
    );
    assert!(out.contains("# TYPE process_max_fds gauge\nprocess_max_fds 256\n"));
    assert!(out.contains("portcullis_process_fds_utilization 0.25\n"));
    assert!(out.contains("process_start_time_seconds 1764700000.5\n"));
    for line in out.lines().filter(|line| !line.starts_with('#')) {
        let (name, value) = line.split_once(' ').expect("name value");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        value.parse::<f64>().expect("a number");
    }
}
