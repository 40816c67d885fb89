//! deploy/: the systemd unit passes `systemd-analyze verify` and a stricter lint of our own
//! (systemd ignores a bad value with a warning and exit 0, and reads an inline comment as
//! part of the value: `EnvironmentFile=-/etc/x # note` is a missing file, skipped
//! silently); the Dockerfile is multi-stage, runs as a non-root user with the data volume,
//! sets only real settings, and its health check, run here with bash against a real
//! server, answers from `/readyz`. systemd-analyze comes from Debian's `systemd` package:
//! `.ci/run` installs it and sets OMNISTOCK_REQUIRE_SYSTEMD_ANALYZE=1 so that CI fails
//! without it; elsewhere that check is skipped with a notice.

mod common;
use common::free_port;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const UNIT: &str = include_str!("../deploy/omnistock.service");
const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");

/// `(line number, key, value)` of every setting of a unit file.
fn unit_settings(unit: &str) -> Vec<(usize, String, String)> {
    unit.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            !(t.is_empty() || t.starts_with('#') || t.starts_with(';') || t.starts_with('['))
        })
        .filter_map(|(i, l)| {
            let (k, v) = l.split_once('=')?;
            Some((i + 1, k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// What systemd would misread: inline comments, values with trailing spaces, lines that
/// are no `key=value`, and the settings this unit must have with their exact values.
fn lint_unit(unit: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, l) in unit.lines().enumerate() {
        let t = l.trim();
        if !t.is_empty() && !t.starts_with(['#', ';', '[']) && !t.contains('=') {
            problems.push(format!("line {}: not key=value: {l:?}", i + 1));
        }
    }
    let settings = unit_settings(unit);
    for (line, k, v) in &settings {
        if v.contains(" #") || v.contains("\t#") || v.contains(" ;") {
            problems.push(format!(
                "line {line}: {k}= has an inline comment, which systemd reads as part of the value: {v:?}"
            ));
        }
    }
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(_, k, _)| k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("EnvironmentFile", "-/etc/omnistock/env"),
        ("StateDirectory", "omnistock"),
        ("LimitNOFILE", "65536"),
        ("User", "omnistock"),
        ("KillSignal", "SIGTERM"),
    ] {
        if get(key) != [want] {
            problems.push(format!(
                "{key}= should be exactly {want:?}, is {:?}",
                get(key)
            ));
        }
    }
    match get("MemoryMax").as_slice() {
        [v] if v
            .strip_suffix(['K', 'M', 'G', 'T'])
            .unwrap_or(v)
            .parse::<u64>()
            .is_ok() => {}
        other => problems.push(format!(
            "MemoryMax= should be one size like 10G, is {other:?}"
        )),
    }
    if !get("ExecStart")
        .iter()
        .any(|v| v.starts_with("/usr/local/bin/omnistock serve"))
    {
        problems.push("ExecStart= should run /usr/local/bin/omnistock serve".into());
    }
    problems
}

#[test]
fn the_unit_has_no_inline_comments_and_the_settings_it_needs() {
    assert_eq!(lint_unit(UNIT), Vec::<String>::new());
}

#[test]
fn the_unit_lint_catches_the_unit_docs_used_to_paste() {
    let broken = UNIT
        .replace(
            "EnvironmentFile=-/etc/omnistock/env",
            "EnvironmentFile=-/etc/omnistock/secrets.env     # OMNISTOCK_TOKENS=...",
        )
        .replace(
            "LimitNOFILE=65536",
            "LimitNOFILE=65536   # one per connection",
        )
        .replace(
            "StateDirectory=omnistock",
            "StateDirectory=/var/lib/omnistock",
        );
    let p = lint_unit(&broken).join("\n");
    assert!(p.contains("EnvironmentFile= has an inline comment"), "{p}");
    assert!(p.contains("LimitNOFILE= has an inline comment"), "{p}");
    assert!(
        p.contains("StateDirectory= should be exactly \"omnistock\""),
        "{p}"
    );
    assert!(lint_unit(&UNIT.replace("MemoryMax=10G", "MemoryMax=lots"))
        .join("\n")
        .contains("MemoryMax="));
}

fn systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("OMNISTOCK_REQUIRE_SYSTEMD_ANALYZE").is_none(),
            "OMNISTOCK_REQUIRE_SYSTEMD_ANALYZE=1 but systemd-analyze is not on PATH (apt-get install systemd)"
        );
        eprintln!(
            "NOTICE: systemd-analyze not on PATH; skipping the unit verification (CI requires it)"
        );
    }
    found
}

/// `systemd-analyze verify` of `unit` (with ExecStart pointed at the built binary, which
/// it checks exists): every line it prints about the file.
fn verify(unit: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omnistock.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/omnistock", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut problems: Vec<String> = text
        .lines()
        .filter(|l| l.contains("omnistock.service"))
        .map(str::to_string)
        .collect();
    if !out.status.success() {
        problems.push(format!("exit status {}: {text}", out.status));
    }
    problems
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !systemd_analyze() {
        return;
    }
    assert_eq!(verify(UNIT), Vec::<String>::new());
    // The check sees what systemd ignores with only a warning.
    let broken = UNIT.replace("MemoryMax=10G", "MemoryMax=10G   # see sizing");
    assert!(
        verify(&broken).iter().any(|l| l.contains("memory limit")),
        "{:?}",
        verify(&broken)
    );
}

/// Dockerfile instructions (continuation lines joined), each with its keyword upper-case.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for l in dockerfile.lines() {
        let t = l.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (k, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((k.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// The `ENV` of the last stage as a map.
fn image_env(ins: &[(String, String)]) -> BTreeMap<String, String> {
    let last_from = ins.iter().rposition(|(k, _)| k == "FROM").unwrap();
    ins[last_from..]
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, v)| v.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The health check's command (the exec form's arguments).
fn healthcheck(ins: &[(String, String)]) -> Vec<String> {
    let (_, v) = ins
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    let json = &v[v.find("CMD [").expect("exec form") + 4..];
    serde_json::from_str(json).expect("CMD is a JSON array")
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_the_data_volume() {
    let ins = instructions(DOCKERFILE);
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        froms.len() >= 2 && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    let last_from = ins.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let run_stage = &ins[last_from..];
    let has =
        |key: &str, pred: &dyn Fn(&str) -> bool| run_stage.iter().any(|(k, v)| k == key && pred(v));
    assert!(has("COPY", &|v| {
        v == "--from=build /src/target/release/omnistock /usr/local/bin/omnistock"
    }));
    assert!(ins[..last_from]
        .iter()
        .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")));
    let user = run_stage
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, v)| v.clone())
        .expect("a USER in the final stage");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()) && !user.starts_with("0:"),
        "{user}"
    );
    assert!(has("VOLUME", &|v| v == "/var/lib/omnistock"));
    assert_eq!(
        image_env(&ins)
            .get("OMNISTOCK_DATA_DIR")
            .map(String::as_str),
        Some("/var/lib/omnistock")
    );
    assert!(has("ENTRYPOINT", &|v| v.contains("\"serve\"")));
    let check = healthcheck(&ins).join(" ");
    assert!(
        check.contains("/readyz") && check.contains("9878"),
        "{check}"
    );
    // Every variable the image sets is a setting `serve` reads.
    let settings = include_str!("../src/settings.rs");
    for k in image_env(&ins).keys() {
        assert!(
            settings.contains(&format!("env = \"{k}\"")),
            "{k} is not a setting of src/settings.rs"
        );
    }
}

/// Runs the image's health check against `admin` (its 9878 replaced): whether it passed.
fn probe(cmd: &[String], admin: u16) -> bool {
    let args: Vec<String> = cmd
        .iter()
        .map(|a| a.replace("127.0.0.1/9878", &format!("127.0.0.1/{admin}")))
        .collect();
    Command::new(&args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .status()
        .expect("run the health check")
        .success()
}

#[test]
fn the_image_settings_start_a_server_whose_health_check_reads_readyz() {
    let ins = instructions(DOCKERFILE);
    let cmd = healthcheck(&ins);
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut env = image_env(&ins);
    // The image's settings, moved to loopback ports and a temporary directory.
    env.insert("OMNISTOCK_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "OMNISTOCK_ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin}"),
    );
    env.insert(
        "OMNISTOCK_DATA_DIR".into(),
        dir.path().join("data").display().to_string(),
    );
    assert!(!probe(&cmd, admin), "passes with nothing listening");
    let mut child = Command::new(BIN)
        .args(["serve", "--init"])
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe(&cmd, admin) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited with the image's settings"
        );
        assert!(Instant::now() < deadline, "the health check never passed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert!(!probe(&cmd, admin), "passes after the server stopped");
    assert!(Path::new(&env["OMNISTOCK_DATA_DIR"])
        .join("omnistock.id")
        .exists());
}
