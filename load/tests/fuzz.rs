//! A short bounded run of the stable-Rust mutation fuzzer (`omnistock-fuzz`, load/fuzz.rs;
//! docs/fuzzing.md has the long runs): 20,000 mutants through the decoders in process, and
//! 20,000 frames against a real `omnistock serve` over TCP. The fuzzer exits non-zero on a
//! panic, an allocation over its limit, a hang of the normal client's ping, a server that
//! stopped answering or did not exit 0 on SIGTERM, or "panicked" in the server's stderr.

use std::path::PathBuf;
use std::process::Command;

const FUZZ: &str = env!("CARGO_BIN_EXE_omnistock-fuzz");

/// The `omnistock` binary of the same build, next to `omnistock-fuzz`: Cargo gives a test
/// only its own package's binaries, and `cargo test --workspace` (README's command) builds
/// the root package's before any test runs.
fn server_bin() -> PathBuf {
    let bin = std::path::Path::new(FUZZ)
        .with_file_name(format!("omnistock{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, or `cargo build -p omnistock` first",
        bin.display()
    );
    bin
}

fn run(args: &[&str]) -> String {
    let out = Command::new(FUZZ)
        .args(args)
        .output()
        .expect("run omnistock-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "omnistock-fuzz {args:?} failed ({:?}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn twenty_thousand_mutants_through_the_decoders_neither_panic_nor_allocate_much() {
    let out = run(&["decode", "--frames", "20000", "--seed", "7"]);
    assert!(out.contains("decode: 20000 mutants"), "{out}");
    assert!(out.contains("over the limit 0"), "{out}");
    // The run reached past the frame parser: some operations decoded.
    let decoded: u64 = out
        .split("some op decoded ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(decoded > 1000, "{out}");
}

#[test]
fn twenty_thousand_mutated_frames_leave_a_real_server_up_and_answering() {
    let out = run(&[
        "server",
        "--frames",
        "20000",
        "--seed",
        "7",
        "--connections",
        "16",
        "--server-bin",
        &server_bin().display().to_string(),
    ]);
    assert!(out.contains("0 hangs"), "{out}");
    assert!(out.contains("alive at the end: true"), "{out}");
    assert!(out.contains("\"panicked\" in stderr: false"), "{out}");
}

#[test]
fn the_same_seed_gives_the_same_mutants() {
    let a = run(&["decode", "--frames", "3000", "--seed", "11"]);
    let b = run(&["decode", "--frames", "3000", "--seed", "11"]);
    // The counts after the timing are the same (the timing is not).
    let tail = |s: &str| s.split("/s): ").nth(1).unwrap_or("").to_string();
    assert!(tail(&a).contains("partial"), "{a}");
    assert_eq!(tail(&a), tail(&b));
    let c = run(&["decode", "--frames", "3000", "--seed", "12"]);
    assert_ne!(tail(&a), tail(&c), "another seed, other mutants");
}
