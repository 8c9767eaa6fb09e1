//! The aggregator's rules, as plain functions — no I/O, unit tested below:
//!
//! - what makes a round request valid, and the spec it becomes ([`round_spec`]);
//! - which uploads form the contributor set (those whose deposits `t` key managers hold with
//!   a matching digest, [`choose_set`]);
//! - the publication state machine ([`next_step`]): wait for deposits, publish, or fail.

use cryptflow_he::planner::{self, DpRequest, PlanRequest};
use cryptflow_he::{ParameterSet, PlanError};
use cryptflow_services::api::kms::{DepositList, SpecEcho};
use cryptflow_services::api::round::{
    Contribution, Layout, RoundRequest, RoundSpec, RoundState, SeedDerivation, MAX_DIMENSION,
    MAX_ROUND_CLIENTS, MAX_TENSORS, MAX_TENSOR_NAME,
};
use cryptflow_services::http::AppError;
use cryptflow_services::{ClientId, ErrorCode, Sha256Digest};
use std::collections::{BTreeMap, BTreeSet, HashSet};

fn invalid(field: &str, detail: impl Into<String>) -> AppError {
    AppError::new(ErrorCode::Unprocessable, detail).with_field(field)
}

/// The absolute deadline of a request, on the aggregator's clock `now`.
pub fn deadline(request: &RoundRequest, now: i64) -> Result<i64, AppError> {
    match (request.deadline, request.deadline_in_secs) {
        (Some(at), None) if at > now => Ok(at),
        (Some(_), None) => Err(invalid(
            "deadline",
            "must be in the future (of the aggregator's clock); or give deadline_in_secs",
        )),
        (None, Some(secs)) if (1..=366 * 86_400).contains(&secs) => Ok(now + secs as i64),
        (None, Some(_)) => {
            Err(invalid("deadline_in_secs", "must be in [1, 31622400]").with_limit(366 * 86_400))
        }
        _ => Err(invalid(
            "deadline",
            "give exactly one of deadline (Unix seconds) and deadline_in_secs",
        )),
    }
}

/// Validates a request and builds the spec (the plan from the planner; the mask seed derived
/// from `seed`, which [`crate::lifecycle::fix_seed`] fills in with the key managers' nonces).
pub fn round_spec(request: &RoundRequest, seed: SeedDerivation) -> Result<RoundSpec, AppError> {
    let values = request.layout.values().filter(|&v| (1..=MAX_DIMENSION).contains(&v));
    let Some(values) = values else {
        return Err(invalid("layout", format!("must describe 1 to {MAX_DIMENSION} values"))
            .with_limit(MAX_DIMENSION));
    };
    if let Layout::Tensors(ts) = &request.layout {
        if ts.is_empty() || ts.len() > MAX_TENSORS {
            return Err(invalid("layout", format!("must list 1 to {MAX_TENSORS} tensors"))
                .with_limit(MAX_TENSORS as u64));
        }
        let names: HashSet<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        if names.len() != ts.len()
            || ts.iter().any(|t| t.name.is_empty() || t.name.len() > MAX_TENSOR_NAME)
        {
            return Err(invalid(
                "layout",
                format!("tensor names must be unique and 1 to {MAX_TENSOR_NAME} bytes"),
            )
            .with_limit(MAX_TENSOR_NAME as u64));
        }
    }
    if request.clients.is_empty() || request.clients.len() > MAX_ROUND_CLIENTS {
        return Err(invalid("clients", format!("must list 1 to {MAX_ROUND_CLIENTS} clients"))
            .with_limit(MAX_ROUND_CLIENTS as u64));
    }
    let clients: BTreeSet<&ClientId> = request.clients.iter().collect();
    if clients.len() != request.clients.len() {
        return Err(invalid("clients", "lists a client twice"));
    }
    let n = request.clients.len() as u32;
    if request.max_clients == 0 || request.max_clients > n {
        return Err(invalid("max_clients", format!("must be in [1, {n}] (the clients listed)"))
            .with_limit(n as u64));
    }
    if request.min_clients == 0 || request.min_clients > request.max_clients {
        return Err(invalid(
            "min_clients",
            format!("must be in [1, max_clients = {}]", request.max_clients),
        )
        .with_limit(request.max_clients as u64));
    }
    let plan = planner::plan(
        &ParameterSet::default_128(),
        &PlanRequest {
            max_clients: request.max_clients,
            clip_bound: request.clip_bound,
            max_abs_error: request.max_abs_error,
            weighting: request.weighting,
            dp: request.dp.map(|o| DpRequest {
                noise_multiplier: o.noise_multiplier,
                honest_shares: o.honest_shares,
                colluders: o.colluders,
                values,
            }),
        },
    )
    .map_err(|e| {
        let field = match &e {
            PlanError::InvalidRequest { field, .. } => match *field {
                "min_count" | "weighting.min_count" => "weighting.samples.min_count",
                "weighting.max_count" => "weighting.samples.max_count",
                f => f,
            },
            _ => "max_abs_error",
        };
        invalid(field, e.to_string())
    })?;
    Ok(RoundSpec {
        round_id: request.round_id.clone(),
        values,
        clients: clients.into_iter().cloned().collect(),
        min_clients: request.min_clients,
        max_clients: request.max_clients,
        mask_seed: cryptflow_services::protocol::derive_mask_seed(&request.round_id, &seed),
        seed,
        plan,
        layout_sha256: cryptflow_services::protocol::layout_digest(&request.layout),
    })
}

/// The smallest set the key managers will record: `max(min_clients, m, m_h + t_c)` with `m`
/// the largest any echo reports and `m_h + t_c` a DP round's.
pub fn needed(spec: &RoundSpec, echoes: &[SpecEcho]) -> u32 {
    let m = echoes.iter().map(|e| e.min_set_size).max().unwrap_or(1);
    let dp = spec.plan.dp().map_or(0, |d| d.min_set().min(u32::MAX as u64) as u32);
    spec.min_clients.max(m).max(dp)
}

/// The contributor set: the admitted uploads held by every node of some group of `t` nodes
/// (with the digest of the upload), the group chosen to cover the most uploads (ties: the
/// lowest indices). Returns the set, sorted, and the group.
pub fn choose_set(
    uploads: &[Contribution],
    deposits: &BTreeMap<u8, Vec<Contribution>>,
    threshold: u8,
) -> (Vec<Contribution>, Vec<u8>) {
    let held: BTreeMap<u8, HashSet<&Contribution>> =
        deposits.iter().map(|(x, ds)| (*x, ds.iter().collect())).collect();
    let nodes: Vec<u8> = held.keys().copied().collect();
    let t = threshold as usize;
    let mut best: (Vec<Contribution>, Vec<u8>) = (Vec::new(), Vec::new());
    if nodes.len() < t {
        return best;
    }
    for group in combinations(&nodes, t) {
        let set: Vec<Contribution> = uploads
            .iter()
            .filter(|u| group.iter().all(|x| held.get(x).is_some_and(|h| h.contains(u))))
            .cloned()
            .collect();
        if set.len() > best.0.len() || best.1.is_empty() {
            best = (set, group);
        }
    }
    best.0.sort();
    best
}

/// Each node's deposits, less every deposit of a member that signed, at any node, an upload
/// root other than the root of the upload this aggregator holds (`uploads`: each member's
/// upload digest and root, computed while receiving it); and, per such member, the nodes where
/// it did. A member signing the root of something else — at one node is enough, since every
/// release echoes the roots its node holds — would make every reader that samples spans fail
/// for the round (#24): it is left out of `S` instead. Only deposits for the upload the
/// aggregator holds are compared (one for another upload is left out as such, #30); a deposit
/// or upload without a root (from before roots existed) is kept. A node that lies about a
/// member's root can have that member left out (the aggregator holds no roster keys to check
/// the member's signature): one more way one key manager can hurt availability, next to
/// releasing a wrong value, which fails the whole round (`docs/security.md`, "Not protected").
pub fn deposits_matching_roots(
    lists: BTreeMap<u8, DepositList>,
    uploads: &BTreeMap<ClientId, (Sha256Digest, Sha256Digest)>,
) -> (BTreeMap<u8, Vec<Contribution>>, BTreeMap<ClientId, Vec<u8>>) {
    let mut foreign: BTreeMap<ClientId, Vec<u8>> = BTreeMap::new();
    for (x, list) in &lists {
        for d in &list.deposits {
            let signed = list.upload_roots.get(&d.client_id);
            if let (Some(signed), Some((sha, ours))) = (signed, uploads.get(&d.client_id)) {
                if d.upload_sha256 == *sha && signed != ours {
                    foreign.entry(d.client_id.clone()).or_default().push(*x);
                }
            }
        }
    }
    let deposits = lists
        .into_iter()
        .map(|(x, list)| {
            let mut kept = list.deposits;
            kept.retain(|d| !foreign.contains_key(&d.client_id));
            (x, kept)
        })
        .collect();
    (deposits, foreign)
}

/// Why each admitted upload outside `set` was left out, one phrase per member, naming it: its
/// deposits sign another upload root than the upload's (`foreign`), its key shares are at too
/// few key managers, or it deposited shares for another upload than the one it uploaded (a
/// member whose deposits do not match its upload, #30).
pub fn left_out(
    uploads: &[Contribution],
    deposits: &BTreeMap<u8, Vec<Contribution>>,
    foreign: &BTreeMap<ClientId, Vec<u8>>,
    set: &[Contribution],
    threshold: u8,
) -> Vec<String> {
    uploads
        .iter()
        .filter(|u| !set.contains(u))
        .map(|u| {
            if let Some(xs) = foreign.get(&u.client_id) {
                return format!(
                    "{} (its deposits at key manager(s) {} sign an upload root other than the root \
                     of the upload it sent: a verifier sampling spans could not check it)",
                    u.client_id,
                    join(xs)
                );
            }
            let matching: Vec<u8> =
                deposits.iter().filter(|(_, ds)| ds.contains(u)).map(|(x, _)| *x).collect();
            let other: Vec<u8> = deposits
                .iter()
                .filter(|(_, ds)| {
                    ds.iter()
                        .any(|d| d.client_id == u.client_id && d.upload_sha256 != u.upload_sha256)
                })
                .map(|(x, _)| *x)
                .collect();
            if !other.is_empty() {
                format!(
                    "{} (its key shares at key manager(s) {} are for another upload than the one \
                     it uploaded)",
                    u.client_id,
                    join(&other)
                )
            } else {
                format!(
                    "{} (its key shares are at {} of the {threshold} key managers needed{})",
                    u.client_id,
                    matching.len(),
                    if matching.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", join(&matching))
                    }
                )
            }
        })
        .collect()
}

fn join(xs: &[u8]) -> String {
    xs.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
}

fn combinations(items: &[u8], k: usize) -> Vec<Vec<u8>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    if items.len() < k {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, first) in items.iter().enumerate() {
        for mut rest in combinations(&items[i + 1..], k - 1) {
            rest.insert(0, *first);
            out.push(rest);
        }
    }
    out
}

/// What the publication of a closed round does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Some admitted uploads still lack deposits at `t` nodes, and the grace has not run out.
    WaitForDeposits,
    /// Publish this set.
    Publish(Vec<Contribution>),
    /// Fail the round.
    Fail(String),
}

/// Decides, for a closed round, from the admitted uploads and the set they allow. A closed
/// round takes no more uploads, so one with fewer admitted than it needs fails at once — no
/// deposit can still make it publishable (#30: it waited out the deposit grace, and its
/// waiting clients timed out without a reason).
pub fn next_step(admitted: usize, set: Vec<Contribution>, needed: u32, grace_over: bool) -> Step {
    if set.len() == admitted && set.len() >= needed as usize {
        return Step::Publish(set);
    }
    if admitted < needed as usize {
        return Step::Fail(format!(
            "{admitted} upload(s) were admitted before the round closed; it needs {needed} \
             (max(min_clients, m, and in a DP round honest_shares + colluders)), so it cannot publish"
        ));
    }
    if !grace_over {
        return Step::WaitForDeposits;
    }
    if set.len() >= needed as usize {
        Step::Publish(set)
    } else {
        Step::Fail(format!(
            "{} of {admitted} uploads have their key shares deposited with enough key managers; \
             the round needs {needed} (max(min_clients, m, and in a DP round honest_shares + colluders))",
            set.len()
        ))
    }
}

/// Whether a round in `state` with `admitted` uploads should close now.
pub fn should_close(
    state: RoundState,
    admitted: u32,
    max_clients: u32,
    deadline: i64,
    now: i64,
) -> bool {
    state == RoundState::Open && (admitted >= max_clients || now >= deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptflow_he::planner::Weighting;
    use cryptflow_services::RoundId;

    fn request() -> RoundRequest {
        RoundRequest {
            round_id: RoundId::parse("r").unwrap(),
            layout: Layout::Dimension(1000),
            clients: ["b", "a", "c"].iter().map(|c| ClientId::parse(*c).unwrap()).collect(),
            min_clients: 2,
            max_clients: 3,
            deadline: None,
            deadline_in_secs: Some(60),
            weighting: Weighting::Uniform,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            dp: None,
        }
    }

    #[test]
    fn requests_become_specs_or_name_the_field() {
        let spec = round_spec(&request(), SeedDerivation::default()).unwrap();
        assert_eq!(spec.clients.iter().map(ClientId::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(spec.values, 1000);
        for (r, field) in [
            (RoundRequest { max_clients: 4, ..request() }, "max_clients"),
            (RoundRequest { min_clients: 0, ..request() }, "min_clients"),
            (RoundRequest { clip_bound: f64::NAN, ..request() }, "clip_bound"),
            (RoundRequest { max_abs_error: 1e-30, ..request() }, "max_abs_error"),
            (RoundRequest { layout: Layout::Dimension(0), ..request() }, "layout"),
        ] {
            let e = round_spec(&r, SeedDerivation::default()).unwrap_err();
            assert_eq!(e.problem().field.as_deref(), Some(field), "{e:?}");
        }
    }

    #[test]
    fn relative_deadlines_use_the_servers_clock() {
        // An operator whose clock is five minutes slow asks for 120 s: fine, it is relative.
        assert_eq!(deadline(&request(), 1_000).unwrap(), 1_060);
        let absolute = RoundRequest { deadline: Some(900), deadline_in_secs: None, ..request() };
        assert_eq!(
            deadline(&absolute, 1_000).unwrap_err().problem().field.as_deref(),
            Some("deadline")
        );
        let both = RoundRequest { deadline: Some(2_000), ..request() };
        assert!(deadline(&both, 1_000).is_err());
    }

    fn c(id: &str, d: u8) -> Contribution {
        Contribution {
            client_id: ClientId::parse(id).unwrap(),
            upload_sha256: Sha256Digest([d; 32]),
        }
    }

    #[test]
    fn the_set_is_what_t_nodes_hold_with_matching_digests() {
        let uploads = vec![c("a", 1), c("b", 2), c("c", 3)];
        let mut deposits = BTreeMap::new();
        deposits.insert(1, vec![c("a", 1), c("b", 2), c("c", 3)]);
        deposits.insert(2, vec![c("a", 1), c("b", 9)]); // b's deposit vouches for another upload
        deposits.insert(3, vec![c("a", 1), c("b", 2)]);
        let (set, group) = choose_set(&uploads, &deposits, 2);
        assert_eq!(set, vec![c("a", 1), c("b", 2)]);
        assert_eq!(group, vec![1, 3]);
        let (set, _) = choose_set(&uploads, &deposits, 3);
        assert_eq!(set, vec![c("a", 1)]);
        deposits.remove(&3);
        deposits.remove(&2);
        assert!(choose_set(&uploads, &deposits, 2).0.is_empty(), "fewer than t nodes answered");
    }

    #[test]
    fn publication_waits_for_deposits_then_publishes_or_fails() {
        let full = vec![c("a", 1), c("b", 2)];
        assert_eq!(next_step(2, full.clone(), 2, false), Step::Publish(full.clone()));
        assert_eq!(next_step(3, full.clone(), 2, false), Step::WaitForDeposits);
        assert_eq!(next_step(3, full.clone(), 2, true), Step::Publish(full.clone()));
        assert!(matches!(next_step(3, full[..1].to_vec(), 2, true), Step::Fail(_)));
        // Fewer admitted than needed: failed at once, without waiting for the grace.
        assert!(matches!(next_step(1, full[..1].to_vec(), 2, false), Step::Fail(_)));
        assert!(matches!(next_step(0, Vec::new(), 2, false), Step::Fail(_)));
    }

    #[test]
    fn a_member_signing_another_upload_root_anywhere_is_left_out_naming_the_nodes() {
        let id = |s: &str| ClientId::parse(s).unwrap();
        let c = |who: &str, sha: u8| Contribution {
            client_id: id(who),
            upload_sha256: Sha256Digest([sha; 32]),
        };
        let list = |deposits: Vec<Contribution>, roots: &[(&str, u8)]| DepositList {
            deposits,
            upload_roots: roots.iter().map(|(k, b)| (id(k), Sha256Digest([*b; 32]))).collect(),
        };
        // The aggregator holds: a (upload 1, root 1), b (1, 2), d (1, 4); "old" was uploaded
        // before roots existed.
        let ours = BTreeMap::from([
            (id("a"), (Sha256Digest([1; 32]), Sha256Digest([1; 32]))),
            (id("b"), (Sha256Digest([1; 32]), Sha256Digest([2; 32]))),
            (id("d"), (Sha256Digest([1; 32]), Sha256Digest([4; 32]))),
        ]);
        let all = || vec![c("a", 1), c("b", 1), c("d", 1), c("old", 1)];
        let lists = BTreeMap::from([
            (1u8, list(all(), &[("a", 1), ("b", 2), ("d", 4)])),
            (2u8, list(all(), &[("a", 1), ("b", 2), ("d", 4), ("old", 5)])),
            // b signed another root at node 3 only; d deposited for another upload there
            // (left out as such by `left_out`, not as a root mismatch).
            (3u8, list(vec![c("a", 1), c("b", 1), c("d", 9)], &[("a", 1), ("b", 7), ("d", 8)])),
        ]);
        let (deposits, foreign) = deposits_matching_roots(lists, &ours);
        assert_eq!(foreign, BTreeMap::from([(id("b"), vec![3])]));
        assert_eq!(deposits[&1], vec![c("a", 1), c("d", 1), c("old", 1)]);
        assert_eq!(deposits[&3], vec![c("a", 1), c("d", 9)]);
        let admitted = [c("a", 1), c("b", 1)];
        let (set, _) = choose_set(&admitted, &deposits, 2);
        assert_eq!(set, vec![c("a", 1)], "b has t matching deposits, but one signs another root");
        let why = left_out(&admitted, &deposits, &foreign, &set, 2);
        assert!(
            why[0].starts_with("b (its deposits at key manager(s) 3 sign an upload root"),
            "{why:?}"
        );
    }

    #[test]
    fn members_left_out_are_named_with_the_reason() {
        let c = |id: &str, b: u8| Contribution {
            client_id: ClientId::parse(id).unwrap(),
            upload_sha256: Sha256Digest([b; 32]),
        };
        let uploads = vec![c("a", 1), c("b", 2), c("c", 3)];
        let deposits = BTreeMap::from([
            (1u8, vec![c("a", 1), c("b", 2), c("c", 9)]),
            (2u8, vec![c("a", 1), c("c", 9)]),
        ]);
        let (set, _) = choose_set(&uploads, &deposits, 2);
        assert_eq!(set, vec![c("a", 1)]);
        let why = left_out(&uploads, &deposits, &BTreeMap::new(), &set, 2);
        assert_eq!(why[0], "b (its key shares are at 1 of the 2 key managers needed: 1)");
        assert_eq!(
            why[1],
            "c (its key shares at key manager(s) 1, 2 are for another upload than the one it uploaded)"
        );
        assert!(should_close(RoundState::Open, 3, 3, 100, 0));
        assert!(should_close(RoundState::Open, 1, 3, 100, 100));
        assert!(!should_close(RoundState::Aggregating, 3, 3, 100, 200));
    }
}
