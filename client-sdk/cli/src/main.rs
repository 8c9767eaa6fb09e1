//! `cryptflow`: the command-line client a training site installs. See `cryptflow --help`.
//!
//! It depends on the SDK and the protocol's wire types only — no server crate (CI checks).

mod files;
mod output;
mod profile;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cryptflow_client::{
    ClientError, Layout, RoundInfo, RoundRequest, SubmitOptions, Verification, Verify, Weighting,
};
use cryptflow_services::protocol::{Claims, SiteKey};
use cryptflow_services::{ClientId, Role, RoundId};
use files::{DType, Integers};
use output::{emit, human_bytes, progress_bar, warn, write_private, CliError};
use profile::{Conn, Site};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 internal error; 2 bad command line; 3 unusable input file or update;
4 refused by a server (4xx); 5 server unreachable, failing after retries, or its TLS
certificate refused (never retried; use --ca-file for a private CA); 6 round failed,
not published yet, or wait timed out; 7 invalid server response or key-manager committee
that does not verify; 8 the aggregate failed verification (not the one the key managers
recorded, not the sum of the uploads the members signed, an upload withheld from a verifying
reader, or a mean beyond the clip bound: evidence of tampering); 9 refused by this client's
policy (its privacy budget included).

Connection settings come from --profile FILE (TOML: aggregator, aggregator_token_file,
committee_file, client_id, key_file, reader, journal_file, min_contributors,
min_tolerated_colluding_nodes, allow_single_key_manager, dp_epsilon, dp_delta, ca_file), overridden by the flags and
their CRYPTFLOW_* environment variables.";

/// CryptFlow: federated averaging of model updates that no server sees in the clear.
#[derive(Debug, Parser)]
#[command(name = "cryptflow", version, after_help = EXIT_CODES)]
struct Cli {
    /// Machine-readable output: JSON on stdout (errors as JSON on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write this site's roster key (Ed25519, PKCS#8 PEM, mode 0600) and print the roster
    /// entry the consortium adds to the key managers' roster.
    Keygen {
        /// This site's client id.
        #[arg(long)]
        id: String,
        /// Output file for the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issuer keys and tokens, for local use (production tokens come from your identity
    /// provider).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, inspect and close rounds (admin token).
    #[command(subcommand)]
    Round(RoundCommand),
    /// Encrypt a model update from a .npy or .safetensors file, upload it, and deposit key
    /// shares with the key managers.
    Submit(SubmitArgs),
    /// Download and decrypt a round's mean into a .npy or .safetensors file.
    Fetch(FetchArgs),
    /// This site's privacy ledger: the DP rounds its journal records and the ε they spent.
    Ledger {
        #[command(flatten)]
        site: Site,
        /// δ at which to state the spend (default: the site's budget's, else 1e-5).
        #[arg(long, value_parser = positive_finite)]
        delta: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Write a new Ed25519 issuer key pair (PKCS#8 private key, mode 0600; SPKI public key).
    Keygen {
        /// Private key output; keep it off the servers.
        #[arg(long)]
        private: PathBuf,
        /// Public key output; goes into the services' `jwt_keys`.
        #[arg(long)]
        public: PathBuf,
    },
    /// Sign a token.
    Mint {
        /// Issuer private key (PKCS#8 PEM).
        #[arg(long, env = "CRYPTFLOW_ISSUER_KEY_FILE")]
        key: PathBuf,
        /// Key id the services know the matching public key by.
        #[arg(long, default_value = "cryptflow-1")]
        kid: String,
        /// Subject: the client id for clients.
        #[arg(long)]
        sub: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Audience: the service the token is for.
        #[arg(long, value_enum)]
        aud: Audience,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
        ttl: u64,
        /// Write the token here (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RoleArg {
    Admin,
    Client,
    Reader,
    Aggregator,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Audience {
    Kms,
    Aggregator,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum WeightingArg {
    Uniform,
    Samples,
}

#[derive(Debug, Subcommand)]
enum RoundCommand {
    /// Create a round: the aggregator plans it and registers it with the key managers.
    Create(Box<CreateArgs>),
    /// Show a round's state, plan and transcript.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// The round.
        #[arg(long)]
        round: String,
    },
    /// Close a round now and publish its aggregate.
    Close {
        #[command(flatten)]
        conn: Conn,
        /// The round.
        #[arg(long)]
        round: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[command(flatten)]
    conn: Conn,
    /// The round's id.
    #[arg(long)]
    round: String,
    /// A flat vector of this many values…
    #[arg(long, conflicts_with = "like", required_unless_present = "like")]
    dim: Option<u64>,
    /// …or the layout (tensor names and shapes) of this .npy or .safetensors file.
    #[arg(long)]
    like: Option<PathBuf>,
    /// With --like: leave the file's integer tensors out of the round.
    #[arg(long)]
    pass_integers: bool,
    /// Roster members allowed to contribute (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    clients: Vec<String>,
    /// Contributions needed for the round to succeed (default: all clients).
    #[arg(long)]
    min_clients: Option<u32>,
    /// The round closes when this many have uploaded (default: all clients).
    #[arg(long)]
    max_clients: Option<u32>,
    /// Seconds until the deadline, counted on the aggregator's clock.
    #[arg(long, default_value_t = 3600, conflicts_with = "deadline")]
    deadline_in: u64,
    /// An absolute deadline (Unix seconds, the aggregator's clock).
    #[arg(long)]
    deadline: Option<i64>,
    /// Weighting: uniform, or samples (FedAvg by each site's sample count, encrypted).
    #[arg(long, value_enum, default_value_t = WeightingArg::Uniform)]
    weighting: WeightingArg,
    /// Smallest sample count a site may declare (with `--weighting samples`; default 1).
    #[arg(long)]
    min_count: Option<u64>,
    /// Largest sample count a site may declare (required with `--weighting samples`). The
    /// wider min_count..max_count, the more bits per value; a site with more samples cannot
    /// contribute (its submit is refused, naming the range).
    #[arg(long, required_if_eq("weighting", "samples"))]
    max_count: Option<u64>,
    /// Values are clipped to ±this.
    #[arg(long, default_value_t = 1.0, value_parser = positive_finite)]
    clip: f64,
    /// Largest acceptable absolute error of a coordinate of the mean (default 1e-6); with
    /// --l2-clip, the coarsest grid step (default: the planner's choice).
    #[arg(long, value_parser = positive_finite)]
    max_abs_error: Option<f64>,
    /// Distributed differential privacy: clip each update to this L2 norm (replaces --clip;
    /// needs --dp-noise-multiplier or --dp-epsilon).
    #[arg(long, value_parser = positive_finite)]
    l2_clip: Option<f64>,
    /// DP: the noise multiplier z (the noise of the honest shares has standard deviation
    /// z × the L2 sensitivity).
    #[arg(long, requires = "l2_clip", conflicts_with = "dp_epsilon", value_parser = positive_finite)]
    dp_noise_multiplier: Option<f64>,
    /// DP: instead of z, the ε each contributor may spend on this round (at --dp-delta; with
    /// --dp-rounds, on that many rounds like it): the smallest z that meets it.
    #[arg(long, requires = "l2_clip", value_parser = positive_finite)]
    dp_epsilon: Option<f64>,
    /// DP: δ of --dp-epsilon.
    #[arg(long, default_value_t = 1e-5, value_parser = positive_finite)]
    dp_delta: f64,
    /// DP: rounds like this one the --dp-epsilon covers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    dp_rounds: u64,
    /// DP: members of a set, other than the client protected, that may collude (t_c ≥ 1).
    #[arg(long, default_value_t = 1)]
    dp_colluders: u32,
    /// DP: honest shares the noise is sized for (m_h; default max_clients − colluders). Key
    /// managers never record a set of fewer than m_h + t_c.
    #[arg(long)]
    dp_honest_shares: Option<u32>,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    site: Site,
    /// The round.
    #[arg(long)]
    round: String,
    /// The update: a .npy or .safetensors file.
    #[arg(long)]
    update: PathBuf,
    /// This site's sample count, in `samples` rounds only: an integer between the round's
    /// min_count and max_count (`round status` shows them).
    #[arg(long)]
    count: Option<u64>,
    /// Leave integer tensors out (they must be left out of the round too).
    #[arg(long)]
    pass_integers: bool,
    /// Submit even if the journal says this update went to another round already.
    #[arg(long)]
    allow_resubmission: bool,
    /// The experiment this update belongs to, for the journal: a deterministic re-run under a
    /// new name is not refused as a resubmission.
    #[arg(long)]
    experiment: Option<String>,
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[command(flatten)]
    site: Site,
    /// The round.
    #[arg(long)]
    round: String,
    /// Output: a .npy or .safetensors file (created with mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// Wait up to this many seconds for the round to be published.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Write the mean with the dtypes of this file (e.g. the update you submitted), and copy
    /// its integer tensors unchanged.
    #[arg(long, conflicts_with = "dtype")]
    like: Option<PathBuf>,
    /// Write the mean as this dtype (default f32, or the `--like` file's).
    #[arg(long, value_enum)]
    dtype: Option<DType>,
    /// Recompute the aggregate from the contributor set's uploads, each checked against the
    /// digest its member signed, and fail (exit 8) unless it matches. Roster readers only. By
    /// default a reader recomputes when the uploads total at most 1 GiB and samples 128 spans
    /// above.
    #[arg(long, conflicts_with_all = ["no_verify", "verify_spans"])]
    verify: bool,
    /// Verify by sampling N verification spans (of 2048 values each) with this machine's own
    /// randomness: each member's span is checked against the upload root it signed and their
    /// sum against the aggregate's; exit 8 on a mismatch. Catches one tampered span with
    /// probability N/#spans (printed). Roster readers only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "no_verify")]
    verify_spans: Option<u32>,
    /// Do not verify the aggregate (it must still be the one the key managers recorded, and
    /// the mean is still checked against the clip bound).
    #[arg(long)]
    no_verify: bool,
}

fn main() -> ExitCode {
    let json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            emit(e.to_string().trim_end());
            return ExitCode::SUCCESS;
        }
        // clap's message starts with its own `error: `; the report adds one.
        Err(e) => {
            let message = e.to_string();
            let message = message.trim().trim_start_matches("error:").trim_start();
            return CliError::usage(message.to_owned()).report(json);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return CliError::internal(format!("cannot start the runtime: {e}")).report(json),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(json),
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    match cli.command {
        Command::Keygen { id, out } => keygen(&id, &out, json),
        Command::Token(cmd) => token(cmd, json),
        Command::Round(RoundCommand::Create(args)) => create(*args, json).await,
        Command::Round(RoundCommand::Status { conn, round }) => {
            let info = conn.client()?.round(&round_id(&round)?).await?;
            print_round(&info, json);
            Ok(())
        }
        Command::Round(RoundCommand::Close { conn, round }) => {
            let info = conn.client()?.close_round(&round_id(&round)?).await?;
            print_round(&info, json);
            Ok(())
        }
        Command::Submit(args) => submit(args, json).await,
        Command::Fetch(args) => fetch(args, json).await,
        Command::Ledger { site, delta } => {
            let client = site.client()?;
            let ledger = client.ledger()?;
            let budget = client.policy().dp_budget;
            let delta = delta.or(budget.map(|b| b.delta)).unwrap_or(1e-5);
            let spent = ledger.epsilon(delta)?;
            if json {
                emit(
                    &serde_json::json!({
                        "dp_rounds": ledger.rounds,
                        "delta": delta,
                        "epsilon_spent": spent,
                        "epsilon_budget": budget.map(|b| b.epsilon),
                        "rdp_units": ledger.spent.units().to_vec(),
                    })
                    .to_string(),
                );
            } else {
                emit(&format!(
                    "{} DP rounds; ε spent = {spent:.4} at δ = {delta:e}",
                    ledger.rounds
                ));
                if let Some(b) = budget {
                    emit(&format!(
                        "budget ε = {} at δ = {:e}: {}",
                        b.epsilon,
                        b.delta,
                        if b.delta == delta {
                            format!("{:.4} left", (b.epsilon - spent).max(0.0))
                        } else {
                            "stated at another δ".to_owned()
                        }
                    ));
                }
            }
            Ok(())
        }
    }
}

/// A finite number above zero (`nan`, `inf`, `0` and negatives are refused by name).
pub(crate) fn positive_finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: must be a finite number above zero"))
    }
}

fn round_id(s: &str) -> Result<RoundId, CliError> {
    RoundId::parse(s).map_err(|e| CliError::usage(format!("--round: {e}")))
}

fn client_id(s: &str, flag: &str) -> Result<ClientId, CliError> {
    ClientId::parse(s).map_err(|e| CliError::usage(format!("{flag} `{s}`: {e}")))
}

fn keygen(id: &str, out: &std::path::Path, json: bool) -> Result<(), CliError> {
    let id = client_id(id, "--id")?;
    let key = SiteKey::generate();
    let pem = key.to_pem().map_err(|e| CliError::internal(e.to_string()))?;
    write_private(out, pem.as_bytes())?;
    if json {
        emit(
            &serde_json::json!({ "id": id, "key_file": out, "public_key": key.public_key() })
                .to_string(),
        );
    } else {
        emit(&format!("wrote {id}'s roster key to {} (keep it on this site only)", out.display()));
        emit("add this entry to the key managers' roster file:");
        emit("");
        emit(&format!("[[members]]\nid = \"{id}\"\npublic_key = \"{}\"", key.public_key()));
    }
    Ok(())
}

fn token(cmd: TokenCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Keygen { private, public } => {
            let key = SiteKey::generate();
            let pem = key.to_pem().map_err(|e| CliError::internal(e.to_string()))?;
            write_private(&private, pem.as_bytes())?;
            let public_pem = key.public_pem().map_err(|e| CliError::internal(e.to_string()))?;
            std::fs::write(&public, public_pem)
                .map_err(|e| CliError::input(format!("{}: {e}", public.display())))?;
            if json {
                emit(&serde_json::json!({"private": private, "public": public}).to_string());
            } else {
                emit(&format!("issuer private key: {} (keep it secret)", private.display()));
                emit(&format!(
                    "issuer public key:  {} (list it in the services' jwt_keys)",
                    public.display()
                ));
            }
            Ok(())
        }
        TokenCommand::Mint { key, kid, sub, role, aud, ttl, out } => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&key)
                    .map_err(|e| CliError::input(format!("{}: {e}", key.display())))?,
            );
            let issuer = SiteKey::from_pem(&pem)
                .map_err(|e| CliError::input(format!("{}: {e}", key.display())))?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Client => Role::Client,
                RoleArg::Reader => Role::Reader,
                RoleArg::Aggregator => Role::Aggregator,
            };
            let aud = match aud {
                Audience::Kms => "kms",
                Audience::Aggregator => "aggregator",
            };
            let sub = client_id(&sub, "--sub")?;
            let now =
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let token = issuer.mint(
                &kid,
                &Claims {
                    sub: sub.to_string(),
                    role,
                    aud: aud.into(),
                    exp: now + ttl,
                    iat: now,
                    nbf: None,
                },
            );
            match out {
                Some(path) => {
                    write_private(&path, token.as_bytes())?;
                    if json {
                        emit(&serde_json::json!({"out": path, "sub": sub, "aud": aud}).to_string());
                    } else {
                        emit(&format!(
                            "wrote a token with role {role} for `{sub}` (audience {aud}, {ttl} s) to {}",
                            path.display()
                        ));
                    }
                }
                None => emit(&token),
            }
            Ok(())
        }
    }
}

async fn create(args: CreateArgs, json: bool) -> Result<(), CliError> {
    let integers = if args.pass_integers { Integers::PassThrough } else { Integers::Refuse };
    let layout = match (&args.dim, &args.like) {
        (Some(d), _) => Layout::Dimension(*d),
        (None, Some(p)) => files::read(p, integers)?.update.layout(),
        (None, None) => return Err(CliError::usage("give --dim or --like")),
    };
    let clients: Vec<ClientId> =
        args.clients.iter().map(|c| client_id(c.trim(), "--clients")).collect::<Result<_, _>>()?;
    let n = u32::try_from(clients.len()).map_err(|_| CliError::usage("too many clients"))?;
    let weighting = match args.weighting {
        WeightingArg::Uniform if args.min_count.is_some() || args.max_count.is_some() => {
            return Err(CliError::usage(
                "--min-count and --max-count apply to --weighting samples only",
            ))
        }
        WeightingArg::Uniform => Weighting::Uniform,
        WeightingArg::Samples => Weighting::Samples {
            min_count: args.min_count.unwrap_or(1),
            max_count: args
                .max_count
                .ok_or_else(|| CliError::usage("--weighting samples needs --max-count"))?,
        },
    };
    let (deadline, deadline_in_secs) = match args.deadline {
        Some(d) => (Some(d), None),
        None => (None, Some(args.deadline_in)),
    };
    let max_clients = args.max_clients.unwrap_or(n);
    let mut request = RoundRequest {
        round_id: round_id(&args.round)?,
        layout,
        clients,
        min_clients: args.min_clients.unwrap_or(n),
        max_clients,
        deadline,
        deadline_in_secs,
        weighting,
        clip_bound: args.clip,
        max_abs_error: args.max_abs_error.unwrap_or(1e-6),
        dp: None,
    };
    if let Some(c) = args.l2_clip {
        let honest = args.dp_honest_shares.unwrap_or(max_clients.saturating_sub(args.dp_colluders));
        let mut dp = cryptflow_services::api::round::DpOptions {
            noise_multiplier: args.dp_noise_multiplier.unwrap_or(1.0),
            honest_shares: honest,
            colluders: args.dp_colluders,
        };
        // The grid is the planner's choice unless asked: the error of a DP mean is its noise.
        request.clip_bound = c;
        request.max_abs_error = args.max_abs_error.unwrap_or(c);
        if args.dp_colluders == 0 || honest == 0 {
            return Err(CliError::usage(
                "--dp-colluders and --dp-honest-shares must be at least 1 (max_clients − colluders by default)",
            ));
        }
        match (args.dp_noise_multiplier, args.dp_epsilon) {
            (Some(_), _) => {}
            (None, Some(eps)) => {
                let values = request
                    .layout
                    .values()
                    .ok_or_else(|| CliError::usage("the layout's size overflows"))?;
                let plan = cryptflow_he::planner::PlanRequest {
                    max_clients,
                    clip_bound: c,
                    max_abs_error: request.max_abs_error,
                    weighting: request.weighting,
                    dp: Some(cryptflow_he::planner::DpRequest {
                        noise_multiplier: 1.0,
                        honest_shares: honest,
                        colluders: args.dp_colluders,
                        values,
                    }),
                };
                dp.noise_multiplier = cryptflow_he::planner::calibrate_noise_multiplier(
                    &cryptflow_he::ParameterSet::default_128(),
                    &plan,
                    eps,
                    args.dp_delta,
                    args.dp_rounds,
                )
                .map_err(|e| {
                    CliError::usage(format!("calibrating the noise for --dp-epsilon: {e}"))
                })?;
            }
            (None, None) => {
                return Err(CliError::usage(
                    "--l2-clip needs --dp-noise-multiplier or --dp-epsilon",
                ))
            }
        }
        request.dp = Some(dp);
    }
    let info = args.conn.client()?.create_round(&request).await?;
    print_round(&info, json);
    Ok(())
}

fn state_name(info: &RoundInfo) -> String {
    serde_json::to_value(info.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Unix seconds as this machine's local time, with the offset and how far away it is.
fn local_time(unix: i64) -> String {
    use chrono::{Local, TimeZone};
    match Local.timestamp_opt(unix, 0).single() {
        Some(t) => {
            let left = unix - Local::now().timestamp();
            let when = match left {
                l if l >= 0 => format!("in {}", human_duration(l)),
                l => format!("{} ago", human_duration(-l)),
            };
            format!("{} ({when})", t.format("%Y-%m-%d %H:%M:%S %:z"))
        }
        None => format!("{unix} (Unix seconds)"),
    }
}

/// `90 s`, `12 min`, `3.5 h`, `2.0 days`.
fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} days", s as f64 / 86_400.0),
    }
}

fn print_round(info: &RoundInfo, json: bool) {
    if json {
        emit(&serde_json::to_string(info).unwrap_or_default());
        return;
    }
    let s = &info.spec;
    emit(&format!("round {}: {}", s.round_id, state_name(info)));
    emit(&format!(
        "  {} values ({}), {} uploads of {}–{} clients, deadline {}",
        s.values,
        match &info.request.layout {
            Layout::Dimension(_) => "flat vector".to_owned(),
            Layout::Tensors(ts) if ts.len() == 1 => format!("tensor `{}`", ts[0].name),
            Layout::Tensors(ts) => format!("{} tensors", ts.len()),
        },
        info.uploads,
        s.min_clients,
        s.max_clients,
        local_time(info.deadline)
    ));
    let upload = cryptflow_services::protocol::upload_len(s).unwrap_or(0);
    emit(&format!(
        "  plan: mean error ≤ {:.2e}, upload {} per client ({:.3} B/value), registered with key managers {:?}",
        s.plan.max_abs_error(),
        human_bytes(upload),
        upload as f64 / s.values.max(1) as f64,
        info.echoes.iter().map(|e| e.share_index).collect::<Vec<_>>()
    ));
    emit(&format!(
        "  {}; {}",
        if s.plan.dp().is_some() {
            format!("updates clipped to L2 norm {}", s.plan.clip_bound())
        } else {
            format!("values clipped to ±{}", s.plan.clip_bound())
        },
        match s.plan.weighting() {
            Weighting::Uniform => "uniform weighting".to_owned(),
            Weighting::Samples { min_count, max_count } => {
                format!(
                    "weighted by sample counts, each site's --count in {min_count}..={max_count}"
                )
            }
        }
    ));
    if let Some(dp) = s.plan.dp() {
        let charge = dp.charge();
        let eps = |delta: f64| {
            cryptflow_he::dp::accounting::epsilon(&charge, delta)
                .map(|(e, _)| e)
                .unwrap_or(f64::NAN)
        };
        emit(&format!(
            "  differential privacy: updates clipped to L2 norm {}, noise multiplier {}, sized for {} honest \
             shares against {} colluding members (sets of at least {}); each contributor is charged \
             ε = {:.4} at δ = 1e-5 ({:.4} at δ = 1e-6) for this round",
            s.plan.clip_bound(),
            s.plan.request().dp.map_or(f64::NAN, |r| r.noise_multiplier),
            dp.honest_shares(),
            dp.colluders(),
            dp.min_set(),
            eps(1e-5),
            eps(1e-6)
        ));
    }
    if let Some(t) = &info.transcript {
        emit(&format!(
            "  aggregate sha256 {} (set recorded by key managers {:?})",
            t.aggregate_sha256, t.recorded_by
        ));
        for c in &t.contributors {
            emit(&format!("    {} sha256 {}", c.client_id, c.upload_sha256));
        }
    }
    if let Some(f) = &info.failure {
        emit(&format!("  failed: {f}"));
    }
}

async fn submit(args: SubmitArgs, json: bool) -> Result<(), CliError> {
    let integers = if args.pass_integers { Integers::PassThrough } else { Integers::Refuse };
    let loaded = files::read(&args.update, integers)?;
    let client = args.site.client()?;
    let values = loaded.update.len();
    let (bar, progress) = progress_bar(json);
    let options = SubmitOptions {
        count: args.count,
        progress: Some(progress),
        allow_resubmission: args.allow_resubmission,
        experiment: args.experiment,
    };
    let result = client.submit(&round_id(&args.round)?, Arc::new(loaded.update), options).await;
    bar.finish_and_clear();
    let s = match result {
        Ok(s) => s,
        // Re-running a submit that completed is not an error: say so, send nothing.
        Err(ClientError::AlreadySubmitted(round)) => {
            if json {
                emit(&serde_json::json!({ "already_submitted": true, "round": round }).to_string());
            } else {
                emit(&format!("already submitted this update to round {round} (per the journal); nothing sent"));
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        emit(
            &serde_json::json!({
                "receipt": s.receipt,
                "bytes": s.bytes,
                "clipped": s.clipping.clipped,
                "deposited_with": s.deposited_with,
                "upload_ms": s.upload_time.as_secs_f64() * 1e3,
                "deposit_ms": s.deposit_time.as_secs_f64() * 1e3,
            })
            .to_string(),
        );
    } else {
        emit(&format!(
            "submitted {values} values to round {} as {}: {} encrypted and uploaded in {:.0} ms, key shares deposited \
             with key managers {:?} in {:.0} ms; {} upload(s) so far",
            s.receipt.round_id,
            s.receipt.client_id,
            human_bytes(s.bytes),
            s.upload_time.as_secs_f64() * 1e3,
            s.deposited_with,
            s.deposit_time.as_secs_f64() * 1e3,
            s.receipt.uploads
        ));
        emit(&format!("  receipt sha256 {}", s.receipt.upload_sha256));
        if s.clipping.clipped > 0 {
            emit(&format!(
                "  warning: {} values were clipped to the round's bound (largest magnitude {})",
                s.clipping.clipped, s.clipping.largest_magnitude
            ));
        }
    }
    Ok(())
}

async fn fetch(args: FetchArgs, json: bool) -> Result<(), CliError> {
    files::Format::of(&args.out)?;
    let (dtypes, passthrough) = match (&args.like, args.dtype) {
        (Some(p), _) => {
            let l = files::read(p, Integers::PassThrough)?;
            (l.dtypes, l.passthrough)
        }
        (None, Some(d)) => (vec![d], Vec::new()),
        (None, None) => (vec![DType::F32], Vec::new()),
    };
    let verify = match (args.verify, args.no_verify, args.verify_spans) {
        (true, _, _) => Verify::Always,
        (_, true, _) => Verify::Off,
        (_, _, Some(s)) => Verify::Spans(s),
        _ => Verify::Auto,
    };
    let client = args.site.client_verifying(verify)?;
    let round = round_id(&args.round)?;
    if args.wait > 0 {
        client.wait_for_aggregate(&round, Duration::from_secs(args.wait)).await?;
    }
    let (bar, progress) = progress_bar(json);
    let result = client.fetch_mean(&round, Some(&progress)).await;
    bar.finish_and_clear();
    let agg = result?;
    files::write(&args.out, &agg.mean, &dtypes, &passthrough)?;
    // The bound of what was written: the mean's own, plus the rounding of the narrowest dtype.
    let bound =
        dtypes.iter().map(|d| agg.max_abs_error_as(d.output())).fold(agg.max_abs_error, f64::max);
    let answered: Vec<u8> = agg.nodes.iter().filter(|n| n.problem.is_none()).map(|n| n.x).collect();
    let c = agg.clipping;
    let clipped_values = if c.values_at_least == c.values_at_most {
        format!("{}", c.values_at_most)
    } else {
        format!("{}–{}", c.values_at_least, c.values_at_most)
    };
    if json {
        emit(
            &serde_json::json!({
                "out": args.out,
                "round": round,
                "contributors": agg.contributors,
                "total_weight": agg.total_weight,
                "max_abs_error": bound,
                "clipping": {
                    "contributions": c.contributions,
                    "values_at_least": c.values_at_least,
                    "values_at_most": c.values_at_most,
                    "of_values": c.of_values,
                },
                "bytes": agg.bytes,
                "key_managers_answered": answered,
                "verified": match &agg.verification {
                    Verification::Recomputed { uploads, .. } => serde_json::json!({ "recomputed_from_uploads": uploads }),
                    Verification::Sampled { spans, of, detection_probability, uploads, .. } => serde_json::json!({
                        "sampled_spans": spans, "of_spans": of, "uploads": uploads,
                        "detection_probability_one_tampered_span": detection_probability,
                    }),
                    Verification::NotVerified(why) => serde_json::json!({ "not_verified": why }),
                },
                "aggregate_sha256": agg.round.transcript.as_ref().map(|t| t.aggregate_sha256),
                "dp": agg.dp.as_ref().map(|d| serde_json::json!({
                    "noise_std": d.noise_std,
                    "rounding_std": d.rounding_std,
                    "clipped_contributions": d.clipped_contributions,
                    "clipped_contributions_std": d.clipped_contributions_std,
                })),
            })
            .to_string(),
        );
    } else {
        emit(&format!(
            "wrote the mean of {} contributions (total weight {}) to {}: error ≤ {:.2e} per value as written; key \
             managers {:?} answered",
            agg.contributors,
            agg.total_weight,
            args.out.display(),
            bound,
            answered
        ));
        match &agg.verification {
            Verification::Recomputed { uploads, bytes, time } => emit(&format!(
                "  verified: the aggregate is the sum of the {uploads} uploads the members signed \
                 (recomputed from {bytes} bytes in {:.0} ms)",
                time.as_secs_f64() * 1e3
            )),
            Verification::Sampled { spans, of, detection_probability, uploads, bytes, time } => {
                emit(&format!(
                    "  verified by sampling: {spans} of {of} spans of the {uploads} uploads match the roots \
                     their members signed and sum to the aggregate's ({bytes} bytes in {:.0} ms); an \
                     aggregator that changed one span is caught with probability {:.3} — a deterrent, \
                     not a proof (--verify recomputes everything)",
                    time.as_secs_f64() * 1e3,
                    detection_probability
                ))
            }
            Verification::NotVerified(why) => emit(&format!("  not verified: {why}")),
        }
        if let Some(d) = &agg.dp {
            // Differential privacy: the noise is the error, and clipping is known only noised.
            emit(&format!(
                "  differential privacy: each value carries noise of standard deviation {:.3e} (the bound above \
                 holds except with probability 2^-128 per value); about {:.1} ± {:.1} contributions were \
                 scaled to the L2 bound {} (a noised count)",
                d.noise_std,
                d.clipped_contributions,
                d.clipped_contributions_std,
                agg.round.spec.plan.clip_bound()
            ));
        } else if c.any() {
            // The bound above is against the clipped contributions, not the raw updates.
            warn(&format!(
                "warning: clipping shaped this mean: {} of {} contributions had values beyond the round's \
                 clip bound ±{}, {clipped_values} of {} values ({:.2} % at most) were clipped; the error bound \
                 is against the clipped values and the mean may be much further from the mean of the raw \
                 updates (raise --clip on round create)",
                c.contributions,
                agg.contributors,
                agg.round.spec.plan.clip_bound(),
                c.of_values,
                100.0 * c.fraction_at_most()
            ));
        } else {
            emit("  no value of any contribution was clipped");
        }
        for n in agg.nodes.iter().filter(|n| n.problem.is_some()) {
            emit(&format!("  key manager {}: {}", n.x, n.problem.as_deref().unwrap_or("")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
