//! The bearer-token format the server and every client share: `hw_` and 64 hex digits, sent as
//! `authorization: Bearer <token>`, stored by the server only as its SHA-256; and the roles a
//! token can have.

use std::{fmt, str::FromStr};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and subscriptions.
    Read,
    /// Also Append, SaveCheckpoint and DeleteSubscription.
    Write,
    /// Also the Admin service: projections and rebuilds.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected read, write or admin"
            )),
        }
    }
}

/// The SHA-256 of a token, as the auth file stores it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The 32 bytes of a stored hash written as 64 hex digits; `None` if it is not that.
pub fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// A new random token: `hw_` and 64 hex digits (256 bits from the system's random source).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let random: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("hw_{random}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_random_and_hash_to_64_hex_digits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert!(decode_hash(&hash_token(&a)).is_some());
    }

    #[test]
    fn roles_read_back_from_their_names_and_refuse_others() {
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("unknown role"));
    }
}
