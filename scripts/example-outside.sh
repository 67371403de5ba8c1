#!/usr/bin/env bash
# Builds and tests examples/axum from a copy outside the workspace, the way its docs (its
# Cargo.toml comment, README's Examples section) tell a user to: the copy is a package of its
# own (an empty `[workspace]` table, so cargo looks for no parent workspace, and its own
# Cargo.lock), and its portcullis dependency is a git dependency instead of `path`. Here the git
# URL is this checkout's (`file://`), so what it builds is the committed HEAD: commit first.
#
# The copy's Cargo.lock starts from the workspace's, so it resolves the versions CI tested; the
# portcullis crates themselves are resolved again, from git. Build output goes to
# target/copied-example (EXAMPLE_TARGET_DIR overrides it), apart from the workspace's.
# Extra arguments are passed to `cargo test`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
example=axum

git -C "$repo" rev-parse --verify --quiet HEAD >/dev/null || {
    echo "error: $repo is not a git repository with a commit; the copy builds its HEAD" >&2
    exit 2
}
if ! git -C "$repo" diff --quiet HEAD -- crates examples/"$example" Cargo.toml 2>/dev/null; then
    echo "note: uncommitted changes in $repo are not in the copy (it builds HEAD)" >&2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-example.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
copy="$tmp/$example"
cp -R "$repo/examples/$example" "$copy"
rm -rf "$copy/target"
cp "$repo/Cargo.lock" "$copy/Cargo.lock"

# The one-line portcullis dependency: `version` + `path` become the git source, features kept.
manifest="$copy/Cargo.toml"
sed -i -E 's#^(portcullis[a-z-]*) = \{ version = "[^"]*", path = "[^"]*"#\1 = { git = "file://'"$repo"'"#' "$manifest"
if grep -n 'path = "\.\./' "$manifest"; then
    echo "error: $manifest still has a path dependency into the repository (above)" >&2
    exit 1
fi
grep -q '^portcullis = { git = "file://' "$manifest" || {
    echo "error: no portcullis git dependency in $manifest after the rewrite" >&2
    exit 1
}
printf '\n# Its own workspace: cargo looks for no parent one.\n[workspace]\n' >>"$manifest"
echo "building $copy with:"
grep '^portcullis' "$manifest"

export CARGO_TARGET_DIR="${EXAMPLE_TARGET_DIR:-$repo/target/copied-example}"
cd "$copy"
cargo build
cargo test "$@"
