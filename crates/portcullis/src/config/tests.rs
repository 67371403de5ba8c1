use std::time::Duration;

use portcullis_server::HttpConfig;

use super::*;

#[test]
fn defaults_are_the_blocks_defaults() {
    let config = ServerConfig::default();
    assert_eq!(config.http_config(), HttpConfig::default());
    assert_eq!(config.drain_delay, portcullis_shutdown::DEFAULT_DRAIN_DELAY);
    assert_eq!(
        config.drain_timeout,
        portcullis_shutdown::DEFAULT_DRAIN_TIMEOUT
    );
    assert_eq!(
        config.handshake_timeout,
        portcullis_tls::DEFAULT_HANDSHAKE_TIMEOUT
    );
    let limits = config.conn_limits();
    assert_eq!(
        limits.max_total(),
        portcullis_limit::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(limits.max_per_client(), None);
    assert!(config.rate_limit().is_none());
    // An empty file is the defaults.
    assert_eq!(ServerConfig::from_toml_str("").expect("parses"), config);
}

#[test]
fn every_key_parses() {
    let config = ServerConfig::from_toml_str(
        r#"
        listen = ["0.0.0.0:8443", "[::]:8443"]
        admin = "127.0.0.1:9090"
        header-timeout = "5s"
        idle-timeout = "30s"
        drain-delay = "5s"
        drain-timeout = "20s"
        tls-cert = "cert.pem"
        tls-key = "key.pem"
        handshake-timeout = "250ms"
        min-body-rate = 100
        min-response-rate = 0
        min-rate-grace = "10s"
        rate = "600/m"
        burst = 20
        max-conns = 5000
        max-conns-per-ip = 100
        trusted-proxy = ["10.0.0.0/8", "192.0.2.1"]
        proxy-protocol = true
        acceptors = 2
        per-core = true
        allow = ["10.0.0.0/8"]
        deny = ["10.6.0.0/16"]
        ban-after = 10
        ban-window = "30s"
        ban-for = "2m"
        ban-max = "2h"
        ban-exempt = ["10.9.0.0/16"]
        redis = "redis://127.0.0.1:6379/"
        fleet-size = 4
        redis-timeout = "10ms"
        ready-requires = ["tcp://127.0.0.1:5432", "http://127.0.0.1:8081/healthz"]
        "#,
    )
    .expect("parses");
    assert_eq!(config.redis.as_deref(), Some("redis://127.0.0.1:6379/"));
    assert_eq!(config.fleet_size.map(NonZeroU32::get), Some(4));
    assert_eq!(config.redis_timeout, Duration::from_millis(10));
    assert_eq!(config.ready_requires.len(), 2);
    assert_eq!(config.ban_for, Duration::from_secs(120));
    assert_eq!(config.ban_after.map(NonZeroU32::get), Some(10));
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.admin, Some(SocketAddr::from(([127, 0, 0, 1], 9090))));
    assert_eq!(config.header_timeout, Duration::from_secs(5));
    assert_eq!(config.handshake_timeout, Duration::from_millis(250));
    assert_eq!(
        config.quota().map(|q| q.to_string()).as_deref(),
        Some("600/m burst 20")
    );
    assert_eq!(config.max_conns.get(), 5000);
    assert_eq!(config.trusted_proxy[1].to_string(), "192.0.2.1/32");
    assert_eq!(config.acceptors.map(NonZeroUsize::get), Some(2));
    assert!(config.proxy_protocol && config.per_core);
    // Every key of the list is one the struct reads: a file setting all of them parses.
    assert_eq!(
        (
            config.min_body_rate,
            config.min_response_rate,
            config.min_rate_grace
        ),
        (100, 0, Duration::from_secs(10))
    );
    let http = config.http_config();
    assert_eq!(
        http,
        portcullis_server::HttpConfig::default()
            .header_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(30))
            .min_body_rate(portcullis_server::MinRate::new(
                100,
                Duration::from_secs(10)
            ))
            .min_response_rate(portcullis_server::MinRate::OFF)
    );
    assert_eq!(ServerConfig::KEYS.len(), 35);
}

fn error(text: &str) -> ConfigError {
    ServerConfig::from_toml_str(text).expect_err("rejected")
}

#[test]
fn errors_name_the_line_and_the_key() {
    let e = error("listen = [\"127.0.0.1:0\"]\nheader-timeout = \"soon\"\n");
    assert_eq!(
        (e.line(), e.key()),
        (Some(2), Some("header-timeout")),
        "{e}"
    );
    assert!(e.to_string().contains("\"soon\""), "{e}");

    let e = error("max-conns = 0\n");
    assert_eq!(e.key(), Some("max-conns"), "{e}");
    assert!(e.message().contains("at least 1"), "{e}");

    let e = error("idle-timeout = 5\n");
    assert_eq!((e.line(), e.key()), (Some(1), Some("idle-timeout")), "{e}");

    let e = error("listen = [\n  \"127.0.0.1:0\",\n  \"nowhere\",\n]\n");
    assert_eq!((e.line(), e.key()), (Some(3), Some("listen")), "{e}");

    let e = error("rate = \"100\"\n");
    assert!(e.message().contains("the rate has no unit"), "{e}");

    let e = error("trusted-proxy = [\"10.0.0.0/33\"]\n");
    assert!(e.message().contains("10.0.0.0/33"), "{e}");
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let e = error("\nmax-con = 10\n");
    assert_eq!((e.line(), e.key()), (Some(2), Some("max-con")), "{e}");
    assert!(e.message().contains("did you mean `max-conns`"), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid config, line 2, key `max-con`: unknown key; did you mean `max-conns`?"
    );
    let e = error("colour = \"blue\"\n");
    assert!(
        e.message().contains("header-timeout"),
        "lists the keys: {e}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = ServerConfig::from_file("/nonexistent/server.toml").expect_err("missing");
    assert_eq!(e.path(), Some(Path::new("/nonexistent/server.toml")));
    assert!(
        e.to_string()
            .starts_with("cannot read config file /nonexistent/server.toml: "),
        "{e}"
    );
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn zero_turns_a_timeout_off() {
    let config = ServerConfig::from_toml_str("header-timeout = \"0s\"\nidle-timeout = \"0\"\n")
        .expect("parses");
    let http = config.http_config();
    assert_eq!(
        http,
        HttpConfig::default()
            .header_timeout(Duration::MAX)
            .idle_timeout(Duration::MAX)
    );
    let warnings = config.check().warnings;
    let settings: Vec<_> = warnings.iter().map(Issue::setting).collect();
    assert!(
        settings.contains(&"header-timeout") && settings.contains(&"idle-timeout"),
        "{warnings:?}"
    );
}

#[test]
fn settings_that_need_each_other_are_errors() {
    let config = ServerConfig {
        burst: NonZeroU32::new(5),
        proxy_protocol: true,
        tls_cert: Some("cert.pem".into()),
        ..ServerConfig::default()
    };
    let errors = config.check().errors;
    let text: Vec<String> = errors.iter().map(Issue::to_flag_string).collect();
    assert_eq!(
        text,
        [
            "'--burst' needs '--rate'",
            "'--proxy-protocol' needs at least one '--trusted-proxy' (the peers whose PROXY header is believed)",
            "'--tls-cert' needs '--tls-key'",
        ]
    );
    assert_eq!(errors[2].to_string(), "`tls-cert` needs `tls-key`");
    assert!(matches!(
        config.apply(portcullis_server::Server::builder()),
        Err(ApplyError::Invalid(issue)) if issue.setting() == "burst"
    ));
}

#[test]
fn dangerous_combinations_are_warned() {
    let mut config = ServerConfig {
        trusted_proxy: vec!["0.0.0.0/0".parse().expect("net")],
        drain_delay: Duration::from_secs(10),
        admin: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
        ..ServerConfig::default()
    };
    let report = config.check();
    assert!(report.is_ok(), "{:?}", report.errors);
    let settings: Vec<_> = report.warnings.iter().map(Issue::setting).collect();
    for setting in ["trusted-proxy", "drain-delay", "admin"] {
        assert!(settings.contains(&setting), "{setting}: {settings:?}");
    }
    let drain = &report.warnings[settings
        .iter()
        .position(|s| *s == "drain-delay")
        .expect("drain")];
    assert!(
        drain
            .to_string()
            .starts_with("`drain-delay` + `drain-timeout` is 40s"),
        "{drain}"
    );

    config.admin = Some("[::1]:9090".parse().expect("addr"));
    config.trusted_proxy = vec!["10.0.0.0/8".parse().expect("net")];
    config.drain_delay = Duration::ZERO;
    let settings: Vec<_> = config.check().warnings.iter().map(Issue::setting).collect();
    assert!(
        !settings
            .iter()
            .any(|s| ["trusted-proxy", "drain-delay", "admin"].contains(s))
    );
}

#[test]
fn the_edge_keys_parse_and_build_the_filter_and_the_bans() {
    let config = ServerConfig::from_toml_str(
        r#"
        allow = ["10.0.0.0/8", "127.0.0.1"]
        deny = ["10.6.6.0/24"]
        ban-after = 5
        ban-window = "30s"
        ban-for = "2m"
        ban-max = "2h"
        ban-exempt = ["10.9.0.0/16"]
        trusted-proxy = ["10.1.0.0/16"]
        "#,
    )
    .expect("parses");
    let filter = config.ip_filter().expect("a filter");
    assert!(filter.check("10.1.2.3".parse().expect("ip")).is_ok());
    assert!(filter.check("10.6.6.6".parse().expect("ip")).is_err());
    assert!(filter.check("192.0.2.1".parse().expect("ip")).is_err());
    let bans = config.bans().expect("bans");
    assert_eq!(bans.policy().after(), 5);
    assert!(bans.is_exempt("10.9.1.1".parse().expect("ip")));
    assert!(
        bans.is_exempt("10.1.1.1".parse().expect("ip")),
        "trusted proxies"
    );
    assert!(!bans.is_exempt("10.2.1.1".parse().expect("ip")));
    assert!(
        config.check().warnings.is_empty(),
        "{:?}",
        config.check().warnings
    );
    // Without them: neither.
    let config = ServerConfig::default();
    assert!(config.ip_filter().is_none() && config.bans().is_none());
}

#[test]
fn ban_settings_that_do_nothing_or_ban_too_eagerly_are_warned() {
    let warned = |config: &ServerConfig| -> Vec<String> {
        config
            .check()
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let mut config = ServerConfig {
        ban_for: Duration::from_secs(600),
        ban_exempt: vec!["10.0.0.0/8".parse().expect("net")],
        ..ServerConfig::default()
    };
    let warnings = warned(&config);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("`ban-for` does nothing without `ban-after`"),
        "{warnings:?}"
    );
    config.ban_after = NonZeroU32::new(1);
    config.ban_max = Duration::from_secs(60);
    let warnings = warned(&config);
    assert!(
        warnings.iter().any(|w| w.starts_with("`ban-after` is 1")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("`ban-max` (60s) is below `ban-for` (600s)")),
        "{warnings:?}"
    );
    config.ban_after = NonZeroU32::new(20);
    config.ban_max = Duration::from_secs(3600);
    assert!(warned(&config).is_empty());
    config.allow = vec!["10.0.0.0/8".parse().expect("net")];
    assert!(warned(&config)[0].starts_with("`allow` has no loopback range"));
}
