//! `cryptflow-kms`: a key manager of the committee. See `cryptflow-kms --help`.

use clap::{Parser, Subcommand};
use cryptflow_kms::{
    audit, launch, launch_split, rotate_master_key, state_from_config, KmsConfig, MasterKey,
};
use cryptflow_services::protocol::SiteKey;
use cryptflow_services::{config, db, shutdown};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// CryptFlow's key manager: one node of the committee that holds Shamir shares of the
/// clients' round keys and releases, for a recorded contributor set only, the sum that opens
/// the aggregate.
///
/// Configuration comes from --config FILE (TOML), then CRYPTFLOW_KMS__* environment variables
/// (e.g. CRYPTFLOW_KMS__DATABASE_URL=postgres://…; nesting with __). The master key comes from
/// CRYPTFLOW_KMS_MASTER_KEY (64 hex digits) if set, else from master_key_file. Logs: RUST_LOG
/// filters; CRYPTFLOW_LOG_FORMAT=json for JSON lines.
#[derive(Debug, Parser)]
#[command(name = "cryptflow-kms", version)]
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
    /// Run the service (API, metrics, retention task); refuses an unmigrated database.
    Serve(ConfigArg),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Load the configuration, print it (no secrets), exit 1 on error.
    CheckConfig(ConfigArg),
    /// GET /healthz from the configured listener (container probes).
    Healthcheck(ConfigArg),
    /// Check the audit log's hash chain; exit 1 if broken.
    VerifyAudit(ConfigArg),
    /// Re-wrap every sealed share under the master key in FILE.
    RotateMasterKey {
        #[command(flatten)]
        config: ConfigArg,
        /// The new master key file.
        #[arg(long)]
        new: PathBuf,
    },
    /// Refuse every round still open: run after restoring this node from a backup when the
    /// restore witness was restored too.
    RefuseOpenRounds(ConfigArg),
    /// Write a fresh random master key to FILE (mode 0600).
    GenerateMasterKey {
        /// Output file (never overwritten).
        file: PathBuf,
    },
    /// Write a fresh node signing key to FILE (PKCS#8 PEM, mode 0600) and print its public
    /// key for the committee file.
    Keygen {
        /// Output file (never overwritten).
        file: PathBuf,
    },
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(c: &ConfigArg) -> Result<KmsConfig, String> {
    config::load(c.config.as_deref(), "CRYPTFLOW_KMS__").map_err(|e| e.to_string())
}

async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::GenerateMasterKey { file } => {
            let key = MasterKey::generate();
            write_private(&file, key.to_hex().as_bytes())?;
            println!("wrote master key {} to {}", key.id(), file.display());
        }
        Command::Keygen { file } => {
            let key = SiteKey::generate();
            write_private(&file, key.to_pem().map_err(|e| e.to_string())?.as_bytes())?;
            println!("{}", key.public_key());
            eprintln!("wrote the node signing key to {}; its public key (above) goes in the committee file", file.display());
        }
        Command::Serve(c) => serve(load(&c)?).await?,
        Command::CheckConfig(c) => {
            let cfg = load(&c)?;
            for warning in cryptflow_kms::check_config(&cfg).map_err(|e| e.to_string())? {
                eprintln!("warning: {warning}");
            }
            println!("{}", config::redacted_json(&cfg));
        }
        Command::Healthcheck(c) => {
            cryptflow_services::http::healthcheck(&load(&c)?.listen, "/healthz")?
        }
        Command::Migrate(c) => {
            let cfg = load(&c)?;
            let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
            db::migrate(&pool, &cfg.database_url, &cryptflow_kms::MIGRATIONS)
                .await
                .map_err(|e| e.to_string())?;
            println!("migrations applied");
        }
        Command::VerifyAudit(c) => {
            let cfg = load(&c)?;
            let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
            match audit::verify(&pool).await.map_err(|e| e.to_string())? {
                audit::Verdict::Intact(n) => println!("audit log intact: {n} entries"),
                audit::Verdict::Broken { seq, reason } => {
                    println!("audit log BROKEN at entry {seq}: {reason}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::RotateMasterKey { config: c, new } => {
            let cfg = load(&c)?;
            let old = cryptflow_kms::master_key(&cfg).map_err(|e| e.to_string())?;
            let new = MasterKey::from_file(&new).map_err(|e| e.to_string())?;
            let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
            let path = cryptflow_kms::round_keys_path(&cfg).map_err(|e| e.to_string())?;
            let round_keys =
                cryptflow_kms::keystore::RoundKeys::open(&path).map_err(|e| e.to_string())?;
            let (keys, shares) = rotate_master_key(&pool, &round_keys, &old, &new)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "re-wrapped {keys} round keys and {shares} older shares from master key {} to {}; \
                 point master_key_file at the new key",
                old.id(),
                new.id()
            );
        }
        Command::RefuseOpenRounds(c) => {
            let state = state_from_config(&load(&c)?).await.map_err(|e| e.to_string())?;
            let n = cryptflow_kms::upkeep::refuse_open_rounds(&state).await?;
            println!("refused {n} open rounds");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a secret to a new file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    cryptflow_services::private_fs::write_new(path, contents)
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn serve(cfg: KmsConfig) -> Result<(), String> {
    let state = state_from_config(&cfg).await.map_err(|e| e.to_string())?;
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("{addr}: {e}"))
    };
    let listener = bind(cfg.listen.clone()).await?;
    let metrics = bind(cfg.metrics_listen.clone()).await?;
    let internal = match cfg.internal_listen.clone() {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tracing::info!(listen = %cfg.listen, internal = ?cfg.internal_listen, metrics = %cfg.metrics_listen,
        node = state.node().x().get(), "cryptflow-kms serving");
    for warning in state.node().committee().shape_warnings() {
        tracing::warn!("{warning}");
    }
    let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
    let tick = Duration::from_secs(cfg.tick_secs.max(1));
    let max_body = cfg.max_body_bytes;
    shutdown::serve_until_signal(
        move |stop| async move {
            match internal {
                Some(internal) => {
                    launch_split(listener, internal, metrics, state, max_body, tick, stop).await
                }
                None => launch(listener, metrics, state, max_body, tick, stop).await,
            }
        },
        grace,
    )
    .await
}
