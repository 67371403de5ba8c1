//! The `Host` rules of RFC 9112 §3.2 for HTTP/1.1 requests: exactly one `Host` field, a valid
//! `uri-host [ ":" port ]` (or empty), agreeing with the authority of an absolute-form target.
//! A request that breaks one is answered 400 and its connection closed, before the
//! application sees it. HTTP/1.0 requests may leave `Host` out; HTTP/2 carries `:authority`
//! instead and is not checked here.

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

/// What is wrong with `request`'s `Host`, if anything.
pub(crate) fn check<B>(request: &Request<B>) -> Option<HostProblem> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let mut values = request.headers().get_all(HOST).iter();
    let Some(host) = values.next() else {
        return Some(HostProblem::Missing);
    };
    if values.next().is_some() {
        return Some(HostProblem::Repeated);
    }
    let Some((name, port)) = split(host.as_bytes()) else {
        return Some(HostProblem::Invalid);
    };
    match agrees(request.uri(), name, port) {
        true => None,
        false => Some(HostProblem::Mismatch),
    }
}

/// `uri-host [ ":" port ]` split into host and port (`None`: no port, or an empty one), or
/// `None` when the value is not one. An empty value is valid (a target without authority).
pub fn split(value: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (name, rest) = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')?;
        let literal = &value[1..end];
        let ip_literal = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && literal.contains(&b':');
        (ip_literal || ip_future(literal)).then_some(())?;
        (&value[..=end], &value[end + 1..])
    } else {
        let colon = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let (name, rest) = value.split_at(colon);
        reg_name(name).then_some(())?;
        (name, rest)
    };
    let port = match rest {
        [] => None,
        [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => {
            Some(digits).filter(|digits| !digits.is_empty())
        }
        _ => return None,
    };
    Some((name, port))
}

/// `reg-name` (also covers IPv4 addresses): unreserved, sub-delims and `%XX`.
fn reg_name(name: &[u8]) -> bool {
    let mut bytes = name.iter();
    while let Some(&b) = bytes.next() {
        let ok = match b {
            b'%' => {
                bytes.next().is_some_and(u8::is_ascii_hexdigit)
                    && bytes.next().is_some_and(u8::is_ascii_hexdigit)
            }
            b if b.is_ascii_alphanumeric() => true,
            b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
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
    let host_port = port.and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u16>().ok());
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
