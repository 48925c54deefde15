//! `make bench`: the worker measured beside the floor of its store, in one run on one machine.
//!
//! Shared machines are noisy, so every figure is printed as a ratio to a floor measured in the
//! same run: PostgreSQL's by `pgbench` running a one-row insert of the same size, SQLite's by
//! the same one-row insert through sqlx on a file with the same settings Subledger uses
//! (WAL, `synchronous=FULL`). What is measured:
//!
//! - worker throughput: `--rows` pending `customer.subscription.created` deliveries, one new
//!   customer each, applied by one worker;
//! - history: one customer with `--history` subscription updates, the rate of the first 500
//!   beside the rate of the last 100 (an aggregate loaded from its whole stream for every
//!   command gets slower with every event).
//!
//! It writes the figures, and the machine they were taken on, to `--out` (Markdown).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::WebhookSecret;

#[derive(Debug, Parser)]
#[command(
    name = "subledger-bench",
    about = "Subledger's worker beside its store's floor"
)]
struct Args {
    /// Pending deliveries for the throughput run, one new customer each.
    #[arg(long, default_value_t = 20_000)]
    rows: u32,
    /// Events of the one customer in the history run.
    #[arg(long, default_value_t = 2_000)]
    history: u32,
    /// PostgreSQL server to measure on (a scratch schema is made and dropped); without it
    /// only SQLite is measured.
    #[arg(long, env = "SUBLEDGER_TEST_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Seconds each floor measurement runs.
    #[arg(long, default_value_t = 5)]
    floor_secs: u64,
    /// Inbox rows the worker claims at once (the engine's default when absent).
    #[arg(long)]
    batch: Option<i64>,
    /// Customers the worker applies at once on PostgreSQL (the engine's default when absent).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Where the report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

const SECRET: &str = "whsec_bench";
const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n  pro:\n    prices: [pro_monthly]\n    features: { seats: 10, sso: true }\n";
/// The size of a delivery, as Stripe's subscription events are.
const PAYLOAD_BYTES: usize = 4096;

/// One store's figures.
#[derive(Debug, Default)]
struct Figures {
    store: &'static str,
    worker_rows_per_sec: f64,
    floor_one_client: f64,
    floor_eight_clients: Option<f64>,
    history_first: f64,
    history_last: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.history < 600 {
        bail!("--history must be at least 600: the first 500 and the last 100 are compared");
    }
    let scratch_dir = std::env::temp_dir().join(format!("subledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch_dir)
        .with_context(|| format!("cannot create {}", scratch_dir.display()))?;
    let mut all = Vec::new();

    let sqlite_url = format!("sqlite://{}", scratch_dir.join("bench.db").display());
    let mut sqlite = measure_engine("SQLite", &sqlite_url, &args).await?;
    let floor_url = format!("sqlite://{}", scratch_dir.join("floor.db").display());
    sqlite.floor_one_client = sqlite_floor(&floor_url, args.floor_secs).await?;
    all.push(sqlite);

    if let Some(base) = &args.postgres_url {
        let scratch = ScratchDatabase::postgres_at(base).await?;
        let result = measure_engine("PostgreSQL", &scratch.url, &args).await;
        let floors = pgbench_floors(base, args.floor_secs);
        scratch.cleanup().await?;
        let mut postgres = result?;
        let (one, eight) = floors?;
        postgres.floor_one_client = one;
        postgres.floor_eight_clients = Some(eight);
        all.push(postgres);
    } else {
        eprintln!("PostgreSQL skipped: pass --postgres-url or set SUBLEDGER_TEST_POSTGRES_URL");
    }
    let _ = std::fs::remove_dir_all(&scratch_dir);

    let report = render(&all, &args);
    print!("{report}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}

async fn start_engine(url: &str, args: &Args) -> Result<Arc<Engine>> {
    let catalog = Catalog::from_yaml("bench", CATALOG)?;
    let mut config = EngineConfig::new(url, catalog);
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    if let Some(batch) = args.batch {
        config.worker_batch_size = batch;
    }
    if let Some(concurrency) = args.concurrency {
        config.worker_concurrency = concurrency;
    }
    Ok(Engine::start(config).await?)
}

async fn measure_engine(store: &'static str, url: &str, args: &Args) -> Result<Figures> {
    eprintln!("{store}: worker, {} pending rows", args.rows);
    let engine = start_engine(url, args).await?;
    let created = (0..args.rows)
        .map(|n| subscription_event("customer.subscription.created", n, 0, 1))
        .collect();
    ingest(&engine, created).await?;
    let (rows, elapsed) = work(&engine).await?;
    if rows != u64::from(args.rows) {
        bail!("the worker handled {rows} rows of {}", args.rows);
    }
    let worker_rows_per_sec = per_sec(rows, elapsed);

    eprintln!("{store}: one customer, {} events", args.history);
    let updates = (1..=args.history)
        .map(|n| subscription_event("customer.subscription.updated", args.rows + 1, n, n + 1))
        .collect();
    ingest(&engine, updates).await?;
    let (history_first, history_last) = history_rates(&engine, args.history).await?;
    engine.close().await;
    Ok(Figures {
        store,
        worker_rows_per_sec,
        history_first,
        history_last,
        ..Figures::default()
    })
}

/// A subscription event for customer `n`: the `seq`-th change, with `quantity` seats.
fn subscription_event(event_type: &str, n: u32, seq: u32, quantity: u32) -> Value {
    let mut object = subledger_stripe::fixtures::resource("subscription");
    object["id"] = json!(format!("sub_bench{n}"));
    object["customer"] = json!(format!("cus_bench{n}"));
    object["status"] = json!("active");
    object["items"]["data"][0]["price"]["lookup_key"] = json!("pro_monthly");
    object["items"]["data"][0]["quantity"] = json!(quantity);
    object["metadata"] = json!({});
    let created = 1_767_225_600 + i64::from(seq);
    let mut event = subledger_stripe::fixtures::event(
        &format!("evt_bench{n}x{seq}"),
        event_type,
        created,
        object,
    );
    if seq > 0 {
        event["data"]["previous_attributes"] =
            json!({ "items": { "data": [{ "quantity": quantity - 1 }] } });
    }
    // Pad to the size of a real delivery (Stripe's objects carry much more than we read).
    let size = event.to_string().len();
    event["data"]["object"]["description"] = json!("x".repeat(PAYLOAD_BYTES.saturating_sub(size)));
    event
}

/// Stores every delivery in the inbox, signed, 32 at a time as concurrent requests would.
async fn ingest(engine: &Arc<Engine>, events: Vec<Value>) -> Result<()> {
    let secret = WebhookSecret::new(SECRET);
    let mut pending = tokio::task::JoinSet::new();
    for (n, event) in events.into_iter().enumerate() {
        let body = serde_json::to_vec(&event)?;
        let signature = secret.header(chrono::Utc::now().timestamp(), &body);
        let engine = Arc::clone(engine);
        pending.spawn(async move {
            engine
                .receive_webhook(Some(&signature), &body, &format!("bench-{n}"))
                .await
        });
        if pending.len() >= 32 {
            if let Some(done) = pending.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs the worker until nothing is due: rows handled and the time it took.
async fn work(engine: &Engine) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut rows = 0u64;
    loop {
        let report = engine.process_inbox().await?;
        if report.failed > 0 {
            bail!("{} rows failed", report.failed);
        }
        if report.handled() == 0 {
            return Ok((rows, started.elapsed()));
        }
        rows += u64::try_from(report.handled())?;
    }
}

/// The rate of the first 500 and of the last 100 of `events` rows of one customer.
async fn history_rates(engine: &Engine, events: u32) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut first = None;
    let mut last_start = None;
    let total = u64::from(events);
    loop {
        if done >= total.saturating_sub(100) && last_start.is_none() {
            last_start = Some((done, Instant::now()));
        }
        let report = engine.process_inbox().await?;
        if report.failed > 0 {
            bail!("{} rows failed", report.failed);
        }
        if report.handled() == 0 {
            break;
        }
        done += u64::try_from(report.handled())?;
        if done >= 500 && first.is_none() {
            first = Some(per_sec(done, started.elapsed()));
        }
    }
    let (from, at) = last_start.context("the history run never reached its last 100 rows")?;
    let last = per_sec(done - from, at.elapsed());
    Ok((first.context("fewer than 500 rows")?, last))
}

fn per_sec(rows: u64, elapsed: Duration) -> f64 {
    let rows = u32::try_from(rows).map_or(f64::from(u32::MAX), f64::from);
    rows / elapsed.as_secs_f64().max(1e-9)
}

/// The same one-row insert of a delivery's size, one connection, for `secs` seconds, on a
/// SQLite file configured as Subledger configures its own.
async fn sqlite_floor(url: &str, secs: u64) -> Result<f64> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use std::str::FromStr;
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    sqlx::query("CREATE TABLE floor (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = "x".repeat(PAYLOAD_BYTES);
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        sqlx::query("INSERT INTO floor (payload) VALUES (?)")
            .bind(&payload)
            .execute(&pool)
            .await?;
        rows += 1;
    }
    let rate = per_sec(rows, started.elapsed());
    pool.close().await;
    Ok(rate)
}

/// `pgbench` running the same one-row insert at 1 and at 8 clients: transactions per second.
fn pgbench_floors(base_url: &str, secs: u64) -> Result<(f64, f64)> {
    let table = format!("subledger_bench_floor_{}", std::process::id());
    let psql = |sql: &str| -> Result<()> {
        let status = std::process::Command::new("psql")
            .args([base_url, "-q", "-c", sql])
            .status()
            .context("cannot run psql (install PostgreSQL's client tools)")?;
        if !status.success() {
            bail!("psql failed: {sql}");
        }
        Ok(())
    };
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text NOT NULL)"
    ))?;
    let script = std::env::temp_dir().join(format!("{table}.sql"));
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (payload) VALUES (repeat('x', {PAYLOAD_BYTES}));\n"),
    )?;
    let run = |clients: u32| -> Result<f64> {
        let output = std::process::Command::new("pgbench")
            .args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string(), "-f"])
            .arg(&script)
            .arg(base_url)
            .output()
            .context("cannot run pgbench (install PostgreSQL's contrib tools)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix("tps = ")?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .with_context(|| format!("pgbench printed no tps: {text}"))
    };
    let result = run(1).and_then(|one| run(8).map(|eight| (one, eight)));
    let _ = std::fs::remove_file(&script);
    psql(&format!("DROP TABLE {table}"))?;
    result
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{cores} cores ({cpu}), {memory} of memory")
}

fn render(all: &[Figures], args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `make bench` (`crates/bench`) on {}, {}. Release build; the stores on the same \
         machine. Each figure stands beside a floor measured in the same run, because the \
         machine is shared and noisy: read the ratios, not the absolute numbers.\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine()
    );
    let _ = writeln!(
        out,
        "| store | path | measured | floor in the same run | ratio |\n| --- | --- | --- | --- | --- |"
    );
    for f in all {
        let floor_name = if f.floor_eight_clients.is_some() {
            "pgbench one-row insert, 1 client"
        } else {
            "sqlx one-row insert, 1 connection"
        };
        let _ = writeln!(
            out,
            "| {} | worker, {} pending rows, one new customer each | {:.0} rows/s | {floor_name}: {:.0}/s | {:.2}× |",
            f.store,
            args.rows,
            f.worker_rows_per_sec,
            f.floor_one_client,
            f.worker_rows_per_sec / f.floor_one_client.max(1e-9)
        );
        if let Some(eight) = f.floor_eight_clients {
            let _ = writeln!(
                out,
                "| {} | (the same worker) | {:.0} rows/s | pgbench one-row insert, 8 clients: {eight:.0}/s | {:.2}× |",
                f.store,
                f.worker_rows_per_sec,
                f.worker_rows_per_sec / eight.max(1e-9)
            );
        }
        let _ = writeln!(
            out,
            "| {} | one customer with {} events: the last 100 beside the first 500 | {:.0} rows/s (last 100) | {:.0} rows/s (first 500) | {:.2}× |",
            f.store,
            args.history,
            f.history_last,
            f.history_first,
            f.history_last / f.history_first.max(1e-9)
        );
    }
    let _ = writeln!(
        out,
        "\nTargets (issue 11): the worker at least 0.6× the one-row insert at the same \
         concurrency; the 2,000th event of a customer at most 1.5× the cost of the first (a \
         history ratio of at least 0.67×)."
    );
    out
}
