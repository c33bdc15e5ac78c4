use std::process::ExitCode;

use clap::Parser;
use highwater::{
    config::{Cli, Command},
    server::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(config) => {
            telemetry::init(&config.log);
            match Application::build(config).await {
                Ok(app) => app.run_until_stopped(server::shutdown_signal()).await,
                Err(error) => Err(error),
            }
        }
        Command::Bench(config) => {
            telemetry::init(&highwater::config::LogConfig {
                log_level: "warn".into(),
                log_format: highwater::config::LogFormat::Text,
            });
            highwater::bench::run(config).await
        }
        Command::Client(command) => return highwater::cli::run(command).await,
        Command::Migrate(config) => {
            telemetry::init(&config.log);
            server::migrate(&config.database).await
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
