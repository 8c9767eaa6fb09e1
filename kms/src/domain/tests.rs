//! The rules of `domain`, one by one, without a database or HTTP.
use super::*;
use cryptflow_he::planner::{plan, PlanRequest, Weighting};
use cryptflow_he::{MaskSeed, ParameterSet};
use cryptflow_services::api::Base64Bytes;
use cryptflow_services::protocol::{roster_member, CommitteeNode};

struct World {
    node: Node,
    sites: Vec<(ClientId, SiteKey)>,
    row: RoundRow,
}

fn world(m: u32) -> World {
    let node_key = SiteKey::generate();
    let committee = Committee::try_new(
        1,
        vec![CommitteeNode { x: 1, url: "http://kms".into(), public_key: node_key.public_key() }],
    )
    .unwrap();
    let sites: Vec<(ClientId, SiteKey)> =
        (0..4).map(|i| (ClientId::parse(format!("s{i}")).unwrap(), SiteKey::generate())).collect();
    let mut members: Vec<_> = sites.iter().map(|(id, k)| roster_member(id, k, false)).collect();
    let reader = SiteKey::generate();
    members.push(roster_member(&ClientId::parse("reader").unwrap(), &reader, true));
    let roster = Roster::try_new(m, members).unwrap();
    let node = Node::try_new(committee, 1, node_key, roster).unwrap();
    let p = plan(
        &ParameterSet::default_128(),
        &PlanRequest {
            max_clients: 3,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            weighting: Weighting::Uniform,
            dp: None,
        },
    )
    .unwrap();
    let spec = RoundSpec {
        round_id: RoundId::parse("r").unwrap(),
        values: 10,
        clients: sites[..3].iter().map(|(id, _)| id.clone()).collect(),
        min_clients: 2,
        max_clients: 3,
        mask_seed: MaskSeed([1; 16]),
        seed: Default::default(),
        plan: p,
        layout_sha256: cryptflow_services::protocol::layout_digest(
            &cryptflow_services::api::round::Layout::Dimension(10),
        ),
    };
    let echo =
        node.echo(&spec, cryptflow_services::sealed::DepositKeyPair::derive(&[1; 32]).public_key());
    let row = RoundRow {
        spec_hash: echo.spec_hash,
        spec,
        echo,
        state: KmsRoundState::Open,
        set: None,
        aggregate_sha256: None,
        created_at: 0,
    };
    World { node, sites, row }
}

/// A stand-in upload root (the node stores and echoes it; it never sees an upload).
const ROOT: Sha256Digest = Sha256Digest([6; 32]);

fn principal(id: &ClientId, role: Role, signer: Signer) -> Principal {
    Principal { subject: id.clone(), role, signer }
}

fn deposit(w: &World, site: usize, upload: Sha256Digest) -> Deposit {
    let key = cryptflow_he::ClientKey::generate(&ParameterSet::default_128()).unwrap();
    let share = key.share(w.node.committee.shape()).unwrap().remove(0).to_bytes();
    let (id, k) = &w.sites[site];
    let st = protocol::deposit_statement(
        &w.row.spec.round_id,
        &w.row.spec_hash,
        1,
        id,
        &Sha256Digest::of(&share),
        &upload,
        &ROOT,
    );
    Deposit {
        upload_sha256: upload,
        upload_root: ROOT,
        share: Base64Bytes(share),
        signature: k.sign(&st),
    }
}

#[test]
fn registrations_select_roster_members_only() {
    let w = world(2);
    assert!(check_registration(&w.node, &w.row.spec.round_id, &w.row.spec).is_ok());
    let mut stranger = w.row.spec.clone();
    stranger.clients.push(ClientId::parse("zz-sybil").unwrap());
    let e = check_registration(&w.node, &stranger.round_id, &stranger).unwrap_err();
    assert_eq!(e.problem().field.as_deref(), Some("clients"));
    // A round whose max_clients is below m could never release: refused up front.
    let w4 = world(4);
    let e = check_registration(&w4.node, &w4.row.spec.round_id, &w4.row.spec).unwrap_err();
    assert_eq!((e.problem().field.as_deref(), e.problem().limit), (Some("max_clients"), Some(4)));
    assert!(same_registration(&w.row, &w.row.spec).is_ok());
    let other = RoundSpec { min_clients: 3, ..w.row.spec.clone() };
    assert_eq!(same_registration(&w.row, &other).unwrap_err().problem().status, 409);
}

#[test]
fn deposits_need_the_members_own_signature() {
    let w = world(2);
    let d = deposit(&w, 0, Sha256Digest([5; 32]));
    let me = &w.sites[0].0;
    assert!(check_deposit(&w.node, &w.row, &principal(me, Role::Client, Signer::Roster), me, &d)
        .is_ok());
    // Another member's slot, an issuer token, a non-member: refused.
    let other = &w.sites[1].0;
    assert_eq!(
        check_deposit(&w.node, &w.row, &principal(other, Role::Client, Signer::Roster), me, &d)
            .unwrap_err()
            .problem()
            .status,
        403
    );
    assert_eq!(
        check_deposit(&w.node, &w.row, &principal(me, Role::Client, Signer::Issuer), me, &d)
            .unwrap_err()
            .problem()
            .status,
        403
    );
    let outsider = &w.sites[3].0;
    let d3 = deposit(&w, 3, Sha256Digest([5; 32]));
    assert_eq!(
        check_deposit(
            &w.node,
            &w.row,
            &principal(outsider, Role::Client, Signer::Roster),
            outsider,
            &d3
        )
        .unwrap_err()
        .problem()
        .status,
        403
    );
    // The signature binds the upload digest: changing it breaks the signature.
    let tampered = Deposit { upload_sha256: Sha256Digest([6; 32]), ..d.clone() };
    let e =
        check_deposit(&w.node, &w.row, &principal(me, Role::Client, Signer::Roster), me, &tampered)
            .unwrap_err();
    assert_eq!(e.problem().field.as_deref(), Some("signature"));
}

#[test]
fn sets_are_checked_against_deposits_roster_and_sizes() {
    let w = world(2);
    let c = |i: usize, d: u8| Contribution {
        client_id: w.sites[i].0.clone(),
        upload_sha256: Sha256Digest([d; 32]),
    };
    let held: Vec<DepositRow> = (0..3)
        .map(|i| DepositRow {
            client_id: w.sites[i].0.clone(),
            upload_sha256: Sha256Digest([i as u8; 32]),
            upload_root: Some(ROOT),
            share_sha256: Sha256Digest([0; 32]),
        })
        .collect();
    assert_eq!(
        check_set(&w.node, &w.row, vec![c(1, 1), c(0, 0)], &held).unwrap(),
        vec![c(0, 0), c(1, 1)]
    );
    // (e) a digest that differs from the member's deposit, or a member without one.
    assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(1, 9)], &held).is_err());
    assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(1, 1)], &held[..1]).is_err());
    // A non-roster or non-round client; a set below max(min_clients, m); duplicates.
    let sybil = Contribution {
        client_id: ClientId::parse("sybil").unwrap(),
        upload_sha256: Sha256Digest([0; 32]),
    };
    assert!(check_set(&w.node, &w.row, vec![c(0, 0), sybil], &held).is_err());
    assert!(check_set(&w.node, &w.row, vec![c(3, 3), c(0, 0)], &held).is_err());
    assert_eq!(
        check_set(&w.node, &w.row, vec![c(0, 0)], &held).unwrap_err().problem().limit,
        Some(2)
    );
    assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(0, 0)], &held).is_err());
    // (b) once recorded, only the same set is answered.
    // The same set with another aggregate conflicts too (one aggregate per round, #24).
    let recorded = vec![c(0, 0), c(1, 1)];
    let aggregate = Sha256Digest([7; 32]);
    let row = RoundRow {
        set: Some(recorded.clone()),
        aggregate_sha256: Some(aggregate),
        state: KmsRoundState::SetRecorded,
        ..w.row.clone()
    };
    assert!(same_set(&row, &recorded, &aggregate).is_ok());
    assert_eq!(same_set(&row, &[c(0, 0), c(2, 2)], &aggregate).unwrap_err().problem().status, 409);
    let other = same_set(&row, &recorded, &Sha256Digest([8; 32])).unwrap_err();
    assert_eq!(other.problem().status, 409);
    assert_eq!(other.problem().field.as_deref(), Some("aggregate_sha256"));
}

#[test]
fn releases_go_to_members_and_readers_only_never_the_aggregator() {
    let w = world(2);
    let set = vec![Contribution {
        client_id: w.sites[0].0.clone(),
        upload_sha256: Sha256Digest([0; 32]),
    }];
    let member = &w.sites[0].0;
    assert!(may_read(&w.node, &set, &principal(member, Role::Client, Signer::Roster)).is_ok());
    let reader = ClientId::parse("reader").unwrap();
    assert!(may_read(&w.node, &set, &principal(&reader, Role::Reader, Signer::Roster)).is_ok());
    // (g) the aggregator's own credentials — or an admin's, or an issuer-minted client
    // token — obtain nothing.
    let agg = ClientId::parse("aggregator").unwrap();
    assert!(may_read(&w.node, &set, &principal(&agg, Role::Aggregator, Signer::Issuer)).is_err());
    assert!(may_read(&w.node, &set, &principal(&agg, Role::Admin, Signer::Issuer)).is_err());
    assert!(may_read(&w.node, &set, &principal(member, Role::Client, Signer::Issuer)).is_err());
    assert!(
        may_read(&w.node, &set, &principal(&w.sites[1].0, Role::Client, Signer::Roster)).is_err()
    );
}
