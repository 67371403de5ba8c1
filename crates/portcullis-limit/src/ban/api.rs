//! The bans' admin API, served by portcullis-server on the admin listener:
//!
//! | request | answer |
//! |---|---|
//! | `GET /bans` | 200, a JSON list of `{"client", "until_unix", "remaining_seconds", "reason"}`, soonest to end first |
//! | `DELETE /bans/{ip}` | 204 when the ban was lifted, 404 when that client is not banned |
//! | `POST /bans/{ip}?for=DUR` | 201 and the ban as JSON (`DUR` like `90s`, `10m`, `1h`; default the policy's first ban length), 403 for an exempt client |
//!
//! A malformed address or duration is 400; another method is 405.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode, Uri};

use super::{BanEntry, BanReason, Bans};

/// Where the API lives on the admin listener.
pub const BANS_PATH: &str = "/bans";

impl Bans {
    /// Answers a request to the admin API if `uri`'s path is [`BANS_PATH`] or below it;
    /// `None` for every other path. portcullis-server serves it on the admin listener.
    ///
    /// | request | answer |
    /// |---|---|
    /// | `GET /bans` | 200, a JSON list of `{"client", "until_unix", "remaining_seconds", "reason"}`, soonest to end first |
    /// | `DELETE /bans/{ip}` | 204 when the ban was lifted, 404 when that client is not banned |
    /// | `POST /bans/{ip}?for=DUR` | 201 and the ban as JSON (`DUR` like `90s`, `10m`, `1h`; default the policy's first ban length), 403 for an exempt client |
    ///
    /// A malformed address or duration is 400; another method is 405.
    #[must_use]
    pub fn answer(&self, method: &Method, uri: &Uri) -> Option<Response<Bytes>> {
        let path = uri.path();
        let rest = path.strip_prefix(BANS_PATH)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None; // `/bansx`: not this API
        }
        Some(match rest {
            "" | "/" if *method == Method::GET || *method == Method::HEAD => {
                let mut json = String::from("[");
                for (index, entry) in self.list().iter().enumerate() {
                    if index > 0 {
                        json.push(',');
                    }
                    write_entry(&mut json, entry);
                }
                json.push_str("]\n");
                let body = if *method == Method::HEAD {
                    String::new()
                } else {
                    json
                };
                answer(StatusCode::OK, "application/json", body)
            }
            "" | "/" => not_allowed("GET, HEAD"),
            _ => {
                let Some(client) = rest
                    .strip_prefix('/')
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                else {
                    return Some(text(StatusCode::BAD_REQUEST, "not an IP address\n"));
                };
                match *method {
                    Method::DELETE if self.lift(client) => {
                        answer(StatusCode::NO_CONTENT, "", String::new())
                    }
                    Method::DELETE => text(StatusCode::NOT_FOUND, "not banned\n"),
                    Method::POST => self.post(client, uri.query()),
                    _ => not_allowed("DELETE, POST"),
                }
            }
        })
    }

    fn post(&self, client: IpAddr, query: Option<&str>) -> Response<Bytes> {
        let mut length = self.policy().ban_for;
        for pair in query.unwrap_or_default().split('&') {
            if let Some(value) = pair.strip_prefix("for=") {
                match parse_length(value) {
                    Some(parsed) => length = parsed,
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "for= takes a duration such as 90s, 10m or 1h\n",
                        );
                    }
                }
            }
        }
        if !self.ban(client, length, BanReason::MANUAL) {
            return text(StatusCode::FORBIDDEN, "exempt clients are never banned\n");
        }
        let key = super::from_key(self.key(client));
        let entry = self.list().into_iter().find(|entry| entry.client == key);
        let mut json = String::new();
        if let Some(entry) = entry {
            write_entry(&mut json, &entry);
        }
        json.push('\n');
        answer(StatusCode::CREATED, "application/json", json)
    }
}

fn write_entry(json: &mut String, entry: &BanEntry) {
    let until = entry
        .until
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Addresses and reasons need no escaping: reasons are names chosen in code, and
    // `BanReason` names are expected to be plain identifiers.
    let reason: String = entry
        .reason
        .as_str()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    let _ = write!(
        json,
        r#"{{"client":"{}","until_unix":{},"remaining_seconds":{:.3},"reason":"{}"}}"#,
        entry.client,
        until,
        entry.remaining.as_secs_f64(),
        reason
    );
}

/// `90s`, `10m`, `1h`, `500ms`, or a number of seconds.
fn parse_length(value: &str) -> Option<Duration> {
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(seconds).map(Duration::from_secs)
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !content_type.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    answer(status, "text/plain; charset=utf-8", body.to_string())
}

fn not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse_with_their_units() {
        assert_eq!(parse_length("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_length("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_length("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_length("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_length("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_length("s"), None);
        assert_eq!(parse_length("5x"), None);
        assert_eq!(parse_length("-5s"), None);
    }
}
