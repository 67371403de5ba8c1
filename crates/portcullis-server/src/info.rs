//! [`ConnInfo`]: where a request came from.

use portcullis_listen::{Addr, ListenerId};

/// Where a request came from, inserted into every request's extensions (unless turned off
/// with [`Builder::conn_info`](crate::Builder::conn_info)).
///
/// ```
/// # use http::Request;
/// # fn handler(request: Request<()>) {
/// if let Some(info) = request.extensions().get::<portcullis_server::ConnInfo>() {
///     println!("request from {} on {}", info.peer, info.local);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: Addr,
    /// The local address the connection was accepted on.
    pub local: Addr,
    /// The listener that accepted it.
    pub listener: ListenerId,
    /// The trusted proxy the connection came through, when it carried a PROXY protocol
    /// header; [`ConnInfo::peer`] is then the client named in the header.
    pub proxied_by: Option<Addr>,
}
