//! The demo's rounds: local training (or synthetic updates), encrypted federated averaging
//! through the local stack, and plaintext FedAvg of the same updates side by side.

use crate::model::{max_abs_diff, shard_sizes, weighted_mean, Dataset, Model, Rng, Tensor};
use crate::output::{emit, human_bytes, DemoError, Exit};
use cryptflow_client::{
    Client, ClientPolicy, ModelUpdate, RoundRequest, SubmitOptions, TensorValues, Weighting,
};
use cryptflow_devstack::LocalStack;
use cryptflow_services::{Role, RoundId};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How clients are weighted in the demo.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoWeighting {
    /// Every client counts once.
    Uniform,
    /// FedAvg: clients weight by their sample count inside the encryption; nobody else learns
    /// the counts.
    Samples,
}

/// Federated training under encryption through a real key-manager committee and aggregator
/// on loopback, next to plaintext FedAvg. No setup needed.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "cryptflow-demo", version)]
pub struct DemoArgs {
    /// Clients (training sites).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=512))]
    pub clients: u32,
    /// Federated rounds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Key managers in the committee (default 4, with --threshold 3: one may collude with the
    /// aggregator, one may be down).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub kms_nodes: u8,
    /// Releases needed to decrypt (more than half of --kms-nodes; default: the smallest that
    /// tolerates one key manager colluding with the aggregator, 2t − n − 1 ≥ 1, at most n).
    #[arg(long)]
    pub threshold: Option<u8>,
    /// Stop this key manager (by share index) halfway through the run; the rounds go on while
    /// --threshold remain.
    #[arg(long)]
    pub kill_node: Option<u8>,
    /// Weighting of the clients' updates.
    #[arg(long, value_enum, default_value_t = DemoWeighting::Uniform)]
    pub weighting: DemoWeighting,
    /// Largest acceptable absolute error of a coordinate of the mean (the planner sizes the
    /// encoding for it), in the model's own units; must be below --clip.
    #[arg(long, default_value_t = 1e-6)]
    pub max_abs_error: f64,
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
    /// One JSON object per round on stdout (errors as JSON on stderr).
    #[arg(long)]
    pub json: bool,
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
    submit_ms_mean: f64,
    aggregate_ms: f64,
    fetch_ms: f64,
    decrypt_ms: f64,
    max_abs_error: f64,
    bound: f64,
    clipped_values: u64,
    nodes_answered: Vec<u8>,
    nodes_down: Vec<u8>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

enum Task {
    Digits { test: Dataset, shards: Vec<Dataset>, enc: Model, plain: Model },
    Synthetic { dim: u64 },
}

/// Runs the demo; `Ok` only if every round's encrypted mean was within the planner's bound of
/// the plaintext mean.
pub async fn run(args: &DemoArgs) -> Result<(), DemoError> {
    let usage = |m: String| DemoError::new(Exit::Usage, m);
    let t = args.threshold.unwrap_or(((args.kms_nodes + 3) / 2).min(args.kms_nodes));
    if !(args.max_abs_error > 0.0 && args.max_abs_error < args.clip) {
        return Err(usage(format!(
            "--max-abs-error {} must be positive and below --clip {} (it is an absolute error of the mean, \
             in the model's units)",
            args.max_abs_error, args.clip
        )));
    }
    if !(args.clip > 0.0 && args.lr > 0.0) {
        return Err(usage("--clip and --lr must be positive".into()));
    }
    if args.kill_node.is_some_and(|x| x == 0 || x > args.kms_nodes) {
        return Err(usage(format!("--kill-node must be a share index in 1..={}", args.kms_nodes)));
    }
    let shape = cryptflow_he::sharing::CommitteeShape::try_new(args.kms_nodes, t)
        .map_err(|e| usage(format!("--kms-nodes {} --threshold {t}: {e}", args.kms_nodes)))?;
    let mut stack = LocalStack::builder()
        .nodes(args.kms_nodes, t)
        .sites(args.clients as usize)
        .deposit_grace_secs(10)
        .start()
        .await
        .map_err(DemoError::internal)?;
    let result = drive(&mut stack, args, shape).await;
    stack.stop().await;
    result
}

async fn drive(
    stack: &mut LocalStack,
    args: &DemoArgs,
    shape: cryptflow_he::sharing::CommitteeShape,
) -> Result<(), DemoError> {
    let k = args.clients as usize;
    let admin = stack.admin();
    let ids = stack.site_ids();
    // The sites' default policy, except where the command line chose otherwise: a committee the
    // default refuses (`--kms-nodes 1`, `--kms-nodes 3 --threshold 2`) or `--clients 2` runs as
    // asked, and the committee line below says what it tolerates.
    let default = ClientPolicy::default();
    let policy = ClientPolicy {
        min_contributors: default.min_contributors.min(args.clients),
        min_tolerated_colluding_nodes: shape
            .tolerated_colluding()
            .min(default.min_tolerated_colluding_nodes),
        allow_single_key_manager: shape.nodes() == 1,
        ..default
    };
    let clients: Vec<Client> =
        ids.iter().map(|id| stack.client_with(id.as_str(), Role::Client, policy.clone())).collect();
    let mut rng = Rng::new(args.seed);
    let say = |line: String| {
        if !args.json {
            emit(&line);
        }
    };

    let mut task = match args.dim {
        Some(d) => Task::Synthetic { dim: d },
        None => {
            let data = Dataset::digits().map_err(DemoError::internal)?;
            let mut order: Vec<usize> = (0..data.len()).collect();
            rng.shuffle(&mut order);
            let test_n = data.len() / 5;
            let test = data.select(&order[..test_n]);
            let train_idx = &order[test_n..];
            let sizes = shard_sizes(train_idx.len(), k);
            if sizes.contains(&0) {
                return Err(DemoError::new(
                    Exit::Usage,
                    format!(
                        "{k} clients leave some without data ({} training examples)",
                        train_idx.len()
                    ),
                ));
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
    let counts: Vec<u64> = match &task {
        Task::Digits { shards, .. } => shards.iter().map(|s| s.len() as u64).collect(),
        Task::Synthetic { .. } => (0..k as u64).map(|i| 100 + 50 * (i % 4)).collect(),
    };
    let weighting = match args.weighting {
        DemoWeighting::Uniform => Weighting::Uniform,
        DemoWeighting::Samples => Weighting::Samples {
            min_count: counts.iter().copied().min().unwrap_or(1),
            max_count: counts.iter().copied().max().unwrap_or(1),
        },
    };
    let weights: Vec<f64> = match args.weighting {
        DemoWeighting::Uniform => vec![1.0; k],
        DemoWeighting::Samples => counts.iter().map(|&c| c as f64).collect(),
    };

    say("CryptFlow demo: federated averaging under encryption, through a real key-manager committee and aggregator".into());
    match &task {
        Task::Digits { test, shards, enc, .. } => {
            let arch = if args.hidden == 0 {
                "softmax regression 64→10".to_owned()
            } else {
                format!("MLP 64→{}→10", args.hidden)
            };
            say(format!(
                "  data:      UCI handwritten digits (1,797 8×8 images, CC BY 4.0): {} test, {k} clients with {}–{} training examples each",
                test.len(),
                shards.iter().map(Dataset::len).min().unwrap_or(0),
                shards.iter().map(Dataset::len).max().unwrap_or(0),
            ));
            say(format!(
                "  model:     {arch}, {} parameters; {} local epoch(s) of SGD (lr {}) per round, updates clipped to ±{}",
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
        "  committee: {} key manager(s), threshold {}: a round completes while {} are up (tolerates {} down); \
         an update stays private unless {} key manager(s) collude with the aggregator (tolerates {} colluding)",
        shape.nodes(),
        shape.threshold(),
        shape.threshold(),
        shape.tolerated_down(),
        shape.privacy_threshold(),
        shape.tolerated_colluding(),
    ));
    say(format!(
        "  servers:   aggregator {}, key managers {} (in-process, temporary SQLite databases)",
        stack.aggregator_url(),
        (1..=shape.nodes()).filter_map(|x| stack.node_url(x)).collect::<Vec<_>>().join(", ")
    ));
    say(format!(
        "  weighting: {:?}; mean error target ≤ {:e}; each round's mean is compared with plaintext FedAvg of the same updates",
        args.weighting, args.max_abs_error
    ));
    say(String::new());
    say(format!(
        "{:>5}  {:>15}  {:>22}  {:>9}  {:>10}  {:>9}  {:>22}  {}",
        "round",
        "accuracy",
        "upload per client",
        "submit",
        "aggregate",
        "fetch",
        "max |enc − plain|",
        "key managers"
    ));
    say(format!(
        "{:>5}  {:>15}  {:>22}  {:>9}  {:>10}  {:>9}  {:>22}  {}",
        "", "enc / plain", "(plaintext f32)", "(mean)", "", "", "(planner bound)", "(answered)"
    ));

    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let mut worst_ratio = 0f64;
    let mut last: Option<RoundReport> = None;
    let mut down: Vec<u8> = Vec::new();
    for r in 1..=args.rounds {
        if let Some(x) = args.kill_node {
            if r == args.rounds.div_ceil(2) + 1 || (args.rounds == 1 && r == 1) {
                stack.kill_node(x).await;
                down.push(x);
                say(format!("       — key manager {x} stopped —"));
            }
        }
        let round_id =
            RoundId::parse(format!("demo-{run_tag}-r{r}")).map_err(DemoError::internal)?;
        let (updates, expected) = local_updates(&mut task, &mut rng, args, r, &weights)?;
        let layout = updates[0].layout();
        let request = RoundRequest {
            round_id: round_id.clone(),
            layout,
            clients: ids.clone(),
            min_clients: args.clients,
            max_clients: args.clients,
            deadline: None,
            deadline_in_secs: Some(3600),
            weighting,
            clip_bound: args.clip,
            max_abs_error: args.max_abs_error,
            dp: None,
        };
        let mut report =
            encrypted_round(&admin, &clients, &request, updates, &counts, args.weighting).await?;
        report.0.round = r;
        report.0.nodes_down = down.clone();
        let (mut rep, mean) = report;
        let diff = match (&expected, &mean) {
            (Expected::Tensors(want), ModelUpdate::Tensors(got)) => {
                let got: Vec<Tensor> = got.iter().map(Tensor::from_sdk).collect();
                max_abs_diff(want, &got)
            }
            (Expected::Vector(want), ModelUpdate::Vector(got)) => {
                want.iter().zip(got.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
            }
            _ => return Err(DemoError::internal("the aggregate came back in another layout")),
        };
        rep.max_abs_error = diff;
        if let Task::Digits { test, enc, plain, .. } = &mut task {
            if let ModelUpdate::Tensors(mean) = &mean {
                let mean: Vec<Tensor> = mean.iter().map(Tensor::from_sdk).collect();
                enc.apply(&mean).map_err(DemoError::internal)?;
            }
            rep.accuracy_encrypted = Some(enc.accuracy(test));
            rep.accuracy_plaintext = Some(plain.accuracy(test));
        }
        worst_ratio = worst_ratio.max(diff / rep.bound);
        print_round(&rep, args.json);
        last = Some(rep);
    }

    let last = last.ok_or_else(|| DemoError::internal("no rounds ran"))?;
    if !args.json {
        emit("");
        if let Task::Digits { enc, plain, .. } = &task {
            emit(&format!(
                "final test accuracy: encrypted {:.4}, plaintext FedAvg {:.4}; models differ by at most {:.2e} per parameter",
                last.accuracy_encrypted.unwrap_or(0.0),
                last.accuracy_plaintext.unwrap_or(0.0),
                max_abs_diff(&enc.tensors(), &plain.tensors())
            ));
        }
        emit(&format!(
            "upload: {} per client for {} parameters ({:.3}× plaintext float32); no server saw an update in the clear, \
             and no key manager held a key that opens one",
            human_bytes(last.upload_bytes_per_client),
            last.parameters,
            last.upload_bytes_per_client as f64 / last.plaintext_bytes_per_client as f64,
        ));
    }
    if worst_ratio > 1.0 {
        eprintln!("error: an encrypted mean differed from plaintext FedAvg by {worst_ratio:.2}× the planner's bound");
        return Err(DemoError::new(
            Exit::BoundExceeded,
            "encrypted mean outside the planner's bound",
        ));
    }
    if !args.json {
        emit(&format!(
            "every round's encrypted mean was within the planner's bound of plaintext FedAvg (worst: {:.1}% of the bound)",
            worst_ratio * 100.0
        ));
    }
    Ok(())
}

enum Expected {
    Tensors(Vec<Tensor>),
    Vector(Vec<f64>),
}

/// Every client's update of this round (local training, or synthetic values) and the
/// plaintext weighted mean of exactly those updates.
fn local_updates(
    task: &mut Task,
    rng: &mut Rng,
    args: &DemoArgs,
    r: u32,
    weights: &[f64],
) -> Result<(Vec<ModelUpdate>, Expected), DemoError> {
    match task {
        Task::Digits { shards, enc, plain, .. } => {
            let mut enc_updates = Vec::with_capacity(shards.len());
            let mut plain_updates = Vec::with_capacity(shards.len());
            for (i, shard) in shards.iter().enumerate() {
                let seed = args.seed ^ (u64::from(r) << 32) ^ i as u64;
                let local = |start: &Model| {
                    let mut m = start.clone();
                    m.train(shard, args.epochs as usize, 16, args.lr, &mut Rng::new(seed));
                    m.delta_from(start, args.clip)
                };
                enc_updates.push((local(enc), weights[i]));
                plain_updates.push((local(plain), weights[i]));
            }
            let expected = weighted_mean(&enc_updates);
            plain.apply(&weighted_mean(&plain_updates)).map_err(DemoError::internal)?;
            let updates = enc_updates
                .into_iter()
                .map(|(ts, _)| ModelUpdate::Tensors(ts.iter().map(Tensor::to_sdk).collect()))
                .collect();
            Ok((updates, Expected::Tensors(expected)))
        }
        Task::Synthetic { dim } => {
            let d = *dim as usize;
            let mut sum = vec![0f64; d];
            let total: f64 = weights.iter().sum();
            let mut updates = Vec::with_capacity(weights.len());
            for &w in weights {
                let v: Vec<f32> =
                    (0..d).map(|_| ((2.0 * rng.unit() - 1.0) * args.clip) as f32).collect();
                for (s, x) in sum.iter_mut().zip(&v) {
                    *s += *x as f64 * w / total;
                }
                updates.push(ModelUpdate::Vector(TensorValues::F32(
                    ndarray::Array1::from(v).into_dyn(),
                )));
            }
            Ok((updates, Expected::Vector(sum)))
        }
    }
}

/// Creates the round, has every client submit (concurrently, as separate sites would), waits
/// for publication and has the first client fetch and decrypt the mean.
async fn encrypted_round(
    admin: &Client,
    clients: &[Client],
    request: &RoundRequest,
    updates: Vec<ModelUpdate>,
    counts: &[u64],
    weighting: DemoWeighting,
) -> Result<(RoundReport, ModelUpdate), DemoError> {
    let round = &request.round_id;
    admin.create_round(request).await.map_err(DemoError::internal)?;
    let submissions = clients.iter().zip(updates).zip(counts).map(|((client, update), &count)| {
        let (client, round) = (client.clone(), round.clone());
        let count = (weighting == DemoWeighting::Samples).then_some(count);
        async move {
            let start = Instant::now();
            let s = client
                .submit(
                    &round,
                    Arc::new(update),
                    SubmitOptions { count, ..SubmitOptions::default() },
                )
                .await;
            s.map(|s| (s, start.elapsed()))
        }
    });
    let mut submit_total = Duration::ZERO;
    let mut clipped = 0;
    let mut upload_bytes = 0;
    for outcome in futures_util::future::join_all(submissions).await {
        let (s, took) = outcome.map_err(DemoError::internal)?;
        submit_total += took;
        clipped += s.clipping.clipped;
        upload_bytes = s.bytes;
    }
    let start = Instant::now();
    clients[0]
        .wait_for_aggregate(round, Duration::from_secs(300))
        .await
        .map_err(DemoError::internal)?;
    let aggregate_time = start.elapsed();
    let start = Instant::now();
    let agg = clients[0].fetch_mean(round, None).await.map_err(DemoError::internal)?;
    let fetch_time = start.elapsed();
    let parameters = request.layout.values().unwrap_or(0);
    if agg.contributors as usize != clients.len() {
        return Err(DemoError::internal(format!(
            "{} of {} contributions published",
            agg.contributors,
            clients.len()
        )));
    }
    let report = RoundReport {
        round: 0,
        accuracy_encrypted: None,
        accuracy_plaintext: None,
        parameters,
        upload_bytes_per_client: upload_bytes,
        plaintext_bytes_per_client: 4 * parameters,
        submit_ms_mean: ms(submit_total) / clients.len() as f64,
        aggregate_ms: ms(aggregate_time),
        fetch_ms: ms(fetch_time),
        decrypt_ms: ms(agg.decrypt_time),
        max_abs_error: f64::NAN,
        bound: agg.max_abs_error,
        clipped_values: clipped,
        nodes_answered: agg.nodes.iter().filter(|n| n.problem.is_none()).map(|n| n.x).collect(),
        nodes_down: Vec::new(),
    };
    Ok((report, agg.mean))
}

fn print_round(r: &RoundReport, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(r) {
            emit(&line);
        }
        return;
    }
    let acc = match (r.accuracy_encrypted, r.accuracy_plaintext) {
        (Some(a), Some(b)) => format!("{a:.4} / {b:.4}"),
        _ => "—".to_owned(),
    };
    let nodes: Vec<String> = r.nodes_answered.iter().map(u8::to_string).collect();
    emit(&format!(
        "{:>5}  {:>15}  {:>22}  {:>6.1} ms  {:>7.1} ms  {:>6.1} ms  {:>22}  {}",
        r.round,
        acc,
        format!(
            "{} ({})",
            human_bytes(r.upload_bytes_per_client),
            human_bytes(r.plaintext_bytes_per_client)
        ),
        r.submit_ms_mean,
        r.aggregate_ms,
        r.fetch_ms,
        format!("{:.2e} (≤ {:.2e})", r.max_abs_error, r.bound),
        nodes.join(",")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        DemoArgs::command().debug_assert();
    }
}
