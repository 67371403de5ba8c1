//! Label values from closed sets: methods, status codes, route templates.

use std::sync::Arc;

use http::{Extensions, Method};

use super::OTHER_METHOD;

/// The values of the method label, indexed by [`method_index`].
pub(crate) const METHODS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    OTHER_METHOD,
];

/// The position of `method`'s label value in [`METHODS`].
#[inline]
pub(crate) fn method_index(method: &Method) -> u8 {
    // Most frequent first; a comparison of standard methods is a comparison of enum tags.
    if *method == Method::GET {
        0
    } else if *method == Method::POST {
        2
    } else if *method == Method::HEAD {
        1
    } else if *method == Method::PUT {
        3
    } else if *method == Method::DELETE {
        4
    } else if *method == Method::PATCH {
        8
    } else if *method == Method::OPTIONS {
        6
    } else if *method == Method::CONNECT {
        5
    } else if *method == Method::TRACE {
        7
    } else {
        9
    }
}

/// The route template a request matched, as a request or response extension: the value of
/// the `http_route` label.
///
/// A router (or the handler) inserts it; [`HttpMetricsLayer`](super::HttpMetricsLayer) reads
/// it from the request when the layer runs inside the router, otherwise from the response.
/// It must be the template (`/users/{id}`), never the path the client sent (`/users/42`):
/// templates are a closed set fixed by the code, paths are whatever clients send.
///
/// ```
/// use portcullis_metrics::Route;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(Route::new("/users/{id}"));
/// assert_eq!(response.extensions().get::<Route>().map(Route::as_str), Some("/users/{id}"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route(Name);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Route {
    /// A route template written in the code.
    #[must_use]
    pub const fn new(template: &'static str) -> Self {
        Route(Name::Static(template))
    }

    /// A route template built at start-up (from configuration, say).
    #[must_use]
    pub fn shared(template: Arc<str>) -> Self {
        Route(Name::Shared(template))
    }

    /// The template, if it is a `&'static str` (its address then identifies it).
    pub(crate) fn as_static(&self) -> Option<&'static str> {
        match &self.0 {
            Name::Static(template) => Some(template),
            Name::Shared(_) => None,
        }
    }

    /// The template.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Static(template) => template,
            Name::Shared(template) => template,
        }
    }
}

/// The route named in `extensions`: portcullis's [`Route`], else axum's `MatchedPath` (feature
/// `axum`).
#[inline]
pub(crate) fn route_of(extensions: &Extensions) -> Option<Route> {
    if let Some(route) = extensions.get::<Route>() {
        return Some(route.clone());
    }
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(Route::shared(Arc::from(matched.as_str())));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_method_has_its_own_label_and_the_rest_are_other() {
        let standard = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
            Method::OPTIONS,
            Method::TRACE,
            Method::PATCH,
        ];
        for method in &standard {
            assert_eq!(METHODS[usize::from(method_index(method))], method.as_str());
        }
        for other in ["PROPFIND", "get", "BREW", "X"] {
            let method = Method::from_bytes(other.as_bytes()).expect("valid token");
            assert_eq!(METHODS[usize::from(method_index(&method))], OTHER_METHOD);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_method_token_maps_into_the_closed_set(token in "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,40}") {
            let method = Method::from_bytes(token.as_bytes()).expect("a token is a method");
            let label = METHODS[usize::from(method_index(&method))];
            proptest::prop_assert!(label == token || label == OTHER_METHOD);
        }
    }
}
