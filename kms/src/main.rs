//! `cryptflow-kms`: the KMS binary. See `cryptflow-kms --help`.

use cryptflow_kms::{
    audit, launch, launch_split, rotate_master_key, state_from_config, KmsConfig, MasterKey,
};
use cryptflow_services::{config, db, shutdown};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
cryptflow-kms — CryptFlow's key-management service

USAGE:
    cryptflow-kms <COMMAND> [--config FILE]

COMMANDS:
    serve                          run the service (API and metrics listeners); refuses to
                                   start on a database that is not migrated
    migrate                        apply database migrations and exit
    check-config                   load the configuration, print it (no secrets), exit 1 on error
    healthcheck                    GET /healthz from the configured listener (container probes)
    verify-audit                   check the audit log's hash chain; exit 1 if broken
    rotate-master-key --new FILE   re-wrap every sealed key under the master key in FILE
    generate-master-key FILE       write a fresh random master key to FILE (mode 0600)

Configuration comes from --config FILE (TOML), then CRYPTFLOW_KMS__* environment
variables, e.g. CRYPTFLOW_KMS__DATABASE_URL=postgres://... (nesting with __).
The master key comes from CRYPTFLOW_KMS_MASTER_KEY (64 hex digits) if set, else from
master_key_file. Logs: RUST_LOG filters; CRYPTFLOW_LOG_FORMAT=json for JSON lines.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return if args.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| PathBuf::from(&w[1]));
    shutdown::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = args[0].clone();
    let config_path = flag("--config");
    let new_key_path = flag("--new");
    let file_arg = args.get(1).cloned();
    let result = runtime.block_on(async move {
        if command == "generate-master-key" {
            let path = file_arg.ok_or("generate-master-key needs a FILE")?;
            return write_master_key(&path).map(|()| ExitCode::SUCCESS);
        }
        let cfg: KmsConfig = config::load(config_path.as_deref(), "CRYPTFLOW_KMS__").map_err(|e| e.to_string())?;
        match command.as_str() {
            "serve" => serve(cfg).await,
            "check-config" => {
                println!("{}", config::redacted_json(&cfg));
                Ok(ExitCode::SUCCESS)
            }
            "healthcheck" => cryptflow_services::http::healthcheck(&cfg.listen, "/healthz").map(|()| ExitCode::SUCCESS),
            "migrate" => {
                let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
                db::migrate(&pool, &cfg.database_url, &cryptflow_kms::MIGRATIONS).await.map_err(|e| e.to_string())?;
                println!("migrations applied");
                Ok(ExitCode::SUCCESS)
            }
            "verify-audit" => {
                let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
                match audit::verify(&pool).await.map_err(|e| e.to_string())? {
                    audit::Verdict::Intact(n) => {
                        println!("audit log intact: {n} entries");
                        Ok(ExitCode::SUCCESS)
                    }
                    audit::Verdict::Broken { seq, reason } => {
                        println!("audit log BROKEN at entry {seq}: {reason}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            "rotate-master-key" => {
                let new_path = new_key_path.ok_or("rotate-master-key needs --new FILE")?;
                let old = cryptflow_kms::master_key(&cfg).map_err(|e| e.to_string())?;
                let new = MasterKey::from_file(&new_path).map_err(|e| e.to_string())?;
                let pool = db::connect(&cfg.database_url, 1).await.map_err(|e| e.to_string())?;
                let n = rotate_master_key(&pool, &old, &new).await.map_err(|e| e.to_string())?;
                println!("re-wrapped {n} keys from master key {} to {}; point master_key_file at the new key", old.id(), new.id());
                Ok(ExitCode::SUCCESS)
            }
            other => Err(format!("unknown command `{other}`; see --help")),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_master_key(path: &str) -> Result<(), String> {
    use std::io::Write;
    let key = MasterKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| format!("{path}: {e}"))?;
    f.write_all(key.to_hex().as_bytes()).map_err(|e| format!("{path}: {e}"))?;
    println!("wrote master key {} to {path}", key.id());
    Ok(())
}

async fn serve(cfg: KmsConfig) -> Result<ExitCode, String> {
    let state = state_from_config(&cfg).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("{}: {e}", cfg.listen))?;
    let metrics = tokio::net::TcpListener::bind(&cfg.metrics_listen)
        .await
        .map_err(|e| format!("{}: {e}", cfg.metrics_listen))?;
    let internal = match &cfg.internal_listen {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{addr}: {e}"))?)
        }
        None => None,
    };
    tracing::info!(listen = %cfg.listen, internal = ?cfg.internal_listen, metrics = %cfg.metrics_listen, "cryptflow-kms serving");
    let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
    let max_body = cfg.max_body_bytes;
    shutdown::serve_until_signal(
        move |stop| async move {
            match internal {
                Some(internal) => {
                    launch_split(listener, internal, metrics, state, max_body, stop).await
                }
                None => launch(listener, metrics, state, max_body, stop).await,
            }
        },
        grace,
    )
    .await
    .map(|()| ExitCode::SUCCESS)
}
