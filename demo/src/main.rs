//! `cryptflow-demo`: federated training under encryption through a real key-manager committee
//! and aggregator on loopback, next to plaintext FedAvg — the README's first command.
//!
//! It starts `--kms-nodes` key managers (threshold `--threshold`) and an aggregator in this
//! process (temporary SQLite databases, ephemeral keys, real HTTP), gives `--clients` sites
//! unequal shards of the UCI handwritten digits, and trains an MLP for `--rounds` rounds: each
//! round every site encrypts its model update under a fresh key of its own, uploads it,
//! deposits shares of the key with the key managers; the aggregator sums the uploads; a site
//! combines the key managers' releases for the recorded contributor set and decrypts the mean.
//! Plaintext FedAvg of the same updates runs alongside; every round's encrypted mean must be
//! within the planner's bound of it (exit 8 otherwise).

mod model;
mod output;
mod run;

use clap::Parser;
use output::{emit, DemoError, Exit};
use std::process::ExitCode;

fn main() -> ExitCode {
    let json = std::env::args().any(|a| a == "--json");
    let args = match run::DemoArgs::try_parse() {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            emit(&e.to_string());
            return ExitCode::SUCCESS;
        }
        Err(e) => return DemoError::new(Exit::Usage, e.to_string().trim().to_owned()).report(json),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            return DemoError::new(Exit::Internal, format!("cannot start the runtime: {e}"))
                .report(json)
        }
    };
    match runtime.block_on(run::run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(args.json),
    }
}
