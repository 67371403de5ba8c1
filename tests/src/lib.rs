//! portcullis end-to-end tests live in `tests/`. This library holds no code: it only compiles
//! the Rust snippets of the guides below as doctests, so they stay true to the API.
//!
//! The guides are read only when doctests are compiled (`cfg(doctest)`): a packaged copy of
//! this crate (`cargo package`) has no `docs/` folder beside it.

#[cfg_attr(doctest, doc = include_str!("../../docs/coming-from-axum.md"))]
mod coming_from_axum {}

#[cfg_attr(doctest, doc = include_str!("../../docs/edge-security.md"))]
mod edge_security {}

#[cfg_attr(doctest, doc = include_str!("../../docs/fleet-limits.md"))]
mod fleet_limits {}

#[cfg_attr(doctest, doc = include_str!("../../docs/health.md"))]
mod health {}

#[cfg_attr(doctest, doc = include_str!("../../docs/slow-clients.md"))]
mod slow_clients {}
