//! A real `redis-server` on a loopback port for the fleet-limit tests (Debian's package; the
//! test command installs it): started, killed with SIGKILL and restarted on the same port,
//! stopped and continued, driven with `redis-cli`. Shared by the hardened tests and the
//! library tests (`tests/tests/fleet.rs` includes this file).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (a cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free loopback port, without persistence, and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    fn start_with(extra: Vec<String>) -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            child: None,
            extra,
        };
        server.spawn();
        server
    }

    /// Three primaries of a fresh Redis Cluster (no replicas), every slot assigned, once
    /// `CLUSTER INFO` says `cluster_state:ok` (polled, at most 30 s).
    pub fn cluster() -> Vec<Self> {
        let dir = std::env::temp_dir().join(format!("portcullis-cluster-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("a directory for the nodes' files");
        let nodes: Vec<Self> = (0..3)
            .map(|i| {
                let conf = dir.join(format!("nodes-{i}.conf"));
                Self::start_with(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.display().to_string(),
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {output:?}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cluster not ok within 30 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        nodes
    }

    fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().display().to_string(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "spawn redis-server (Debian package redis-server; scripts/test.sh installs it)",
            );
        let stdout = child.stdout.take().expect("stdout");
        let (ready, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !announced && line.contains("Ready to accept connections") {
                    announced = true;
                    let _ = ready.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("redis-server printed `Ready to accept connections` within 20 s");
        self.child = Some(child);
    }

    /// The URL to give `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `SIGSTOP`: the process holds its sockets and answers nothing.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// `redis-cli -p PORT ARGS...`: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The one key holding `client`'s state (`PREFIX:LIMITER:QUOTA:{ip:CLIENT}`), found with
    /// `KEYS`; panics unless there is exactly one.
    pub fn key_of(&self, client: &str) -> String {
        let keys = self.cli(&["KEYS", &format!("*{{ip:{client}}}")]);
        let keys: Vec<&str> = keys.lines().filter(|line| !line.is_empty()).collect();
        assert_eq!(keys.len(), 1, "keys of {client}: {keys:?}");
        keys[0].to_owned()
    }

    /// How many times Redis ran `command` (from `INFO commandstats`, lowercase: `evalsha`).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL promptly (it does anyway,
        // but leave nothing behind).
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}
