//! The monitoring that ships with standin holds together: the alert rules pass `promtool check rules`, the dashboard and the rules query only metrics the binary exports, and the README's metrics table is the binary's own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use standin::telemetry::{MetricKind, catalogue, markdown_table};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `standin_*` metric families a PromQL expression reads: a
/// histogram's `_bucket`, `_sum` and `_count` series count as the histogram.
fn families(expr: &str) -> BTreeSet<String> {
    let histograms: BTreeSet<&str> = catalogue()
        .iter()
        .filter(|metric| metric.kind == MetricKind::Histogram)
        .map(|metric| metric.name)
        .collect();
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("standin_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| histograms.contains(base))
            })
            .unwrap_or(&name);
        found.insert(family.to_owned());
    }
    found
}

fn exported() -> BTreeSet<String> {
    catalogue()
        .into_iter()
        .map(|metric| metric.name.to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_name_only_exported_metrics() {
    let rules = repo("deploy/monitoring/standin-alerts.yaml");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs (Debian's prometheus package; `make deps` installs it)");
    assert!(
        checked.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let text = std::fs::read_to_string(&rules).unwrap();
    let document: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut alerts = Vec::new();
    for group in document["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap();
            let unknown: Vec<_> = families(expr).difference(&exported()).cloned().collect();
            assert!(
                unknown.is_empty(),
                "alert {name} reads {unknown:?}, which standin does not export"
            );
            assert!(
                !families(expr).is_empty(),
                "alert {name} reads no standin metric"
            );
            alerts.push(name);
        }
    }
    for wanted in [
        "StandinNoLeader",
        "StandinLeadershipFlapping",
        "StandinKeepaliveNearRenewDeadline",
        "StandinDeathWitnessDisarmed",
        "StandinWarmCopyMissing",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "no {wanted} in {alerts:?}"
        );
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_covers_the_operators_questions() {
    let text = std::fs::read_to_string(repo("deploy/monitoring/standin-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut read = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let named = families(expr);
            let unknown: Vec<_> = named.difference(&exported()).cloned().collect();
            assert!(
                unknown.is_empty(),
                "panel {title} reads {unknown:?}, which standin does not export"
            );
            read.extend(named);
        }
    }
    for question in [
        "standin_role_state",
        "standin_takeovers_total",
        "standin_takeover_seconds",
        "standin_step_downs_total",
        "standin_keepalive_rtt_seconds",
        "standin_death_witness_revokes_total",
        "standin_metadata_copy_keys",
        "standin_reload_seconds",
        "standin_requests_total",
    ] {
        assert!(read.contains(question), "no panel reads {question}");
    }
}

#[test]
fn the_readme_metrics_table_is_the_one_the_binary_describes() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let begin = "<!-- metrics table: made by standin::telemetry::markdown_table -->\n";
    let end = "<!-- end of metrics table -->";
    let start = readme
        .find(begin)
        .expect("the README marks its metrics table")
        + begin.len();
    let stop = start + readme[start..].find(end).expect("the table's end marker");
    let expected = markdown_table();
    assert!(
        readme[start..stop] == expected,
        "the README's metrics table differs from the binary's; replace it with:\n{expected}"
    );
}
