//! The attacks version 2 exists to defeat, at the level of the scheme. Each test would pass
//! an attacker's goal on a naive implementation; the service-level versions (a lying
//! aggregator, a second contributor set, releases to the aggregator) are in the service tests.

use super::{gaussian_plan, setup_for};
use crate::sharing::{CommitteeShape, KeyShare, Release, ShareIndex, SHARE_PRIME};
use crate::{
    decrypt_with_releases, AggregateKey, ClientKey, Error, PackedCiphertext, ParameterSet,
    RoundSetup, RunningSum,
};

struct Round {
    setup: RoundSetup,
    keys: Vec<ClientKey>,
    inputs: Vec<Vec<f64>>,
    uploads: Vec<PackedCiphertext>,
    aggregate: PackedCiphertext,
}

fn round(clients: usize, values: usize) -> Round {
    let params = ParameterSet::default_128();
    let setup = setup_for(gaussian_plan(&params, clients as u32, 1e-6), values as u64, 77);
    let keys: Vec<ClientKey> =
        (0..clients).map(|_| ClientKey::generate(&params).unwrap()).collect();
    let inputs: Vec<Vec<f64>> = (0..clients)
        .map(|i| (0..values).map(|j| ((i * 131 + j * 17) % 199) as f64 / 100.0 - 0.99).collect())
        .collect();
    let uploads: Vec<PackedCiphertext> = keys
        .iter()
        .zip(&inputs)
        .map(|(k, x)| k.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext)
        .collect();
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    uploads.iter().for_each(|u| sum.add_upload(u).unwrap());
    let aggregate = PackedCiphertext::aggregate(&setup, clients as u32, sum.pack()).unwrap();
    Round { setup, keys, inputs, uploads, aggregate }
}

/// Presents one upload as if it were the aggregate (what a lying aggregator would serve).
fn as_aggregate(setup: &RoundSetup, upload: &PackedCiphertext, claimed: u32) -> PackedCiphertext {
    PackedCiphertext::aggregate(setup, claimed, upload.payload().to_vec()).unwrap()
}

/// (a) Version 1's attack: the aggregator holds every upload, a colluding client everything
/// it receives — its own key, its shares, the released key sum of the set. In version 1 the
/// round key decrypted every upload; here no key the coalition holds opens the victim's.
#[test]
fn the_aggregator_and_a_client_cannot_read_another_clients_upload() {
    let r = round(3, 3000);
    let (colluder, victim, other) = (&r.keys[0], &r.uploads[1], &r.keys[2]);
    let k_s = AggregateKey::sum_of(&r.keys); // released for S = {0, 1, 2}
                                             // What a member of S legitimately learns: the mean.
    assert!(k_s.decrypt(&r.setup, &r.aggregate).is_ok());
    // Every key the coalition can form, applied to the victim's upload, is refused.
    let minus_colluder = AggregateKey::from_coefficients(
        k_s.coefficients().iter().zip(colluder.coefficients()).map(|(k, c)| k - c).collect(),
    );
    for (name, key, claimed) in [
        ("the colluder's own key", AggregateKey::sum_of([colluder]), 1),
        ("the released key sum", AggregateKey::sum_of(&r.keys), 3),
        ("the key sum minus the colluder's key", minus_colluder, 2),
    ] {
        let err = key.decrypt(&r.setup, &as_aggregate(&r.setup, victim, claimed)).unwrap_err();
        assert!(matches!(err, Error::WrongAggregateKey | Error::KeyOutOfRange), "{name}: {err}");
    }
    // The reference point: only the victim's own key (never released) opens it.
    let own =
        AggregateKey::sum_of([&r.keys[1]]).decrypt(&r.setup, &as_aggregate(&r.setup, victim, 1));
    assert!(own.is_ok());
    let _ = other;
}

/// (a′) The v1 exploit as a user saw it: an aggregator serves one client's stored upload as
/// "the aggregate". An honest reader combining the releases for the recorded set gets an
/// error, not the victim's update.
#[test]
fn a_single_upload_served_as_the_aggregate_does_not_decrypt() {
    let r = round(3, 3000);
    let forged = as_aggregate(&r.setup, &r.uploads[1], 3);
    let err = AggregateKey::sum_of(&r.keys).decrypt(&r.setup, &forged).unwrap_err();
    assert!(matches!(err, Error::WrongAggregateKey | Error::KeyOutOfRange), "{err}");
    let _ = &r.inputs;
}

fn releases(keys: &[ClientKey], shape: CommitteeShape) -> Vec<Release> {
    let shares: Vec<Vec<KeyShare>> = keys.iter().map(|k| k.share(shape).unwrap()).collect();
    shape
        .indices()
        .map(|x| Release::sum(x, shares.iter().map(|s| &s[x.get() as usize - 1])).unwrap())
        .collect()
}

/// Adds `shift_in_field` to coefficient `at` of a release.
fn shift_release(release: &mut Release, at: usize, shift_in_field: u64) {
    release.values[at] = (release.values[at] + shift_in_field) % SHARE_PRIME;
}

/// (c) A node that shifts the key sum by a multiple of Δ moves every value of some blocks by
/// a whole step count — the residuals stay small, so only the range check catches it.
#[test]
fn a_release_shifting_the_key_by_a_multiple_of_delta_is_caught_by_the_range_check() {
    let r = round(2, 4096);
    let shape = CommitteeShape::SINGLE;
    let mut rel = releases(&r.keys, shape);
    let delta = r.setup.plan().delta().delta();
    shift_release(&mut rel[0], 0, delta % SHARE_PRIME);
    let err = decrypt_with_releases(&r.setup, &r.aggregate, shape, &rel).unwrap_err();
    assert!(matches!(err, Error::KeyOutOfRange), "{err}");
    // Without the range check the shifted key *passes* the residual check and returns wrong
    // values: the check is what stops it, not the self-check.
    let mut shifted: Vec<i64> = AggregateKey::sum_of(&r.keys).coefficients().to_vec();
    shifted[0] += delta as i64;
    let naive = AggregateKey::from_coefficients(shifted);
    let contributors = r.aggregate.header().contributors();
    assert!(naive.check_range(&r.setup, contributors).is_err());
    let honest = AggregateKey::sum_of(&r.keys).decrypt(&r.setup, &r.aggregate).unwrap();
    match naive.decrypt_without_range_check(&r.setup, &r.aggregate) {
        Ok(wrong) => assert_ne!(wrong.sums(), honest.sums()),
        // The shift moves every slot by a pseudorandom number of steps, the clipping slots
        // too, whose sums then usually leave their range: a second, incidental safeguard.
        // What matters is that the residual self-check passed.
        Err(Error::CountOutOfRange) => {}
        Err(e) => panic!("the residual self-check alone does not see the shift, yet: {e}"),
    }
}

/// Committees: a corrupted release (random or shifted by Δ) is detected; with n − t ≥ 2 the
/// node is named; the mean is still right from the others. With n − t = 1 nobody is named
/// but the mean is still recovered.
#[test]
fn a_corrupted_release_is_detected_named_and_survived() {
    let r = round(3, 3000);
    let honest = AggregateKey::sum_of(&r.keys).decrypt(&r.setup, &r.aggregate).unwrap();
    let delta = r.setup.plan().delta().delta();
    for (n, t, named) in [(5u8, 3u8, true), (3, 2, false), (4, 3, false)] {
        let shape = CommitteeShape::try_new(n, t).unwrap();
        for corruption in ["random", "delta"] {
            let mut rel = releases(&r.keys, shape);
            let bad = 1usize;
            match corruption {
                "random" => {
                    rel[bad].values.iter_mut().for_each(|v| *v = (*v * 7 + 3) % SHARE_PRIME)
                }
                _ => shift_release(&mut rel[bad], 5, delta % SHARE_PRIME),
            }
            let (d, report) = decrypt_with_releases(&r.setup, &r.aggregate, shape, &rel).unwrap();
            assert!(report.inconsistent, "({n},{t}) {corruption}");
            assert_eq!(d.sums(), honest.sums(), "({n},{t}) {corruption}");
            let culprit = report.culprit.map(ShareIndex::get);
            assert_eq!(culprit, named.then_some(2), "({n},{t}) {corruption}: {report:?}");
            assert!(!report.used.contains(&ShareIndex::try_new(2).unwrap()));
        }
        // A release of the wrong length (a node answering with another ring's worth of
        // values) is left out and named — never indexed past its end.
        for len in [1024usize, 4096] {
            let mut rel = releases(&r.keys, shape);
            rel[1].values.resize(len, 1);
            let (d, report) = decrypt_with_releases(&r.setup, &r.aggregate, shape, &rel).unwrap();
            assert!(report.inconsistent, "({n},{t}) length {len}");
            assert_eq!(d.sums(), honest.sums(), "({n},{t}) length {len}");
            assert_eq!(report.culprit.map(ShareIndex::get), Some(2), "({n},{t}) length {len}");
        }
    }
}

/// Fewer than t releases do not combine; releases of two different sets do not combine into
/// anything that decrypts the aggregate (a lying aggregator that asks honest nodes for
/// different sets gets nothing usable from those nodes alone).
#[test]
fn mixed_or_missing_releases_do_not_decrypt() {
    let r = round(3, 2048);
    let shape = CommitteeShape::try_new(3, 2).unwrap();
    let shares: Vec<Vec<KeyShare>> = r.keys.iter().map(|k| k.share(shape).unwrap()).collect();
    let release = |node: usize, set: &[usize]| {
        Release::sum(shares[0][node].index(), set.iter().map(|&i| &shares[i][node])).unwrap()
    };
    let err = decrypt_with_releases(&r.setup, &r.aggregate, shape, &[release(0, &[0, 1, 2])])
        .unwrap_err();
    assert!(matches!(err, Error::NotEnoughReleases { have: 1, need: 2 }));
    // Node 1 released for S = {0, 1, 2}, node 2 for S' = {0, 2}.
    let mixed = [release(0, &[0, 1, 2]), release(1, &[0, 2])];
    let err = decrypt_with_releases(&r.setup, &r.aggregate, shape, &mixed).unwrap_err();
    assert!(matches!(err, Error::WrongAggregateKey | Error::KeyOutOfRange), "{err}");
    // The same set at both nodes works.
    let same = [release(0, &[0, 1, 2]), release(1, &[0, 1, 2])];
    assert!(decrypt_with_releases(&r.setup, &r.aggregate, shape, &same).is_ok());
}

/// A malicious aggregator splits the round: it reports S1 = {0, 1} to some nodes and
/// S2 = {0, 1, 2} to others, and `c` corrupt nodes release for both. Both sets open only if
/// `c ≥ 2t − n` (the privacy threshold), and then K(S2) − K(S1) is client 2's key: the
/// documented loss. Every split of the honest nodes and every choice of corrupt nodes is
/// played; below the threshold, whatever set gathers `t` releases combines to its own K(S).
#[test]
fn every_split_of_sets_opens_two_only_from_the_privacy_threshold_on() {
    let params = ParameterSet::default_128();
    let keys: Vec<ClientKey> = (0..3).map(|_| ClientKey::generate(&params).unwrap()).collect();
    for (n, t) in [(3u8, 2u8), (3, 3), (4, 3), (5, 3), (5, 4)] {
        let shape = CommitteeShape::try_new(n, t).unwrap();
        let p = shape.privacy_threshold() as usize;
        let s1 = releases(&keys[..2], shape);
        let s2 = releases(&keys, shape);
        let (k1, k2) = (AggregateKey::sum_of(&keys[..2]), AggregateKey::sum_of(&keys));
        let mut loss_seen = false;
        for corrupt in 0u32..(1 << n) {
            let c = corrupt.count_ones() as usize;
            if c > p {
                continue;
            }
            let honest: Vec<usize> = (0..n as usize).filter(|j| corrupt & (1 << j) == 0).collect();
            for split in 0u32..(1 << honest.len()) {
                // Honest node honest[i] records S2 if bit i of `split`, else S1.
                let mut got1: Vec<&Release> = Vec::new();
                let mut got2: Vec<&Release> = Vec::new();
                for j in 0..n as usize {
                    let corrupt_j = corrupt & (1 << j) != 0;
                    let records_s2 =
                        honest.iter().position(|h| *h == j).is_some_and(|i| split & (1 << i) != 0);
                    if corrupt_j || !records_s2 {
                        got1.push(&s1[j]);
                    }
                    if corrupt_j || records_s2 {
                        got2.push(&s2[j]);
                    }
                }
                let (open1, open2) = (got1.len() >= t as usize, got2.len() >= t as usize);
                if open1 {
                    let k = crate::sharing::combine(&got1[..t as usize]).unwrap();
                    assert_eq!(
                        k.coefficients(),
                        k1.coefficients(),
                        "({n},{t}): S1 combines to K(S1)"
                    );
                }
                if open2 {
                    let k = crate::sharing::combine(&got2[..t as usize]).unwrap();
                    assert_eq!(
                        k.coefficients(),
                        k2.coefficients(),
                        "({n},{t}): S2 combines to K(S2)"
                    );
                }
                if open1 && open2 {
                    assert_eq!(
                        c, p,
                        "({n},{t}): two sets opened with {c} corrupt nodes, below 2t − n = {p}"
                    );
                    // The documented loss: the difference is client 2's own key.
                    let diff: Vec<i64> = k2
                        .coefficients()
                        .iter()
                        .zip(k1.coefficients())
                        .map(|(a, b)| a - b)
                        .collect();
                    assert_eq!(diff, keys[2].coefficients());
                    loss_seen = true;
                }
            }
        }
        assert!(loss_seen, "({n},{t}): with 2t − n = {p} corrupt nodes some split opens both sets");
    }
}

/// What fewer than `t` nodes store of a client's key — its shares there — together with
/// everything the aggregator stores (the upload itself), does not decrypt the upload: the
/// missing shares can be anything, and every completion the coalition tries is refused.
#[test]
fn fewer_than_t_shares_and_the_aggregators_blobs_do_not_decrypt_an_upload() {
    let r = round(2, 3000);
    for (n, t) in [(3u8, 2u8), (5, 3), (5, 4)] {
        let shape = CommitteeShape::try_new(n, t).unwrap();
        let shares = r.keys[1].share(shape).unwrap();
        let known: Vec<Release> = shares[..t as usize - 1]
            .iter()
            .map(|s| Release::sum(s.index(), [s]).unwrap())
            .collect();
        let victim = as_aggregate(&r.setup, &r.uploads[1], 1);
        for guess in [0u64, 1, SHARE_PRIME - 1, 0x1234_5678] {
            let mut made =
                Release::sum(shares[t as usize - 1].index(), [&shares[t as usize - 1]]).unwrap();
            made.values.iter_mut().for_each(|v| *v = guess);
            let mut all: Vec<&Release> = known.iter().collect();
            all.push(&made);
            let key = crate::sharing::combine(&all).unwrap();
            let err = key.decrypt(&r.setup, &victim).unwrap_err();
            assert!(
                matches!(err, Error::WrongAggregateKey | Error::KeyOutOfRange),
                "({n},{t}) {guess}: {err}"
            );
        }
    }
}
