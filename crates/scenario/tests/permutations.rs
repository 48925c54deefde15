//! Whatever order Stripe delivers in, however often: for every scenario file, many seeded
//! random delivery orders (shuffled within windows, duplicated, delayed to later steps,
//! failed and retried) must end in billing views identical, byte for byte, to in-order
//! delivery. `SUBLEDGER_PERMUTATIONS` sets how many per file (default 200).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use subledger_scenario::format::{files_in, parse_file};
use subledger_scenario::runner::{run, RunOptions};
use subledger_simulator::delivery::DeliveryMode;
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_order_ends_in_the_same_billing_views() {
    let permutations: u64 = std::env::var("SUBLEDGER_PERMUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let files = files_in(&dir).unwrap();
    let started = std::time::Instant::now();
    let slots = Arc::new(Semaphore::new(2));
    let mut runs = 0u64;
    let mut failures = Vec::new();
    let mut per_file = Vec::new();
    for file in &files {
        let file_started = std::time::Instant::now();
        let scenario = Arc::new(parse_file(file).unwrap());
        let in_order = RunOptions {
            delivery: DeliveryMode::InOrder,
            seed: 0,
            database_url: None,
            at_the_end: None,
        };
        let reference = run(&scenario, &in_order).await.unwrap();
        assert!(reference.passed(), "{}", reference.render());
        let reference = Arc::new(reference.final_views);
        let mut tasks = Vec::new();
        for seed in 1..=permutations {
            let (scenario, reference, slots) = (
                Arc::clone(&scenario),
                Arc::clone(&reference),
                Arc::clone(&slots),
            );
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire().await.unwrap();
                // Odd seeds: chaos (delays, failed attempts); even: shuffled with duplicates.
                let delivery = if seed % 2 == 1 {
                    DeliveryMode::Chaos
                } else {
                    DeliveryMode::Shuffled
                };
                let options = RunOptions {
                    delivery,
                    seed: 1_000 + seed,
                    database_url: None,
                    at_the_end: None,
                };
                let report = run(&scenario, &options).await.unwrap();
                if !report.passed() {
                    return Some(report.render());
                }
                (report.final_views != *reference).then(|| {
                    format!(
                        "{}: seed {} ended in different billing views than in-order delivery",
                        report.file, options.seed
                    )
                })
            }));
        }
        for task in tasks {
            runs += 1;
            if let Some(failure) = task.await.unwrap() {
                failures.push(failure);
            }
        }
        per_file.push((file_started.elapsed(), file.display().to_string()));
    }
    per_file.sort();
    for (took, file) in per_file.iter().rev().take(5) {
        eprintln!("  {took:?} {file}");
    }
    eprintln!(
        "{runs} delivery permutations over {} scenario files in {:?}: {} failed",
        files.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
