//! portcullis end-to-end tests live in `tests/`. This library holds no code: it only compiles
//! the Rust snippets of the guides below as doctests, so they stay true to the API.

#[doc = include_str!("../../docs/coming-from-axum.md")]
mod coming_from_axum {}
