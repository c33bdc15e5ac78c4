//! The command-line client: subcommands of the `highwater` binary that talk to a server over
//! gRPC. Tables for people by default, `--json` (one object per line) for scripts. Errors print
//! the gRPC code and the server's message and exit non-zero.

mod admin;
mod events;
mod progress;
mod render;

use std::{fmt, process::ExitCode};

use clap::{Args, Subcommand};
use tonic::{Code, transport::Channel};

pub use admin::{HealthArgs, ProjectionArgs, RebuildArgs};
pub use events::{AppendArgs, ReadAllArgs, ReadArgs, TailArgs};

/// Where the server is and how to print: shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        env = "HIGHWATER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Print JSON (one object per line) instead of tables.
    #[arg(long)]
    pub json: bool,
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
    let result = match command {
        ClientCommand::Append(args) => events::append(args).await,
        ClientCommand::Read(args) => events::read(args).await,
        ClientCommand::ReadAll(args) => events::read_all(args).await,
        ClientCommand::Tail(args) => events::tail(args).await,
        ClientCommand::Rebuild(args) => admin::rebuild(args).await,
        ClientCommand::Projections(args) => admin::projections(args).await,
        ClientCommand::Projection(args) => admin::projection(args).await,
        ClientCommand::Subscriptions(args) => admin::subscriptions(args).await,
        ClientCommand::Health(args) => admin::health(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Opens a channel to the server; a server that is down fails here, not at the first call.
async fn connect(server: &str) -> CliResult<Channel> {
    let endpoint = Channel::from_shared(server.to_string()).map_err(|error| {
        CliError::Input(format!(
            "--server {server:?} is not a valid address: {error}"
        ))
    })?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| CliError::Connect {
            server: server.to_string(),
            reason: source_chain(&error),
        })
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

/// The canonical name of a gRPC status code, as the protocol spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
