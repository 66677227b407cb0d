//! MLS cost measurement on small groups: every operation runs and checks
//! itself, every figure is filled in, and sizes grow with the group. Timing
//! is never asserted.

use peercomm_sim::mls_cost::{mls_costs, MlsCostError, MlsCostOptions};

#[test]
fn mls_costs_at_5_and_50_members() -> anyhow::Result<()> {
    let seed = std::env::var("PEERCOMM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("mls_cost: seed {seed} (set PEERCOMM_SIM_SEED to replay)");
    let opts = MlsCostOptions {
        sizes: vec![5, 50],
        samples: 2,
        seed,
    };
    let report = mls_costs(&opts)?;
    assert_eq!(report.sizes.len(), 2, "{report:?}");
    let (small, large) = (&report.sizes[0], &report.sizes[1]);
    assert_eq!(small.members, 5);
    assert_eq!(large.members, 50);
    for c in &report.sizes {
        let times = [
            c.build_ms,
            c.add_member_ms,
            c.commit_ms,
            c.process_commit_ms,
            c.join_ms,
            c.encrypt_us,
            c.decrypt_us,
        ];
        assert!(
            times.iter().all(|t| t.is_finite() && *t > 0.0),
            "a time is missing: {c:?}"
        );
        assert!(c.commit_bytes > 0 && c.welcome_bytes > 0 && c.ratchet_tree_bytes > 0);
        // A rekey carries a path: at least one HPKE ciphertext (32-byte KEM
        // output + a 32-byte path secret + 16-byte tag) per level above the
        // owner's leaf, and a signature.
        let levels = c.members.next_power_of_two().trailing_zeros() as usize;
        assert!(c.commit_bytes > levels * 80 + 64, "{c:?}");
    }
    // Every leaf is in the tree: a 50-member tree holds at least 45 more
    // leaves' credentials and keys (well over 100 bytes each) than a 5-member one.
    assert!(
        large.ratchet_tree_bytes > small.ratchet_tree_bytes + 45 * 100,
        "{report:?}"
    );
    // A rekey in a tree of added members encrypts to more of them.
    assert!(large.commit_bytes > small.commit_bytes, "{report:?}");
    // The report serializes (the CLI's --json).
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["sizes"][1]["members"], 50);
    Ok(())
}

#[test]
fn mls_costs_rejects_what_it_cannot_measure() {
    let no_samples = MlsCostOptions {
        sizes: vec![5],
        samples: 0,
        seed: 1,
    };
    assert!(matches!(
        mls_costs(&no_samples),
        Err(MlsCostError::Options(_))
    ));
}

/// The pair the criterion bench times: each message opens once, in order,
/// to its own plaintext, and a replay is refused.
#[test]
fn a_pair_opens_each_message_once() -> anyhow::Result<()> {
    let mut pair = peercomm_sim::mls_cost::MlsPair::new(5, 3)?;
    let first = pair.encrypt(b"first")?;
    let second = pair.encrypt(b"second")?;
    anyhow::ensure!(pair.decrypt(&first)? == b"first");
    anyhow::ensure!(pair.decrypt(&second)? == b"second");
    anyhow::ensure!(pair.decrypt(&second).is_err(), "a replay was opened");
    Ok(())
}
