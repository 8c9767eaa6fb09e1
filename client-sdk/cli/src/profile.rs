//! Connection settings: a profile file (TOML) overridden by flags and `CRYPTFLOW_*` variables.
//!
//! ```toml
//! aggregator = "https://aggregator.example.org"
//! aggregator_token_file = "site-a.aggregator.jwt"
//! committee_file = "committee.toml"
//! client_id = "site-a"
//! key_file = "site-a.key.pem"
//! journal_file = "site-a.journal"
//! min_contributors = 3                # the default: refuse rounds that could publish fewer
//! min_tolerated_colluding_nodes = 1   # the default: refuse a committee like (3, 2)
//! allow_single_key_manager = false    # the default: refuse a committee of one node
//! dp_epsilon = 8.0                    # optional: this site's privacy budget, ε at δ (the
//! dp_delta = 1e-6                     #   journal's spend; rounds without DP refused)
//! ca_file = "consortium-ca.pem"   # optional: a CA the services' HTTPS certificates chain to
//! ```
//!
//! Relative paths in a profile are relative to the profile's directory.

use crate::output::CliError;
use clap::Args;
use cryptflow_client::{Client, ClientBuilder, ClientPolicy, DpBudget, RetryPolicy, Token, Verify};
use cryptflow_services::protocol::{Committee, SiteKey};
use cryptflow_services::ClientId;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// The connection flags every networked command takes.
#[derive(Debug, Args)]
pub struct Conn {
    /// Profile file (TOML) with the settings below; flags and variables override it.
    #[arg(long, env = "CRYPTFLOW_PROFILE")]
    profile: Option<PathBuf>,
    /// Aggregator base URL.
    #[arg(long, env = "CRYPTFLOW_AGGREGATOR")]
    aggregator: Option<String>,
    /// File holding the aggregator token.
    #[arg(long, env = "CRYPTFLOW_AGGREGATOR_TOKEN_FILE")]
    aggregator_token_file: Option<PathBuf>,
    /// Also trust this PEM bundle of certificate authorities for HTTPS.
    #[arg(long, env = "CRYPTFLOW_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Keep retrying unreachable or failing servers for this many seconds (0: one attempt).
    #[arg(long, env = "CRYPTFLOW_RETRY_BUDGET", default_value_t = 120)]
    retry_budget: u64,
}

/// The flags of a site's commands (submit, fetch): who it is and what it trusts.
#[derive(Debug, Args)]
pub struct Site {
    #[command(flatten)]
    conn: Conn,
    /// The key-manager committee file this site pins.
    #[arg(long, env = "CRYPTFLOW_COMMITTEE_FILE")]
    committee_file: Option<PathBuf>,
    /// This site's client id.
    #[arg(long, env = "CRYPTFLOW_CLIENT_ID")]
    client_id: Option<String>,
    /// This site's roster key (`cryptflow keygen`).
    #[arg(long, env = "CRYPTFLOW_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Fetch as a roster reader rather than a contributor.
    #[arg(long)]
    reader: bool,
    /// Journal of which update went to which round (refuses resubmitting one update);
    /// required to submit. Created owner-only.
    #[arg(long, env = "CRYPTFLOW_JOURNAL_FILE")]
    journal_file: Option<PathBuf>,
    /// Refuse rounds that allow fewer contributors than this (at least 2; default 3: one
    /// member colluding with the aggregator learns nothing about another's update).
    #[arg(long, env = "CRYPTFLOW_MIN_CONTRIBUTORS", value_parser = clap::value_parser!(u32).range(2..))]
    min_contributors: Option<u32>,
    /// Refuse to submit under a committee tolerating fewer key managers colluding with the
    /// aggregator (2t − n − 1) than this (default 1: (4, 3) passes, (3, 2) is refused).
    #[arg(long, env = "CRYPTFLOW_MIN_TOLERATED_COLLUDING_NODES",
          value_parser = clap::value_parser!(u8).range(0..=15))]
    min_tolerated_colluding_nodes: Option<u8>,
    /// Accept a committee of a single key manager (it reads every update if it sides with the
    /// aggregator); `--allow-single-key-manager false` overrides a profile's `true`.
    #[arg(long, env = "CRYPTFLOW_ALLOW_SINGLE_KEY_MANAGER", num_args = 0..=1,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    allow_single_key_manager: Option<bool>,
    /// This site's privacy budget ε (with --dp-delta): refuse a round whose charge would take
    /// the journal's spend past it, and every round without DP.
    #[arg(long, env = "CRYPTFLOW_DP_EPSILON", value_parser = crate::positive_finite)]
    dp_epsilon: Option<f64>,
    /// The δ of the budget (in (0, 1)).
    #[arg(long, env = "CRYPTFLOW_DP_DELTA", value_parser = crate::positive_finite)]
    dp_delta: Option<f64>,
}

/// The profile file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    aggregator: Option<String>,
    aggregator_token_file: Option<PathBuf>,
    committee_file: Option<PathBuf>,
    client_id: Option<String>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    reader: bool,
    journal_file: Option<PathBuf>,
    min_contributors: Option<u32>,
    min_tolerated_colluding_nodes: Option<u8>,
    #[serde(default)]
    allow_single_key_manager: bool,
    dp_epsilon: Option<f64>,
    dp_delta: Option<f64>,
    ca_file: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Zeroizing<String>, CliError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| CliError::input(format!("{what} {}: {e}", path.display())))
}

impl Conn {
    /// Resolves the settings (flags and variables over the profile) and builds a client of the
    /// aggregator alone (an operator's or a reader's commands that need no committee).
    pub fn client(&self) -> Result<Client, CliError> {
        let (builder, _, _) = self.builder()?;
        builder.build().map_err(CliError::from)
    }

    fn builder(&self) -> Result<(ClientBuilder, Profile, PathBuf), CliError> {
        let (profile, dir) = match &self.profile {
            Some(p) => {
                let text = read(p, "--profile")?;
                let profile: Profile = toml::from_str(&text)
                    .map_err(|e| CliError::input(format!("--profile {}: {e}", p.display())))?;
                (profile, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (Profile::default(), PathBuf::new()),
        };
        let aggregator =
            self.aggregator.clone().or(profile.aggregator.clone()).ok_or_else(|| {
                CliError::usage(
                "no aggregator: pass --aggregator URL, set CRYPTFLOW_AGGREGATOR, or use --profile",
            )
            })?;
        let token_file = self
            .aggregator_token_file
            .clone()
            .or(relative(&dir, profile.aggregator_token_file.clone()));
        let ca_file = self.ca_file.clone().or(relative(&dir, profile.ca_file.clone()));
        let retry = RetryPolicy {
            budget: Duration::from_secs(self.retry_budget),
            ..RetryPolicy::default()
        };
        let mut builder = Client::builder(aggregator).retry(retry);
        if let Some(f) = token_file {
            builder =
                builder.aggregator_token(Token::new(read(&f, "--aggregator-token-file")?.as_str()));
        }
        if let Some(f) = ca_file {
            builder = builder.root_certificates_pem(read(&f, "--ca-file")?.as_bytes());
        }
        Ok((builder, profile, dir))
    }
}

fn relative(dir: &Path, p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| if p.is_absolute() { p } else { dir.join(p) })
}

impl Site {
    /// Resolves the settings (flags and variables over the profile) and builds a site's client.
    pub fn client(&self) -> Result<Client, CliError> {
        self.client_verifying(Verify::Auto)
    }

    /// [`Site::client`], verifying fetched aggregates as `verify` says.
    pub fn client_verifying(&self, verify: Verify) -> Result<Client, CliError> {
        let (mut builder, profile, dir) = self.conn.builder()?;
        let committee_file = self.committee_file.clone().or(relative(&dir, profile.committee_file));
        let client_id = self.client_id.clone().or(profile.client_id);
        let key_file = self.key_file.clone().or(relative(&dir, profile.key_file));
        let journal = self.journal_file.clone().or(relative(&dir, profile.journal_file));
        let min_contributors = self.min_contributors.or(profile.min_contributors);
        builder = builder.reader(self.reader || profile.reader);
        if let Some(f) = committee_file {
            let text = read(&f, "--committee-file")?;
            let committee = Committee::from_toml(&text)
                .map_err(|e| CliError::input(format!("--committee-file {}: {e}", f.display())))?;
            builder = builder.committee(committee);
        }
        match (client_id, key_file) {
            (Some(id), Some(f)) => {
                let id = ClientId::parse(&id)
                    .map_err(|e| CliError::usage(format!("--client-id `{id}`: {e}")))?;
                let pem = read(&f, "--key-file")?;
                let key = SiteKey::from_pem(&pem)
                    .map_err(|e| CliError::input(format!("--key-file {}: {e}", f.display())))?;
                builder = builder.site(id, key);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(CliError::usage("--client-id needs --key-file (the site's roster key)"))
            }
            (None, Some(_)) => return Err(CliError::usage("--key-file needs --client-id")),
        }
        if let Some(j) = journal {
            builder = builder.journal(j);
        }
        let mut policy = ClientPolicy { verify, ..ClientPolicy::default() };
        if let Some(m) = min_contributors {
            if m < 2 {
                return Err(CliError::usage(format!("min_contributors = {m}: must be at least 2")));
            }
            policy.min_contributors = m;
        }
        if let Some(c) =
            self.min_tolerated_colluding_nodes.or(profile.min_tolerated_colluding_nodes)
        {
            policy.min_tolerated_colluding_nodes = c;
        }
        policy.allow_single_key_manager =
            self.allow_single_key_manager.unwrap_or(profile.allow_single_key_manager);
        match (self.dp_epsilon.or(profile.dp_epsilon), self.dp_delta.or(profile.dp_delta)) {
            (Some(e), Some(d)) => {
                policy.dp_budget = Some(DpBudget::try_new(e, d).map_err(CliError::from)?);
            }
            (None, None) => {}
            (Some(_), None) => return Err(CliError::usage("dp_epsilon needs dp_delta")),
            (None, Some(_)) => return Err(CliError::usage("dp_delta needs dp_epsilon")),
        }
        builder.policy(policy).build().map_err(CliError::from)
    }
}
