//! The metrics move as billing stories run, and the shipped alert rules fire on what a
//! failing-payments story records: the rules are run by `promtool` (Debian's `prometheus`
//! package) against series made from the metrics this process exported before and after the
//! stories. Without `promtool` the rules part is skipped with a message, except in CI
//! (`CI` set), where `.ci/run` installs it and its absence fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use subledger_scenario::format::parse_file;
use subledger_scenario::runner::{run, RunOptions};
use subledger_simulator::delivery::DeliveryMode;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every sample of the exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of metric `name` whose labels contain each of `labels`.
fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_failing_payment_stories_and_the_alert_rules_fire() {
    let handle = subledger_server::metrics::install().expect("the metrics recorder installs");
    let before = samples(&handle.render());
    // Stories in which renewals fail: cards that stop working, retries that run out.
    for file in [
        "renewal-failure-recovery.yaml",
        "retries-exhausted-canceled.yaml",
        "retries-exhausted-unpaid.yaml",
        "retries-exhausted-paused.yaml",
        "card-customer-fail.yaml",
    ] {
        let scenario = parse_file(&repository().join("scenarios").join(file)).unwrap();
        let options = RunOptions {
            delivery: DeliveryMode::InOrder,
            seed: 0,
            database_url: None,
            at_the_end: None,
        };
        let report = run(&scenario, &options).await.unwrap();
        assert!(report.passed(), "{}", report.render());
    }
    let after = samples(&handle.render());
    let delta =
        |name: &str, labels: &[&str]| total(&after, name, labels) - total(&before, name, labels);

    let failed = delta("subledger_payments_failed_total", &[r#"kind="invoice""#]);
    assert!(failed > 10.0, "{failed} failed payments recorded");
    assert!(
        delta(
            "subledger_webhooks_received_total",
            &[r#"outcome="accepted""#]
        ) > 50.0
    );
    assert!(delta("subledger_inbox_rows_total", &[r#"outcome="applied""#]) > 50.0);
    assert!(delta("subledger_ack_to_projection_seconds_count", &[]) > 50.0);
    assert!(
        delta(
            "subledger_http_requests_total",
            &[r#"route="/webhooks/stripe""#, r#"status="200""#]
        ) > 50.0
    );

    // The rules against these numbers: the counter of a process that starts, lives through
    // the stories within its first minute, and then runs on quietly for 20 more. (Starting
    // from zero also keeps Prometheus' extrapolation out of `increase`, so the alert's
    // summary carries exactly the count.)
    let Some(promtool) = promtool() else {
        return;
    };
    let test = format!(
        r#"rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'subledger_payments_failed_total{{kind="invoice"}}'
        values: '0 {failed}x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: SubledgerFailedPaymentsRising
        exp_alerts: []
      - eval_time: 8m
        alertname: SubledgerFailedPaymentsRising
        exp_alerts:
          - exp_labels: {{ severity: warning }}
            exp_annotations:
              summary: "{failed} payments failed in the last 15 minutes"
              description: "Stripe reported more failed payments than usual. Check the dunning view (customers by dunning state) and Stripe's Dashboard for decline reasons."
      - eval_time: 20m
        alertname: SubledgerFailedPaymentsRising
        exp_alerts: []
"#,
        rules = repository().join("deploy/prometheus/alerts.yml").display()
    );
    let file = std::env::temp_dir().join(format!("subledger-alerts-{}.yml", std::process::id()));
    std::fs::write(&file, test).unwrap();
    let output = Command::new(promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `promtool`, when installed. In CI its absence is a failure, not a skip.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is missing: .ci/run installs Debian's prometheus package"
    );
    eprintln!(
        "promtool is not installed: the alert rules are not run (apt-get install prometheus)"
    );
    None
}
