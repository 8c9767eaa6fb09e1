//! `overhead`: CryptFlow's ciphertext-overhead report. See `overhead --help` and
//! `BENCHMARKS.md`.
//!
//! For each (d, K, target error) it measures, in this one process and on the same data:
//! bytes per value of an upload, the published aggregate and the public key; encryption
//! time per client; aggregation (lift and sum K uploads, compress for download); decryption;
//! plaintext FedAvg (summing the K float32 vectors); max and RMS error of the mean against
//! the exact mean. Then a whole round through the real services: the KMS in-process, the
//! aggregator as its own process (so its peak memory is its own), K concurrent SDK clients
//! on loopback.

use clap::Parser;
use cryptflow_benches::{json_lines, markdown, parse_json_lines, svg, Row};
use cryptflow_client::{Client, Layout, ModelUpdate, RoundSpec, SubmitOptions, Token, Weighting};
use cryptflow_he::planner::{plan, Plan, PlanRequest, PlanTarget};
use cryptflow_he::wire::compressed_ciphertext_len;
use cryptflow_he::{
    generate_keys, weighted_sum_compressed, BodiesPerMask, Ciphertext, ParameterSet, Weight, Wire,
};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Role, RoundId};
use ndarray::{Array1, ArrayView1};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CryptFlow's ciphertext-overhead report: bytes, times, errors and memory against
/// plaintext FedAvg, written as Markdown, JSON lines and SVG.
#[derive(Debug, Parser)]
#[command(name = "overhead")]
struct Args {
    /// Quick mode for CI (well under two minutes): d ∈ {10^4, 10^5}, K = 8, error 1e-6.
    #[arg(long)]
    quick: bool,
    /// Also K = 512 (slow: 512 encryptions per configuration).
    #[arg(long)]
    with_512: bool,
    /// Dimensions (default 10^4,10^5,10^6,10^7).
    #[arg(long, value_delimiter = ',')]
    dims: Option<Vec<u64>>,
    /// Client counts (default 8,64, plus 512 with --with-512).
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<u32>>,
    /// Target errors of the mean (default 1e-4,1e-6).
    #[arg(long, value_delimiter = ',')]
    precisions: Option<Vec<f64>>,
    /// Skip the rounds through the REST services.
    #[arg(long)]
    no_rest: bool,
    /// Largest K·d for a REST round (its K clients hold their updates and ciphertexts in
    /// this process at once).
    #[arg(long, default_value_t = 100_000_000)]
    rest_max_values: u64,
    /// Output directory for overhead.md, overhead.jsonl and overhead.svg.
    #[arg(long, default_value = "target/overhead")]
    out: PathBuf,
    /// Peer rows (JSON lines, e.g. from benches/peers/run.sh) to include in the report.
    #[arg(long)]
    peers: Vec<PathBuf>,
    /// The `cryptflow-aggregator` binary (default: next to this one; built if missing).
    #[arg(long)]
    aggregator_bin: Option<PathBuf>,
}

/// Deterministic values uniform in [−1, 1] (SplitMix64).
struct Values(u64);

impl Values {
    fn vector(&mut self, d: usize) -> Vec<f32> {
        (0..d)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round_plan(k: u32, precision: f64) -> Result<Plan, String> {
    plan(
        &ParameterSet::default_128(),
        &PlanRequest {
            max_clients: k,
            clip_bound: 1.0,
            max_weight: 1,
            bodies: BodiesPerMask::try_new(8).map_err(|e| e.to_string())?,
            target: PlanTarget::Precision { max_abs_error: precision },
        },
    )
    .map_err(|e| e.to_string())
}

/// The in-process measurement of one configuration.
fn measure(d: usize, k: u32, precision: f64, seed: u64) -> Result<Row, String> {
    let params = ParameterSet::default_128();
    let plan = round_plan(k, precision)?;
    let (sk, pk) = generate_keys(params, plan.bodies).map_err(|e| e.to_string())?;
    let err = |e: cryptflow_he::Error| e.to_string();
    let mut values = Values(seed);
    let mut exact = vec![0f64; d];
    let mut plain = vec![0f32; d];
    let (mut enc, mut agg, mut fedavg) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut sum: Option<Ciphertext> = None;
    // Client by client, as the aggregator sees them: each upload is folded into the running
    // sum as it arrives and then dropped, so memory holds one update and one upload.
    for _ in 0..k {
        let x = values.vector(d);
        let t = Instant::now();
        for (p, v) in plain.iter_mut().zip(&x) {
            *p += v;
        }
        fedavg += t.elapsed();
        std::hint::black_box(&plain);
        for (e, v) in exact.iter_mut().zip(&x) {
            *e += f64::from(*v);
        }
        let t = Instant::now();
        let upload = pk
            .encrypt_compressed(&plan.encoding, ArrayView1::from(x.as_slice()), plan.upload)
            .map_err(err)?
            .ciphertext;
        enc += t.elapsed();
        let t = Instant::now();
        let item = [(&upload, Weight::ONE)];
        match sum.as_mut() {
            None => sum = Some(weighted_sum_compressed(&params, &item).map_err(err)?),
            Some(s) => s.weighted_add_compressed(&item).map_err(err)?,
        }
        agg += t.elapsed();
    }
    let sum = sum.ok_or("no clients")?;
    let t = Instant::now();
    let published = sum.compress(&params, plan.download);
    agg += t.elapsed();
    // Decryption runs once per round; its first run in a process pays first-touch page
    // faults for its buffers (large on this VM), so the median of three is reported.
    let mut decs = Vec::with_capacity(3);
    let mut mean = Array1::<f64>::zeros(0);
    for _ in 0..3 {
        let t = Instant::now();
        mean = sk.decrypt_compressed(&published).map_err(err)?.weighted_mean::<f64>();
        decs.push(ms(t.elapsed()));
    }
    let dec = median(decs);
    let (mut max, mut sq) = (0f64, 0f64);
    for (m, e) in mean.iter().zip(&exact) {
        let diff = (m - e / f64::from(k)).abs();
        max = max.max(diff);
        sq += diff * diff;
    }
    let len = |widths| {
        compressed_ciphertext_len(&params, plan.bodies, d as u64, widths).unwrap_or(0) as f64
    };
    Ok(Row {
        system: "cryptflow".into(),
        d: d as u64,
        k,
        precision: Some(precision),
        upload_bytes_per_value: len(plan.upload) / d as f64,
        download_bytes_per_value: len(plan.download) / d as f64,
        key_bytes_per_value: pk.to_bytes().len() as f64 / d as f64,
        encrypt_ms: ms(enc) / f64::from(k),
        aggregate_ms: ms(agg),
        decrypt_ms: dec,
        plaintext_fedavg_ms: ms(fedavg),
        max_error: max,
        rms_error: (sq / d as f64).sqrt(),
        bound: Some(plan.encoding.max_quantisation_error()),
        e2e_round_ms: None,
        aggregator_peak_mib: None,
        note: String::new(),
    })
}

/// Measures `reps` times (small d are noisy) and keeps the median of each time.
fn measure_median(d: usize, k: u32, precision: f64) -> Result<Row, String> {
    let reps = (1_000_000 / d.max(1)).clamp(1, 5);
    let runs: Vec<Row> =
        (0..reps).map(|i| measure(d, k, precision, 7 + i as u64)).collect::<Result<_, _>>()?;
    let pick = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    let mut row = runs[0].clone();
    row.encrypt_ms = pick(|r| r.encrypt_ms);
    row.aggregate_ms = pick(|r| r.aggregate_ms);
    row.decrypt_ms = pick(|r| r.decrypt_ms);
    row.plaintext_fedavg_ms = pick(|r| r.plaintext_fedavg_ms);
    row.max_error = runs.iter().map(|r| r.max_error).fold(0.0, f64::max);
    Ok(row)
}

/// The services for the REST rounds: a KMS in this process, tokens, and the aggregator's
/// binary.
struct Services {
    issuer: Issuer,
    kms_url: String,
    aggregator_bin: PathBuf,
    dir: tempfile::TempDir,
}

fn mint(issuer: &Issuer, sub: &str, role: Role, aud: &str) -> Result<String, String> {
    let id = ClientId::parse(sub).map_err(|e| e.to_string())?;
    issuer.mint(&id, role, aud, Duration::from_secs(24 * 3600)).map_err(|e| e.to_string())
}

async fn start_services(aggregator_bin: PathBuf) -> Result<Services, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (private, public) = generate_ed25519_pem().map_err(|e| e.to_string())?;
    let issuer = Issuer::from_pem("bench", private.as_bytes()).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("issuer.pub"), &public).map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    let pool = db::connect(&url, 4).await.map_err(|e| e.to_string())?;
    db::migrate(&pool, &url, &cryptflow_kms::MIGRATIONS).await.map_err(|e| e.to_string())?;
    let verifier = Verifier::new("kms", DEFAULT_LEEWAY, [("bench", public.as_bytes())])
        .map_err(|e| e.to_string())?;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let kms_url = format!("http://{}", api.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(cryptflow_kms::launch(
        api,
        metrics,
        cryptflow_kms::AppState {
            pool,
            verifier: Arc::new(verifier),
            master: Arc::new(cryptflow_kms::MasterKey::generate()),
            metrics: Arc::default(),
            audit_lock: Arc::default(),
        },
        1 << 20,
        std::future::pending(),
    ));
    let token = mint(&issuer, "aggregator", Role::Aggregator, "kms")?;
    std::fs::write(dir.path().join("aggregator-kms.jwt"), token).map_err(|e| e.to_string())?;
    Ok(Services { issuer, kms_url, aggregator_bin, dir })
}

/// The aggregator process; killed when dropped.
struct AggregatorProcess(Child);

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl AggregatorProcess {
    /// Peak resident set (VmHWM) in MiB, from /proc.
    fn peak_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// One round through the REST services with K concurrent clients; a fresh aggregator
/// process (and database and blob store) per round, so its peak memory is this round's.
async fn rest_round(
    s: &Services,
    d: usize,
    k: u32,
    precision: f64,
    tag: usize,
) -> Result<(f64, Option<f64>), String> {
    let work = s.dir.path().join(format!("agg-{tag}"));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let config = work.join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
             database_url = \"sqlite://{}?mode=rwc\"\nblob_dir = \"{}\"\nkms_url = \"{}\"\n\
             kms_token_file = \"{}\"\ntick_secs = 1\n\
             [[jwt_keys]]\nkid = \"bench\"\npublic_key_file = \"{}\"\n",
            free_port()?,
            work.join("agg.db").display(),
            work.join("blobs").display(),
            s.kms_url,
            s.dir.path().join("aggregator-kms.jwt").display(),
            s.dir.path().join("issuer.pub").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let migrated = Command::new(&s.aggregator_bin)
        .args(["migrate", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{}: {e}", s.aggregator_bin.display()))?;
    if !migrated.success() {
        return Err("the aggregator's migration failed".into());
    }
    let process = AggregatorProcess(
        Command::new(&s.aggregator_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", s.aggregator_bin.display()))?,
    );
    let agg_url = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if reqwest::get(format!("{agg_url}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        return Err("the aggregator did not become ready".into());
    }
    let client = |sub: &str, role: Role| -> Result<Client, String> {
        Client::builder(&agg_url, &s.kms_url)
            .aggregator_token(Token::new(mint(&s.issuer, sub, role, "aggregator")?))
            .kms_token(Token::new(mint(&s.issuer, sub, role, "kms")?))
            .build()
            .map_err(|e| e.to_string())
    };
    let ids: Vec<ClientId> = (0..k)
        .map(|i| ClientId::parse(format!("c{i}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let round = RoundId::parse(format!("bench-{tag}")).map_err(|e| e.to_string())?;
    let admin = client("ops", Role::Admin)?;
    let updates: Vec<Arc<ModelUpdate>> = {
        let mut values = Values(1000 + tag as u64);
        (0..k)
            .map(|_| {
                let v: Vec<f64> = values.vector(d).into_iter().map(f64::from).collect();
                Arc::new(ModelUpdate::Vector(Array1::from(v)))
            })
            .collect()
    };
    let start = Instant::now();
    admin
        .create_round(&RoundSpec {
            round_id: round.clone(),
            layout: Layout::Dimension(d as u64),
            clients: ids.clone(),
            min_clients: k,
            max_clients: k,
            deadline: 4_000_000_000,
            weighting: Weighting::Uniform,
            clip_bound: 1.0,
            max_abs_error: precision,
            bodies: 8,
        })
        .await
        .map_err(|e| e.to_string())?;
    let tasks: Vec<_> = ids
        .iter()
        .zip(&updates)
        .map(|(id, u)| {
            let (c, id, u, round) =
                (client(id.as_str(), Role::Client), id.clone(), u.clone(), round.clone());
            tokio::spawn(async move {
                c?.submit(&round, &id, &u, SubmitOptions::default())
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    admin.close_round(&round).await.map_err(|e| e.to_string())?;
    let mean =
        client("c0", Role::Client)?.fetch_mean(&round, None).await.map_err(|e| e.to_string())?;
    let elapsed = ms(start.elapsed());
    let peak = process.peak_mib();
    if mean.contributors != k {
        return Err(format!("{} of {k} contributions published", mean.contributors));
    }
    Ok((elapsed, peak))
}

/// The aggregator binary: given, or next to this one, or built with cargo.
fn aggregator_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory")?;
    let path = dir.join("cryptflow-aggregator");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "cryptflow-aggregator", "--bin", "cryptflow-aggregator"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cargo: {e}"))?;
        if !status.success() || !path.exists() {
            return Err(format!("cannot build {}", path.display()));
        }
    }
    Ok(path)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {:.0} GiB RAM", kib / 1048576.0));
    format!("{cpu}, {cores} cores{mem}")
}

async fn run(args: Args) -> Result<(), String> {
    let dims = args.dims.clone().unwrap_or_else(|| {
        if args.quick {
            vec![10_000, 100_000]
        } else {
            vec![10_000, 100_000, 1_000_000, 10_000_000]
        }
    });
    let clients = args.clients.clone().unwrap_or_else(|| match (args.quick, args.with_512) {
        (true, _) => vec![8],
        (false, false) => vec![8, 64],
        (false, true) => vec![8, 64, 512],
    });
    let precisions = args.precisions.clone().unwrap_or_else(|| {
        if args.quick {
            vec![1e-6]
        } else {
            vec![1e-4, 1e-6]
        }
    });
    let services = if args.no_rest {
        None
    } else {
        Some(start_services(aggregator_binary(args.aggregator_bin.clone())?).await?)
    };
    eprintln!("machine: {}", machine());
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut tag = 0;
    for &k in &clients {
        for &precision in &precisions {
            for &d in &dims {
                let du = usize::try_from(d).map_err(|e| e.to_string())?;
                eprint!("d={d} K={k} error≤{precision:e}: ");
                let mut row = match tokio::task::block_in_place(|| measure_median(du, k, precision))
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("skipped ({e})");
                        skipped.push(format!("d={d} K={k} error≤{precision:e}: {e}"));
                        continue;
                    }
                };
                eprint!(
                    "upload {:.2} B/value, encrypt {:.1} ms, aggregate {:.1} ms, decrypt {:.1} ms",
                    row.upload_bytes_per_value, row.encrypt_ms, row.aggregate_ms, row.decrypt_ms
                );
                if let Some(s) = &services {
                    if d * u64::from(k) <= args.rest_max_values {
                        tag += 1;
                        let (e2e, peak) = rest_round(s, du, k, precision, tag).await?;
                        row.e2e_round_ms = Some(e2e);
                        row.aggregator_peak_mib = peak;
                        eprint!(", REST round {e2e:.0} ms");
                    } else {
                        row.note = format!(
                            "no REST round: K·d = {} exceeds --rest-max-values {}",
                            d * u64::from(k),
                            args.rest_max_values
                        );
                    }
                }
                eprintln!();
                rows.push(row);
            }
        }
    }
    for p in &args.peers {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        rows.extend(parse_json_lines(&text).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut md = format!("Machine: {}\n\n{}", machine(), markdown(&rows));
    if !skipped.is_empty() {
        md.push_str("\nNot measured (the planner refused the configuration):\n");
        for s in &skipped {
            md.push_str(&format!("- {s}\n"));
        }
    }
    let write = |name: &str, text: &str| -> Result<(), String> {
        let p: PathBuf = Path::new(&args.out).join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("overhead.md", &md)?;
    write("overhead.jsonl", &json_lines(&rows))?;
    write("overhead.svg", &svg(&rows))?;
    println!("{md}");
    eprintln!("wrote {}/overhead.{{md,jsonl,svg}}", args.out.display());
    // A row whose error exceeds its bound is a bug, not a data point.
    if let Some(r) = rows.iter().find(|r| r.bound.is_some_and(|b| r.max_error > b)) {
        return Err(format!("d={} K={}: error {:e} above the bound", r.d, r.k, r.max_error));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
