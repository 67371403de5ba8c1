//! `ListenerConfig` from TOML.

use std::num::NonZeroUsize;
use std::time::Duration;

use portcullis_listen::{Keepalive, ListenerConfig};

fn parse(s: &str) -> Result<ListenerConfig, toml::de::Error> {
    toml::from_str(s)
}

#[test]
fn empty_is_the_default() -> Result<(), toml::de::Error> {
    assert_eq!(parse("")?, ListenerConfig::default());
    Ok(())
}

#[test]
fn keys_are_kebab_case_and_durations_strings() -> Result<(), toml::de::Error> {
    let config = parse(
        r#"
        backlog = 2048
        defer-accept = "5s"
        reuse-address = false
        reuse-port = true
        only-v6 = false
        recv-buffer-size = 262144
        send-buffer-size = 131072
        tcp-fastopen = 256
        nodelay = false
        user-timeout = "30s"
        acceptors = 4
        keepalive = { idle = "2m", interval = "15s", retries = 4 }
        "#,
    )?;
    let want = ListenerConfig::new()
        .backlog(2048)
        .defer_accept(Duration::from_secs(5))
        .reuse_address(false)
        .reuse_port(true)
        .only_v6(false)
        .recv_buffer_size(262_144)
        .send_buffer_size(131_072)
        .tcp_fastopen(256)
        .nodelay(false)
        .user_timeout(Some(Duration::from_secs(30)))
        .acceptors(NonZeroUsize::new(4).expect("nonzero"))
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(120),
            Duration::from_secs(15),
            4,
        )));
    assert_eq!(config, want);
    assert_ne!(config, ListenerConfig::default());
    Ok(())
}

#[test]
fn only_given_keys_change() -> Result<(), toml::de::Error> {
    assert_eq!(
        parse("backlog = 2048\ndefer-accept = \"5s\"")?,
        ListenerConfig::new()
            .backlog(2048)
            .defer_accept(Duration::from_secs(5))
    );
    Ok(())
}

#[test]
fn keepalive_forms() -> Result<(), toml::de::Error> {
    assert_eq!(
        parse("keepalive = false")?,
        ListenerConfig::new().keepalive(None)
    );
    assert_eq!(
        parse("keepalive = true")?,
        ListenerConfig::new().keepalive(Some(Keepalive::default()))
    );
    // A partial table keeps the other defaults.
    assert_eq!(
        parse("keepalive = { retries = 2 }")?,
        ListenerConfig::new().keepalive(Some(Keepalive {
            retries: 2,
            ..Keepalive::default()
        }))
    );
    assert_eq!(
        parse("[keepalive]\nidle = \"30s\"")?,
        ListenerConfig::new().keepalive(Some(Keepalive {
            idle: Duration::from_secs(30),
            ..Keepalive::default()
        }))
    );
    Ok(())
}

#[test]
fn zero_durations_turn_options_off() -> Result<(), toml::de::Error> {
    assert_eq!(
        parse("defer-accept = \"0s\"\nuser-timeout = \"0\"")?,
        ListenerConfig::default()
    );
    Ok(())
}

#[test]
fn unknown_keys_are_rejected() {
    let err = parse("bakclog = 2048").expect_err("typo");
    assert!(err.to_string().contains("unknown field"), "{err}");
    let err = parse("keepalive = { idel = \"1s\" }").expect_err("typo in table");
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_a_reason() {
    let err = parse("defer-accept = \"5\"").expect_err("no unit");
    assert!(err.to_string().contains("invalid duration"), "{err}");
    let err = parse("user-timeout = 5").expect_err("not a string");
    assert!(err.to_string().contains("duration"), "{err}");
    let err = parse("keepalive = { idle = \"1x\" }").expect_err("bad unit");
    assert!(err.to_string().contains("invalid duration"), "{err}");
    let err = parse("keepalive = 3").expect_err("not a table");
    assert!(err.to_string().contains("keepalive"), "{err}");
    parse("acceptors = 0").expect_err("zero acceptors");
    parse("backlog = -1").expect_err("negative backlog");
}
