//! The `Host` rules of RFC 9112 §3.2 for HTTP/1.1 requests: exactly one `Host` field, a valid
//! `uri-host [ ":" port ]` (or empty), agreeing with the authority of an absolute-form target.
//! A request that breaks one is answered 400 and its connection closed, before the
//! application sees it. HTTP/1.0 requests may leave `Host` out; HTTP/2 carries `:authority`
//! instead and is not checked here.

use std::cell::Cell;

use http::header::HOST;
use http::{HeaderValue, Request, Uri, Version};

/// Why a request's `Host` was refused: the `reason` label of
/// [`REQUESTS_REJECTED`](crate::metrics::REQUESTS_REJECTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HostProblem {
    /// An HTTP/1.1 request without `Host`.
    Missing = 0,
    /// More than one `Host` field.
    Repeated = 1,
    /// A value that is not `uri-host [ ":" port ]` (userinfo, spaces, a bad port...).
    Invalid = 2,
    /// An absolute-form target whose authority names another host or port.
    Mismatch = 3,
}

impl HostProblem {
    /// Every problem, in label order.
    pub const ALL: [HostProblem; 4] = [
        HostProblem::Missing,
        HostProblem::Repeated,
        HostProblem::Invalid,
        HostProblem::Mismatch,
    ];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HostProblem::Missing => "host_missing",
            HostProblem::Repeated => "host_repeated",
            HostProblem::Invalid => "host_invalid",
            HostProblem::Mismatch => "host_mismatch",
        }
    }

    /// The body of the 400 answer.
    pub(crate) fn message(self) -> &'static [u8] {
        match self {
            HostProblem::Missing => b"bad request: HTTP/1.1 needs a Host header\n",
            HostProblem::Repeated => b"bad request: more than one Host header\n",
            HostProblem::Invalid => b"bad request: invalid Host header\n",
            HostProblem::Mismatch => b"bad request: Host disagrees with the request target\n",
        }
    }
}

/// The last `Host` value found valid on a connection (up to 47 bytes): the requests of a
/// keep-alive connection repeat it, and a comparison is cheaper than a parse.
#[derive(Debug, Default)]
pub(crate) struct HostCache(Cell<Cached>);

#[derive(Clone, Copy, Debug)]
struct Cached {
    len: u8,
    bytes: [u8; 47],
}

impl Default for Cached {
    fn default() -> Self {
        // Length past the buffer: holds nothing, not even the empty value.
        Self {
            len: u8::MAX,
            bytes: [0; 47],
        }
    }
}

impl HostCache {
    fn holds(&self, value: &[u8]) -> bool {
        let cached = self.0.get();
        cached.bytes.get(..usize::from(cached.len)) == Some(value)
    }

    fn keep(&self, value: &[u8]) {
        let mut cached = Cached::default();
        if let Some(slot) = cached.bytes.get_mut(..value.len()) {
            slot.copy_from_slice(value);
            cached.len = value.len() as u8; // at most 47
            self.0.set(cached);
        }
    }
}

/// What is wrong with `request`'s `Host`, if anything; `cache` is the connection's.
///
/// One scan for the field and, unless the value is the one `cache` holds, one pass over it. A
/// repeated field is looked for only when some header is repeated at all (the map's value
/// count exceeds its key count), which takes no lookup.
pub(crate) fn check_cached<B>(request: &Request<B>, cache: &HostCache) -> Option<HostProblem> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    // In arrival order, and clients send `Host` first: a scan finds it sooner than the
    // hash lookup of `get` (about 90 instructions).
    let Some(host) = headers
        .iter()
        .find_map(|(name, value)| (*name == HOST).then_some(value))
    else {
        return Some(HostProblem::Missing);
    };
    if headers.len() != headers.keys_len() && headers.get_all(HOST).iter().nth(1).is_some() {
        return Some(HostProblem::Repeated);
    }
    let value = host.as_bytes();
    // An absolute-form target is compared with `Host` every time.
    let origin_form = request.uri().authority().is_none();
    if origin_form && cache.holds(value) {
        return None;
    }
    let Some((name, port)) = split(value) else {
        return Some(HostProblem::Invalid);
    };
    if !agrees(request.uri(), name, port) {
        return Some(HostProblem::Mismatch);
    }
    if origin_form {
        cache.keep(value);
    }
    None
}

/// What is wrong with `request`'s `Host`, if anything.
#[cfg(test)]
pub(crate) fn check<B>(request: &Request<B>) -> Option<HostProblem> {
    check_cached(request, &HostCache::default())
}

/// `uri-host [ ":" port ]` split into host and port (`None`: no port, or an empty one), or
/// `None` when the value is not one. An empty value is valid (a target without authority).
pub fn split(value: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let end = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')?;
        let literal = &value[1..end];
        let ip_literal = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && literal.contains(&b':');
        (ip_literal || ip_future(literal)).then_some(())?;
        end + 1
    } else {
        reg_name_end(value)?
    };
    let (name, rest) = value.split_at(end);
    let port = match rest {
        [] => None,
        [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => {
            Some(digits).filter(|digits| !digits.is_empty())
        }
        _ => return None,
    };
    Some((name, port))
}

/// Bytes of a `reg-name` (also covering IPv4 addresses): unreserved and sub-delims; `%`
/// starts a `%XX` escape.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    table
};

/// Where the `reg-name` at the start of `value` ends (at a `:` or the end), in one pass; `None`
/// when a byte cannot be in one.
fn reg_name_end(value: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if b == b':' {
            return Some(i);
        }
        if !REG_NAME[usize::from(b)] {
            return None;
        }
        if b == b'%' {
            let escape = value.get(i + 1..i + 3)?;
            if !escape.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            i += 2;
        }
        i += 1;
    }
    Some(i)
}

/// Whether all of `name` is a `reg-name`.
fn reg_name(name: &[u8]) -> bool {
    reg_name_end(name) == Some(name.len())
}

/// `IPvFuture`: `v` HEXDIG+ `.` ( unreserved / sub-delims / `:` )+.
fn ip_future(literal: &[u8]) -> bool {
    let Some(rest) = literal
        .strip_prefix(b"v")
        .or_else(|| literal.strip_prefix(b"V"))
    else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !tail.is_empty()
        && tail
            .iter()
            .all(|&b| b == b':' || (b != b'%' && reg_name(std::slice::from_ref(&b))))
}

/// Whether the target's authority (absolute-form, or CONNECT's authority-form) names the host
/// and port `Host` names; a target without authority (origin-form) always agrees. A port left
/// out on one side agrees with the scheme's default on the other.
fn agrees(uri: &Uri, name: &[u8], port: Option<&[u8]>) -> bool {
    let Some(authority) = uri.authority() else {
        return true;
    };
    if !authority.host().as_bytes().eq_ignore_ascii_case(name) {
        return false;
    }
    let default = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Some(443),
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    };
    let host_port = match port {
        None => None,
        // A port out of range names no port the target could have.
        Some(digits) => match std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u16>().ok())
        {
            Some(port) => Some(port),
            None => return false,
        },
    };
    let (Some(target), host_port) = (authority.port_u16().or(default), host_port.or(default))
    else {
        return port.is_none();
    };
    host_port == Some(target)
}

/// `Connection: close`, for the 400 answers that end their connection.
pub(crate) const CLOSE: HeaderValue = HeaderValue::from_static("close");

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(target).version(version);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).expect("a request")
    }

    fn v11(target: &str, hosts: &[&str]) -> Option<HostProblem> {
        check(&request(Version::HTTP_11, target, hosts))
    }

    #[test]
    fn one_valid_host_passes() {
        for host in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com:",
            "127.0.0.1:80",
            "[::1]:8443",
            "[2001:db8::1]",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%2Db.example",
            "",
        ] {
            assert_eq!(v11("/", &[host]), None, "{host:?}");
        }
    }

    #[test]
    fn missing_repeated_and_invalid_hosts_are_told_apart() {
        assert_eq!(v11("/", &[]), Some(HostProblem::Missing));
        assert_eq!(
            v11("/", &["a.example", "a.example"]),
            Some(HostProblem::Repeated)
        );
        for host in [
            "user@example.com",
            "example.com:80:80",
            "example.com:8o",
            "exa mple.com",
            "[::1",
            "[]",
            "[zz::1]",
            "a%2",
            "a%zz.example",
            "example.com/path",
        ] {
            assert_eq!(v11("/", &[host]), Some(HostProblem::Invalid), "{host:?}");
        }
    }

    #[test]
    fn the_cache_answers_for_the_value_it_holds_and_only_that() {
        let cache = HostCache::default();
        let good = request(Version::HTTP_11, "/", &["a.example:8080"]);
        assert_eq!(check_cached(&good, &cache), None);
        assert!(cache.holds(b"a.example:8080"));
        assert!(!cache.holds(b"a.example:8081") && !cache.holds(b""));
        // Another value is judged on its own, and a bad one is not kept.
        let bad = request(Version::HTTP_11, "/", &["a@example"]);
        assert_eq!(check_cached(&bad, &cache), Some(HostProblem::Invalid));
        assert!(cache.holds(b"a.example:8080"));
        // The held value with an absolute-form target is still compared with it.
        let absolute = request(Version::HTTP_11, "http://b.example/", &["a.example:8080"]);
        assert_eq!(check_cached(&absolute, &cache), Some(HostProblem::Mismatch));
        // Values too long to hold are judged every time.
        let long = "a".repeat(60);
        let long_request = request(Version::HTTP_11, "/", &[long.as_str()]);
        assert_eq!(check_cached(&long_request, &cache), None);
        assert!(cache.holds(b"a.example:8080"));
    }

    #[test]
    fn http10_may_leave_host_out() {
        assert_eq!(check(&request(Version::HTTP_10, "/", &[])), None);
        assert_eq!(check(&request(Version::HTTP_2, "/", &[])), None);
    }

    #[test]
    fn an_absolute_form_target_must_name_the_same_host_and_port() {
        assert_eq!(v11("http://a.example/x", &["a.example"]), None);
        assert_eq!(v11("http://A.example:80/x", &["a.example"]), None);
        assert_eq!(v11("https://a.example/x", &["a.example:443"]), None);
        assert_eq!(v11("http://a.example:8080/x", &["a.example:8080"]), None);
        assert_eq!(
            v11("http://b.example/x", &["a.example"]),
            Some(HostProblem::Mismatch)
        );
        assert_eq!(
            v11("http://a.example:8080/x", &["a.example"]),
            Some(HostProblem::Mismatch)
        );
        assert_eq!(
            v11("http://a.example/x", &["a.example:8080"]),
            Some(HostProblem::Mismatch)
        );
        assert_eq!(
            v11("http://a.example/x", &["a.example:99999"]),
            Some(HostProblem::Mismatch)
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, the check answers (never panics), and a value it accepts has
        /// no byte that cannot be in a host.
        #[test]
        fn any_value_is_judged_without_panicking(value in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            if let Some((name, _)) = split(&value) {
                proptest::prop_assert!(!name.iter().any(|&b| b == b'@' || b == b' ' || b == b'/'));
            }
        }
    }
}
