//! `cryptflow-devstack`: runs a local stack (key managers and an aggregator on loopback,
//! SQLite in a temporary directory) until interrupted, and writes what a tool needs to talk to
//! it — URLs and tokens for every role — as JSON. CI points schemathesis at it.
//!
//! ```text
//! cryptflow-devstack --nodes 3 --threshold 2 --sites 3 --out stack.json
//! ```

use clap::Parser;
use cryptflow_devstack::LocalStack;
use cryptflow_services::protocol::node_audience;
use cryptflow_services::{ClientId, Role};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs a local CryptFlow stack until interrupted (Ctrl-C or SIGTERM).
#[derive(Debug, Parser)]
#[command(name = "cryptflow-devstack", version)]
struct Args {
    /// Key managers.
    #[arg(long, default_value_t = 1)]
    nodes: u8,
    /// Threshold.
    #[arg(long, default_value_t = 1)]
    threshold: u8,
    /// Roster sites (`site-0` …).
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Roster readers (members that may read every round's mean, e.g. a Flower ServerApp).
    #[arg(long, value_delimiter = ',')]
    readers: Vec<String>,
    /// Run the services as separate processes (the release binaries next to this one).
    #[arg(long)]
    processes: bool,
    /// Where to write the stack's description (JSON).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let readers: Vec<&str> = args.readers.iter().map(String::as_str).collect();
    let stack = LocalStack::builder()
        .nodes(args.nodes, args.threshold)
        .sites(args.sites)
        .readers(&readers)
        .processes(args.processes)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for n in stack.committee().nodes() {
        let audience = node_audience(n);
        let roster: serde_json::Map<String, serde_json::Value> = stack
            .site_ids()
            .iter()
            .filter_map(|id| {
                let key = stack.site_key(id.as_str())?;
                Some((id.to_string(), key.roster_token(id, Role::Client, &audience).into()))
            })
            .collect();
        nodes.push(serde_json::json!({ "x": n.x, "url": n.url, "roster_tokens": roster }));
    }
    // Every roster member: its aggregator token and its roster key, written to a file.
    let mut members = serde_json::Map::new();
    for id in stack.site_ids() {
        let reader = args.readers.iter().any(|r| r == id.as_str());
        let role = if reader { Role::Reader } else { Role::Client };
        let pem = stack.site_key_pem(id.as_str()).ok_or("a member without a key")?;
        let key_file = stack.dir().join(format!("{id}.key.pem"));
        std::fs::write(&key_file, pem).map_err(|e| e.to_string())?;
        members.insert(
            id.to_string(),
            serde_json::json!({
                "token": stack.token(id.as_str(), role, "aggregator"),
                "key_file": key_file,
                "reader": reader,
            }),
        );
    }
    let sites: serde_json::Map<String, serde_json::Value> = stack
        .site_ids()
        .iter()
        .map(|id: &ClientId| {
            (id.to_string(), stack.token(id.as_str(), Role::Client, "aggregator").into())
        })
        .collect();
    let description = serde_json::json!({
        "dir": stack.dir(),
        "aggregator": stack.aggregator_url(),
        "committee_file": stack.committee_file(),
        "nodes": nodes,
        "members": members,
        "tokens": {
            "admin_aggregator": stack.token("ops", Role::Admin, "aggregator"),
            "admin_kms": stack.token("ops", Role::Admin, "kms"),
            "aggregator_kms": stack.token("aggregator", Role::Aggregator, "kms"),
            "reader_aggregator": stack.token("reader", Role::Reader, "aggregator"),
            "sites_aggregator": sites,
        },
    });
    let text = serde_json::to_string_pretty(&description).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!(
        "local stack up; described in {} (its aggregator tokens last 12 h; the nodes' \
         `roster_tokens`, for calling key managers by hand, 5 minutes — clients mint their own); \
         stop it with Ctrl-C",
        args.out.display()
    );
    wait_for_signal().await;
    stack.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
