//! Highwater's public protocol in Rust, shared by the server and every Rust client: the messages,
//! services and clients generated from `proto/` (with a codec that answers undecodable bytes
//! `INVALID_ARGUMENT`), the descriptor set reflection serves, status code names, and the bearer-token format and
//! roles. It knows nothing of the server: a client built on it talks to any Highwater over the
//! wire, like the Python and TypeScript clients generated from the same files.

pub mod codec;
pub mod codes;
pub mod pb;
pub mod token;
