//! Transport security and the secure default: TLS (optionally with client certificates) and
//! bearer tokens; without tokens the server listens only on loopback unless told otherwise.

use std::{net::SocketAddr, path::Path, sync::Arc};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::warn;

use crate::error::{ServerError as Error, ServerResult as Result};
use crate::{auth::Tokens, config::SecurityConfig};

/// What the server enforces, read from the flags at start.
pub struct Security {
    /// Accepted tokens; `None`: no authentication.
    pub tokens: Option<Arc<Tokens>>,
    pub tls: Option<ServerTlsConfig>,
}

impl Security {
    pub fn load(config: &SecurityConfig, listen: SocketAddr) -> Result<Self> {
        let tokens = match (&config.auth_file, &config.auth_tokens) {
            (Some(path), _) => Some(Tokens::load(path)?),
            (None, Some(text)) => Some(Tokens::from_text(text)?),
            (None, None) => None,
        }
        .map(Arc::new);
        if tokens.is_none() && !listen.ip().is_loopback() {
            if !config.insecure_no_auth {
                return Err(Error::Startup(format!(
                    "refusing to listen on {listen} without authentication: give --auth-file \
                     (or --auth-tokens), listen on a loopback address, or pass --insecure-no-auth \
                     to let anyone who reaches it read, write and rebuild"
                )));
            }
            warn!(
                %listen,
                "--insecure-no-auth: no authentication on a non-loopback address; anyone who reaches it can read, write and rebuild"
            );
        }
        let encrypted = config.tls_cert.is_some();
        if tokens.is_some() && !encrypted && !listen.ip().is_loopback() {
            if !config.insecure_plaintext {
                return Err(Error::Startup(format!(
                    "refusing to take bearer tokens in plaintext on {listen}: give --tls-cert and \
                     --tls-key, listen on a loopback address, or pass --insecure-plaintext if \
                     TLS ends in front of the server (a proxy or a mesh)"
                )));
            }
            warn!(
                %listen,
                "--insecure-plaintext: bearer tokens cross the network unencrypted to this address"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let identity =
                    Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
                let mut tls = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &config.tls_client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
                }
                Some(tls)
            }
            (None, None) if config.tls_client_ca.is_some() => {
                return Err(Error::Startup(
                    "--tls-client-ca needs --tls-cert and --tls-key".into(),
                ));
            }
            (None, None) => None,
            _ => {
                return Err(Error::Startup(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        Ok(Self { tokens, tls })
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| Error::Startup(format!("{flag} {}: {error}", path.display())))
}
