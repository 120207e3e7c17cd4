//! `dfagent pull` killed with SIGKILL at random moments (a few rounds here; `dfagent-faults
//! crash` runs 50): after each kill the store verifies clean, nothing stored before the pull is
//! lost, and a mount of the image reads every file correctly.

use dfagent_test_support::crash::{summary, CrashCampaign};
use dfagent_test_support::dfagent_cli;

#[test]
fn kill_9_during_pull_loses_nothing_and_keeps_nothing_bad() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("kill moments seeded with {seed}");
    let rounds = CrashCampaign::start(&dfagent_cli!()).run(4, seed);
    eprintln!("{}", summary(&rounds));
    for (i, r) in rounds.iter().enumerate() {
        assert!(r.clean(), "round {i} (seed {seed}): {r:#?}");
    }
}
