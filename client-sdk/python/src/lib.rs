//! `cryptflow._native`: the Rust SDK (`cryptflow-client`) behind a small PyO3 interface. The
//! Python package `cryptflow` (in `python/cryptflow/`) wraps it: dicts of arrays, dtypes,
//! typed exceptions and docstrings live there; this module moves float32/float64 arrays in
//! and out, releases the GIL around every network call and every encryption, and reports
//! errors as `NativeError(kind, message, problem_json)`.
//!
//! Each `NativeClient` owns a Tokio runtime; the SDK's futures run on it while the calling
//! Python thread has detached from the interpreter (other Python threads keep running).
#![allow(clippy::too_many_arguments)] // Python keyword arguments map one to one

use cryptflow_client::{
    Client, ClientError, ClientPolicy, Committee, ModelUpdate, Progress, ProgressFn, RetryPolicy,
    RoundId, SiteKey, SubmitOptions, Tensor, TensorValues, Token, Verification, Verify,
};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::sync::Arc;
use std::time::Duration;

pyo3::create_exception!(
    _native,
    NativeError,
    PyException,
    "A failure of the native client: args are (kind, message, problem JSON or None)."
);

/// The error's kind, as the Python layer maps it to an exception class.
fn kind(e: &ClientError) -> &'static str {
    use cryptflow_he::Error as He;
    match e {
        // The caller's values or parameters.
        ClientError::Input(_)
        | ClientError::Crypto(
            He::Input(_) | He::InvalidParameter(_) | He::Plan(_) | He::ChangedInput { .. },
        ) => "input",
        // Releases that do not open the aggregate, or too few of them: the committee.
        ClientError::Crypto(
            He::KeyOutOfRange
            | He::WrongAggregateKey
            | He::NotEnoughReleases { .. }
            | He::InconsistentReleases,
        ) => "committee",
        // Bytes a server sent that do not decode or do not fit the round.
        ClientError::Crypto(
            He::Decode(_) | He::Mismatch(_) | He::CountOutOfRange | He::SumOutOfRange { .. },
        ) => "protocol",
        ClientError::Refused { .. } => "refused",
        ClientError::Server { .. } | ClientError::Transport { .. } => "unavailable",
        ClientError::Protocol { .. } => "protocol",
        ClientError::Committee(_) => "committee",
        ClientError::Policy(_) => "policy",
        ClientError::Budget(_) => "budget",
        ClientError::AlreadySubmitted(_) => "already_submitted",
        ClientError::RoundState { .. } | ClientError::Timeout(_) => "round_state",
        // The fix is on this side: the CA to trust (ca_file), or the server's certificate.
        ClientError::Config(_) | ClientError::Certificate { .. } => "config",
        ClientError::Verification(_) => "verification",
        _ => "internal",
    }
}

fn error(e: ClientError) -> PyErr {
    let problem = e.problem().and_then(|p| serde_json::to_string(p).ok());
    NativeError::new_err((kind(&e), e.to_string(), problem))
}

fn config(message: impl Into<String>) -> PyErr {
    NativeError::new_err(("config", message.into(), Option::<String>::None))
}

fn input(message: impl Into<String>) -> PyErr {
    NativeError::new_err(("input", message.into(), Option::<String>::None))
}

/// Seconds from Python as a `Duration`: finite, ≥ 0 and at most a year (no panic on 1e20).
fn seconds(secs: f64, argument: &str) -> Result<Duration, String> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if secs.is_finite() && (0.0..=YEAR).contains(&secs) {
        Duration::try_from_secs_f64(secs).map_err(|e| format!("{argument} = {secs}: {e}"))
    } else {
        Err(format!("{argument} = {secs}: must be a number of seconds between 0 and {YEAR}"))
    }
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| config(e.to_string()))
}

fn round_id(round: &str) -> PyResult<RoundId> {
    RoundId::parse(round).map_err(|e| input(format!("round `{round}`: {e}")))
}

/// A progress callback: Python's `callable(event: str, done: int, total: int)`.
fn progress_fn(callback: Option<Py<PyAny>>) -> Option<ProgressFn> {
    let callback = Arc::new(callback?);
    Some(ProgressFn::new(move |p| {
        let (event, done, total) = match p {
            Progress::Encrypting { values } => ("encrypting", 0, values),
            Progress::Uploading { sent, total } => ("uploading", sent, total),
            Progress::Depositing { done, nodes } => {
                ("depositing", u64::from(done), u64::from(nodes))
            }
            Progress::Downloading { received, total } => ("downloading", received, total),
            Progress::Decrypting => ("decrypting", 0, 0),
            _ => return,
        };
        Python::attach(|py| {
            // A failing callback must not fail the submission: its error is printed.
            if let Err(e) = callback.call1(py, (event, done, total)) {
                e.print(py);
            }
        });
    }))
}

/// A float array's values as an owned ndarray in the SDK's types (float32 kept as float32).
fn tensor_values(array: &Bound<'_, PyAny>, name: &str) -> PyResult<TensorValues> {
    if let Ok(a) = array.downcast::<PyArrayDyn<f32>>() {
        return Ok(TensorValues::F32(a.readonly().as_array().to_owned()));
    }
    if let Ok(a) = array.downcast::<PyArrayDyn<f64>>() {
        return Ok(TensorValues::F64(a.readonly().as_array().to_owned()));
    }
    Err(input(format!("tensor `{name}`: pass a float32 or float64 numpy array")))
}

/// The native client (see `cryptflow.Client` for the documented interface).
#[pyclass(module = "cryptflow._native", frozen)]
struct NativeClient {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (
        aggregator, *, token=None, committee_toml=None, client_id=None, key_pem=None,
        reader=false, journal=None, min_contributors=3, min_tolerated_colluding_nodes=1,
        allow_single_key_manager=false, retry_budget_secs=120.0, ca_pem=None, verify="auto",
        dp_epsilon=None, dp_delta=None, require_dp=false, min_dp_colluders=1,
        min_dp_honest_shares=1
    ))]
    fn new(
        aggregator: &str,
        token: Option<String>,
        committee_toml: Option<String>,
        client_id: Option<String>,
        key_pem: Option<String>,
        reader: bool,
        journal: Option<String>,
        min_contributors: u32,
        min_tolerated_colluding_nodes: u8,
        allow_single_key_manager: bool,
        retry_budget_secs: f64,
        ca_pem: Option<String>,
        verify: &str,
        dp_epsilon: Option<f64>,
        dp_delta: Option<f64>,
        require_dp: bool,
        min_dp_colluders: u32,
        min_dp_honest_shares: u32,
    ) -> PyResult<Self> {
        let verify = match verify {
            "auto" => Verify::Auto,
            "always" => Verify::Always,
            "off" => Verify::Off,
            other => match other.strip_prefix("spans:").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) if n >= 1 => Verify::Spans(n),
                _ => {
                    return Err(config(format!(
                        "verify = {other:?}: must be \"auto\", \"always\", \"off\" or a number \
                         of spans ≥ 1"
                    )))
                }
            },
        };
        let mut b = Client::builder(aggregator).reader(reader);
        if let Some(t) = token {
            b = b.aggregator_token(Token::new(t));
        }
        if let Some(text) = committee_toml {
            b = b.committee(
                Committee::from_toml(&text).map_err(|e| config(format!("committee: {e}")))?,
            );
        }
        match (client_id, key_pem) {
            (Some(id), Some(pem)) => {
                let id = cryptflow_client::ClientId::parse(&id)
                    .map_err(|e| config(format!("client_id `{id}`: {e}")))?;
                let key = SiteKey::from_pem(&pem).map_err(|e| config(format!("key: {e}")))?;
                b = b.site(id, key);
            }
            (None, None) => {}
            _ => return Err(config("client_id and key_file go together")),
        }
        if let Some(j) = journal {
            b = b.journal(j);
        }
        if min_contributors < 2 {
            return Err(config(format!(
                "min_contributors = {min_contributors}: must be at least 2"
            )));
        }
        let dp_budget = match (dp_epsilon, dp_delta) {
            (Some(e), Some(d)) => Some(cryptflow_client::DpBudget::try_new(e, d).map_err(error)?),
            (None, None) => None,
            _ => return Err(config("dp_epsilon and dp_delta go together")),
        };
        b = b.policy(ClientPolicy {
            min_contributors,
            min_tolerated_colluding_nodes,
            allow_single_key_manager,
            verify,
            require_dp,
            min_dp_colluders,
            min_dp_honest_shares,
            dp_budget,
            ..ClientPolicy::default()
        });
        b = b.retry(RetryPolicy {
            budget: seconds(retry_budget_secs, "retry_budget").map_err(config)?,
            ..RetryPolicy::default()
        });
        if let Some(pem) = ca_pem {
            b = b.root_certificates_pem(pem.into_bytes());
        }
        let client = b.build().map_err(error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| config(format!("cannot start the runtime: {e}")))?;
        Ok(Self { client, runtime })
    }

    /// `request`: a round request as JSON; returns the round as JSON.
    fn create_round(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let request: cryptflow_client::RoundRequest =
            serde_json::from_str(request).map_err(|e| input(format!("round request: {e}")))?;
        let info = py
            .detach(|| self.runtime.block_on(self.client.create_round(&request)))
            .map_err(error)?;
        json(&info)
    }

    fn round(&self, py: Python<'_>, round: &str) -> PyResult<String> {
        let round = round_id(round)?;
        json(&py.detach(|| self.runtime.block_on(self.client.round(&round))).map_err(error)?)
    }

    fn close_round(&self, py: Python<'_>, round: &str) -> PyResult<String> {
        let round = round_id(round)?;
        json(&py.detach(|| self.runtime.block_on(self.client.close_round(&round))).map_err(error)?)
    }

    fn wait_for_aggregate(
        &self,
        py: Python<'_>,
        round: &str,
        timeout_secs: f64,
    ) -> PyResult<String> {
        let round = round_id(round)?;
        let t = seconds(timeout_secs, "timeout").map_err(input)?;
        json(
            &py.detach(|| self.runtime.block_on(self.client.wait_for_aggregate(&round, t)))
                .map_err(error)?,
        )
    }

    /// `tensors`: `(name, float array)` pairs, in any order (the SDK takes the round's); a single pair named
    /// `""` holding a 1-D array is a flat vector. Returns the submission as JSON.
    #[pyo3(signature = (round, tensors, count=None, allow_resubmission=false, experiment=None, progress=None))]
    fn submit(
        &self,
        py: Python<'_>,
        round: &str,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        count: Option<u64>,
        allow_resubmission: bool,
        experiment: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let round = round_id(round)?;
        let update = match &tensors[..] {
            [(name, a)] if name.is_empty() => match tensor_values(a, "update")? {
                TensorValues::F32(v) if v.ndim() == 1 => ModelUpdate::from(
                    v.into_dimensionality::<ndarray::Ix1>().map_err(|e| input(e.to_string()))?,
                ),
                TensorValues::F64(v) if v.ndim() == 1 => ModelUpdate::from(
                    v.into_dimensionality::<ndarray::Ix1>().map_err(|e| input(e.to_string()))?,
                ),
                _ => return Err(input("a flat update must be a 1-D array")),
            },
            _ => ModelUpdate::Tensors(
                tensors
                    .iter()
                    .map(|(name, a)| {
                        Ok(Tensor { name: name.clone(), values: tensor_values(a, name)? })
                    })
                    .collect::<PyResult<_>>()?,
            ),
        };
        let options = SubmitOptions {
            count,
            progress: progress_fn(progress),
            allow_resubmission,
            experiment,
        };
        let update = Arc::new(update);
        let s = py
            .detach(|| self.runtime.block_on(self.client.submit(&round, update, options)))
            .map_err(error)?;
        Ok(serde_json::json!({
            "receipt": s.receipt,
            "bytes": s.bytes,
            "clipped": s.clipping.clipped,
            "largest_magnitude": s.clipping.largest_magnitude,
            "deposited_with": s.deposited_with,
            "upload_seconds": s.upload_time.as_secs_f64(),
            "deposit_seconds": s.deposit_time.as_secs_f64(),
        })
        .to_string())
    }

    /// This site's privacy ledger as JSON: DP rounds, the summed charge, ε at `delta`.
    fn ledger(&self, delta: f64) -> PyResult<String> {
        let l = self.client.ledger().map_err(error)?;
        let eps = l.epsilon(delta).map_err(error)?;
        Ok(serde_json::json!({
            "dp_rounds": l.rounds,
            "delta": delta,
            "epsilon_spent": eps,
            "rdp_units": l.spent.units().to_vec(),
        })
        .to_string())
    }

    /// The mean, flat (float64, in layout order), and what came with it as JSON.
    #[pyo3(signature = (round, progress=None))]
    fn fetch_mean<'py>(
        &self,
        py: Python<'py>,
        round: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(String, Bound<'py, PyArray1<f64>>)> {
        let round = round_id(round)?;
        let progress = progress_fn(progress);
        let (info, flat) = py
            .detach(|| {
                self.runtime.block_on(async {
                    let a = self.client.fetch_mean(&round, progress.as_ref()).await?;
                    let flat: Vec<f64> = a.mean.iter().collect();
                    let nodes: Vec<serde_json::Value> = a
                        .nodes
                        .iter()
                        .map(|n| serde_json::json!({ "x": n.x, "problem": n.problem }))
                        .collect();
                    let info = serde_json::json!({
                        "round": a.round,
                        "contributors": a.contributors,
                        "total_weight": a.total_weight,
                        "max_abs_error": a.max_abs_error,
                        "largest": a.largest,
                        "clipping": {
                            "contributions": a.clipping.contributions,
                            "values_at_least": a.clipping.values_at_least,
                            "values_at_most": a.clipping.values_at_most,
                            "of_values": a.clipping.of_values,
                        },
                        "nodes": nodes,
                        "verification": match &a.verification {
                            Verification::Recomputed { uploads, bytes, time } => serde_json::json!({
                                "recomputed_from_uploads": uploads,
                                "bytes": bytes,
                                "seconds": time.as_secs_f64(),
                            }),
                            Verification::Sampled { spans, of, detection_probability, uploads, bytes, time } => serde_json::json!({
                                "sampled_spans": spans,
                                "of_spans": of,
                                "detection_probability": detection_probability,
                                "uploads": uploads,
                                "bytes": bytes,
                                "seconds": time.as_secs_f64(),
                            }),
                            Verification::NotVerified(why) => serde_json::json!({ "not_verified": why }),
                        },
                        "bytes": a.bytes,
                        "dp": a.dp.as_ref().map(|d| serde_json::json!({
                            "noise_std": d.noise_std,
                            "rounding_std": d.rounding_std,
                            "clipped_contributions": d.clipped_contributions,
                            "clipped_contributions_std": d.clipped_contributions_std,
                        })),
                    });
                    Ok::<_, ClientError>((info.to_string(), flat))
                })
            })
            .map_err(error)?;
        Ok((info, PyArray1::from_vec(py, flat)))
    }
}

/// The largest clip bound a round of `max_clients` contributions at `max_abs_error` (and
/// sample counts in `min_count..=max_count`, if given) can be planned with; `None` if none.
#[pyfunction]
#[pyo3(signature = (max_clients, max_abs_error, min_count=None, max_count=None))]
fn largest_clip_bound(
    max_clients: u32,
    max_abs_error: f64,
    min_count: Option<u64>,
    max_count: Option<u64>,
) -> PyResult<Option<f64>> {
    use cryptflow_he::planner::{PlanRequest, Weighting};
    let weighting = match (min_count, max_count) {
        (None, None) => Weighting::Uniform,
        (min, Some(max)) => Weighting::Samples { min_count: min.unwrap_or(1), max_count: max },
        (Some(_), None) => return Err(input("min_count needs max_count")),
    };
    let request =
        PlanRequest { max_clients, clip_bound: max_abs_error, max_abs_error, weighting, dp: None };
    let params = cryptflow_he::ParameterSet::default_128();
    Ok(cryptflow_he::planner::largest_clip_bound(&params, &request))
}

/// The module.
/// The smallest noise multiplier with which `rounds` DP rounds of `values` values clipped to
/// L2 norm `l2_clip` (grid step at most `max_abs_error`), of at most `max_clients`
/// contributions, sized for `honest_shares` shares against `colluders`, cost each contributor
/// at most `epsilon` at `delta`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn calibrate_noise_multiplier(
    max_clients: u32,
    l2_clip: f64,
    max_abs_error: f64,
    values: u64,
    honest_shares: u32,
    colluders: u32,
    epsilon: f64,
    delta: f64,
    rounds: u64,
) -> PyResult<f64> {
    use cryptflow_he::planner::{DpRequest, PlanRequest, Weighting};
    let request = PlanRequest {
        max_clients,
        clip_bound: l2_clip,
        max_abs_error,
        weighting: Weighting::Uniform,
        dp: Some(DpRequest { noise_multiplier: 1.0, honest_shares, colluders, values }),
    };
    cryptflow_he::planner::calibrate_noise_multiplier(
        &cryptflow_he::ParameterSet::default_128(),
        &request,
        epsilon,
        delta,
        rounds,
    )
    .map_err(|e| input(e.to_string()))
}

/// `ε` at `delta` of a charge (a round's `spec.plan.dp_charge`, or a ledger's `rdp_units`).
#[pyfunction]
fn dp_epsilon(units: Vec<u64>, delta: f64) -> PyResult<f64> {
    let charge = cryptflow_he::dp::accounting::Charge::try_from(units).map_err(input)?;
    cryptflow_he::dp::accounting::epsilon(&charge, delta)
        .map(|(e, _)| e)
        .map_err(|e| input(format!("delta: {e}")))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_function(wrap_pyfunction!(largest_clip_bound, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate_noise_multiplier, m)?)?;
    m.add_function(wrap_pyfunction!(dp_epsilon, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
