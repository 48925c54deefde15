//! Operator commands: learn what Subledger missed (backfill), and look after its history.
//! Each prints a summary and exits 0, or names the problem and exits 2; whatever was recorded
//! before a failure stays consistent, and a re-run continues.

use std::process::ExitCode;

use anyhow::Context;
use subledger_engine::{BackfillOptions, Engine};

use crate::config::BackfillArgs;
use crate::progress::{format_duration, thousands, Progress, Reading};

pub async fn backfill(database_url: &str, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let reader = args.engine.account_reader(args.max_requests_per_sec)?;
    let config = args.engine.engine_config(database_url)?;
    let engine = Engine::start(config).await.context("starting the engine")?;
    let options = BackfillOptions {
        customers: args.customers,
        since: args.since,
    };
    let mut progress = Progress::new();
    let result = engine
        .backfill(&reader, &options, &mut |p| {
            progress.update(&Reading {
                phase: p.phase.name(),
                unit: "objects",
                count: p.objects_read,
                phase_done: p.phase_done,
                phase_total: p.phase_total,
                extra: format!("{} requests", thousands(p.requests)),
            });
        })
        .await;
    progress.finish();
    engine.close().await;
    let summary = result?;
    println!(
        "backfill {}{}: {} objects read, {} facts recorded, {} undelivered events applied, {} requests, {:.1} s",
        summary.run_id,
        if summary.resumed { " (resumed)" } else { "" },
        thousands(summary.objects_read),
        thousands(u64::try_from(summary.facts_recorded).unwrap_or(0)),
        thousands(summary.events_enqueued),
        thousands(summary.requests),
        summary.elapsed.as_secs_f64(),
    );
    tracing::debug!(elapsed = %format_duration(summary.elapsed), "backfill finished");
    Ok(ExitCode::SUCCESS)
}
