//! `subledger scenario run`: plays scenario files and reports each step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use subledger_scenario::format::{files_in, parse_file};
use subledger_scenario::live::{run_live, LiveOptions};
use subledger_scenario::runner::{run as run_scenario, RunOptions};
use subledger_simulator::delivery::DeliveryMode;
use subledger_stripe_client::{ApiKey, StripeApi};

use crate::config::ScenarioRunArgs;

pub async fn run(args: ScenarioRunArgs, database_url: Option<String>) -> anyhow::Result<()> {
    let Some(delivery) = DeliveryMode::parse(&args.delivery) else {
        bail!("--delivery must be in-order, shuffled or chaos");
    };
    let files = scenario_files(&args.paths)?;
    if files.is_empty() {
        bail!("no scenario files found in {}", display(&args.paths));
    }
    let options = RunOptions {
        delivery,
        seed: args.seed,
        database_url,
        at_the_end: None,
    };
    let live = if args.stripe {
        Some(live_options(&args)?)
    } else {
        None
    };
    let started = Instant::now();
    let (mut passed, mut failed, mut advances) = (0usize, 0usize, 0u64);
    for file in &files {
        let scenario = match parse_file(file) {
            Ok(scenario) => scenario,
            Err(error) => {
                println!("{error}\n");
                failed += 1;
                continue;
            }
        };
        let report = match &live {
            Some(live) => run_live(&scenario, live).await,
            None => run_scenario(&scenario, &options).await?,
        };
        println!("{}", report.render());
        advances += report.advances;
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!(
        "{} scenario(s) in {} ms with {} clock advances, delivery {} (seed {})",
        files.len(),
        started.elapsed().as_millis(),
        advances,
        delivery.as_str(),
        args.seed
    );
    println!("scenarios: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} scenario(s) failed");
    }
    Ok(())
}

/// The `--stripe` setup: a test-mode key from the environment and the Subledger to check.
fn live_options(args: &ScenarioRunArgs) -> anyhow::Result<LiveOptions> {
    use std::net::ToSocketAddrs;
    let Ok(key) = std::env::var("STRIPE_API_KEY") else {
        bail!("--stripe needs STRIPE_API_KEY (a test-mode secret or restricted key) in the environment");
    };
    let key = ApiKey::new(key);
    if !key.is_test_mode() {
        bail!("STRIPE_API_KEY is not a test-mode key (sk_test_… or rk_test_…): scenarios create and advance test clocks");
    }
    let engine = args
        .engine_addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| anyhow::anyhow!("--engine-addr {} is not host:port", args.engine_addr))?;
    let base = args.stripe_api_base.as_ref().map(|b| {
        if b.ends_with('/') {
            b.clone()
        } else {
            format!("{b}/")
        }
    });
    // One idempotency namespace per run: reruns create new objects, retries within a run never do.
    let namespace = format!(
        "subledger-scenario-{}",
        chrono::Utc::now().timestamp_millis()
    );
    let api = StripeApi::new(&key, base.as_deref(), &namespace)?;
    Ok(LiveOptions {
        api,
        engine,
        // Scenarios place and lift holds, which need an admin token; a read token does for
        // scenarios that only read.
        engine_token: ["SUBLEDGER_ADMIN_TOKEN", "SUBLEDGER_API_TOKEN"]
            .into_iter()
            .find_map(|name| std::env::var(name).ok()),
        settle_timeout: std::time::Duration::from_secs(args.settle_timeout_secs),
        clock_timeout: std::time::Duration::from_secs(120),
        poll_interval: std::time::Duration::from_secs(1),
    })
}

/// Files as given, and the `*.yaml` files directly inside given directories, sorted.
fn scenario_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = files_in(path)
                .with_context(|| format!("reading the directory {}", path.display()))?;
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(files)
}

fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| Path::new(p).display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
