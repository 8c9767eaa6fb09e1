//! `cryptflow demo`: federated training through a real KMS and aggregator, side by side with
//! plaintext FedAvg.

use crate::model::{max_abs_diff, shard_sizes, weighted_mean, Dataset, Model, Rng};
use crate::output::{human_bytes, CliError, Exit};
use crate::stack::LocalStack;
use cryptflow_client::{Client, ModelUpdate, RoundSpec, Tensor, Weighting};
use cryptflow_services::{ClientId, Role, RoundId};
use ndarray::Array1;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How clients are weighted in the demo.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoWeighting {
    /// Every client counts once.
    Uniform,
    /// Clients declare their sample count; the aggregator weights homomorphically.
    Samples,
    /// Clients weight by sample count inside the encryption; nobody else learns the counts.
    Private,
}

/// The demo's knobs.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Clients (training sites).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub clients: u32,
    /// Federated rounds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Weighting of the clients' updates.
    #[arg(long, value_enum, default_value_t = DemoWeighting::Uniform)]
    pub weighting: DemoWeighting,
    /// Largest acceptable error of a coordinate of the mean (the planner sizes the encoding);
    /// default 1e-6 for uniform rounds, 1e-4 for weighted ones (weights of up to a few
    /// hundred samples use up part of the 62-bit budget).
    #[arg(long)]
    pub precision: Option<f64>,
    /// Each update's values are clipped to ±this before encryption (and in plaintext FedAvg).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Hidden units of the MLP (0: softmax regression).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub hidden: u32,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    pub epochs: u32,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.2)]
    pub lr: f64,
    /// Synthetic updates of this many parameters instead of the model (up to 10^7).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub dim: Option<u64>,
    /// Seed of the data split, initialisation and synthetic updates.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One round's figures (also the `--json` line).
#[derive(Clone, Debug, Serialize)]
struct RoundReport {
    round: u32,
    accuracy_encrypted: Option<f64>,
    accuracy_plaintext: Option<f64>,
    parameters: u64,
    upload_bytes_per_client: u64,
    plaintext_bytes_per_client: u64,
    encrypt_ms_mean: f64,
    upload_ms_max: f64,
    aggregate_ms: f64,
    download_ms: f64,
    decrypt_ms: f64,
    max_abs_error: f64,
    bound: f64,
    clipped_values: u64,
}

/// What a round needs: the updates and their weights.
struct Updates {
    updates: Vec<Arc<ModelUpdate>>,
    weights: Vec<u64>,
}

/// Result of one encrypted round.
struct EncryptedRound {
    mean: ModelUpdate,
    report: RoundReport,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the demo; `Ok` only if every round's encrypted mean was within the planner's bound
/// of the plaintext mean.
pub async fn run(args: &DemoArgs, json: bool) -> Result<(), CliError> {
    let precision = args.precision.unwrap_or(match args.weighting {
        DemoWeighting::Uniform => 1e-6,
        _ => 1e-4,
    });
    if !(precision > 0.0 && args.clip > 0.0 && args.lr > 0.0) {
        return Err(CliError::usage("--precision, --clip and --lr must be positive"));
    }
    let stack = LocalStack::start().await.map_err(CliError::internal)?;
    let result = drive(&stack, args, precision, json).await;
    stack.stop().await.map_err(CliError::internal)?;
    result
}

async fn drive(
    stack: &LocalStack,
    args: &DemoArgs,
    precision: f64,
    json: bool,
) -> Result<(), CliError> {
    let k = args.clients as usize;
    let admin = stack.client("demo-operator", Role::Admin).map_err(CliError::internal)?;
    let ids: Vec<ClientId> = (0..k)
        .map(|i| {
            ClientId::parse(format!("site-{i}")).map_err(|e| CliError::internal(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let clients: Vec<Client> = ids
        .iter()
        .map(|id| stack.client(id.as_str(), Role::Client).map_err(CliError::internal))
        .collect::<Result<_, _>>()?;
    let mut rng = Rng::new(args.seed);
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };

    // The task: the model (or synthetic vectors) and each client's data.
    let task = match args.dim {
        Some(d) => Task::Synthetic { dim: d },
        None => {
            let data = Dataset::digits().map_err(CliError::internal)?;
            let mut order: Vec<usize> = (0..data.len()).collect();
            rng.shuffle(&mut order);
            let test_n = data.len() / 5;
            let test = data.select(&order[..test_n]);
            let train_idx = &order[test_n..];
            let sizes = shard_sizes(train_idx.len(), k);
            if sizes.contains(&0) {
                return Err(CliError::usage(format!(
                    "{k} clients leave some without data ({} training examples)",
                    train_idx.len()
                )));
            }
            let mut at = 0;
            let shards: Vec<Dataset> = sizes
                .iter()
                .map(|&n| {
                    let s = data.select(&train_idx[at..at + n]);
                    at += n;
                    s
                })
                .collect();
            let model = Model::new(args.hidden as usize, &mut rng);
            Task::Digits { test, shards, enc: model.clone(), plain: model }
        }
    };
    let weights: Vec<u64> = match (&task, args.weighting) {
        (_, DemoWeighting::Uniform) => vec![1; k],
        (Task::Digits { shards, .. }, _) => shards.iter().map(|s| s.len() as u64).collect(),
        (Task::Synthetic { .. }, _) => (0..k as u64).map(|i| 1 + i % 4).collect(),
    };
    let max_weight = weights.iter().copied().max().unwrap_or(1);
    let weighting = match args.weighting {
        DemoWeighting::Uniform => Weighting::Uniform,
        DemoWeighting::Samples => Weighting::Samples { max_weight },
        DemoWeighting::Private => Weighting::Private { max_weight },
    };

    say("CryptFlow demo: federated averaging under encryption, through a real KMS and aggregator"
        .into());
    match &task {
        Task::Digits { test, shards, enc, .. } => {
            let arch = if args.hidden == 0 {
                "softmax regression 64→10".to_owned()
            } else {
                format!("MLP 64→{}→10", args.hidden)
            };
            say(format!(
                "  data:   UCI handwritten digits (1,797 8×8 images, CC BY 4.0): {} test, {k} clients with {}–{} training examples each",
                test.len(),
                shards.iter().map(Dataset::len).min().unwrap_or(0),
                shards.iter().map(Dataset::len).max().unwrap_or(0),
            ));
            say(format!(
                "  model:  {arch}, {} parameters; {} local epoch(s) of SGD (lr {}) per round, updates clipped to ±{}",
                enc.parameters(),
                args.epochs,
                args.lr,
                args.clip
            ));
        }
        Task::Synthetic { dim } => say(format!(
            "  synthetic updates: {dim} values uniform in ±{} per client, {k} clients",
            args.clip
        )),
    }
    say(format!(
        "  servers: KMS {}, aggregator {} (in-process, temporary SQLite databases and blob store)",
        stack.kms_url, stack.aggregator_url
    ));
    say(format!(
        "  weighting: {:?}; mean error target ≤ {:e}; each round's mean is compared with plaintext FedAvg of the same updates",
        args.weighting, precision
    ));
    say(String::new());
    say(format!(
        "{:>5}  {:>15}  {:>22}  {:>9}  {:>10}  {:>9}  {:>22}",
        "round",
        "accuracy",
        "upload per client",
        "encrypt",
        "aggregate",
        "decrypt",
        "max |enc − plain|"
    ));
    say(format!(
        "{:>5}  {:>15}  {:>22}  {:>9}  {:>10}  {:>9}  {:>22}",
        "", "enc / plain", "(plaintext f32)", "(mean)", "", "", "(planner bound)"
    ));

    let run_tag = format!("{:x}", now());
    let mut task = task;
    let mut worst_ratio = 0f64;
    let mut last: Option<RoundReport> = None;
    for r in 1..=args.rounds {
        let round_id = RoundId::parse(format!("demo-{run_tag}-r{r}"))
            .map_err(|e| CliError::internal(e.to_string()))?;
        // Local training (or synthetic updates).
        let (inputs, plain_mean_of_enc) = match &mut task {
            Task::Digits { shards, enc, plain, .. } => {
                let mut enc_updates = Vec::with_capacity(k);
                let mut plain_updates = Vec::with_capacity(k);
                for (i, shard) in shards.iter().enumerate() {
                    let seed = args.seed ^ (u64::from(r) << 32) ^ i as u64;
                    let local = |start: &Model| {
                        let mut m = start.clone();
                        m.train(shard, args.epochs as usize, 16, args.lr, &mut Rng::new(seed));
                        m.delta_from(start, args.clip)
                    };
                    enc_updates.push((local(enc), weights[i] as f64));
                    plain_updates.push((local(plain), weights[i] as f64));
                }
                let expected = weighted_mean(&enc_updates);
                plain.apply(&weighted_mean(&plain_updates)).map_err(CliError::internal)?;
                let updates = enc_updates
                    .into_iter()
                    .map(|(ts, _)| Arc::new(ModelUpdate::Tensors(ts)))
                    .collect();
                (Updates { updates, weights: weights.clone() }, Expected::Tensors(expected))
            }
            Task::Synthetic { dim } => {
                let d = *dim as usize;
                let mut sum = vec![0f64; d];
                let mut updates = Vec::with_capacity(k);
                let total: f64 = weights.iter().map(|&w| w as f64).sum();
                for &w in weights.iter() {
                    let v: Vec<f64> =
                        (0..d).map(|_| (2.0 * rng.unit() - 1.0) * args.clip).collect();
                    for (s, x) in sum.iter_mut().zip(&v) {
                        *s += x * w as f64 / total;
                    }
                    updates.push(Arc::new(ModelUpdate::Vector(Array1::from(v))));
                }
                (Updates { updates, weights: weights.clone() }, Expected::Vector(sum))
            }
        };
        let layout = inputs.updates[0].layout();
        let spec = RoundSpec {
            round_id: round_id.clone(),
            layout,
            clients: ids.clone(),
            min_clients: args.clients,
            max_clients: args.clients,
            deadline: now() + 3600,
            weighting: weighting.clone(),
            clip_bound: args.clip,
            max_abs_error: precision,
            bodies: 8,
        };
        let mut round = encrypted_round(&admin, &clients, &ids, &spec, &inputs, r).await?;
        let diff = match (&plain_mean_of_enc, &round.mean) {
            (Expected::Tensors(want), ModelUpdate::Tensors(got)) => max_abs_diff(want, got),
            (Expected::Vector(want), ModelUpdate::Vector(got)) => {
                want.iter().zip(got.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
            }
            _ => return Err(CliError::internal("the aggregate came back in another layout")),
        };
        round.report.max_abs_error = diff;
        if let Task::Digits { test, enc, plain, .. } = &mut task {
            if let ModelUpdate::Tensors(mean) = &round.mean {
                enc.apply(mean).map_err(CliError::internal)?;
            }
            round.report.accuracy_encrypted = Some(enc.accuracy(test));
            round.report.accuracy_plaintext = Some(plain.accuracy(test));
        }
        worst_ratio = worst_ratio.max(diff / round.report.bound);
        print_round(&round.report, json);
        last = Some(round.report);
    }

    let last = last.ok_or_else(|| CliError::internal("no rounds ran"))?;
    if !json {
        println!();
        if let Task::Digits { enc, plain, .. } = &task {
            println!(
                "final test accuracy: encrypted {:.4}, plaintext FedAvg {:.4}; models differ by at most {:.2e} per parameter",
                last.accuracy_encrypted.unwrap_or(0.0),
                last.accuracy_plaintext.unwrap_or(0.0),
                max_abs_diff(&enc.tensors(), &plain.tensors())
            );
        }
        let small = matches!(task, Task::Digits { .. });
        println!(
            "upload: {} per client for {} parameters ({:.2}× plaintext float32); the servers never saw an update in the clear",
            human_bytes(last.upload_bytes_per_client),
            last.parameters,
            last.upload_bytes_per_client as f64 / last.plaintext_bytes_per_client as f64,
        );
        if small {
            println!(
                "(a small model pays for a whole key-sized mask; `--dim 1000000` shows the overhead at scale)"
            );
        }
    }
    if worst_ratio > 1.0 {
        eprintln!(
            "error: an encrypted mean differed from plaintext FedAvg by {worst_ratio:.2}× the planner's bound"
        );
        return Err(CliError::new(
            Exit::BoundExceeded,
            "encrypted mean outside the planner's bound",
        ));
    }
    if !json {
        println!(
            "every round's encrypted mean was within the planner's bound of plaintext FedAvg (worst: {:.1}% of the bound)",
            worst_ratio * 100.0
        );
    }
    Ok(())
}

enum Task {
    Digits { test: Dataset, shards: Vec<Dataset>, enc: Model, plain: Model },
    Synthetic { dim: u64 },
}

enum Expected {
    Tensors(Vec<Tensor>),
    Vector(Vec<f64>),
}

/// Creates the round, encrypts every client's update (one after the other, each using all
/// cores, as on separate machines), uploads them concurrently, closes the round and has the
/// first client fetch and decrypt the mean.
async fn encrypted_round(
    admin: &Client,
    clients: &[Client],
    ids: &[ClientId],
    spec: &RoundSpec,
    inputs: &Updates,
    r: u32,
) -> Result<EncryptedRound, CliError> {
    let info = admin.create_round(spec).await.map_err(CliError::from)?;
    let mut encrypted = Vec::with_capacity(clients.len());
    let mut encrypt_total = Duration::ZERO;
    let mut clipped = 0;
    for ((client, update), &w) in clients.iter().zip(&inputs.updates).zip(&inputs.weights) {
        let weight = match spec.weighting {
            Weighting::Uniform => None,
            _ => Some(w),
        };
        let e = client.encrypt(&info, update, weight, None).await.map_err(CliError::from)?;
        encrypt_total += e.encrypt_time;
        clipped += e.clipping.clipped;
        encrypted.push(e);
    }
    let upload_bytes = encrypted.first().map_or(0, |e| e.bytes.len() as u64);
    let uploads: Vec<_> = clients
        .iter()
        .zip(ids)
        .zip(encrypted)
        .map(|((client, id), e)| {
            let (client, id, round) = (client.clone(), id.clone(), spec.round_id.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                client.upload(&round, &id, &e, None).await.map(|_| start.elapsed())
            })
        })
        .collect();
    let mut upload_max = Duration::ZERO;
    for u in uploads {
        let t = u.await.map_err(|e| CliError::internal(e.to_string()))?.map_err(CliError::from)?;
        upload_max = upload_max.max(t);
    }
    let start = Instant::now();
    let closed = admin.close_round(&spec.round_id).await.map_err(CliError::from)?;
    let aggregate_time = start.elapsed();
    if closed.contributions.len() != clients.len() {
        return Err(CliError::internal(format!(
            "round {r}: {} of {} contributions published",
            closed.contributions.len(),
            clients.len()
        )));
    }
    let aggregate = clients[0].fetch_mean(&spec.round_id, None).await.map_err(CliError::from)?;
    let parameters = spec.layout.values().unwrap_or(0);
    Ok(EncryptedRound {
        mean: aggregate.mean,
        report: RoundReport {
            round: r,
            accuracy_encrypted: None,
            accuracy_plaintext: None,
            parameters,
            upload_bytes_per_client: upload_bytes,
            plaintext_bytes_per_client: 4 * parameters,
            encrypt_ms_mean: ms(encrypt_total) / clients.len() as f64,
            upload_ms_max: ms(upload_max),
            aggregate_ms: ms(aggregate_time),
            download_ms: ms(aggregate.download_time),
            decrypt_ms: ms(aggregate.decrypt_time),
            max_abs_error: f64::NAN,
            bound: aggregate.max_abs_error,
            clipped_values: clipped,
        },
    })
}

fn print_round(r: &RoundReport, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(r) {
            println!("{line}");
        }
        return;
    }
    let acc = match (r.accuracy_encrypted, r.accuracy_plaintext) {
        (Some(a), Some(b)) => format!("{a:.4} / {b:.4}"),
        _ => "—".to_owned(),
    };
    println!(
        "{:>5}  {:>15}  {:>22}  {:>6.1} ms  {:>7.1} ms  {:>6.1} ms  {:>22}",
        r.round,
        acc,
        format!(
            "{} ({})",
            human_bytes(r.upload_bytes_per_client),
            human_bytes(r.plaintext_bytes_per_client)
        ),
        r.encrypt_ms_mean,
        r.aggregate_ms,
        r.decrypt_ms,
        format!("{:.2e} (≤ {:.2e})", r.max_abs_error, r.bound),
    );
}
