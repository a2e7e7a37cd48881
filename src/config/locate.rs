//! Where a key sits in the YAML text, so config errors name the line and column, or the environment variable that set the value.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_norway::Value;

use super::ConfigError;

/// A step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub(super) fn key(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }

    fn from_tracked(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
            serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
            serde_path_to_error::Segment::Unknown => Seg::key("?"),
        }
    }
}

/// A key path the way errors show it: `etcd.endpoints[1]`, or `(root)`.
pub(super) fn show_path(path: &[Seg]) -> String {
    if path.is_empty() {
        // Rendering the root as "." would read as a typo.
        return "(root)".to_owned();
    }
    let mut shown = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(key);
            }
            Seg::Index(index) => shown.push_str(&format!("[{index}]")),
        }
    }
    shown
}

/// Where the parsed values came from, so an error points at the line of the
/// file, or at the environment variable that set the value.
pub(super) struct Origin<'a> {
    /// The YAML text, when there is one.
    pub(super) text: Option<&'a str>,
    /// The environment variables applied, in order.
    pub(super) overrides: &'a [Override],
}

impl Origin<'_> {
    /// Deserializes `value`, found at `at`, with `deserialize`; an error
    /// names the key path from the document's root. Callers pass a closure
    /// (`|d| T::deserialize(d)`): a function path would not be general over
    /// the tracking deserializer's lifetimes.
    pub(super) fn parse<T>(
        &self,
        value: Value,
        at: &[Seg],
        deserialize: impl FnOnce(
            serde_path_to_error::Deserializer<'_, '_, Value>,
        ) -> Result<T, serde_norway::Error>,
    ) -> Result<T, ConfigError> {
        let mut track = serde_path_to_error::Track::new();
        deserialize(serde_path_to_error::Deserializer::new(value, &mut track)).map_err(|error| {
            let mut path = at.to_vec();
            path.extend(track.path().iter().map(Seg::from_tracked));
            self.parse_failed(&path, error.to_string())
        })
    }

    fn parse_failed(&self, path: &[Seg], message: String) -> ConfigError {
        let key = show_path(path);
        if let Some(cause) = self.cause(path) {
            return ConfigError::EnvParseFailed {
                variable: cause.variable.clone(),
                value: cause.shown.clone(),
                key,
                message,
            };
        }
        // A document value carries no position, so find the key in the text.
        let message = match self.text.and_then(|text| locate(text, path)) {
            Some(at) => format!("{message} at line {} column {}", at.line(), at.column()),
            None => message,
        };
        ConfigError::ParseFailed { key, message }
    }

    /// The name of the variable that set the value at `path`, if one did.
    pub(super) fn variable(&self, path: &[Seg]) -> Option<String> {
        self.cause(path).map(|cause| cause.variable.clone())
    }

    /// The variable behind a value at `path`, if one is.
    fn cause(&self, path: &[Seg]) -> Option<&Override> {
        // The last applied wins, as it does in the document.
        self.overrides.iter().rev().find(|o| o.explains(path))
    }

    /// Names the variable that set a rejected value, if one did.
    pub(super) fn blame_env(&self, error: ConfigError) -> ConfigError {
        let ConfigError::Invalid { key, .. } = &error else {
            return error;
        };
        let path: Vec<_> = key.split('.').map(Seg::key).collect();
        match self.cause(&path) {
            Some(cause) => ConfigError::InvalidFromEnv {
                variable: cause.variable.clone(),
                source: Box::new(error),
            },
            None => error,
        }
    }
}

/// Where the key (or sequence element) at `path` is written in `text`.
pub(super) fn locate(text: &str, path: &[Seg]) -> Option<serde_norway::Location> {
    if path.is_empty() {
        return None;
    }
    let document = serde_norway::Deserializer::from_str(text).next()?;
    let seek = Seek { path, mark: true };
    seek.deserialize(document).err()?.location()
}

/// The scalar at `path` exactly as `text` writes it (`0123`, not `123`).
pub(super) fn raw_scalar(text: &str, path: &[Seg]) -> Option<String> {
    let document = serde_norway::Deserializer::from_str(text).next()?;
    let seek = Seek { path, mark: false };
    seek.deserialize(document).ok().flatten()
}

/// Walks a YAML text along a path with serde_norway's own deserializer, the
/// one place that knows where each node is written and how: with `mark`, it
/// fails at the path's last key (or element), the error carrying that
/// position; without, it returns the scalar there as written.
struct Seek<'p> {
    path: &'p [Seg],
    mark: bool,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.path.first() {
            None => String::deserialize(deserializer).map(Some),
            Some(Seg::Key(_)) => deserializer.deserialize_map(self),
            Some(Seg::Index(_)) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence on the key path")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(
                "a mapping where the path has an index",
            ));
        };
        let mark = self.mark && rest.is_empty();
        let mut found = None;
        // Every entry is read: serde_norway refuses a mapping left half read.
        while let Some(hit) = map.next_key_seed(KeyIs { wanted, mark })? {
            if hit && found.is_none() {
                let seek = Seek {
                    path: rest,
                    mark: self.mark,
                };
                found = Some(map.next_value_seed(seek)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found.flatten())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(
                "a sequence where the path has a key",
            ));
        };
        let mut found = None;
        let mut index = 0;
        loop {
            let item = if index != *wanted {
                seq.next_element::<IgnoredAny>()?.map(|_| None)
            } else if self.mark && rest.is_empty() {
                seq.next_element_seed(Refuse)?.map(|()| None)
            } else {
                let seek = Seek {
                    path: rest,
                    mark: self.mark,
                };
                seq.next_element_seed(seek)?
            };
            match item {
                None => return Ok(found),
                Some(value) if index == *wanted => found = value,
                Some(_) => {}
            }
            index += 1;
        }
    }
}

/// A mapping key compared with the wanted one, refused when it matches and
/// its position is wanted: an error raised while serde_norway reads the key
/// carries the key's position.
struct KeyIs<'w> {
    wanted: &'w str,
    mark: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.mark) {
            (true, true) => Err(E::custom("found")),
            (hit, _) => Ok(hit),
        }
    }
}

/// Refuses whatever it is given, so serde_norway's error carries its position.
struct Refuse;

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Refuse {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every visit falls back to serde's invalid-type error, by design.
        f.write_str("nothing")
    }
}

/// A YAML scalar the way it reads in YAML, if it is one.
pub(super) fn plain_scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("~".to_owned()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// One environment variable applied to the document.
#[derive(Debug)]
pub(super) struct Override {
    pub(super) variable: String,
    /// Its value as errors show it: redacted for the password.
    pub(super) shown: String,
    /// The key path it sets.
    pub(super) path: Vec<Seg>,
    /// How many leading segments of `path` the document had already; the
    /// variable created the rest.
    pub(super) existed: usize,
}

impl Override {
    /// Whether an error at `path` is this variable's doing: it is at or
    /// below the value set, or at a key only the variable created.
    pub(super) fn explains(&self, path: &[Seg]) -> bool {
        path.starts_with(&self.path) || (self.path.starts_with(path) && path.len() > self.existed)
    }
}
