//! Operator commands: learn what Subledger missed (backfill), and look after its history.
//! Each prints a summary and exits 0, or names the problem and exits 2; whatever was recorded
//! before a failure stays consistent, and a re-run continues.

use std::process::ExitCode;

use anyhow::Context;
use subledger_engine::{BackfillOptions, Engine, ReconcileOptions};

use subledger_store::{InboxFilter, InboxState};

use crate::config::{BackfillArgs, CatalogCheckArgs, InboxCommand, ReconcileArgs, ReplayArgs};
use crate::progress::{format_duration, thousands, Progress, Reading};
use subledger_domain::catalog::Catalog;

pub async fn backfill(database_url: &str, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let reader = args.engine.account_reader(args.max_requests_per_sec)?;
    let config = args.engine.engine_config(database_url)?;
    let engine = Engine::start(config).await.context("starting the engine")?;
    let options = BackfillOptions {
        customers: args.customers,
        since: args.since,
        account: args.account,
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

pub async fn reconcile(database_url: &str, args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let reader = args.engine.account_reader(args.max_requests_per_sec)?;
    let config = args.engine.engine_config(database_url)?;
    let engine = Engine::start(config).await.context("starting the engine")?;
    let options = ReconcileOptions {
        customers: args.customers,
        apply: args.apply,
    };
    let mut progress = Progress::new();
    let result = engine
        .reconcile(&reader, &options, &mut |checked, total| {
            progress.update(&Reading {
                phase: "reconciling",
                unit: "customers",
                count: checked,
                phase_done: checked,
                phase_total: total,
                extra: format!("{} requests", thousands(reader.requests_made())),
            });
        })
        .await;
    progress.finish();
    engine.close().await;
    let report = result?;
    for d in &report.differences {
        println!(
            "{:<24} {:<12} {:<28} {:<22} subledger: {}  stripe: {}  [{}{}]",
            d.customer,
            d.object_type,
            d.object,
            d.field,
            d.subledger,
            d.stripe,
            d.drift.as_str(),
            if d.applied { ", corrected" } else { "" }
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    let unresolved = report.unresolved();
    println!(
        "reconcile {}: {} customers checked, {} differences, {} corrected, {} requests, {:.1} s",
        report.run_id,
        thousands(report.customers_checked),
        thousands(u64::try_from(report.differences.len()).unwrap_or(0)),
        thousands(u64::try_from(report.differences.len() - unresolved).unwrap_or(0)),
        thousands(report.requests),
        report.elapsed.as_secs_f64()
    );
    Ok(if unresolved == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn replay(database_url: &str, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = args.engine.engine_config(database_url)?;
    let engine = Engine::start(config).await.context("starting the engine")?;
    let mut progress = Progress::new();
    let phase = if args.verify {
        "verifying"
    } else {
        "replaying"
    };
    let mut on_progress = |events: u64| {
        progress.update(&Reading {
            phase,
            unit: "events",
            count: events,
            phase_done: events,
            phase_total: None,
            extra: String::new(),
        });
    };
    let status = if args.verify {
        let differences = engine.verify_views(&mut on_progress).await;
        progress.finish();
        let differences = differences?;
        for difference in &differences {
            println!(
                "{} differs:\n  saved:   {}\n  rebuilt: {}",
                difference.customer,
                difference.saved.as_deref().unwrap_or("(none)"),
                difference.rebuilt.as_deref().unwrap_or("(none)")
            );
        }
        println!(
            "replay --verify: {} customer(s) differ from a rebuild from the event log",
            differences.len()
        );
        if differences.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    } else {
        let summary = engine.replay(&mut on_progress).await;
        progress.finish();
        let summary = summary?;
        println!(
            "replay: {} customers rebuilt from the event log in {:.1} s (views generation {}); running servers reload them",
            thousands(u64::try_from(summary.customers).unwrap_or(0)),
            summary.elapsed.as_secs_f64(),
            summary.generation
        );
        let quarantined = engine.projection_quarantine().await?;
        for event in &quarantined {
            println!(
                "quarantined: log position {}, {} {} #{} ({}): {}",
                event.position,
                event.aggregate_type,
                event.aggregate_id,
                event.sequence,
                event.event_type,
                event.error
            );
        }
        if quarantined.is_empty() {
            ExitCode::SUCCESS
        } else {
            println!(
                "replay: {} event(s) cannot be decoded and were skipped (their customers' answers miss them): deploy a build that reads them, then replay again",
                quarantined.len()
            );
            ExitCode::from(1)
        }
    };
    engine.close().await;
    Ok(status)
}

pub async fn inbox(database_url: &str, command: InboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        InboxCommand::List(args) => {
            let config = args.engine.engine_config(database_url)?;
            let engine = Engine::start(config).await.context("starting the engine")?;
            let state = match (args.failing, args.ignored, args.pending) {
                (true, _, _) => Some(InboxState::Failing),
                (_, true, _) => Some(InboxState::Ignored),
                (_, _, true) => Some(InboxState::Pending),
                _ => None,
            };
            let rows = engine
                .inbox_rows(&InboxFilter {
                    state,
                    event_type: args.event_type,
                    since_ms: args.since.map(|t| t.timestamp_millis()),
                    limit: args.limit,
                })
                .await;
            engine.close().await;
            let rows = rows?;
            println!(
                "{:<32} {:<44} {:<10} {:>8}  {:<24}  note",
                "event", "type", "status", "attempts", "received"
            );
            for row in &rows {
                let received = chrono::DateTime::from_timestamp_millis(row.received_at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                let note = row
                    .last_error
                    .as_deref()
                    .or(row.outcome.as_deref())
                    .unwrap_or("");
                println!(
                    "{:<32} {:<44} {:<10} {:>8}  {:<24}  {note}",
                    row.event_id, row.event_type, row.status, row.attempts, received
                );
            }
            println!("{} row(s)", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        InboxCommand::Retry(args) => {
            let config = args.engine.engine_config(database_url)?;
            let engine = Engine::start(config).await.context("starting the engine")?;
            let statuses = engine.retry_inbox(&args.event_ids).await?;
            let unknown: Vec<&str> = statuses
                .iter()
                .filter(|(_, status)| status.is_none())
                .map(|(id, _)| id.as_str())
                .collect();
            if !unknown.is_empty() {
                engine.close().await;
                anyhow::bail!("not in the inbox: {}", unknown.join(", "));
            }
            let result = engine.drain().await;
            for (id, status) in &statuses {
                match status.as_deref() {
                    Some("pending") => println!("{id}: retried"),
                    Some(other) => println!(
                        "{id}: already {other}; to run it again use `subledger inbox reprocess`"
                    ),
                    None => {}
                }
            }
            report_inbox(&engine).await?;
            engine.close().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
        InboxCommand::Reprocess(args) => {
            let config = args.engine.engine_config(database_url)?;
            let engine = Engine::start(config).await.context("starting the engine")?;
            let count = engine
                .reprocess_inbox(args.event_type.as_deref(), args.since)
                .await?;
            println!(
                "{} event(s) put back in line for today's translator",
                thousands(count)
            );
            let result = engine.drain().await;
            report_inbox(&engine).await?;
            engine.close().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The inbox's counts after a retry or reprocess ran.
async fn report_inbox(engine: &Engine) -> anyhow::Result<()> {
    let stats = engine.inbox_stats().await?;
    println!(
        "inbox: {} processed, {} ignored, {} pending ({} failing)",
        thousands(u64::try_from(stats.processed).unwrap_or(0)),
        thousands(u64::try_from(stats.ignored).unwrap_or(0)),
        thousands(u64::try_from(stats.pending).unwrap_or(0)),
        thousands(u64::try_from(stats.failing).unwrap_or(0)),
    );
    Ok(())
}

/// `subledger catalog check`: every problem of a catalog file, or what it holds; with
/// `--stripe`, whether Stripe has every price it names.
pub async fn check_catalog(args: &CatalogCheckArgs) -> anyhow::Result<ExitCode> {
    let source = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read the catalog file {source}"))?;
    let catalog = match Catalog::check(&source, &text) {
        Ok(catalog) => catalog,
        Err(mut problems) => {
            problems.sort_by_key(|problem| problem.line);
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("{source}: {}", count(problems.len(), "problem"));
            return Ok(ExitCode::from(1));
        }
    };
    let plans: Vec<&str> = catalog.plans().map(|plan| plan.name.as_str()).collect();
    let prices: usize = catalog.plans().map(|plan| plan.prices.len()).sum();
    println!(
        "{source}: valid: {} ({}), {}, {prices} prices or lookup keys; default plan {}; version {}",
        count(plans.len(), "plan"),
        plans.join(", "),
        count(catalog.features().len(), "feature"),
        catalog.default_plan().name,
        subledger_engine::catalogs::content_version(&text),
    );
    if !args.stripe {
        return Ok(ExitCode::SUCCESS);
    }
    let reader = crate::config::stripe_reader(
        "prices",
        args.stripe_api_base.as_deref(),
        std::time::Duration::from_millis(args.stripe_timeout_ms),
        20,
    )?;
    // Active and archived: an archived price still bills the subscriptions that have it.
    let mut at_stripe = Vec::new();
    for active in [true, false] {
        let listed = reader
            .list_all(
                "prices",
                &[("active", if active { "true" } else { "false" })],
            )
            .await
            .with_context(|| format!("listing Stripe's prices (active={active})"))?;
        for price in listed {
            let id = price["id"]
                .as_str()
                .with_context(|| format!("Stripe listed a price without an id: {price}"))?;
            at_stripe.push(StripePrice {
                id: id.to_owned(),
                lookup_key: price["lookup_key"].as_str().map(str::to_owned),
                active,
            });
        }
    }
    let mut missing = 0;
    for plan in catalog.plans() {
        for named in &plan.prices {
            match at_stripe.iter().find(|price| price.is_named_by(named)) {
                None => {
                    missing += 1;
                    eprintln!("{source}: plan `{}` names `{named}`, which is neither a price id nor a lookup key at Stripe", plan.name);
                }
                Some(price) if !price.active => println!(
                    "{source}: plan `{}` names `{named}`, an archived price at Stripe ({}): only subscriptions that have it still use it",
                    plan.name, price.id
                ),
                Some(_) => {}
            }
        }
    }
    let unnamed: Vec<String> = at_stripe
        .iter()
        .filter(|price| {
            price.active
                && catalog
                    .plan_for_price(&price.id, price.lookup_key.as_deref())
                    .is_none()
        })
        .map(|price| match &price.lookup_key {
            Some(key) => format!("{} ({key})", price.id),
            None => price.id.clone(),
        })
        .collect();
    if !unnamed.is_empty() {
        println!(
            "active prices at Stripe that no plan names (their subscriptions get the default plan): {}",
            unnamed.join(", ")
        );
    }
    if missing > 0 {
        eprintln!("{source}: {} not at Stripe", count(missing, "price"));
        return Ok(ExitCode::from(1));
    }
    println!(
        "every price the catalog names is at Stripe ({} listed there)",
        count(at_stripe.len(), "price")
    );
    Ok(ExitCode::SUCCESS)
}

/// A price as `catalog check --stripe` compares it with the catalog.
struct StripePrice {
    id: String,
    lookup_key: Option<String>,
    active: bool,
}

impl StripePrice {
    /// Whether a catalog entry (a price id or a lookup key) names this price.
    fn is_named_by(&self, named: &str) -> bool {
        self.id == named || self.lookup_key.as_deref() == Some(named)
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}
