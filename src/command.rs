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
    /// Print a shell completion script: `highwater completions bash > /etc/bash_completion.d/highwater`
    /// (or zsh, fish, powershell, elvish).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(highwater_cli::ClientCommand),
}

/// Writes the completion script of `shell` for the whole command line to standard output.
pub fn print_completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "highwater", &mut std::io::stdout());
}
