//! Temporary bans: clients refused too often within a window are turned away for a while,
//! longer on every repeat.
//!
//! ```text
//! strike(client, reason) ──▶ exempt, or already banned? ── yes ─▶ ignored
//!          │ no
//!          ▼
//!   refusals in the window opened by the first one  < after ─▶ remembered (an offender)
//!          │ reaches `after` (the Nth refusal is the one that bans)
//!          ▼
//!   banned for ban_for × 2^(earlier bans within a day), at most max_ban, plus jitter
//!          │ (dry run: counted as a would-be ban, nothing banned)
//!          ▼
//!   check(client) answers the time left until it expires, or it is lifted
//! ```
//!
//! The server strikes on its own refusals (429 answers, connection-cap refusals, malformed
//! requests, failed TLS handshakes, and the statuses or [`Strike`] extensions an application
//! chooses) and checks at accept; see portcullis-server's `Builder::bans`.
//!
//! **Identity.** Clients are keyed like the rate limit's: IPv4 by address, IPv6 by /64
//! ([`KeyPrefix`]), IPv4-mapped IPv6 as IPv4. Exempt ranges (and the trusted proxies the
//! server adds to them) are never banned.
//!
//! **Memory.** Both tables are capped ([`BanPolicy::max_offenders`], [`BanPolicy::max_bans`]).
//! A table at its cap first drops what has expired, then the eighth of its entries that expire
//! soonest: one pass over the table pays for the next eighth of inserts, so a flood of
//! distinct offenders costs O(1) per strike amortised. A remembered offender takes about 70
//! bytes, 69 measured with a million (`tests/memory.rs`).
//!
//! **Synchronization.** One mutex over both tables, taken by strikes, bans and lifts (rare
//! events: refusals) and by checks only while a ban exists. The number of active bans is
//! mirrored in an atomic read first, so with no ban in force a check takes no lock.

mod api;

pub use api::BANS_PATH;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::time::Instant;

use crate::client::{ClientIp, KeyPrefix};
use crate::loom::{Arc, AtomicUsize, Mutex, Ordering};
use crate::metrics::{
    BAN_EVICTIONS_TOTAL, BAN_OFFENDERS, BANS_ACTIVE, BANS_DRY_RUN_TOTAL, BANS_TOTAL, LABEL_REASON,
    LABEL_TABLE, STRIKES_TOTAL,
};

/// Default refusals within the window that ban: off until set ([`BanPolicy::new`] takes it).
/// Default window in which the refusals are counted: 60 s.
pub const DEFAULT_BAN_WINDOW: Duration = Duration::from_secs(60);
/// Default length of a first ban: 60 s.
pub const DEFAULT_BAN_FOR: Duration = Duration::from_secs(60);
/// Default ceiling of an escalated ban: 1 h.
pub const DEFAULT_BAN_MAX: Duration = Duration::from_secs(3600);
/// How long the count of a client's earlier bans is kept after its last ban ends: a day.
pub const BAN_HISTORY: Duration = Duration::from_secs(24 * 3600);
/// Default cap on remembered offenders (clients with refusals but no ban): 100 000, about
/// 7 MB.
pub const DEFAULT_MAX_OFFENDERS: usize = 100_000;
/// Default cap on bans in force: 100 000.
pub const DEFAULT_MAX_BANS: usize = 100_000;

/// Why a client was refused: the `reason` label of the ban metrics and of `GET /bans`.
///
/// A name from a small fixed set, chosen in code: the server's own, or an application's
/// ([`BanReason::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BanReason(&'static str);

impl BanReason {
    /// Answered 429 by a rate limit.
    pub const RATE_LIMITED: BanReason = BanReason("rate_limited");
    /// Refused at a connection cap (the per-client one: a full server is nobody's fault).
    pub const CONN_CAP: BanReason = BanReason("conn_cap");
    /// A malformed request: hyper answered 400 or 431 (the head could not be parsed or was
    /// too large).
    pub const MALFORMED: BanReason = BanReason("malformed");
    /// A TLS handshake that failed or timed out.
    pub const TLS_HANDSHAKE: BanReason = BanReason("tls_handshake");
    /// Banned through [`Bans::ban`] or the admin API.
    pub const MANUAL: BanReason = BanReason("manual");

    /// An application's own reason, such as `"auth"` for 401s.
    #[must_use]
    pub const fn new(name: &'static str) -> Self {
        BanReason(name)
    }

    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A response extension an application inserts to count the response as a refusal of its
/// client, for statuses the server does not count by itself:
/// `response.extensions_mut().insert(Strike(BanReason::new("auth")))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strike(pub BanReason);

/// The configuration of [`Bans`] (plain data; [`BanPolicy::build`] makes the shared state).
#[derive(Debug, Clone)]
#[must_use]
pub struct BanPolicy {
    after: u32,
    window: Duration,
    ban_for: Duration,
    max_ban: Duration,
    jitter: f64,
    exempt: Vec<IpNet>,
    prefix: KeyPrefix,
    max_offenders: usize,
    max_bans: usize,
    dry_run: bool,
    statuses: Vec<(u16, BanReason)>,
    client_ip: ClientIp,
}

impl BanPolicy {
    /// Bans a client on its `after`th refusal within the window (1 to 65 535). Defaults: a
    /// [`DEFAULT_BAN_WINDOW`] window, first ban [`DEFAULT_BAN_FOR`], ceiling
    /// [`DEFAULT_BAN_MAX`], no jitter, nothing exempt, the capped tables of
    /// [`DEFAULT_MAX_OFFENDERS`] and [`DEFAULT_MAX_BANS`], and 429 answers counted as
    /// refusals.
    pub fn new(after: u32) -> Self {
        Self {
            after: after.clamp(1, u32::from(u16::MAX)),
            window: DEFAULT_BAN_WINDOW,
            ban_for: DEFAULT_BAN_FOR,
            max_ban: DEFAULT_BAN_MAX,
            jitter: 0.0,
            exempt: Vec::new(),
            prefix: KeyPrefix::default(),
            max_offenders: DEFAULT_MAX_OFFENDERS,
            max_bans: DEFAULT_MAX_BANS,
            dry_run: false,
            statuses: vec![(429, BanReason::RATE_LIMITED)],
            client_ip: ClientIp::default(),
        }
    }

    /// The window the refusals must fall in; it opens at a client's first refusal.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The length of a first ban; each repeat within [`BAN_HISTORY`] of the last doubles it.
    pub fn ban_for(mut self, ban_for: Duration) -> Self {
        self.ban_for = ban_for;
        self
    }

    /// The longest a ban can become by doubling.
    pub fn max_ban(mut self, max_ban: Duration) -> Self {
        self.max_ban = max_ban;
        self
    }

    /// Adds up to `fraction` (0 to 1) of each ban's length at random, so a client cannot time
    /// its return to the millisecond.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Never bans clients in `net` (load balancers, monitoring, the office).
    pub fn exempt(mut self, net: IpNet) -> Self {
        self.exempt.push(net.trunc());
        self
    }

    /// Keys clients by these prefixes (default /32 and /64, as the rate limit).
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Caps the clients remembered for their refusals.
    pub fn max_offenders(mut self, max: usize) -> Self {
        self.max_offenders = max.max(1);
        self
    }

    /// Caps the bans in force.
    pub fn max_bans(mut self, max: usize) -> Self {
        self.max_bans = max.max(1);
        self
    }

    /// Counts would-be bans in [`BANS_DRY_RUN_TOTAL`] and logs them, without banning anyone:
    /// to choose the thresholds on real traffic first.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Also counts answers with `status` as refusals of their client, under `reason` (429 is
    /// counted from the start, as [`BanReason::RATE_LIMITED`]).
    pub fn strike_on_status(mut self, status: u16, reason: BanReason) -> Self {
        self.statuses.retain(|(known, _)| *known != status);
        self.statuses.push((status, reason));
        self
    }

    /// How the client of a request that came through a trusted proxy is found: the proxies
    /// and forwarding headers the rate limit uses. Trusted proxies are never banned; their
    /// clients are, and a banned one gets 429 on the proxy's connection (which stays open)
    /// instead of a closed connection. Default: no proxy is trusted.
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// The refusals that ban.
    #[must_use]
    pub fn after(&self) -> u32 {
        self.after
    }

    /// The exempt ranges.
    #[must_use]
    pub fn exempted(&self) -> &[IpNet] {
        &self.exempt
    }

    /// Makes the shared state.
    pub fn build(self) -> Bans {
        Bans {
            inner: Arc::new(Inner {
                active: AtomicUsize::new(0),
                state: Mutex::new(State {
                    offenders: HashMap::new(),
                    bans: HashMap::new(),
                    seed: 0x9e37_79b9_7f4a_7c15,
                    next_sweep: 0,
                }),
                epoch: Instant::now(),
                policy: self,
            }),
        }
    }
}

/// A ban in force, as [`Bans::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// The client (its key: an IPv6 client's /64 network address).
    pub client: IpAddr,
    /// The wall-clock time it ends.
    pub until: SystemTime,
    /// The time left.
    pub remaining: Duration,
    /// The refusal that raised it.
    pub reason: BanReason,
}

/// Temporary bans, shared by every clone. See the [module docs](self).
#[derive(Clone)]
pub struct Bans {
    inner: Arc<Inner>,
}

struct Inner {
    policy: BanPolicy,
    /// Bans in the table (expired ones included until they are swept): zero means no check
    /// needs the lock.
    active: AtomicUsize,
    state: Mutex<State>,
    epoch: Instant,
}

/// Times are milliseconds since the `Bans` was built, on tokio's clock (so tests can pause it).
type Millis = u64;

struct State {
    offenders: HashMap<u128, Offender>,
    bans: HashMap<u128, Ban>,
    /// xorshift state for the jitter.
    seed: u64,
    /// When a check next drops every expired ban (at most once a second), so that the
    /// lock-free answer for "no ban" comes back once the last ban ends.
    next_sweep: Millis,
}

/// A client with refusals: its current window, and the bans it had. 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Offender {
    window_start: Millis,
    /// When the history of its bans is forgotten, in whole seconds (0: no ban yet).
    history_until: u32,
    strikes: u16,
    /// Bans so far (while the history lasts).
    bans: u8,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Millis,
    reason: BanReason,
}

impl Bans {
    /// The policy these bans enforce.
    pub fn policy(&self) -> &BanPolicy {
        &self.inner.policy
    }

    /// The time left on `client`'s ban, or `None` when it is not banned. Without any ban in
    /// force this is one atomic load.
    #[must_use]
    pub fn check(&self, client: IpAddr) -> Option<Duration> {
        if self.inner.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        let key = self.key(client);
        let now = self.now();
        let mut state = self.lock();
        if now >= state.next_sweep {
            state.next_sweep = now + 1000;
            let before = state.bans.len();
            state.bans.retain(|_, ban| ban.until > now);
            if state.bans.len() != before {
                self.publish(&state);
            }
        }
        let ban = state.bans.get(&key)?;
        (ban.until > now).then(|| Duration::from_millis(ban.until - now))
    }

    /// Counts a refusal of `client`. Returns the length of the ban when this refusal raised
    /// one (in dry-run mode too, though nothing is banned then). Exempt clients and clients
    /// already banned are not counted.
    pub fn strike(&self, client: IpAddr, reason: BanReason) -> Option<Duration> {
        if self.is_exempt(client) {
            return None;
        }
        let policy = &self.inner.policy;
        let key = self.key(client);
        let now = self.now();
        let mut state = self.lock();
        if state.bans.get(&key).is_some_and(|ban| ban.until > now) {
            return None;
        }
        metrics::counter!(STRIKES_TOTAL, LABEL_REASON => reason.as_str()).increment(1);
        let window = millis(policy.window);
        if !state.offenders.contains_key(&key) && state.offenders.len() >= policy.max_offenders {
            let evicted = sweep(&mut state.offenders, now, |offender| {
                offender.expires(window)
            });
            count_evictions("offenders", evicted);
        }
        let offender = state.offenders.entry(key).or_insert(Offender {
            window_start: now,
            strikes: 0,
            bans: 0,
            history_until: 0,
        });
        if now.saturating_sub(offender.window_start) > window {
            offender.window_start = now;
            offender.strikes = 0;
        }
        if offender.history_until != 0 && u64::from(offender.history_until) * 1000 <= now {
            offender.bans = 0;
            offender.history_until = 0;
        }
        offender.strikes = offender.strikes.saturating_add(1);
        if u32::from(offender.strikes) < policy.after {
            self.publish(&state);
            return None;
        }
        // The Nth refusal: a ban (or, in a dry run, a would-be ban), and a new window.
        let earlier = offender.bans;
        offender.strikes = 0;
        offender.window_start = now;
        if !policy.dry_run {
            offender.bans = earlier.saturating_add(1);
        }
        let length = self.length(earlier);
        let length = self.jittered(&mut state, length);
        if policy.dry_run {
            metrics::counter!(BANS_DRY_RUN_TOTAL, LABEL_REASON => reason.as_str()).increment(1);
            tracing::info!(%client, %reason, seconds = length.as_secs_f64(), "would ban (dry run)");
            self.publish(&state);
            return Some(length);
        }
        let until = now.saturating_add(millis(length));
        if let Some(offender) = state.offenders.get_mut(&key) {
            let seconds = until.saturating_add(millis(BAN_HISTORY)).div_ceil(1000);
            offender.history_until = u32::try_from(seconds).unwrap_or(u32::MAX);
        }
        self.insert_ban(&mut state, key, Ban { until, reason }, now);
        metrics::counter!(BANS_TOTAL, LABEL_REASON => reason.as_str()).increment(1);
        tracing::warn!(%client, %reason, seconds = length.as_secs_f64(), "client banned");
        Some(length)
    }

    /// Bans `client` for `length` (replacing any ban it has), whatever the policy says, except
    /// that exempt clients are never banned: returns `false` for them. Dry-run mode does not
    /// apply to bans made this way.
    pub fn ban(&self, client: IpAddr, length: Duration, reason: BanReason) -> bool {
        if self.is_exempt(client) {
            return false;
        }
        let key = self.key(client);
        let now = self.now();
        let mut state = self.lock();
        let until = now.saturating_add(millis(length));
        self.insert_ban(&mut state, key, Ban { until, reason }, now);
        metrics::counter!(BANS_TOTAL, LABEL_REASON => reason.as_str()).increment(1);
        tracing::warn!(%client, %reason, seconds = length.as_secs_f64(), "client banned");
        true
    }

    /// Lifts `client`'s ban; `false` when it had none. Its history of earlier bans stays (a
    /// lifted client banned again gets the longer ban).
    pub fn lift(&self, client: IpAddr) -> bool {
        let key = self.key(client);
        let now = self.now();
        let mut state = self.lock();
        let lifted = state.bans.remove(&key).is_some_and(|ban| ban.until > now);
        self.publish(&state);
        if lifted {
            tracing::info!(%client, "ban lifted");
        }
        lifted
    }

    /// The bans in force, soonest to end first.
    #[must_use]
    pub fn list(&self) -> Vec<BanEntry> {
        let now = self.now();
        let wall = SystemTime::now();
        let state = self.lock();
        let mut entries: Vec<BanEntry> = state
            .bans
            .iter()
            .filter(|(_, ban)| ban.until > now)
            .map(|(&key, ban)| {
                let remaining = Duration::from_millis(ban.until - now);
                BanEntry {
                    client: from_key(key),
                    until: wall + remaining,
                    remaining,
                    reason: ban.reason,
                }
            })
            .collect();
        entries.sort_by_key(|entry| entry.remaining);
        entries
    }

    /// Clients remembered for their refusals (or their earlier bans).
    #[must_use]
    pub fn offenders(&self) -> usize {
        self.lock().offenders.len()
    }

    /// Whether `client` is never banned: inside an exempt range, or a trusted proxy.
    #[must_use]
    pub fn is_exempt(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.forwards(client)
            || self
                .inner
                .policy
                .exempt
                .iter()
                .any(|net| net.contains(&client))
    }

    /// Whether `peer` is a trusted proxy, whose requests name their client in a forwarding
    /// header.
    #[must_use]
    pub fn forwards(&self, peer: IpAddr) -> bool {
        self.inner.policy.client_ip.trusted().contains(peer)
    }

    /// The client of a request from `peer` with `headers` (see [`BanPolicy::client_ip`]).
    #[must_use]
    pub fn client_of(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        self.inner.policy.client_ip.resolve(peer, headers)
    }

    /// The reason under which an answer with `status` counts as a refusal, if it does.
    #[must_use]
    pub fn status_reason(&self, status: u16) -> Option<BanReason> {
        self.inner
            .policy
            .statuses
            .iter()
            .find_map(|&(known, reason)| (known == status).then_some(reason))
    }

    fn key(&self, client: IpAddr) -> u128 {
        match self.inner.policy.prefix.apply(client) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            IpAddr::V6(v6) => v6.to_bits(),
        }
    }

    fn now(&self) -> Millis {
        millis(self.inner.epoch.elapsed())
    }

    fn lock(&self) -> crate::loom::MutexGuard<'_, State> {
        // A panic while holding it cannot leave the tables inconsistent (every update is a
        // single insert or remove): carry on with them.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The length of a ban after `earlier` bans: doubled each time, at most the ceiling.
    fn length(&self, earlier: u8) -> Duration {
        let policy = &self.inner.policy;
        let factor = 1u32
            .checked_shl(u32::from(earlier.min(31)))
            .unwrap_or(u32::MAX);
        policy
            .ban_for
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(policy.max_ban.max(policy.ban_for))
    }

    fn jittered(&self, state: &mut State, length: Duration) -> Duration {
        let jitter = self.inner.policy.jitter;
        if jitter <= 0.0 {
            return length;
        }
        // xorshift64*: enough to make the end of a ban unpredictable to its client.
        let mut x = state.seed ^ self.now().wrapping_mul(0x2545_f491_4f6c_dd1d);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.seed = x;
        #[allow(clippy::cast_precision_loss)]
        let unit = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let extra = Duration::try_from_secs_f64(length.as_secs_f64() * jitter * unit)
            .unwrap_or(Duration::MAX);
        length.saturating_add(extra)
    }

    fn insert_ban(&self, state: &mut State, key: u128, ban: Ban, now: Millis) {
        if !state.bans.contains_key(&key) && state.bans.len() >= self.inner.policy.max_bans {
            let evicted = sweep(&mut state.bans, now, |ban| ban.until);
            count_evictions("bans", evicted);
        }
        state.bans.insert(key, ban);
        self.publish(state);
    }

    /// Mirrors the table sizes into the atomic and the gauges.
    fn publish(&self, state: &State) {
        self.inner.active.store(state.bans.len(), Ordering::Release);
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!(BANS_ACTIVE).set(state.bans.len() as f64);
            metrics::gauge!(BAN_OFFENDERS).set(state.offenders.len() as f64);
        }
    }
}

impl Offender {
    /// When this entry says nothing any more: its window is over and its history forgotten.
    fn expires(&self, window: Millis) -> Millis {
        self.window_start
            .saturating_add(window)
            .max(u64::from(self.history_until) * 1000)
    }
}

impl fmt::Debug for Bans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bans")
            .field("policy", &self.inner.policy)
            .field("active", &self.inner.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Frees room in a full table: drops what expired, then, if that freed less than an eighth,
/// the entries that expire soonest up to an eighth. Returns how many were dropped.
fn sweep<V>(table: &mut HashMap<u128, V>, now: Millis, expires: impl Fn(&V) -> Millis) -> usize {
    let before = table.len();
    table.retain(|_, value| expires(value) > now);
    let batch = (before / 8).max(1);
    let freed = before - table.len();
    if freed < batch && !table.is_empty() {
        let mut expiries: Vec<(Millis, u128)> = table
            .iter()
            .map(|(&key, value)| (expires(value), key))
            .collect();
        let drop_count = (batch - freed).min(expiries.len());
        expiries.select_nth_unstable(drop_count - 1);
        for (_, key) in &expiries[..drop_count] {
            table.remove(key);
        }
    }
    before - table.len()
}

fn count_evictions(table: &'static str, evicted: usize) {
    metrics::counter!(BAN_EVICTIONS_TOTAL, LABEL_TABLE => table).increment(evicted as u64);
}

fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2)
}

fn from_key(key: u128) -> IpAddr {
    let v6 = Ipv6Addr::from_bits(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests;
