//! Every scenario in `scenarios/` passes in order, shuffled with duplicates under fixed seeds,
//! and in chaos delivery, and every delivery ends in the same billing views.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use subledger_scenario::format::{files_in, parse_file};
use subledger_scenario::runner::{run, RunOptions};
use subledger_simulator::delivery::DeliveryMode;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let files = files_in(&dir).unwrap();
    assert!(
        files.len() >= 15,
        "scenario files are missing from {}",
        dir.display()
    );
    files
}

const MODES: [(DeliveryMode, u64); 5] = [
    (DeliveryMode::InOrder, 0),
    (DeliveryMode::Shuffled, 1),
    (DeliveryMode::Shuffled, 2),
    (DeliveryMode::Shuffled, 3),
    (DeliveryMode::Chaos, 1),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_in_every_delivery_mode_with_identical_results() {
    let postgres = std::env::var(subledger_store::scratch::POSTGRES_URL_VAR).ok();
    let mut failures = Vec::new();
    for file in scenario_files() {
        let scenario = parse_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let mut reference: Option<String> = None;
        let mut runs: Vec<(DeliveryMode, u64, Option<String>)> = MODES
            .iter()
            .map(|(mode, seed)| (*mode, *seed, None))
            .collect();
        if let Some(url) = &postgres {
            runs.push((DeliveryMode::Shuffled, 4, Some(url.clone())));
        }
        for (delivery, seed, database_url) in runs {
            let options = RunOptions {
                delivery,
                seed,
                database_url,
                at_the_end: None,
            };
            let report = run(&scenario, &options).await.unwrap();
            if !report.passed() {
                failures.push(report.render());
                continue;
            }
            match &reference {
                None => reference = Some(report.final_views.clone()),
                Some(expected) if *expected != report.final_views => failures.push(format!(
                    "{}: delivery {} seed {} ended in different billing views than in-order delivery",
                    file.display(),
                    delivery.as_str(),
                    seed
                )),
                Some(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_malformed_scenario_names_the_file_the_line_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("subledger-scenario-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("catalogs")).unwrap();
    std::fs::write(
        dir.join("catalogs/c.yaml"),
        "default_plan: free\nplans:\n  free: {}\n",
    )
    .unwrap();
    let cases = [
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - advance: 3 fortnights\n", 5, "not a duration"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - advance: 1 month 2\n", 5, "not a duration"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - advance: 1 month -2 hours\n", 5, "must be positive"),
        ("name: x\nstart: yesterday\ncatalog: catalogs/c.yaml\nsteps:\n  - advance: 1 day\n", 2, "RFC 3339"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - teleport: {}\n", 5, "unknown step `teleport`"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - expect:\n      customer: c\n      subscriptions: { s: dormant }\n", 7, "not a subscription status"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/missing.yaml\nsteps:\n  - advance: 1 day\n", 3, "cannot read catalog"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - subscribe: { customer: c, price: p }\n", 5, "missing `subscription`"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - advance: 200 years\n", 5, "at most 100 years"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - subscribe: { customer: c, subscription: s, price: p,\n      payment_behavior: sometimes }\n", 6, "`payment_behavior` is `sometimes`, expected allow_incomplete"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - confirm: { subscription: s }\n", 5, "missing `card`"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - grant: { customer: c, id: g, feature: f, enabled: true, limit: 3, reason: r }\n", 5, "exactly one of `enabled"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - grant: { customer: c, id: g, feature: f, limit: 3, mode: double, reason: r }\n", 5, "`mode` is set or add"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - place_hold: { customer: c, id: h, subscription: s, reason: r, covers_grants: true }\n", 5, "whole customer"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - publish_catalog: catalogs/missing.yaml\n", 5, "cannot read catalog"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - expect_catalog: {}\n", 5, "needs `versions`, `in_force` or both"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/c.yaml\nsteps:\n  - expect_catalog: { versions: two }\n", 5, "`versions` must be a count"),
    ];
    for (text, line, message) in cases {
        let path = dir.join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let error = parse_file(&path).unwrap_err();
        assert_eq!(error.line, Some(line), "{error}");
        assert!(error.message.contains(message), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:{line}: ", path.display())),
            "{error}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
