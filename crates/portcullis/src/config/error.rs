//! [`ConfigError`]: why a configuration could not be read, naming the file, line and key.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::ServerConfig;

/// Why a configuration could not be read: the file could not be read, or it is not valid.
///
/// `Display` is one line naming the file (when there is one), the line and the key:
/// `invalid config file /etc/server.toml, line 3, key `header-timeout`: invalid duration "5"
/// ...`.
#[derive(Debug)]
pub struct ConfigError {
    path: Option<PathBuf>,
    line: Option<usize>,
    key: Option<String>,
    message: String,
    io: Option<io::Error>,
}

impl ConfigError {
    pub(super) fn read(path: &Path, error: io::Error) -> Self {
        Self {
            path: Some(path.to_owned()),
            line: None,
            key: None,
            message: error.to_string(),
            io: Some(error),
        }
    }

    pub(super) fn from_toml(path: Option<&Path>, text: &str, error: &toml::de::Error) -> Self {
        let start = error.span().map(|span| span.start.min(text.len()));
        let line = start.map(|start| text[..start].matches('\n').count() + 1);
        let mut message = error.message().trim().replace('\n', "; ");
        let mut key = start.and_then(|start| key_at(text, start));
        if let Some(unknown) = unknown_key(&message) {
            message = match closest(&unknown) {
                Some(near) => format!("unknown key; did you mean `{near}`?"),
                None => format!(
                    "unknown key (the keys are the flag names without `--`: {})",
                    ServerConfig::KEYS.join(", ")
                ),
            };
            key = Some(unknown);
        }
        Self {
            path: path.map(Path::to_owned),
            line,
            key,
            message,
            io: None,
        }
    }

    /// The file, when the configuration came from one.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The line (from 1) of the problem, when it is known.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key the problem is about, when it is known.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the file, line and key.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.io.is_some() {
            let path = self.path.as_deref().unwrap_or(Path::new(""));
            return write!(
                f,
                "cannot read config file {}: {}",
                path.display(),
                self.message
            );
        }
        match &self.path {
            Some(path) => write!(f, "invalid config file {}", path.display())?,
            None => f.write_str("invalid config")?,
        }
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io.as_ref().map(|e| e as _)
    }
}

/// The key of the `key = value` whose value covers byte `at`: the nearest line at or before
/// it that has a `=` outside of brackets and quotes (a multi-line array spans several lines).
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    text[..line_end].lines().rev().find_map(|line| {
        let (raw, _) = line.split_once('=')?;
        let raw = raw.trim();
        let quoted = |q: char| raw.starts_with(q) != raw.ends_with(q);
        if quoted('"') || quoted('\'') {
            return None; // a `=` inside a string of a continued array
        }
        let key = raw.trim_matches(['"', '\'']);
        let plain = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        (!key.is_empty() && plain).then(|| key.to_owned())
    })
}

/// The key of serde's "unknown field `x`, expected one of ..." message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// The known key within two edits of `unknown`, if there is one.
fn closest(unknown: &str) -> Option<&'static str> {
    let normalized = unknown.replace('_', "-");
    ServerConfig::KEYS
        .iter()
        .map(|key| (edit_distance(&normalized, key), *key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, key)| key)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
