//! A projection's name, as a type: it becomes part of schema, table, view and function names
//! (`projection_<name>.v<N>`, `projections.<name>`), so it is spliced into SQL, and the only way
//! to make one is to check it (`ProjectionName::parse`, which deserializing goes through too).

use std::{fmt, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name: with `projection_` and a version suffix it stays within PostgreSQL's 63
/// bytes of an identifier.
pub const MAX_NAME_LEN: usize = 40;

/// 1 to [`MAX_NAME_LEN`] lowercase ASCII letters, digits or `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProjectionName(String);

impl ProjectionName {
    /// The name, if it is a valid one; otherwise why not.
    pub fn parse(name: &str) -> Result<Self, String> {
        let mut chars = name.chars();
        let valid = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
            && name.len() <= MAX_NAME_LEN
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(name.to_string()))
        } else {
            Err(format!(
                "{name:?} must be 1 to {MAX_NAME_LEN} lowercase letters, digits or _ and start with a letter"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ProjectionName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProjectionName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_identifiers_are_names() {
        for good in ["a", "cart_summary", "v2", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(ProjectionName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Cart",
            "1st",
            "_x",
            "a-b",
            "a;drop table events",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(ProjectionName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let refused = serde_json::from_str::<ProjectionName>("\"Bad Name\"").unwrap_err();
        assert!(
            refused.to_string().contains("lowercase letters"),
            "{refused}"
        );
    }
}
