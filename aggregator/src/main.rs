//! `cryptflow-aggregator`: the aggregator binary. See `cryptflow-aggregator --help`.

use cryptflow_aggregator::{launch, state_from_config, AggregatorConfig};
use cryptflow_services::{config, db, shutdown};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
cryptflow-aggregator — CryptFlow's untrusted aggregator

USAGE:
    cryptflow-aggregator <COMMAND> [--config FILE]

COMMANDS:
    serve         run the service (API and metrics listeners, deadline task); refuses to
                  start on a database that is not migrated
    migrate       apply database migrations and exit
    check-config  load the configuration, print it (no secrets), exit 1 on error
    healthcheck   GET /healthz from the configured listener (container probes)

Configuration comes from --config FILE (TOML), then CRYPTFLOW_AGGREGATOR__* environment
variables, e.g. CRYPTFLOW_AGGREGATOR__KMS_URL=http://kms:8081 (nesting with __).
Logs: RUST_LOG filters; CRYPTFLOW_LOG_FORMAT=json for JSON lines.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return if args.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    shutdown::init_tracing();
    let config_path = args.windows(2).find(|w| w[0] == "--config").map(|w| PathBuf::from(&w[1]));
    let command = args[0].clone();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let cfg: AggregatorConfig =
            config::load(config_path.as_deref(), "CRYPTFLOW_AGGREGATOR__").map_err(|e| e.to_string())?;
        match command.as_str() {
            "serve" => {
                let state = state_from_config(&cfg).await.map_err(|e| e.to_string())?;
                let listener = tokio::net::TcpListener::bind(&cfg.listen).await.map_err(|e| format!("{}: {e}", cfg.listen))?;
                let metrics = tokio::net::TcpListener::bind(&cfg.metrics_listen)
                    .await
                    .map_err(|e| format!("{}: {e}", cfg.metrics_listen))?;
                tracing::info!(listen = %cfg.listen, metrics = %cfg.metrics_listen, "cryptflow-aggregator serving");
                let tick = Duration::from_secs(cfg.tick_secs.max(1));
                let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
                shutdown::serve_until_signal(move |stop| launch(listener, metrics, state, tick, stop), grace).await
            }
            "check-config" => {
                println!("{}", config::redacted_json(&cfg));
                Ok(())
            }
            "healthcheck" => cryptflow_services::http::healthcheck(&cfg.listen, "/healthz"),
            "migrate" => {
                let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
                db::migrate(&pool, &cfg.database_url, &cryptflow_aggregator::MIGRATIONS).await.map_err(|e| e.to_string())?;
                println!("migrations applied");
                Ok(())
            }
            other => Err(format!("unknown command `{other}`; see --help")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
