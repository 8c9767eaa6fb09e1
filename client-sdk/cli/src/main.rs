//! `cryptflow`: the command-line client. See `cryptflow --help`.

mod demo;
mod files;
mod model;
mod output;
mod stack;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cryptflow_client::{Client, Layout, RoundInfo, RoundSpec, SubmitOptions, Token, Weighting};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer};
use cryptflow_services::{ClientId, Role, RoundId};
use files::DType;
use output::{human_bytes, progress_bar, CliError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 internal error; 2 bad command line; 3 unusable input file or update;
4 refused by a server (4xx); 5 server unreachable or failing after retries; 6 round failed,
not published yet, or wait timed out; 7 invalid server response; 8 (demo) encrypted mean
outside the planner's bound.

Start with `cryptflow demo`: it runs a KMS and an aggregator in-process and trains a model
federatedly under encryption, next to plaintext FedAvg.";

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
    /// Train a model federatedly through an in-process KMS and aggregator, next to
    /// plaintext FedAvg (no setup needed).
    Demo(demo::DemoArgs),
    /// Issuer keys and tokens, for local use (production tokens come from your identity
    /// provider).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, inspect and close rounds (admin token).
    #[command(subcommand)]
    Round(RoundCommand),
    /// Encrypt a model update from a .npy or .safetensors file and upload it.
    Submit(SubmitArgs),
    /// Download and decrypt a round's mean into a .npy or .safetensors file.
    Fetch(FetchArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Write a new Ed25519 issuer key pair (private key file mode 0600).
    Keygen {
        /// Private key (PKCS#8 PEM) output; keep it off the servers.
        #[arg(long)]
        private: PathBuf,
        /// Public key (SPKI PEM) output; goes into the services' `jwt_keys`.
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
    Private,
}

/// Where the services are and which tokens to use.
#[derive(Debug, Args)]
struct Conn {
    /// Aggregator base URL.
    #[arg(long, env = "CRYPTFLOW_AGGREGATOR_URL", default_value = "http://127.0.0.1:8082")]
    aggregator: String,
    /// KMS base URL.
    #[arg(long, env = "CRYPTFLOW_KMS_URL", default_value = "http://127.0.0.1:8081")]
    kms: String,
    /// File holding the token for the aggregator (audience `aggregator`).
    #[arg(long, env = "CRYPTFLOW_AGGREGATOR_TOKEN_FILE")]
    aggregator_token: Option<PathBuf>,
    /// File holding the token for the KMS (audience `kms`); needed by submit and fetch.
    #[arg(long, env = "CRYPTFLOW_KMS_TOKEN_FILE")]
    kms_token: Option<PathBuf>,
}

impl Conn {
    fn client(&self) -> Result<Client, CliError> {
        let token = |p: &Path| {
            std::fs::read_to_string(p)
                .map(Token::new)
                .map_err(|e| CliError::usage(format!("token file {}: {e}", p.display())))
        };
        let mut b = Client::builder(&self.aggregator, &self.kms);
        if let Some(p) = &self.aggregator_token {
            b = b.aggregator_token(token(p)?);
        }
        if let Some(p) = &self.kms_token {
            b = b.kms_token(token(p)?);
        }
        b.build().map_err(CliError::from)
    }
}

#[derive(Debug, Subcommand)]
enum RoundCommand {
    /// Create a round (asks the KMS for its key; prints the plan).
    Create(CreateArgs),
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
    /// Clients allowed to submit and to fetch the mean (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    clients: Vec<String>,
    /// Contributions needed for the round to succeed (default: all clients).
    #[arg(long)]
    min_clients: Option<u32>,
    /// The round closes when this many have contributed (default: all clients).
    #[arg(long)]
    max_clients: Option<u32>,
    /// Seconds until the deadline.
    #[arg(long, default_value_t = 3600)]
    deadline_in: u64,
    /// Weighting.
    #[arg(long, value_enum, default_value_t = WeightingArg::Uniform)]
    weighting: WeightingArg,
    /// Largest weight (samples and private weighting).
    #[arg(long, default_value_t = 1)]
    max_weight: u64,
    /// Values are clipped to ±this.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Largest acceptable error of a coordinate of the mean.
    #[arg(long, default_value_t = 1e-6)]
    precision: f64,
    /// Bodies per mask (L).
    #[arg(long, default_value_t = 8)]
    bodies: u8,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    conn: Conn,
    /// The round.
    #[arg(long)]
    round: String,
    /// This client's id (the subject of its tokens).
    #[arg(long)]
    client: String,
    /// The update: a .npy or .safetensors file.
    #[arg(long)]
    update: PathBuf,
    /// Weight (samples and private rounds).
    #[arg(long)]
    weight: Option<u64>,
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[command(flatten)]
    conn: Conn,
    /// The round.
    #[arg(long)]
    round: String,
    /// Output: a .npy or .safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Wait up to this many seconds for the round to be published.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Write the mean with the dtypes of this file (e.g. the update you submitted).
    #[arg(long, conflicts_with = "dtype")]
    like: Option<PathBuf>,
    /// Write the mean as this dtype (default f32, or the `--like` file's).
    #[arg(long, value_enum)]
    dtype: Option<DType>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
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
        Command::Demo(args) => demo::run(&args, json).await,
        Command::Token(cmd) => token(cmd, json),
        Command::Round(RoundCommand::Create(args)) => create(args, json).await,
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
    }
}

fn round_id(s: &str) -> Result<RoundId, CliError> {
    RoundId::parse(s).map_err(|e| CliError::usage(format!("--round: {e}")))
}

fn client_id(s: &str, flag: &str) -> Result<ClientId, CliError> {
    ClientId::parse(s).map_err(|e| CliError::usage(format!("{flag} `{s}`: {e}")))
}

/// Writes a secret to a new file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        CliError::input(format!("{}: {e} (existing files are not overwritten)", path.display()))
    })?;
    f.write_all(contents).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

fn token(cmd: TokenCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Keygen { private, public } => {
            let (sk, pk) = generate_ed25519_pem().map_err(|e| CliError::internal(e.to_string()))?;
            write_private(&private, sk.as_bytes())?;
            std::fs::write(&public, pk)
                .map_err(|e| CliError::input(format!("{}: {e}", public.display())))?;
            if json {
                println!("{}", serde_json::json!({"private": private, "public": public}));
            } else {
                println!("issuer private key: {} (keep it secret)", private.display());
                println!(
                    "issuer public key:  {} (list it in the services' jwt_keys)",
                    public.display()
                );
            }
            Ok(())
        }
        TokenCommand::Mint { key, kid, sub, role, aud, ttl, out } => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read(&key)
                    .map_err(|e| CliError::input(format!("{}: {e}", key.display())))?,
            );
            let issuer =
                Issuer::from_pem(&kid, &pem).map_err(|e| CliError::input(e.to_string()))?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Client => Role::Client,
                RoleArg::Aggregator => Role::Aggregator,
            };
            let aud = match aud {
                Audience::Kms => "kms",
                Audience::Aggregator => "aggregator",
            };
            let token = issuer
                .mint(&client_id(&sub, "--sub")?, role, aud, Duration::from_secs(ttl))
                .map_err(|e| CliError::internal(e.to_string()))?;
            match out {
                Some(path) => {
                    write_private(&path, token.as_bytes())?;
                    if json {
                        println!("{}", serde_json::json!({"out": path, "sub": sub, "aud": aud}));
                    } else {
                        println!(
                            "wrote a {role} token for `{sub}` (audience {aud}, {ttl} s) to {}",
                            path.display()
                        );
                    }
                }
                None => println!("{token}"),
            }
            Ok(())
        }
    }
}

async fn create(args: CreateArgs, json: bool) -> Result<(), CliError> {
    let layout = match (&args.dim, &args.like) {
        (Some(d), _) => Layout::Dimension(*d),
        (None, Some(p)) => files::read(p)?.update.layout(),
        (None, None) => return Err(CliError::usage("give --dim or --like")),
    };
    let clients: Vec<ClientId> =
        args.clients.iter().map(|c| client_id(c.trim(), "--clients")).collect::<Result<_, _>>()?;
    let n = u32::try_from(clients.len()).map_err(|_| CliError::usage("too many clients"))?;
    let weighting = match args.weighting {
        WeightingArg::Uniform => Weighting::Uniform,
        WeightingArg::Samples => Weighting::Samples { max_weight: args.max_weight },
        WeightingArg::Private => Weighting::Private { max_weight: args.max_weight },
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let spec = RoundSpec {
        round_id: round_id(&args.round)?,
        layout,
        clients,
        min_clients: args.min_clients.unwrap_or(n),
        max_clients: args.max_clients.unwrap_or(n),
        deadline: i64::try_from(now.saturating_add(args.deadline_in))
            .map_err(|_| CliError::usage("--deadline-in is too large"))?,
        weighting,
        clip_bound: args.clip,
        max_abs_error: args.precision,
        bodies: args.bodies,
    };
    let info = args.conn.client()?.create_round(&spec).await?;
    print_round(&info, json);
    Ok(())
}

fn state_name(info: &RoundInfo) -> String {
    serde_json::to_value(info.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_round(info: &RoundInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string(info).unwrap_or_default());
        return;
    }
    let s = &info.spec;
    println!("round {}: {}", s.round_id, state_name(info));
    println!(
        "  {} values ({}), {} of {}–{} clients contributed, deadline {}",
        info.encrypted_values,
        match &s.layout {
            Layout::Dimension(_) => "flat vector".to_owned(),
            Layout::Tensors(ts) if ts.len() == 1 => format!("tensor `{}`", ts[0].name),
            Layout::Tensors(ts) => format!("{} tensors", ts.len()),
        },
        info.contributors,
        s.min_clients,
        s.max_clients,
        s.deadline
    );
    let plan = &info.plan;
    let upload = cryptflow_he::wire::compressed_ciphertext_len(
        &cryptflow_he::ParameterSet::default_128(),
        plan.bodies,
        info.encrypted_values,
        plan.upload,
    )
    .unwrap_or(0);
    println!(
        "  plan: mean error ≤ {:.2e}, upload {} per client ({:.2} B/value), key {}",
        plan.encoding.max_quantisation_error(),
        human_bytes(upload),
        upload as f64 / info.encrypted_values.max(1) as f64,
        info.key_id
    );
    if let Some(h) = &info.aggregate_sha256 {
        println!("  aggregate sha256 {h}");
        for c in &info.contributions {
            println!("    {} (weight {}) sha256 {}", c.client_id, c.weight, c.sha256);
        }
    }
    if let Some(f) = &info.failure {
        println!("  failed: {f}");
    }
}

async fn submit(args: SubmitArgs, json: bool) -> Result<(), CliError> {
    let loaded = files::read(&args.update)?;
    let client = args.conn.client()?;
    let (bar, progress) = progress_bar(json);
    let result = client
        .submit(
            &round_id(&args.round)?,
            &client_id(&args.client, "--client")?,
            &loaded.update,
            SubmitOptions { weight: args.weight, progress: Some(progress) },
        )
        .await;
    bar.finish_and_clear();
    let s = result?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "receipt": s.receipt,
                "bytes": s.bytes,
                "clipped": s.clipping.clipped,
                "encrypt_ms": s.encrypt_time.as_secs_f64() * 1e3,
                "upload_ms": s.upload_time.as_secs_f64() * 1e3,
            })
        );
    } else {
        println!(
            "submitted {} values to round {} as {}: {} in {:.0} ms encrypt + {:.0} ms upload; {} contribution(s) so far",
            loaded.update.len(),
            s.receipt.round_id,
            s.receipt.client_id,
            human_bytes(s.bytes),
            s.encrypt_time.as_secs_f64() * 1e3,
            s.upload_time.as_secs_f64() * 1e3,
            s.receipt.contributors
        );
        println!("  receipt sha256 {}", s.receipt.sha256);
        if s.clipping.clipped > 0 {
            println!(
                "  warning: {} values were clipped to the round's bound (largest magnitude {})",
                s.clipping.clipped, s.clipping.largest_magnitude
            );
        }
    }
    Ok(())
}

async fn fetch(args: FetchArgs, json: bool) -> Result<(), CliError> {
    files::Format::of(&args.out)?;
    let dtypes = match (&args.like, args.dtype) {
        (Some(p), _) => files::read(p)?.dtypes,
        (None, Some(d)) => vec![d],
        (None, None) => vec![DType::F32],
    };
    let client = args.conn.client()?;
    let round = round_id(&args.round)?;
    if args.wait > 0 {
        client.wait_for_aggregate(&round, Duration::from_secs(args.wait)).await?;
    }
    let (bar, progress) = progress_bar(json);
    let result = client.fetch_mean(&round, Some(&progress)).await;
    bar.finish_and_clear();
    let agg = result?;
    files::write(&args.out, &agg.mean, &dtypes)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "out": args.out,
                "round": round,
                "contributors": agg.contributors,
                "total_weight": agg.total_weight,
                "max_abs_error": agg.max_abs_error,
                "bytes": agg.bytes,
                "aggregate_sha256": agg.round.aggregate_sha256,
            })
        );
    } else {
        println!(
            "wrote the mean of {} contributions (weight {}) to {}: error ≤ {:.2e} per value",
            agg.contributors,
            agg.total_weight,
            args.out.display(),
            agg.max_abs_error
        );
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

    #[test]
    fn update_layout_of_a_like_file_names_its_tensors() {
        let u = cryptflow_client::ModelUpdate::Vector(ndarray::Array1::zeros(4));
        assert_eq!(u.layout(), Layout::Dimension(4));
        assert_eq!(output::Exit::BoundExceeded as u8, 8);
    }
}
