mod command;

use std::process::ExitCode;

use clap::Parser;
use command::{Cli, Command};
use highwater::{
    config::{LogConfig, LogFormat},
    server::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> =
        match cli.command.unwrap_or(Command::Serve(cli.serve)) {
            Command::Serve(config) => {
                telemetry::init(&config.log);
                match Application::build(config).await {
                    Ok(app) => app
                        .run_until_stopped(server::shutdown_signal())
                        .await
                        .map_err(Into::into),
                    Err(error) => Err(error.into()),
                }
            }
            Command::Bench(config) => {
                telemetry::init(&LogConfig {
                    log_level: "warn".into(),
                    log_format: LogFormat::Text,
                });
                highwater_bench::run(config).await.map_err(Into::into)
            }
            Command::Client(command) => return highwater_cli::run(command).await,
            Command::Completions { shell } => {
                command::print_completions(shell);
                Ok(())
            }
            Command::Migrate(config) => {
                telemetry::init(&config.log);
                server::migrate(&config.database).await.map_err(Into::into)
            }
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
