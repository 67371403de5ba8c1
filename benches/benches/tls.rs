//! portcullis-tls's acceptor against bare tokio-rustls (docs/performance.md records the figures
//! and their ratios). A plain `harness = false` binary with its own timing: a handshake has
//! two sides, and the memory figure needs the client in another process.
//!
//! The baseline is `tokio_rustls::TlsAcceptor::from(portcullis.server_config())`: the very same
//! `rustls::ServerConfig` (certificate, crypto provider, protocol versions, ALPN, session
//! cache, ticketer), so the only difference measured is portcullis's accept path (the deadline,
//! the ClientHello read through `LazyConfigAcceptor`, the server name lookup, the metrics).
//! The Prometheus exporter is installed, as in a server, so portcullis's counters really count.
//! Certificate: ECDSA P-256 from rcgen, signed by a test CA the clients trust.
//!
//! - `handshakes`: handshakes per second, portcullis vs bare, full and resumed. One current-thread
//!   runtime runs the client (tokio-rustls) and the server side by side in one task, one
//!   connection at a time over 127.0.0.1: TCP connect and accept, the handshake, the server
//!   writes one byte and the client reads it (so the handshake is over on both sides and the
//!   session tickets have arrived), then both sides close, the server first. Four contestants
//!   take turns in blocks of 20 handshakes, the order rotating, so that all four share the
//!   same moments of a noisy machine: portcullis and bare with a client that resumes nothing
//!   (`Resumption::disabled()`: full handshakes), and portcullis and bare each with its own client
//!   configuration that keeps its sessions (rustls' in-memory client cache) and is reused
//!   across connections; every measured handshake is checked to be of the expected
//!   `HandshakeKind`. Reported per contestant: handshakes per second of wall time and per
//!   second of the thread's CPU time (both sides' work together, the kernel's loopback work
//!   included), and the server side's own time per handshake (time spent polling the server's
//!   future: portcullis's accept path, rustls, the crypto and the server's socket calls). Ratios:
//!   portcullis/bare for full and for resumed handshakes, and full/resumed time per handshake.
//! - `memory`: heap bytes per idle TLS connection on the server side, portcullis vs bare, with plain
//!   TCP (tokio `TcpStream`, no TLS) as a third variant to separate what TLS adds; the method
//!   is described on `memory` below.
//!
//! Every figure is a median over rounds; ratios are medians of the per-round ratios. Every
//! loop is bounded in count and in time.
//!
//! `cargo bench -p portcullis-benches --bench tls` (`-- handshakes` or `-- memory` for one part).
//! Environment: `PORTCULLIS_TLS_BENCH_ROUNDS` (default 5), `PORTCULLIS_TLS_BENCH_HANDSHAKES` (handshakes
//! per round and contestant, default 1000), `PORTCULLIS_TLS_BENCH_CONNS` (idle connections per
//! memory round, default 2000; each round needs that many file descriptors in this process
//! and as many in the client process).

#![allow(missing_docs)]
// The only unsafe code: the counting allocator (it forwards to the system allocator) and
// reading the thread's CPU clock.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::error::Error;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use portcullis_metrics::PrometheusExporter;
use portcullis_tls::rustls::client::Resumption;
use portcullis_tls::rustls::crypto::CryptoProvider;
use portcullis_tls::rustls::pki_types::ServerName;
use portcullis_tls::rustls::{ClientConfig, HandshakeKind, RootCertStore};
use portcullis_tls::tokio_rustls::{TlsConnector, server::TlsStream};
use portcullis_tls::{TlsConfig, rustls, tokio_rustls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// Bytes allocated and not yet freed, by anyone in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is only
// arithmetic on the sizes the caller passes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Set in the memory benchmark's client process: `tls|tcp ADDR COUNT`.
const CHILD_ENV: &str = "PORTCULLIS_TLS_BENCH_CLIENT";
/// The test CA's certificate, PEM, for the client process.
const CA_ENV: &str = "PORTCULLIS_TLS_BENCH_CA";
const SERVER_NAME: &str = "localhost";
/// Bound on one connection's connect, handshake and first byte.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on opening all the idle connections of one memory round.
const MEMORY_TIME_CAP: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(value) => Ok(value
            .parse()
            .map_err(|e| format!("{name}={value:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return client_process(&spec);
    }
    // `cargo bench` passes `--bench`; other arguments choose parts.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let rounds = env_usize("PORTCULLIS_TLS_BENCH_ROUNDS", 5)?.max(1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _exporter = PrometheusExporter::install().map_err(|e| format!("exporter: {e}"))?;
    portcullis_tls::metrics::describe();

    let pki = Pki::new()?;
    let portcullis =
        TlsConfig::from_pem(pki.leaf_cert_pem.as_bytes(), pki.leaf_key_pem.as_bytes())?.build()?;
    // The baseline: tokio-rustls on portcullis's own ServerConfig.
    let bare = tokio_rustls::TlsAcceptor::from(portcullis.server_config());
    let servers = [Server::Portcullis(portcullis.clone()), Server::Bare(bare)];
    let provider = Arc::clone(portcullis.provider());

    if wanted("handshakes") {
        let count = env_usize("PORTCULLIS_TLS_BENCH_HANDSHAKES", 1000)?.max(1);
        let contestants = [
            Contestant::new(
                "portcullis full",
                &servers[0],
                &provider,
                &pki,
                HandshakeKind::Full,
            )?,
            Contestant::new(
                "bare full",
                &servers[1],
                &provider,
                &pki,
                HandshakeKind::Full,
            )?,
            Contestant::new(
                "portcullis resumed",
                &servers[0],
                &provider,
                &pki,
                HandshakeKind::Resumed,
            )?,
            Contestant::new(
                "bare resumed",
                &servers[1],
                &provider,
                &pki,
                HandshakeKind::Resumed,
            )?,
        ];
        runtime.block_on(handshakes(&contestants, rounds, count))?;
    }
    if wanted("memory") {
        let conns = env_usize("PORTCULLIS_TLS_BENCH_CONNS", 2000)?.max(1);
        memory(&runtime, &servers, &pki, rounds, conns)?;
    }
    Ok(())
}

/// A test CA and an ECDSA P-256 server certificate for `localhost` signed by it.
struct Pki {
    ca_pem: String,
    leaf_cert_pem: String,
    leaf_key_pem: String,
}

impl Pki {
    fn new() -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "portcullis-tls bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate()?; // ECDSA P-256 with SHA-256, rcgen's default
        let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "portcullis-tls bench");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            leaf_cert_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        })
    }
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    Ok(roots)
}

/// A client trusting the test CA, offering the server's ALPN protocols, keeping sessions for
/// resumption or not.
fn client_config(provider: &Arc<CryptoProvider>, pki: &Pki, resume: bool) -> Result<TlsConnector> {
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(portcullis_tls::PROTOCOL_VERSIONS)?
        .with_root_certificates(roots(&pki.ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = portcullis_tls::DEFAULT_ALPN
        .iter()
        .map(|p| p.to_vec())
        .collect();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The two acceptors under comparison, dispatched the same way.
enum Server {
    Portcullis(portcullis_tls::TlsAcceptor),
    Bare(tokio_rustls::TlsAcceptor),
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Portcullis(_) => "portcullis",
            Server::Bare(_) => "bare",
        }
    }

    async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        match self {
            Server::Portcullis(acceptor) => acceptor.accept(tcp).await.map_err(io::Error::other),
            Server::Bare(acceptor) => acceptor.accept(tcp).await,
        }
    }
}

/// Adds the time spent in each poll of the inner future to `spent`.
struct Timed<'a, F> {
    inner: F,
    spent: &'a Cell<Duration>,
}

impl<F: Future + Unpin> Future for Timed<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = Instant::now();
        let result = Pin::new(&mut self.inner).poll(cx);
        self.spent.set(self.spent.get() + start.elapsed());
        result
    }
}

/// The CPU time this thread has used so far (`CLOCK_THREAD_CPUTIME_ID`: user and kernel
/// time, the kernel's loopback work done in this thread's system calls included); `None`
/// where the clock is not available. Time the thread spends preempted by other processes is
/// not in it, so it stays steadier than wall time on a busy machine.
fn thread_cpu() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// One side of a comparison: an acceptor and its own client configuration.
struct Contestant<'a> {
    label: &'static str,
    server: &'a Server,
    client: TlsConnector,
    kind: HandshakeKind,
}

impl<'a> Contestant<'a> {
    fn new(
        label: &'static str,
        server: &'a Server,
        provider: &Arc<CryptoProvider>,
        pki: &Pki,
        kind: HandshakeKind,
    ) -> Result<Self> {
        let resume = kind == HandshakeKind::Resumed;
        Ok(Self {
            label,
            server,
            client: client_config(provider, pki, resume)?,
            kind,
        })
    }
}

/// What one contestant did in one round.
#[derive(Clone, Copy, Default)]
struct Tally {
    handshakes: usize,
    wall: Duration,
    cpu: Duration,
    server: Duration,
}

impl Tally {
    fn per_second(&self, time: Duration) -> f64 {
        self.handshakes as f64 / time.as_secs_f64()
    }

    fn micros_each(&self, time: Duration) -> f64 {
        time.as_secs_f64() * 1e6 / self.handshakes as f64
    }
}

/// Handshakes per block: a block lasts a few milliseconds, so the contestants, taking turns
/// block by block, share whatever the rest of the machine is doing.
const BLOCK: usize = 20;
/// Bound on one round of all four contestants (it stops early, counting what completed).
const ROUND_TIME_CAP: Duration = Duration::from_secs(60);

/// Runs `n` sequential handshakes of `contestant`, adding to `tally`; with `check`, fails
/// unless every one is of the contestant's kind (full or resumed). `negotiated` gets the
/// parameters of the last handshake (not for measured blocks: formatting them takes time).
async fn block(
    listener: &TcpListener,
    contestant: &Contestant<'_>,
    n: usize,
    tally: &mut Tally,
    mut negotiated: Option<&mut Option<String>>,
    check: bool,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let name = ServerName::try_from(SERVER_NAME)?;
    let server_time = Cell::new(Duration::ZERO);
    let cpu_start = thread_cpu();
    let start = Instant::now();
    for _ in 0..n {
        let (client_tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client_tcp, (server_tcp, _)) = (client_tcp?, accepted?);
        client_tcp.set_nodelay(true)?;
        server_tcp.set_nodelay(true)?;
        let server_side = pin!(async {
            let mut stream = contestant.server.accept(server_tcp).await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            io::Result::Ok(stream)
        });
        let client_side = async {
            let mut stream = contestant.client.connect(name.clone(), client_tcp).await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            io::Result::Ok(stream)
        };
        let timed = Timed {
            inner: server_side,
            spent: &server_time,
        };
        let (server_stream, client_stream) =
            tokio::time::timeout(STEP_TIMEOUT, async { tokio::join!(timed, client_side) })
                .await
                .map_err(|_| "a handshake took longer than 10 s")?;
        let (server_stream, client_stream) = (server_stream?, client_stream?);
        let connection = client_stream.get_ref().1;
        let kind = connection.handshake_kind();
        if check && kind != Some(contestant.kind) {
            return Err(format!(
                "{}: a {kind:?} handshake, expected {:?}",
                contestant.label, contestant.kind
            )
            .into());
        }
        if let Some(negotiated) = negotiated.as_deref_mut() {
            *negotiated = Some(format!(
                "{:?}, {:?}, {:?}, ALPN {:?}",
                connection.protocol_version(),
                connection.negotiated_cipher_suite().map(|s| s.suite()),
                connection.negotiated_key_exchange_group().map(|g| g.name()),
                connection.alpn_protocol().map(String::from_utf8_lossy),
            ));
        }
        // The server closes first: the TIME_WAIT is on its side, not on the client's ports.
        drop(server_stream);
        drop(client_stream);
    }
    tally.wall += start.elapsed();
    if let (Some(before), Some(after)) = (cpu_start, thread_cpu()) {
        tally.cpu += after.saturating_sub(before);
    }
    tally.server += server_time.get();
    tally.handshakes += n;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `rounds` rounds in which the four contestants (portcullis full, bare full, portcullis resumed, bare
/// resumed) take turns block by block, the order rotating, until each has done `count`
/// handshakes; prints every round, then medians over the rounds of the rates and of the
/// per-round ratios.
async fn handshakes(contestants: &[Contestant<'_>; 4], rounds: usize, count: usize) -> Result<()> {
    println!(
        "== handshakes: {rounds} rounds x {count} per contestant, in alternating blocks of \
         {BLOCK} =="
    );
    let cpu_known = thread_cpu().is_some();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut negotiated = [None, None, None, None];
    // Warm-up, unchecked: a resuming client's first handshake is a full one.
    for (contestant, negotiated) in contestants.iter().zip(&mut negotiated) {
        block(
            &listener,
            contestant,
            100,
            &mut Tally::default(),
            Some(negotiated),
            false,
        )
        .await?;
    }
    for (contestant, negotiated) in contestants.iter().zip(&negotiated) {
        println!(
            "{}: {}",
            contestant.label,
            negotiated.as_deref().unwrap_or("?")
        );
    }
    let mut results: Vec<[Tally; 4]> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut tallies = [Tally::default(); 4];
        let start = Instant::now();
        let mut turn = 0;
        while tallies.iter().any(|t| t.handshakes < count) && start.elapsed() < ROUND_TIME_CAP {
            for i in 0..4 {
                let index = (i + turn) % 4;
                let left = count - tallies[index].handshakes.min(count);
                if left > 0 {
                    block(
                        &listener,
                        &contestants[index],
                        left.min(BLOCK),
                        &mut tallies[index],
                        None,
                        true,
                    )
                    .await?;
                }
            }
            turn += 1;
        }
        let line: Vec<String> = contestants
            .iter()
            .zip(&tallies)
            .map(|(c, t)| {
                format!(
                    "{} {:.0}/s wall, {:.0}/s cpu, server {:.1} us",
                    c.label,
                    t.per_second(t.wall),
                    t.per_second(t.cpu),
                    t.micros_each(t.server),
                )
            })
            .collect();
        println!("round {}: {}", round + 1, line.join("; "));
        results.push(tallies);
    }

    let med = |f: &dyn Fn(&[Tally; 4]) -> f64| {
        let mut values: Vec<f64> = results.iter().map(f).collect();
        median(&mut values)
    };
    println!();
    println!("medians over {rounds} rounds:");
    println!(
        "| contestant | handshakes/s (wall) | handshakes per CPU-second | server-side us/handshake |"
    );
    println!("|---|---|---|---|");
    for (index, contestant) in contestants.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} |",
            contestant.label,
            med(&|r| r[index].per_second(r[index].wall)),
            med(&|r| r[index].per_second(r[index].cpu)),
            med(&|r| r[index].micros_each(r[index].server)),
        );
    }
    if !cpu_known {
        println!("(no thread CPU clock here: the CPU columns are meaningless)");
    }
    println!();
    println!("| ratio (median of per-round ratios) | wall | CPU | server side |");
    println!("|---|---|---|---|");
    for (label, portcullis, bare) in [("full", 0, 1), ("resumed", 2, 3)] {
        println!(
            "| {label}: portcullis/bare handshakes per second | {:.3} | {:.3} | {:.3} |",
            med(&|r| r[portcullis].per_second(r[portcullis].wall)
                / r[bare].per_second(r[bare].wall)),
            med(&|r| r[portcullis].per_second(r[portcullis].cpu) / r[bare].per_second(r[bare].cpu)),
            med(&|r| r[bare].micros_each(r[bare].server)
                / r[portcullis].micros_each(r[portcullis].server)),
        );
    }
    for (label, full, resumed) in [("portcullis", 0, 2), ("bare", 1, 3)] {
        println!(
            "| {label}: full/resumed time per handshake | {:.2} | {:.2} | {:.2} |",
            med(&|r| r[full].micros_each(r[full].wall) / r[resumed].micros_each(r[resumed].wall)),
            med(&|r| r[full].micros_each(r[full].cpu) / r[resumed].micros_each(r[resumed].cpu)),
            med(&|r| {
                r[full].micros_each(r[full].server) / r[resumed].micros_each(r[resumed].server)
            }),
        );
    }
    println!();
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum MemoryVariant {
    Tls(usize),
    Tcp,
}

/// Heap bytes per idle connection on the server side: portcullis, bare, and plain TCP.
///
/// Method: the clients run in a child process (this same binary, started with `CHILD_ENV` set), so
/// nothing they allocate reaches this process's counting allocator. This process runs the
/// server alone on a current-thread runtime (no other runtime threads allocate meanwhile; the
/// Prometheus exporter has no thread of its own), reads the allocator's live-bytes count, then
/// accepts N connections and completes their handshakes, writes one byte on each (as the
/// handshake benchmark does) and keeps every server-side stream in a Vec, unpolled: idle.
/// Once the child reports that all N have read their byte, the live count is read again.
/// (after - before) / N is the heap held per idle connection, including the Vec slot holding
/// the stream itself (`size_of::<TlsStream<TcpStream>>()`, the same for portcullis and bare) and
/// tokio's socket registration. Plain TCP (a tokio TcpStream, same byte written) is measured
/// the same way, so (TLS - TCP) is what TLS itself holds. It counts bytes requested from the
/// allocator, not the allocator's own overhead or the kernel's socket buffers, which are the
/// same for both TLS variants. A first round of each variant, at the full N, is discarded as
/// warm-up (one-time allocations: tokio's registration set growing to N, rustls' lazily built
/// state).
fn memory(
    runtime: &Runtime,
    servers: &[Server; 2],
    pki: &Pki,
    rounds: usize,
    conns: usize,
) -> Result<()> {
    println!(
        "== memory per idle connection: {rounds} rounds x {conns} connections per variant, \
         alternating =="
    );
    println!(
        "size_of::<TlsStream<TcpStream>>() = {} bytes, size_of::<TcpStream>() = {} bytes",
        size_of::<TlsStream<TcpStream>>(),
        size_of::<TcpStream>(),
    );
    let variants = [
        MemoryVariant::Tls(0),
        MemoryVariant::Tls(1),
        MemoryVariant::Tcp,
    ];
    let name = |variant: MemoryVariant| match variant {
        MemoryVariant::Tls(index) => servers[index].name(),
        MemoryVariant::Tcp => "tcp",
    };
    for variant in variants {
        let bytes = memory_round(runtime, servers, pki, variant, conns)?;
        println!("warm-up {}: {bytes:.0} bytes/connection", name(variant));
    }
    let mut per_conn = [Vec::new(), Vec::new(), Vec::new()];
    let mut round_ratios = Vec::new();
    for round in 0..rounds {
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order = [1, 0, 2];
        }
        let mut this_round = [0.0; 3];
        for index in order {
            let bytes = memory_round(runtime, servers, pki, variants[index], conns)?;
            println!(
                "round {} {}: {bytes:.0} bytes/connection",
                round + 1,
                name(variants[index])
            );
            this_round[index] = bytes;
            per_conn[index].push(bytes);
        }
        round_ratios.push((this_round[0], this_round[1], this_round[2]));
    }
    let [portcullis, bare, tcp] = per_conn.each_mut().map(|v| median(v));
    println!(
        "bytes per idle connection (median): portcullis {portcullis:.0}, bare {bare:.0}, tcp {tcp:.0}; \
         portcullis/bare {:.3}; TLS only (minus tcp): portcullis {:.0}, bare {:.0}, ratio {:.3}",
        portcullis / bare,
        portcullis - tcp,
        bare - tcp,
        (portcullis - tcp) / (bare - tcp),
    );
    let spread: Vec<String> = round_ratios
        .iter()
        .map(|(k, b, _)| format!("{:.3}", k / b))
        .collect();
    println!("per-round portcullis/bare: {}", spread.join(", "));
    println!();
    Ok(())
}

/// Opens `conns` idle connections from a child process; returns heap bytes per connection.
fn memory_round(
    runtime: &Runtime,
    servers: &[Server; 2],
    pki: &Pki,
    variant: MemoryVariant,
    conns: usize,
) -> Result<f64> {
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let mode = if variant == MemoryVariant::Tcp {
        "tcp"
    } else {
        "tls"
    };
    let mut child = ChildGuard(
        Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, format!("{mode} {addr} {conns}"))
            .env(CA_ENV, &pki.ca_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let mut ready = child.0.stdout.take().ok_or("no stdout from the client")?;

    // Let the I/O driver turn once, so it frees the registrations of the previous round's
    // sockets now rather than during this round's count.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    let before = LIVE.load(Ordering::SeqCst);
    let after = match variant {
        MemoryVariant::Tls(index) => {
            let server = &servers[index];
            hold_idle(runtime, &listener, conns, &mut ready, |tcp| {
                server.accept(tcp)
            })?
        }
        MemoryVariant::Tcp => hold_idle(runtime, &listener, conns, &mut ready, |tcp| {
            std::future::ready(Ok(tcp))
        })?,
    };

    // The server side is closed; the client process ends when its stdin closes.
    drop(child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait()? {
            if !status.success() {
                return Err(format!("the client process failed: {status}").into());
            }
            break;
        }
        if Instant::now() > deadline {
            return Err("the client process did not exit within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((after - before) as f64 / conns as f64)
}

/// Accepts and keeps `conns` idle connections, waits for the client to have them all, and
/// returns the live heap count at that moment. Closes the server side before returning.
fn hold_idle<S, F, Fut>(
    runtime: &Runtime,
    listener: &TcpListener,
    conns: usize,
    ready: &mut ChildStdout,
    establish: F,
) -> Result<isize>
where
    S: tokio::io::AsyncWrite + Unpin,
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let held = runtime.block_on(accept_idle(listener, conns, establish))?;
    wait_ready(ready)?;
    let after = LIVE.load(Ordering::SeqCst);
    drop(held);
    Ok(after)
}

/// Kills the client process if a round fails before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Accepts `conns` connections one after another, completes each with `establish`, writes one
/// byte on it and keeps it.
async fn accept_idle<S, F, Fut>(
    listener: &TcpListener,
    conns: usize,
    establish: F,
) -> Result<Vec<S>>
where
    S: tokio::io::AsyncWrite + Unpin,
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut held = Vec::with_capacity(conns);
    let start = Instant::now();
    while held.len() < conns {
        if start.elapsed() > MEMORY_TIME_CAP {
            return Err(format!("only {} of {conns} connections in 120 s", held.len()).into());
        }
        let one = async {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut stream = establish(tcp).await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            io::Result::Ok(stream)
        };
        let stream = tokio::time::timeout(STEP_TIMEOUT, one)
            .await
            .map_err(|_| "an idle connection took longer than 10 s to set up")??;
        held.push(stream);
    }
    Ok(held)
}

/// Waits for the client process's `ready` line (it exits, closing stdout, if it fails).
fn wait_ready(stdout: &mut ChildStdout) -> Result<()> {
    let mut line = [0u8; 6];
    stdout.read_exact(&mut line)?;
    if &line != b"ready\n" {
        return Err(format!("unexpected output from the client: {line:?}").into());
    }
    Ok(())
}

/// The memory benchmark's client: opens the connections, reads each one's byte, says
/// `ready`, and keeps them open until its stdin closes.
fn client_process(spec: &str) -> Result<()> {
    let mut fields = spec.split(' ');
    let (Some(mode), Some(addr), Some(count)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("{CHILD_ENV}={spec:?}: expected `tls|tcp ADDR COUNT`").into());
    };
    let addr: SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ca_pem = std::env::var(CA_ENV)?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(portcullis_tls::PROTOCOL_VERSIONS)?
    .with_root_certificates(roots(&ca_pem)?)
    .with_no_client_auth();
    config.alpn_protocols = portcullis_tls::DEFAULT_ALPN
        .iter()
        .map(|p| p.to_vec())
        .collect();
    config.resumption = Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(SERVER_NAME)?;

    let (tls, tcp) = runtime.block_on(async {
        let mut tls = Vec::new();
        let mut tcp = Vec::new();
        let start = Instant::now();
        for _ in 0..count {
            if start.elapsed() > MEMORY_TIME_CAP {
                return Err::<_, Box<dyn Error + Send + Sync>>("the client ran out of time".into());
            }
            let one = async {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut byte = [0u8; 1];
                if mode == "tls" {
                    let mut stream = connector.connect(name.clone(), stream).await?;
                    stream.read_exact(&mut byte).await?;
                    tls.push(stream);
                } else {
                    let mut stream = stream;
                    stream.read_exact(&mut byte).await?;
                    tcp.push(stream);
                }
                io::Result::Ok(())
            };
            tokio::time::timeout(STEP_TIMEOUT, one)
                .await
                .map_err(|_| "a client connection took longer than 10 s")??;
        }
        Ok((tls, tcp))
    })?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(b"ready\n")?;
    stdout.flush()?;
    drop(stdout);
    // Until the server is done measuring: it closes our stdin (or exits).
    let mut rest = Vec::new();
    io::stdin().read_to_end(&mut rest)?;
    drop(tls);
    drop(tcp);
    Ok(())
}
