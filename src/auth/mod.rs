//! Bearer tokens with roles. The auth file holds only SHA-256 hashes of the tokens; a presented
//! token is hashed and compared with every stored hash in constant time.
//!
//! ```toml
//! [[token]]
//! name = "billing-service"
//! role = "write"
//! sha256 = "<64 hex digits: the SHA-256 of the token>"
//! ```
//!
//! `highwater token --role write --name billing-service` makes a token and prints its entry.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use highwater_api::token::decode_hash;
pub use highwater_api::token::{Role, hash_token, new_token};

use crate::error::{ServerError as Error, ServerResult as Result};

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header or an unknown token: UNAUTHENTICATED.
    Unauthenticated(&'static str),
    /// A known token whose role is too low: PERMISSION_DENIED.
    Forbidden {
        name: String,
        role: Role,
        needs: Role,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
}

/// One accepted token.
#[derive(Debug)]
struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The accepted tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Reads an auth file. Refuses a file without tokens: it would lock everyone out.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::Startup(format!("cannot read auth file {}: {error}", path.display()))
        })?;
        Self::parse(&text)
            .map_err(|message| Error::Startup(format!("auth file {}: {message}", path.display())))
    }

    /// Reads tokens given inline, in the auth file's format (from --auth-tokens).
    pub fn from_text(text: &str) -> Result<Self> {
        Self::parse(text).map_err(|message| Error::Startup(format!("--auth-tokens: {message}")))
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let file: AuthFile = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.token.is_empty() {
            return Err("no [[token]] entries".into());
        }
        let tokens = file
            .token
            .into_iter()
            .map(|entry| {
                let hash = decode_hash(&entry.sha256).ok_or_else(|| {
                    format!("token {:?}: sha256 must be 64 hex digits", entry.name)
                })?;
                Ok(Token {
                    name: entry.name,
                    role: entry.role,
                    hash,
                })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Self { tokens })
    }

    /// Checks an `authorization` header value against the role a call needs.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        needs: Role,
    ) -> std::result::Result<Role, Denied> {
        let header = authorization.ok_or(Denied::Unauthenticated("missing bearer token"))?;
        let presented = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(Denied::Unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ))?;
        let hash: [u8; 32] = Sha256::digest(presented).into();
        // Every stored hash is compared, so the time taken does not depend on which one matched.
        let mut found: Option<&Token> = None;
        for token in &self.tokens {
            if constant_time_eq(&token.hash, &hash) {
                found = Some(token);
            }
        }
        let token = found.ok_or(Denied::Unauthenticated("unknown bearer token"))?;
        if token.role < needs {
            return Err(Denied::Forbidden {
                name: token.name.clone(),
                role: token.role,
                needs,
            });
        }
        Ok(token.role)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role a gRPC method needs, from its path (`/package.Service/Method`); `None`: open to all
/// (health and reflection).
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "highwater.v1.EventStoreService" => Some(match method {
            "ReadStream" | "ReadAll" | "SubscribeAll" | "SubscribeStream" | "ListSubscriptions" => {
                Role::Read
            }
            "Append" | "SaveCheckpoint" | "DeleteSubscription" | "DeleteStream"
            | "SaveSnapshot" => Role::Write,
            // Unknown methods (answered UNIMPLEMENTED after the check) need the most.
            _ => Role::Admin,
        }),
        // The admin service, and anything unknown (answered UNIMPLEMENTED after the check).
        _ => Some(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let file = format!(
            "[[token]]\nname = \"reader\"\nrole = \"read\"\nsha256 = \"{}\"\n\
             [[token]]\nname = \"writer\"\nrole = \"write\"\nsha256 = \"{}\"\n",
            hash_token("r-secret"),
            hash_token("w-secret")
        );
        Tokens::parse(&file).unwrap()
    }

    #[test]
    fn roles_include_the_lower_ones_and_unknown_tokens_are_unauthenticated() {
        let tokens = tokens();
        assert_eq!(
            tokens.check(Some(b"Bearer w-secret"), Role::Read),
            Ok(Role::Write)
        );
        assert_eq!(
            tokens.check(Some(b"Bearer w-secret"), Role::Write),
            Ok(Role::Write)
        );
        assert!(matches!(
            tokens.check(Some(b"Bearer r-secret"), Role::Write),
            Err(Denied::Forbidden {
                role: Role::Read,
                needs: Role::Write,
                ..
            })
        ));
        assert!(matches!(
            tokens.check(Some(b"Bearer w-secret"), Role::Admin),
            Err(Denied::Forbidden { .. })
        ));
        assert!(matches!(
            tokens.check(Some(b"Bearer nope"), Role::Read),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.check(Some(b"w-secret"), Role::Read),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.check(None, Role::Read),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(Tokens::parse("").unwrap_err().contains("no [[token]]"));
        let short = "[[token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"abc\"\n";
        assert!(Tokens::parse(short).unwrap_err().contains("64 hex digits"));
        let role = format!(
            "[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"{}\"\n",
            hash_token("t")
        );
        assert!(Tokens::parse(&role).is_err());
    }

    #[test]
    fn methods_map_to_roles_and_health_stays_open() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/highwater.v1.EventStoreService/ReadAll"),
            Some(Role::Read)
        );
        assert_eq!(
            required_role("/highwater.v1.EventStoreService/Append"),
            Some(Role::Write)
        );
        assert_eq!(
            required_role("/highwater.v1.AdminService/AdminRebuild"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/other.Service/Call"), Some(Role::Admin));
    }
}
