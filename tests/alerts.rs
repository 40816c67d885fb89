//! docs/alerts.yml against its runbooks and its tests: every alert's `runbook_url` names a
//! section of docs/operations.md that exists (and every alert section there is an alert),
//! every alert has `promtool test rules` cases in docs/alerts.test.yml, those cases pass,
//! and they fail when a threshold or a `for` of the rules is changed (so they test the
//! rules, not themselves). promtool comes from Debian's `prometheus` package: `.ci/run`
//! installs it and sets OMNISTOCK_REQUIRE_PROMTOOL=1 so that CI fails without it;
//! elsewhere the promtool checks are skipped with a notice.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const RULES: &str = include_str!("../docs/alerts.yml");
const TESTS: &str = include_str!("../docs/alerts.test.yml");
const OPERATIONS: &str = include_str!("../docs/operations.md");

/// Alert name → its `runbook_url` (empty when it has none), in file order.
fn alerts(rules: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in rules.lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            let name = name.trim().to_string();
            out.insert(name.clone(), String::new());
            current = Some(name);
        } else if let (Some(url), Some(name)) = (t.strip_prefix("runbook_url:"), &current) {
            out.insert(name.clone(), url.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation other than `-`
/// and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading of a markdown file (code blocks skipped).
fn anchors(md: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for l in md.lines() {
        if l.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && l.starts_with('#') {
            out.push(slug(l.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_alert_has_a_runbook_url_naming_its_section_of_operations_md() {
    let alerts = alerts(RULES);
    assert!(alerts.len() >= 16, "{alerts:?}");
    let anchors = anchors(OPERATIONS);
    for (name, url) in &alerts {
        let want = format!("docs/operations.md#{}", name.to_lowercase());
        assert_eq!(url, &want, "runbook_url of {name}");
        let anchor = &url["docs/operations.md#".len()..];
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: docs/operations.md has no section #{anchor}"
        );
    }
    // And no runbook without an alert: every alert-like section under "Alerts" is one.
    let section = &OPERATIONS[OPERATIONS.find("\n## Alerts").expect("an Alerts section")..];
    for l in section.lines().filter(|l| l.starts_with("### ")) {
        let name = l.trim_start_matches("### ").trim();
        assert!(
            alerts.contains_key(name),
            "docs/operations.md has a runbook for {name}, which docs/alerts.yml does not define"
        );
    }
}

#[test]
fn the_checks_of_runbook_urls_see_a_missing_section() {
    assert_eq!(slug(" OmnistockDown "), "omnistockdown");
    assert_eq!(
        slug("Backing up and restoring the data directory"),
        "backing-up-and-restoring-the-data-directory"
    );
    assert_eq!(
        slug("`omnistock check` exit status"),
        "omnistock-check-exit-status"
    );
    let a = anchors("# A\n```\n# not a heading\n```\n### OmnistockDown\n");
    assert_eq!(a, ["a", "omnistockdown"]);
    let rules =
        "- alert: X\n  annotations:\n    runbook_url: \"docs/operations.md#x\"\n- alert: Y\n";
    let got = alerts(rules);
    assert_eq!(got["X"], "docs/operations.md#x");
    assert_eq!(got["Y"], "", "an alert without runbook_url is seen as such");
}

#[test]
fn every_alert_has_test_cases_that_fire_and_that_do_not() {
    for name in alerts(RULES).keys() {
        let cases: Vec<&str> = TESTS
            .split("      - eval_time:")
            .filter(|c| c.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{name}: no case of docs/alerts.test.yml expects it to fire"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name}: no case of docs/alerts.test.yml expects it not to fire"
        );
    }
}

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("OMNISTOCK_REQUIRE_PROMTOOL").is_none(),
        "OMNISTOCK_REQUIRE_PROMTOOL=1 but promtool is not on PATH (apt-get install prometheus)"
    );
    eprintln!("NOTICE: promtool not on PATH; skipping promtool test rules (CI requires it)");
    None
}

/// `promtool test rules` over the given rules and tests, side by side in a directory.
fn test_rules(bin: &str, rules: &str, tests: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    std::fs::write(dir.path().join("alerts.test.yml"), tests).unwrap();
    Command::new(bin)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("run promtool")
}

#[test]
fn promtool_test_rules_passes_on_docs_alerts_test_yml() {
    let Some(bin) = promtool() else { return };
    // The files as they are in docs/ (the test file names alerts.yml beside it).
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let out = Command::new(bin)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&docs)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_tests_fail_when_a_rule_changes() {
    let Some(bin) = promtool() else { return };
    for (what, from, to, alert) in [
        (
            "a threshold",
            "rate(omnistock_mailbox_full_total[5m])) > 1",
            "rate(omnistock_mailbox_full_total[5m])) > 5",
            "OmnistockMailboxFull",
        ),
        (
            "a `for`",
            "expr: up{job=\"omnistock\"} == 0\n        for: 1m",
            "expr: up{job=\"omnistock\"} == 0\n        for: 10m",
            "OmnistockDown",
        ),
        (
            "a runbook_url",
            "#omnistockoversold",
            "#oversold",
            "OmnistockOversold",
        ),
    ] {
        assert!(
            RULES.contains(from),
            "{from:?} is no longer in docs/alerts.yml"
        );
        let out = test_rules(bin, &RULES.replace(from, to), TESTS);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "changing {what} of {alert} went unnoticed"
        );
        assert!(text.contains(alert), "{text}");
    }
}
