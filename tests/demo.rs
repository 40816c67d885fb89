//! `omnistock demo` as a newcomer runs it, bounded: `--seconds 2 --no-serve` on a free
//! loopback port must load the demo catalog, run the simulation through the real server,
//! pass its end-of-run checks, print the before/after ATP table, the report, the SKUs most
//! at risk, a rebalance recommendation after its regional campaign, the metrics URL and the
//! ctl examples, and exit 0 by itself.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

#[test]
fn demo_runs_its_simulation_through_the_server_and_exits_with_no_serve() {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--seconds",
            "2",
            "--no-serve",
        ])
        .args(["--skus", "1000", "--admin-listen", "127.0.0.1:0"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "catalog: 6 locations, 6 channels, 1000 SKUs",
        "ATP per channel before -> after",
        "web-fr",
        "tmall",
        "SKU-0000000",
        "reserve ",
        "p99 us",
        "end-of-run check PASSED",
        "metrics: http://127.0.0.1:",
        "ctl --addr 127.0.0.1:",
        "reserve --channel web-fr --line SKU-0000042:1",
        "tail --channel amazon --kinds thresholds",
        "SKUs most at risk on web-fr",
        "hours to zero",
        "at-risk web-fr --limit 20",
        "regional campaign on SKU-0000999",
        "SKUs most at risk in region FR",
        "at-risk --region FR",
        "rebalance apply --all",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // The at-risk list names SKUs the simulation sold (a row after its header).
    let ranked = stdout
        .lines()
        .skip_while(|l| !l.starts_with("SKUs most at risk on web-fr"))
        .skip(2)
        .take_while(|l| l.starts_with("  SKU-"))
        .count();
    assert!((1..=5).contains(&ranked), "{stdout}");
    // The campaign drained FR while US-NJ holds 20,000 units: a transfer into FR.
    let rec = stdout
        .lines()
        .find(|l| l.starts_with("rebalance recommendation "))
        .unwrap_or_else(|| panic!("no recommendation in:\n{stdout}"));
    assert!(
        rec.contains("x SKU-0000999 from ") && rec.contains(" (FR)"),
        "{rec}"
    );
    assert!(!stdout.contains("serving until Ctrl-C"), "{stdout}");
    // The summary names what ran: a checkout simulation, not the restock preset.
    assert!(
        stdout.contains("omnistock checkout workload on"),
        "{stdout}"
    );
    assert!(!stdout.contains("restock workload"), "{stdout}");
    // At least one progress line: the simulation reported while it ran.
    assert!(stdout.lines().any(|l| l.starts_with("[   1s]")), "{stdout}");
}

#[test]
fn demo_refuses_a_bad_flag_with_a_clear_error() {
    let out = Command::new(BIN)
        .args(["demo", "--seconds", "0", "--no-serve"])
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--seconds must be 1..=600"), "{stderr}");
}
