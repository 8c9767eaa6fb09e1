//! `cryptflow-aggregator`: the aggregator. See `cryptflow-aggregator --help`.

use clap::{Parser, Subcommand};
use cryptflow_aggregator::{launch, state_from_config, AggregatorConfig};
use cryptflow_services::{config, db, shutdown};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// CryptFlow's untrusted aggregator: takes clients' encrypted uploads, sums them, reports the
/// contributor set to the key managers and publishes the aggregate.
///
/// Configuration comes from --config FILE (TOML), then CRYPTFLOW_AGGREGATOR__* environment
/// variables (e.g. CRYPTFLOW_AGGREGATOR__DATABASE_URL=postgres://…; nesting with __). Logs:
/// RUST_LOG filters; CRYPTFLOW_LOG_FORMAT=json for JSON lines.
#[derive(Debug, Parser)]
#[command(name = "cryptflow-aggregator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (API, metrics, background task); refuses an unmigrated database.
    Serve(ConfigArg),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Load the configuration, print it (no secrets), exit 1 on error.
    CheckConfig(ConfigArg),
    /// GET /healthz from the configured listener (container probes).
    Healthcheck(ConfigArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shutdown::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(c: &ConfigArg) -> Result<AggregatorConfig, String> {
    config::load(c.config.as_deref(), "CRYPTFLOW_AGGREGATOR__").map_err(|e| e.to_string())
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(c) => {
            let cfg = load(&c)?;
            let state = state_from_config(&cfg).await.map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .map_err(|e| format!("{}: {e}", cfg.listen))?;
            let metrics = tokio::net::TcpListener::bind(&cfg.metrics_listen)
                .await
                .map_err(|e| format!("{}: {e}", cfg.metrics_listen))?;
            tracing::info!(listen = %cfg.listen, metrics = %cfg.metrics_listen, "cryptflow-aggregator serving");
            let tick = Duration::from_millis(cfg.tick_millis.max(10));
            let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
            shutdown::serve_until_signal(
                move |stop| launch(listener, metrics, state, tick, stop),
                grace,
            )
            .await
        }
        Command::CheckConfig(c) => {
            let cfg = load(&c)?;
            let committee = cryptflow_aggregator::check_config(&cfg).map_err(|e| e.to_string())?;
            for warning in committee.shape_warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}", config::redacted_json(&cfg));
            Ok(())
        }
        Command::Healthcheck(c) => {
            cryptflow_services::http::healthcheck(&load(&c)?.listen, "/healthz")
        }
        Command::Migrate(c) => {
            let cfg = load(&c)?;
            let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
            db::migrate(&pool, &cfg.database_url, &cryptflow_aggregator::MIGRATIONS)
                .await
                .map_err(|e| e.to_string())?;
            println!("migrations applied");
            Ok(())
        }
    }
}
