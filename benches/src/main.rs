//! `overhead`: CryptFlow's ciphertext-overhead report. See `overhead --help` and
//! `BENCHMARKS.md`.
//!
//! For each (d, K, target error) it measures, in this one process and on the same data:
//! bytes per value of an upload and of the published aggregate, and the key material a client
//! sends (its Shamir shares, for a one-node committee); encryption time per client;
//! aggregation (lift and sum K uploads, pack the aggregate); decryption (cross-check the
//! releases, combine, decrypt, mean); plaintext FedAvg (summing the K float32 vectors); max and
//! RMS error of the mean against the exact mean. Then a whole round through the real services
//! of the local stack: a key manager and the aggregator as their own processes (so the
//! aggregator's peak memory is its own), K concurrent SDK clients on loopback.
use clap::Parser;
use cryptflow_benches::{json_lines, markdown, parse_json_lines, peer_table, svg, Row};
use cryptflow_client::{Layout, ModelUpdate, RoundRequest, SubmitOptions, Weighting};
use cryptflow_devstack::LocalStack;
use cryptflow_he::planner::{plan, Plan, PlanRequest};
use cryptflow_he::sharing::{CommitteeShape, Release};
use cryptflow_he::{
    decrypt_with_releases, ClientKey, MaskSeed, PackedCiphertext, ParameterSet, RoundSetup,
    RunningSum, Wire,
};
use cryptflow_services::RoundId;
use ndarray::Array1;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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
    /// Instead of the table: one client of this process encrypts and uploads a float32
    /// update of this many values (the services run as processes); reports this process's
    /// peak resident memory against the input's size.
    #[arg(long)]
    client_rss: Option<u64>,
    /// Largest K·d for a REST round (its K clients hold their updates in this process at
    /// once).
    #[arg(long, default_value_t = 100_000_000)]
    rest_max_values: u64,
    /// Output directory for overhead.md, overhead.jsonl and overhead.svg.
    #[arg(long, default_value = "target/overhead")]
    out: PathBuf,
    /// Peer rows (JSON lines, e.g. from benches/peers/run_all.sh) to include in the report.
    #[arg(long)]
    peers: Vec<PathBuf>,
    /// Instead of the table: scale-out rounds (issue #15) at each --dims × --clients, through
    /// one replica on local disk (SQLite) and through this many replicas sharing PostgreSQL
    /// (`CRYPTFLOW_TEST_DATABASE_URL`) and an S3 bucket (`CRYPTFLOW_TEST_S3_ENDPOINT`);
    /// reports the total round time and each replica's peak resident memory. Writes
    /// scale-out.md and scale-out.jsonl.
    #[arg(long)]
    scale_out: Option<usize>,
    /// With --scale-out: the replicated rounds only, on this blob store (`s3`, or `local`: one
    /// directory shared by the replicas of this machine).
    #[arg(long, value_parser = ["s3", "local"])]
    replicated_only: Option<String>,
    /// With --scale-out: do not fetch and decrypt the mean (for models too large for this
    /// machine to hold the clients' updates and the mean at once); the round's contributor
    /// count is still checked.
    #[arg(long)]
    no_fetch: bool,
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
            max_abs_error: precision,
            weighting: Weighting::Uniform,
            dp: None,
        },
    )
    .map_err(|e| e.to_string())
}

/// The in-process measurement of one configuration.
fn measure(d: usize, k: u32, precision: f64, seed: u64) -> Result<Row, String> {
    let err = |e: cryptflow_he::Error| e.to_string();
    let params = ParameterSet::default_128();
    let plan = round_plan(k, precision)?;
    let setup =
        RoundSetup::try_new(plan, MaskSeed::generate().map_err(err)?, d as u64).map_err(err)?;
    let shape = CommitteeShape::try_new(1, 1).map_err(err)?;
    let mut values = Values(seed);
    let mut exact = vec![0f64; d];
    let mut plain = vec![0f32; d];
    let (mut enc, mut agg, mut fedavg) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).map_err(err)?;
    let mut shares = Vec::with_capacity(k as usize);
    let mut key_bytes = 0usize;
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
        let key = ClientKey::generate(&params).map_err(err)?;
        let upload =
            key.encryptor(&setup, None).map_err(err)?.encrypt(&x[..]).map_err(err)?.ciphertext;
        let share = key.share(shape).map_err(err)?;
        enc += t.elapsed();
        key_bytes = share.iter().map(|s| s.to_bytes().len()).sum();
        shares.push(share);
        let t = Instant::now();
        sum.add_upload(&upload).map_err(err)?;
        agg += t.elapsed();
    }
    let t = Instant::now();
    let aggregate = PackedCiphertext::aggregate(&setup, k, sum.pack()).map_err(err)?;
    agg += t.elapsed();
    drop(sum);
    // What the key manager releases: the unweighted sum of the contributors' shares.
    let releases =
        vec![Release::sum(shares[0][0].index(), shares.iter().map(|s| &s[0])).map_err(err)?];
    // Decryption runs once per round; its first run in a process pays first-touch page
    // faults for its buffers (large on this VM), so the median of three is reported.
    let mut decs = Vec::with_capacity(3);
    let mut mean = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (decrypted, _) =
            decrypt_with_releases(&setup, &aggregate, shape, &releases).map_err(err)?;
        mean = decrypted.mean::<f64>();
        decs.push(ms(t.elapsed()));
    }
    let dec = median(decs);
    let (mut max, mut sq) = (0f64, 0f64);
    for (m, e) in mean.iter().zip(&exact) {
        let diff = (m - e / f64::from(k)).abs();
        max = max.max(diff);
        sq += diff * diff;
    }
    let bytes = setup.upload_len() as f64 / d as f64;
    Ok(Row {
        system: "cryptflow".into(),
        d: d as u64,
        k,
        precision: Some(precision),
        upload_bytes_per_value: bytes,
        download_bytes_per_value: bytes,
        key_bytes_per_value: key_bytes as f64 / d as f64,
        encrypt_ms: ms(enc) / f64::from(k),
        aggregate_ms: ms(agg),
        decrypt_ms: dec,
        plaintext_fedavg_ms: ms(fedavg),
        max_error: max,
        rms_error: (sq / d as f64).sqrt(),
        bound: Some(plan.max_abs_error()),
        e2e_round_ms: None,
        aggregator_peak_mib: None,
        version: Some(format!("protocol v2, {}", env!("CARGO_PKG_VERSION"))),
        ..Row::default()
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

/// Peak resident set (VmHWM) of process `pid` in MiB, from /proc.
fn peak_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One round through the REST services with K concurrent clients: a fresh local stack (a key
/// manager and the aggregator as processes, SQLite, blobs on disk) per round, so the
/// aggregator's peak memory is this round's.
async fn rest_round(
    d: usize,
    k: u32,
    precision: f64,
    tag: usize,
) -> Result<(f64, Option<f64>), String> {
    // The aggregator's default of 16 upload slots: with K > 16 the REST round includes its
    // back-pressure (uploads wait for a slot).
    let stack = LocalStack::builder()
        .sites(k as usize)
        .processes(true)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let (elapsed, peaks) = round_on(&stack, d, k, precision, tag, true).await?;
    stack.stop().await;
    Ok((elapsed, peaks.first().copied().flatten()))
}

/// One round on `stack`, its K clients spread round-robin over the aggregator's replicas;
/// the round's time (creation to the mean fetched, or to publication without `fetch`) and
/// each replica's peak resident memory.
async fn round_on(
    stack: &LocalStack,
    d: usize,
    k: u32,
    precision: f64,
    tag: usize,
    fetch: bool,
) -> Result<(f64, Vec<Option<f64>>), String> {
    let ids = stack.site_ids();
    let replicas = stack.aggregator_urls().len();
    let round = RoundId::parse(format!("bench-{tag}")).map_err(|e| e.to_string())?;
    let start = Instant::now();
    stack
        .admin()
        .create_round(&RoundRequest {
            round_id: round.clone(),
            layout: Layout::Dimension(d as u64),
            clients: ids.clone(),
            min_clients: k,
            max_clients: k,
            deadline: None,
            deadline_in_secs: Some(3600),
            weighting: Weighting::Uniform,
            clip_bound: 1.0,
            max_abs_error: precision,
            dp: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    // Each client makes its update when it starts and drops it after the upload, so the
    // updates are not all held at once longer than the uploads overlap.
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (c, round) = (stack.client_via(id.as_str(), i % replicas), round.clone());
            tokio::spawn(async move {
                let u = ModelUpdate::from(Array1::from(
                    Values(1000 + (tag * 4096 + i) as u64).vector(d),
                ));
                c.submit(&round, u, SubmitOptions::default()).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let reader = stack.client(ids[0].as_str());
    let info = reader
        .wait_for_aggregate(&round, Duration::from_secs(3600))
        .await
        .map_err(|e| e.to_string())?;
    let contributors = if fetch {
        reader.fetch_mean(&round, None).await.map_err(|e| e.to_string())?.contributors
    } else {
        info.transcript.map_or(0, |t| t.contributors.len() as u32)
    };
    let elapsed = ms(start.elapsed());
    let peaks = (0..replicas).map(|i| stack.replica_pid(i).and_then(peak_mib)).collect();
    if contributors != k {
        return Err(format!("{contributors} of {k} contributions published"));
    }
    Ok((elapsed, peaks))
}

/// The scale-out rounds (see `--scale-out`): a Markdown table and JSON lines.
async fn scale_out(args: &Args, replicas: usize) -> Result<(), String> {
    use cryptflow_devstack::{Blobs, Database};
    let dims = args.dims.clone().unwrap_or_else(|| vec![10_000_000]);
    let clients = args.clients.clone().unwrap_or_else(|| vec![64]);
    let precision = args.precisions.as_ref().and_then(|p| p.first().copied()).unwrap_or(1e-6);
    let mut setups: Vec<(String, usize, Database, Blobs)> = Vec::new();
    match args.replicated_only.as_deref() {
        None => {
            setups.push((
                "1 replica, local disk, SQLite".into(),
                1,
                Database::Sqlite,
                Blobs::Local,
            ));
            setups.push((
                format!("{replicas} replicas, S3 (moto), PostgreSQL"),
                replicas,
                Database::Postgres,
                Blobs::S3,
            ));
        }
        Some("s3") => setups.push((
            format!("{replicas} replicas, S3 (moto), PostgreSQL"),
            replicas,
            Database::Postgres,
            Blobs::S3,
        )),
        Some(_) => setups.push((
            format!("{replicas} replicas, one local directory, PostgreSQL"),
            replicas,
            Database::Postgres,
            Blobs::Local,
        )),
    }
    eprintln!("machine: {}", machine());
    let mut md = format!(
        "Machine: {}\n\n| setup | d | K | round (s) | peak RSS per replica (MiB) |\n|---|---|---|---|---|\n",
        machine()
    );
    let mut jsonl = String::new();
    let mut tag = 0;
    for &d in &dims {
        for &k in &clients {
            for (name, n, database, blobs) in &setups {
                tag += 1;
                eprint!("{name}: d={d} K={k}: ");
                let stack = LocalStack::builder()
                    .sites(k as usize)
                    .processes(true)
                    .database(database.clone())
                    .blobs(blobs.clone())
                    .aggregator_replicas(*n)
                    .start()
                    .await
                    .map_err(|e| e.to_string())?;
                let du = usize::try_from(d).map_err(|e| e.to_string())?;
                let outcome = round_on(&stack, du, k, precision, tag, !args.no_fetch).await;
                stack.stop().await;
                let (elapsed, peaks) = outcome?;
                let peaks: Vec<String> =
                    peaks.iter().map(|p| p.map_or("?".into(), |m| format!("{m:.0}"))).collect();
                eprintln!("{:.1} s, peak RSS {} MiB", elapsed / 1000.0, peaks.join(", "));
                md.push_str(&format!(
                    "| {name} | {d} | {k} | {:.1} | {} |\n",
                    elapsed / 1000.0,
                    peaks.join(", ")
                ));
                jsonl.push_str(&format!(
                    "{{\"setup\":{:?},\"d\":{d},\"k\":{k},\"round_ms\":{elapsed:.0},\"peak_mib\":[{}]}}\n",
                    name,
                    peaks.iter().map(|p| if p == "?" { "null".to_owned() } else { p.clone() }).collect::<Vec<_>>().join(",")
                ));
            }
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let write = |name: &str, text: &str| -> Result<(), String> {
        let p: PathBuf = Path::new(&args.out).join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("scale-out.md", &md)?;
    write("scale-out.jsonl", &jsonl)?;
    println!("{md}");
    Ok(())
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

/// Peak resident set of this process, in bytes.
fn own_peak_bytes() -> Option<u64> {
    peak_mib(std::process::id()).map(|m| (m * 1024.0 * 1024.0) as u64)
}

/// One client encrypting and uploading `d` float32 values: peak RSS against the input.
async fn client_rss(d: u64) -> Result<(), String> {
    let stack =
        LocalStack::builder().sites(2).processes(true).start().await.map_err(|e| e.to_string())?;
    let round = RoundId::parse("memory").map_err(|e| e.to_string())?;
    let req = RoundRequest {
        round_id: round.clone(),
        layout: Layout::Dimension(d),
        clients: stack.site_ids(),
        min_clients: 2,
        max_clients: 2,
        deadline: None,
        deadline_in_secs: Some(3600),
        weighting: Weighting::Uniform,
        clip_bound: 1.0,
        max_abs_error: 1e-6,
        dp: None,
    };
    stack.admin().create_round(&req).await.map_err(|e| e.to_string())?;
    let client = stack.client("site-0");
    let before = own_peak_bytes().unwrap_or(0);
    let du = usize::try_from(d).map_err(|e| e.to_string())?;
    let input: Vec<f32> = Values(11).vector(du);
    let input_bytes = (input.len() * 4) as u64;
    let update = Arc::new(ModelUpdate::from(Array1::from(input)));
    let start = Instant::now();
    let s = client
        .submit(&round, update.clone(), SubmitOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let took = start.elapsed();
    drop(update);
    let peak = own_peak_bytes().ok_or("no /proc/self/status")?;
    println!(
        "client RSS: {d} float32 values ({:.0} MB input), upload {:.0} MB in {:.1} s; peak resident memory of \
         this process {:.0} MB = {:.2}× the input (before the input: {:.0} MB)",
        input_bytes as f64 / 1e6,
        s.bytes as f64 / 1e6,
        took.as_secs_f64(),
        peak as f64 / 1e6,
        peak as f64 / input_bytes as f64,
        before as f64 / 1e6
    );
    stack.stop().await;
    if peak as f64 > 1.5 * input_bytes as f64 {
        return Err(format!("peak {peak} bytes exceeds 1.5× the input ({input_bytes} bytes)"));
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(d) = args.client_rss {
        return client_rss(d).await;
    }
    if let Some(n) = args.scale_out {
        return scale_out(&args, n).await;
    }
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
                if !args.no_rest {
                    if d * u64::from(k) <= args.rest_max_values {
                        tag += 1;
                        let (e2e, peak) = rest_round(du, k, precision, tag).await?;
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
    let peers = peer_table(&rows);
    if !peers.is_empty() {
        md.push_str(
            "\nAgainst the peers, at the dimensions and client counts they were measured at \
             (× FedAvg: one baseline per (d, K), the fastest plaintext FedAvg measured there):\n\n",
        );
        md.push_str(&peers);
    }
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
