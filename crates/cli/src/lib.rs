//! The command-line client: subcommands of the `highwater` binary that talk to a server over
//! gRPC. Tables for people by default, `--json` (one object per line) for scripts. Errors print
//! the gRPC code and the server's message and exit non-zero.

mod admin;
mod color;
mod deletion;
mod events;
mod progress;
mod render;

use std::{fmt, process::ExitCode};

use clap::{Args, Subcommand};
pub use color::ColorChoice;
use color::Paint;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

pub use admin::{HealthArgs, ProjectionArgs, RebuildArgs};
pub use deletion::DeleteStreamArgs;
pub use events::{AppendArgs, ReadAllArgs, ReadArgs, TailArgs};

/// Where the server is and how to print: shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's address: `host:port` or `http://host:port` (plaintext), `https://host:port`
    /// (TLS, with --tls-ca).
    #[arg(
        long,
        env = "HIGHWATER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Print JSON (one object per line) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Colour the output for people: auto (on a terminal, unless NO_COLOR is set), always or
    /// never.
    #[arg(long, value_enum, env = "HIGHWATER_COLOR", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Bearer token sent with every call (`highwater token` makes them).
    #[arg(long, env = "HIGHWATER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM certificate of the CA that signed the server's certificate (for https:// servers).
    #[arg(long, env = "HIGHWATER_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate, for servers that require one (with --tls-client-key).
    #[arg(long, env = "HIGHWATER_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<std::path::PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, env = "HIGHWATER_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<std::path::PathBuf>,
}

/// The client subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Append one event to a stream (data from --data or standard input).
    Append(AppendArgs),
    /// Read a stream's events.
    Read(ReadArgs),
    /// Read the global log in commit order.
    ReadAll(ReadAllArgs),
    /// Follow the global log like `tail -f`: one event per line.
    Tail(TailArgs),
    /// Delete a stream: soft (it reads as not found and may be written again) or, with
    /// --hard, erase its events for good (needs an admin token).
    DeleteStream(DeleteStreamArgs),
    /// Rebuild a projection on the server, showing its progress.
    Rebuild(RebuildArgs),
    /// List projections with their status and lag.
    Projections(ClientArgs),
    /// Show one projection: versions, lag, rebuild owner, skips and dead letters.
    Projection(ProjectionArgs),
    /// List durable subscriptions with their checkpoints and lag.
    Subscriptions(ClientArgs),
    /// Ask the server whether it is serving; exits non-zero when it is not.
    Health(HealthArgs),
    /// Make a new bearer token and print it with its entry for the auth file (--auth-file).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What the token may do: read (reads, subscriptions), write (also appends and checkpoints)
    /// or admin (also projections and rebuilds).
    #[arg(long)]
    pub role: highwater_api::token::Role,
    /// A name for the token, shown in the server's refusals and logs.
    #[arg(long)]
    pub name: String,
}

/// Why a client command failed.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with an error.
    Rpc(tonic::Status),
    /// The server could not be reached.
    Connect { server: String, reason: String },
    /// The command line or the input is not usable.
    Input(String),
    /// The server answered, and what it said is a failure (a failed rebuild, not serving).
    Failed(String),
    /// Writing the output failed (a closed pipe ends the command quietly).
    Output(std::io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Rpc(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
            CliError::Connect { server, reason } => {
                write!(f, "UNAVAILABLE: cannot reach {server}: {reason}")
            }
            CliError::Input(message) | CliError::Failed(message) => write!(f, "{message}"),
            CliError::Output(error) => write!(f, "cannot write output: {error}"),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(status)
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError::Output(error)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Runs a client subcommand; prints its error (if any) on standard error.
pub async fn run(command: ClientCommand) -> ExitCode {
    color::init(
        command
            .client_args()
            .map_or(ColorChoice::Auto, |args| args.color),
    );
    let result = match command {
        ClientCommand::Append(args) => events::append(args).await,
        ClientCommand::Read(args) => events::read(args).await,
        ClientCommand::ReadAll(args) => events::read_all(args).await,
        ClientCommand::Tail(args) => events::tail(args).await,
        ClientCommand::DeleteStream(args) => deletion::delete_stream(args).await,
        ClientCommand::Rebuild(args) => admin::rebuild(args).await,
        ClientCommand::Projections(args) => admin::projections(args).await,
        ClientCommand::Projection(args) => admin::projection(args).await,
        ClientCommand::Subscriptions(args) => admin::subscriptions(args).await,
        ClientCommand::Health(args) => admin::health(args).await,
        ClientCommand::Token(args) => token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: {error}", color::stderr(Paint::Red, "error"));
            ExitCode::FAILURE
        }
    }
}

impl ClientCommand {
    /// The connection and output options, for the commands that have them.
    fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            ClientCommand::Append(args) => Some(&args.client),
            ClientCommand::Read(args) => Some(&args.client),
            ClientCommand::ReadAll(args) => Some(&args.client),
            ClientCommand::Tail(args) => Some(&args.client),
            ClientCommand::DeleteStream(args) => Some(&args.client),
            ClientCommand::Rebuild(args) => Some(&args.client),
            ClientCommand::Projections(args) => Some(args),
            ClientCommand::Projection(args) => Some(&args.client),
            ClientCommand::Subscriptions(args) => Some(args),
            ClientCommand::Health(args) => Some(&args.client),
            ClientCommand::Token(_) => None,
        }
    }
}

fn token(args: TokenArgs) -> CliResult {
    let token = highwater_api::token::new_token();
    render::line(&format!(
        "token (give it to the client, as --token or HIGHWATER_TOKEN; it is not stored):\n{token}\n\n\
         entry for the auth file:\n[[token]]\nname = {:?}\nrole = \"{}\"\nsha256 = \"{}\"",
        args.name,
        args.role,
        highwater_api::token::hash_token(&token)
    ))?;
    Ok(())
}

/// Adds the bearer token (if any) to every call.
#[derive(Clone)]
pub struct BearerToken(pub Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to the server that sends the token.
pub type Connection = InterceptedService<Channel, BearerToken>;

/// Opens a channel to the server; a server that is down fails here, not at the first call.
async fn connect(args: &ClientArgs) -> CliResult<Connection> {
    let server = &server_uri(&args.server);
    let mut endpoint = Channel::from_shared(server.to_string()).map_err(|error| {
        CliError::Input(format!(
            "--server {server:?} is not a valid address: {error}"
        ))
    })?;
    if server.starts_with("https://") {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path)
                .map_err(|error| CliError::Input(format!("{flag} {}: {error}", path.display())))
        };
        let ca = args.tls_ca.as_deref().ok_or_else(|| {
            CliError::Input("an https:// server needs --tls-ca (the CA of its certificate)".into())
        })?;
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--tls-client-cert")?,
                read(key, "--tls-client-key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| CliError::Input(format!("TLS: {}", source_chain(&error))))?;
    }
    let token = args
        .token
        .as_deref()
        .map(|token| {
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| CliError::Input("--token has characters a header cannot carry".into()))
        })
        .transpose()?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| CliError::Connect {
            server: server.to_string(),
            reason: source_chain(&error),
        })?;
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

/// The server's address as a URI: a bare `host:port` means plaintext, as `http://host:port`.
fn server_uri(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// An error with its causes, which is where transport errors keep the useful part.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Transport errors often repeat their cause in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub use highwater_api::codes::code_name;
