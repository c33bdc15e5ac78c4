//! The `highwater` command line: the server's commands (`serve`, the default, and `migrate`),
//! the client commands of `highwater-cli` and the load generator of `highwater-bench`. It lives in
//! the binary, so the server library depends on neither client crate.

use clap::{Parser, Subcommand};
use highwater::config::{MigrateConfig, ServeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "highwater",
    version,
    about = "Highwater: a gRPC event store on PostgreSQL",
    long_about = "Highwater: a gRPC event store on PostgreSQL.\n\nWith no subcommand, `highwater` \
                  runs `serve`. With no DATABASE_URL it runs a private PostgreSQL from the \
                  machine's own binaries in --data-dir.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve(ServeConfig),
    /// Apply database migrations and exit.
    Migrate(MigrateConfig),
    /// Measure a server (started on a fresh database) against raw PostgreSQL, and print a report.
    Bench(highwater_bench::BenchConfig),
    #[command(flatten)]
    Client(highwater_cli::ClientCommand),
}
