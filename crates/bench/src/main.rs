//! `make bench`: Subledger's hot paths measured beside their floors, in one run on one machine.
//!
//! Shared machines are noisy, so every figure is printed beside a floor measured in the same
//! run: PostgreSQL's by `pgbench` (and by `COPY` for reading the whole log), SQLite's by sqlx
//! on a file with the settings Subledger uses (WAL, `synchronous=FULL`), each running the
//! inbox's own one-row insert of a delivery (ingest's floor) and a bare one-row insert of as
//! many bytes (the worker's); the HTTP read path's by an unknown route of the same server
//! under the same `wrk` load. What is measured, on each store:
//!
//! - worker throughput: `--rows` pending `customer.subscription.created` deliveries, one new
//!   customer each, applied by one worker;
//! - history: one customer with `--history` subscription updates, the rate of the first 500
//!   beside the rate of the last 100;
//! - ingest over HTTP on one connection: as fast as it goes (three rounds, each after a run of
//!   its floor, for the medians), then open-loop at half that rate
//!   with the worker and projector running, for the acknowledgement's p99 and the time from
//!   acknowledgement to the answer changing;
//! - a restart: how long until every customer is answered, and the heap each customer costs;
//! - the entitlement check, in process (p99 of one call) and over HTTP at 32 connections;
//! - a rebuild of the read models from the whole log (`subledger replay`), five times, each
//!   followed by its floor (reading the whole log), for the medians;
//! - product services listening: open-loop ingest with the worker running, at half of the
//!   highest rate it keeps up with, with `--subscribers` following `/v1/changes/stream` from
//!   a process of their own (at the lowest priority, standing for other machines),
//!   alternating with runs without them (one stall of the store decides a single run's p99),
//!   for the median acknowledgement p50 and p99 of each and the time from acknowledgement to
//!   the change heard on a stream; and a revalidation of one answer by its `ETag` (`304`)
//!   beside the full answer.
//!
//! It writes the figures, and the machine they were taken on, to `--out` (Markdown).

mod floors;
mod http_load;
mod stream_load;
mod workload;

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, Shutdown};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::WebhookSecret;

use http_load::quantile;
use workload::{history_rates, ingest, signed, subscription_event, work};

/// Counts live heap bytes, so the memory a customer costs is exact rather than read off RSS.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

#[derive(Debug, Parser)]
#[command(
    name = "subledger-bench",
    about = "Subledger's hot paths beside their floors, in one run"
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
    /// Seconds each floor, load and open-loop measurement runs.
    #[arg(long, default_value_t = 5)]
    floor_secs: u64,
    /// Inbox rows the worker claims at once (the engine's default when absent).
    #[arg(long)]
    batch: Option<i64>,
    /// Customers the worker applies at once on PostgreSQL (the engine's default when absent).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Subscribers following the change stream during the third open-loop run.
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    /// Where the report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Run as the subscribers' process of the bench, following the server at this address
    /// (the bench starts it itself).
    #[arg(long, hide = true)]
    subscriber_process: Option<SocketAddr>,
}

pub(crate) const SECRET: &str = "whsec_bench";
const API_TOKEN: &str = "bench-token";
const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n  pro:\n    prices: [pro_monthly]\n    features: { seats: 10, sso: true }\n";
/// The size of a delivery, as Stripe's subscription events are.
pub(crate) const PAYLOAD_BYTES: usize = 4096;
/// Deliveries sent as fast as one connection allows, for ingest's saturation rate.
const INGEST_SATURATION_ROWS: u32 = 3_000;
/// Open-loop runs without subscribers, each followed by one with them.
const SUBSCRIBER_ROUNDS: usize = 5;
/// Calls of the in-process entitlement check whose latencies are sorted for the p99.
const IN_PROCESS_CHECKS: usize = 200_000;
/// Replays, each followed by its floor: one read of a few tenths of a second is at the mercy
/// of a neighbour on a shared machine (the floor alone varied 85k–312k events/s between runs).
const REPLAY_ROUNDS: usize = 5;
/// Ingest's runs on one connection, each after a run of its floor (see `floors::InboxFloor`).
const INGEST_ROUNDS: usize = 3;

/// One store's figures.
#[derive(Debug, Default)]
struct Figures {
    store: &'static str,
    worker_rows_per_sec: f64,
    /// A bare one-row insert of a delivery's size, one connection.
    floor_one_client: f64,
    /// Subledger's own inbox insert of a delivery, one connection (`floors::InboxFloor`):
    /// the median of its rounds.
    floor_inbox: f64,
    floor_eight_clients: Option<f64>,
    history_first: f64,
    history_last: f64,
    ingest_saturation: f64,
    ingest_rate: f64,
    /// The inbox's insert sent open-loop at `ingest_rate`: its p99.
    floor_commit_p99: Duration,
    ingest_alone_ack_p99: Duration,
    ingest_ack_p99: Duration,
    visible_p99: Duration,
    customers: usize,
    restart: Duration,
    heap_per_customer: f64,
    check_p50: Duration,
    check_p99: Duration,
    check_http: f64,
    unknown_route_http: f64,
    replay_events: u64,
    replay_rate: f64,
    rebuild_rate: f64,
    replay_floor: f64,
    /// The rate of the runs without and with subscribers, and whether a run without them
    /// kept up with it.
    stream_rate: f64,
    stream_rate_kept_up: bool,
    /// Acknowledgement (p50, p99), medians of the runs without and with subscribers.
    stream_acks: [(Duration, Duration); 2],
    heard_p99: Duration,
    /// Changes heard by all subscribers together, and how many they should have heard.
    stream_changes: (u64, u64),
    /// The least and greatest acknowledgement p99 of the runs without and with subscribers.
    ack_p99_ranges: [(Duration, Duration); 2],
    revalidate_http: f64,
    full_answer_http: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Quiet unless asked (`RUST_LOG=sqlx=warn` shows slow statements, for instance).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Some(addr) = args.subscriber_process {
        return stream_load::subscriber_process(addr, args.subscribers).await;
    }
    if args.history < 600 {
        bail!("--history must be at least 600: the first 500 and the last 100 are compared");
    }
    if args.rows < 100 {
        bail!("--rows must be at least 100");
    }
    let scratch_dir = std::env::temp_dir().join(format!("subledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch_dir)
        .with_context(|| format!("cannot create {}", scratch_dir.display()))?;
    let mut all = Vec::new();

    let delivery = String::from_utf8(serde_json::to_vec(&subscription_event(
        "customer.subscription.created",
        u32::MAX,
        0,
        1,
    ))?)?;
    let sqlite_url = format!("sqlite://{}", scratch_dir.join("bench.db").display());
    let inbox_floor_url = format!("sqlite://{}", scratch_dir.join("inbox-floor.db").display());
    let mut inbox_floor = floors::InboxFloor::sqlite(&inbox_floor_url, &delivery).await?;
    let measured = measure_engine(
        "SQLite",
        &sqlite_url,
        LogReadFloor::Sqlite(&sqlite_url),
        &mut inbox_floor,
        &args,
    )
    .await;
    // The measurement's own error, if any, is the one to report.
    let closed = inbox_floor.close().await;
    let mut sqlite = measured?;
    closed?;
    let floor_url = format!("sqlite://{}", scratch_dir.join("floor.db").display());
    let floors =
        floors::sqlite_floors(&floor_url, args.floor_secs, sqlite.ingest_rate, &delivery).await?;
    sqlite.floor_one_client = floors.bare;
    sqlite.floor_commit_p99 = floors.inbox_p99;
    all.push(sqlite);

    if let Some(base) = args.postgres_url.as_deref().filter(|url| !url.is_empty()) {
        let scratch = ScratchDatabase::postgres_at(base).await?;
        let schema = scratch
            .schema_name()
            .map(str::to_owned)
            .context("the scratch database names no schema")?;
        let read_floor = LogReadFloor::Copy {
            base_url: base,
            schema: &schema,
        };
        let mut inbox_floor = floors::InboxFloor::pgbench(base, &schema, &delivery);
        let result = measure_engine(
            "PostgreSQL",
            &scratch.url,
            read_floor,
            &mut inbox_floor,
            &args,
        )
        .await;
        let closed = inbox_floor.close().await;
        let rate = result.as_ref().map_or(1.0, |figures| figures.ingest_rate);
        let floors = floors::pgbench_floors(base, &schema, args.floor_secs, rate, &delivery);
        scratch.cleanup().await?;
        closed?;
        let mut postgres = result?;
        let floors = floors?;
        postgres.floor_one_client = floors.one_client.bare;
        postgres.floor_eight_clients = Some(floors.eight_clients);
        postgres.floor_commit_p99 = floors.one_client.inbox_p99;
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
        config.worker_batch_size = Some(batch);
    }
    if let Some(concurrency) = args.concurrency {
        config.worker_concurrency = concurrency;
    }
    Ok(Engine::start(config).await?)
}

/// Serves the HTTP API of `engine` on a free loopback port, as `subledger serve` does.
async fn serve(engine: Arc<Engine>) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tokens = subledger_server::ApiTokens::new(
        vec![subledger_server::ApiToken::new(&API_TOKEN.into())],
        Vec::new(),
    );
    let app = subledger_server::router(engine, tokens);
    // What `subledger serve` runs: the same limits, the same connection handling.
    let server = tokio::spawn(subledger_server::serve(
        listener,
        app,
        subledger_server::HttpLimits::default(),
        std::future::pending(),
    ));
    Ok((addr, server))
}

fn customer(n: u32) -> String {
    format!("cus_bench{n}")
}

fn new_customers(range: std::ops::Range<u32>) -> Vec<serde_json::Value> {
    range
        .map(|n| subscription_event("customer.subscription.created", n, 0, 1))
        .collect()
}

/// The fastest way to read a store's whole log: a replay's floor.
#[derive(Clone, Copy)]
enum LogReadFloor<'a> {
    /// sqlx reading every row of the SQLite file at this URL.
    Sqlite(&'a str),
    /// psql's `COPY` of the events of this schema of the PostgreSQL database at `base_url`.
    Copy { base_url: &'a str, schema: &'a str },
}

impl LogReadFloor<'_> {
    /// Reads the whole log of `events` rows once: events per second.
    async fn events_per_sec(self, events: u64) -> Result<f64> {
        match self {
            Self::Sqlite(url) => floors::read_sqlite_events(url).await,
            // Off the runtime, as the ingest floor's pgbench runs: the engine's tasks run beside.
            Self::Copy { base_url, schema } => {
                let (base_url, schema) = (base_url.to_owned(), schema.to_owned());
                tokio::task::spawn_blocking(move || floors::copy_events(&base_url, &schema, events))
                    .await?
            }
        }
    }
}

async fn measure_engine(
    store: &'static str,
    url: &str,
    read_floor: LogReadFloor<'_>,
    inbox_floor: &mut floors::InboxFloor,
    args: &Args,
) -> Result<Figures> {
    let mut figures = Figures {
        store,
        ..Figures::default()
    };
    eprintln!("{store}: worker, {} pending rows", args.rows);
    let engine = start_engine(url, args).await?;
    ingest(&engine, new_customers(0..args.rows)).await?;
    let (rows, elapsed) = work(&engine).await?;
    if rows != u64::from(args.rows) {
        bail!("the worker handled {rows} rows of {}", args.rows);
    }
    figures.worker_rows_per_sec = per_sec(rows, elapsed);

    eprintln!("{store}: one customer, {} events", args.history);
    let updates = (1..=args.history)
        .map(|n| subscription_event("customer.subscription.updated", args.rows, n, n + 1))
        .collect();
    ingest(&engine, updates).await?;
    (figures.history_first, figures.history_last) = history_rates(&engine, args.history).await?;

    eprintln!(
        "{store}: ingest over HTTP, one connection, {INGEST_ROUNDS} rounds, each after its floor"
    );
    let (addr, server) = serve(Arc::clone(&engine)).await?;
    let mut next = args.rows + 1;
    let (mut ingested, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..INGEST_ROUNDS {
        floor.push(inbox_floor.per_second(args.floor_secs).await?);
        let saturating = signed(&new_customers(next..next + INGEST_SATURATION_ROWS))?;
        next += INGEST_SATURATION_ROWS;
        ingested.push(http_load::saturate(addr, saturating).await?);
        engine.drain().await?;
        if let (Some(floor), Some(ingest)) = (floor.last(), ingested.last()) {
            eprintln!("{store}: floor {floor:.0}/s, ingest {ingest:.0}/s");
        }
    }
    figures.ingest_saturation = median(&mut ingested);
    figures.floor_inbox = median(&mut floor);

    figures.ingest_rate = figures.ingest_saturation / 2.0;
    let mut count = 0u32;
    while f64::from(count) < figures.ingest_rate * as_f64(args.floor_secs) {
        count += 1;
    }
    eprintln!(
        "{store}: {count} deliveries open-loop at {:.0}/s, ingest alone",
        figures.ingest_rate
    );
    let alone = signed(&new_customers(next..next + count))?;
    next += count;
    let mut acks = http_load::open_loop(addr, alone, figures.ingest_rate, |_| {}).await?;
    figures.ingest_alone_ack_p99 = quantile(&mut acks, 0.99);
    engine.drain().await?;
    eprintln!(
        "{store}: {count} deliveries open-loop at {:.0}/s with the worker and projector running",
        figures.ingest_rate
    );
    let deliveries = signed(&new_customers(next..next + count))?;
    let background = Background::start(&engine);
    let (mut acks, mut visible, _) =
        ack_and_visibility(&engine, addr, &deliveries, figures.ingest_rate, next).await?;
    next += count;
    background.stop().await?;
    figures.ingest_ack_p99 = quantile(&mut acks, 0.99);
    figures.visible_p99 = quantile(&mut visible, 0.99);
    engine.drain().await?;

    // Subscribers are compared at half of the highest rate the server keeps up with while its
    // worker and projector run. Where it does not keep up, acknowledgements fall further
    // behind through the whole run (a p99 then measures the run's length), and any extra work
    // at all shows as a slowdown; just below, runs tip over either way (measured on SQLite:
    // 1.3× at 1/8 of saturation, 4.5× at 1/4, where the probe had kept up), so the slowdown
    // would be the machine's limit, not the subscribers'. The probe starts at half of the
    // rate above and halves while a run without subscribers falls behind (three times at
    // most); the comparison runs at half of where it stopped.
    figures.stream_rate = figures.ingest_rate;
    for _ in 0..4 {
        figures.stream_rate /= 2.0;
        count = (count / 2).max(1);
        let deliveries = signed(&new_customers(next..next + count))?;
        let background = Background::start(&engine);
        let (acks, _, _) =
            ack_and_visibility(&engine, addr, &deliveries, figures.stream_rate, next).await?;
        next += count;
        background.stop().await?;
        engine.drain().await?;
        let kept_up = keeps_up(&acks);
        figures.stream_rate_kept_up = kept_up;
        eprintln!(
            "{store}: at {:.0}/s with the worker and projector running, acknowledgements {}",
            figures.stream_rate,
            if kept_up { "keep up" } else { "fall behind" }
        );
        if kept_up {
            break;
        }
    }
    figures.stream_rate /= 2.0;
    let count = (count / 2).max(1);
    // One stall of the store (a checkpoint, a slow fsync) decides a single run's p99 on a
    // shared machine, so runs without and with subscribers alternate and the medians of their
    // p99s are compared.
    let (mut alone_acks, mut with_acks, mut with_heard) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alone_p50s, mut with_p50s) = (Vec::new(), Vec::new());
    let mut stream_changes = (0, 0);
    for round in 1..=SUBSCRIBER_ROUNDS {
        eprintln!(
            "{store}: {count} deliveries open-loop at {:.0}/s with the worker and projector running ({round} of {SUBSCRIBER_ROUNDS})",
            figures.stream_rate
        );
        let first = next;
        let deliveries = signed(&new_customers(first..first + count))?;
        next += count;
        let background = Background::start(&engine);
        let (mut acks, _, _) =
            ack_and_visibility(&engine, addr, &deliveries, figures.stream_rate, first).await?;
        background.stop().await?;
        alone_acks.push(quantile(&mut acks, 0.99));
        alone_p50s.push(quantile(&mut acks, 0.50));
        engine.drain().await?;

        eprintln!(
            "{store}: the same with {} subscribers following the change stream ({round} of {SUBSCRIBER_ROUNDS})",
            args.subscribers
        );
        let run =
            subscribed_run(&engine, addr, args, figures.stream_rate, next..next + count).await?;
        next += count;
        with_acks.push(run.ack_p99);
        with_p50s.push(run.ack_p50);
        with_heard.push(run.heard_p99);
        stream_changes.0 += run.changes.0;
        stream_changes.1 += run.changes.1;
    }
    figures.ack_p99_ranges = [range(&alone_acks), range(&with_acks)];
    figures.stream_acks = [
        (median(&mut alone_p50s), median(&mut alone_acks)),
        (median(&mut with_p50s), median(&mut with_acks)),
    ];
    figures.heard_p99 = median(&mut with_heard);
    figures.stream_changes = stream_changes;
    server.abort();
    let _ = server.await;
    engine.close().await;
    drop(engine);

    eprintln!("{store}: restart");
    let before = HEAP.allocated();
    let started = Instant::now();
    let engine = start_engine(url, args).await?;
    figures.restart = started.elapsed();
    let heap = HEAP.allocated().saturating_sub(before);
    let ids: Vec<String> = (0..next).map(customer).collect();
    if let Some(missing) = ids.iter().find(|id| engine.entitlements(id).is_none()) {
        bail!("after a restart {missing} has no answer");
    }
    figures.customers = ids.len();
    figures.heap_per_customer = as_f64(heap) / as_f64(ids.len());
    eprintln!("{store}: the entitlement check");
    let mut checks = Vec::with_capacity(IN_PROCESS_CHECKS);
    let mut granted = 0usize;
    for n in 0..IN_PROCESS_CHECKS {
        let id = &ids[n % ids.len()];
        let started = Instant::now();
        let enabled = engine
            .entitlements(id)
            .is_some_and(|found| found.feature("sso").enabled);
        checks.push(started.elapsed());
        granted += usize::from(std::hint::black_box(enabled));
    }
    if granted != IN_PROCESS_CHECKS {
        bail!("only {granted} of {IN_PROCESS_CHECKS} checks granted sso");
    }
    figures.check_p50 = quantile(&mut checks, 0.50);
    figures.check_p99 = quantile(&mut checks, 0.99);

    let (addr, server) = serve(Arc::clone(&engine)).await?;
    // Both loads build each request the same way (a Lua function, paths of the same length),
    // so wrk, which shares the machine, spends the same on either and only the server differs.
    let script = |prefix: &str| {
        format!(
            "local n = 0\nwrk.headers[\"Authorization\"] = \"Bearer {API_TOKEN}\"\n\
             request = function()\n  n = n + 1\n  \
             return wrk.format(\"GET\", \"{prefix}/cus_bench\" .. (n % {next}) .. \"/entitlements\")\nend\n"
        )
    };
    let check_script = script("/v1/customers");
    let unknown_script = script("/v1/no-such-route");
    figures.check_http = http_load::wrk(addr, &check_script, 32, args.floor_secs, true)?;
    figures.unknown_route_http = http_load::wrk(addr, &unknown_script, 32, args.floor_secs, false)?;
    // One customer's answer asked again and again, with and without the ETag it last had.
    let path = format!("/v1/customers/{}/entitlements", customer(0));
    let etag = stream_load::etag(addr, API_TOKEN, &path).await?;
    let one = |revalidate: bool| {
        let condition = if revalidate {
            format!("wrk.headers[\"If-None-Match\"] = '{etag}'\n")
        } else {
            String::new()
        };
        format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {API_TOKEN}\"\n{condition}wrk.path = \"{path}\"\n"
        )
    };
    figures.revalidate_http = http_load::wrk(addr, &one(true), 32, args.floor_secs, true)?;
    figures.full_answer_http = http_load::wrk(addr, &one(false), 32, args.floor_secs, true)?;
    server.abort();
    let _ = server.await;

    eprintln!("{store}: replay, {REPLAY_ROUNDS} rounds, each beside its floor");
    let (mut whole, mut rebuild, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPLAY_ROUNDS {
        let applied = std::sync::atomic::AtomicU64::new(0);
        let summary = engine
            .replay(&mut |events| applied.store(events, std::sync::atomic::Ordering::Relaxed))
            .await?;
        let events = applied.load(std::sync::atomic::Ordering::Relaxed);
        figures.replay_events = events;
        whole.push(per_sec(events, summary.elapsed));
        rebuild.push(per_sec(events, summary.rebuilt_in));
        floor.push(read_floor.events_per_sec(events).await?);
        if let (Some(rebuild), Some(whole), Some(floor)) =
            (rebuild.last(), whole.last(), floor.last())
        {
            eprintln!(
                "{store}: replay {rebuild:.0} events/s read and applied, {whole:.0}/s whole; floor {floor:.0}/s"
            );
        }
    }
    figures.replay_rate = median(&mut whole);
    figures.rebuild_rate = median(&mut rebuild);
    figures.replay_floor = median(&mut floor);
    engine.close().await;
    Ok(figures)
}

/// What one open-loop run with subscribers following the change stream measured.
struct SubscribedRun {
    ack_p50: Duration,
    ack_p99: Duration,
    heard_p99: Duration,
    /// Changes heard, all subscribers together, and how many they should have heard.
    changes: (u64, u64),
}

/// The open-loop ingest of new customers `customers` with the worker and projector running
/// and `--subscribers` following the change stream from a process of their own.
async fn subscribed_run(
    engine: &Arc<Engine>,
    addr: SocketAddr,
    args: &Args,
    rate: f64,
    customers: std::ops::Range<u32>,
) -> Result<SubscribedRun> {
    // Everything before this run is fed before the subscribers start from now.
    engine.project().await?;
    let count = args.subscribers;
    let subscribers =
        tokio::task::spawn_blocking(move || stream_load::spawn(addr, API_TOKEN, count)).await??;
    let deliveries = signed(&new_customers(customers.clone()))?;
    let background = Background::start(engine);
    let (mut acks, _, acked_at) =
        ack_and_visibility(engine, addr, &deliveries, rate, customers.start).await?;
    let expected = as_u64(deliveries.len()) * as_u64(args.subscribers);
    let heard_all = || {
        subscribers
            .changes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while heard_all() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The process reports what it heard every 100 ms: the timed subscriber's last news too.
    tokio::time::sleep(Duration::from_millis(250)).await;
    background.stop().await?;
    let changes = (heard_all(), expected);
    let mut heard: Vec<Duration> = {
        let heard = subscribers
            .heard
            .lock()
            .map_err(|_| anyhow::anyhow!("a subscriber panicked"))?;
        acked_at
            .iter()
            .filter_map(|(id, at)| heard.get(id).map(|h| h.saturating_duration_since(*at)))
            .collect()
    };
    if heard.len() != acked_at.len() {
        bail!(
            "the timed subscriber heard {} of {} new customers",
            heard.len(),
            acked_at.len()
        );
    }
    drop(subscribers);
    engine.drain().await?;
    Ok(SubscribedRun {
        ack_p50: quantile(&mut acks, 0.50),
        ack_p99: quantile(&mut acks, 0.99),
        heard_p99: quantile(&mut heard, 0.99),
        changes,
    })
}

/// Whether open-loop acknowledgements kept up with their rate: the median latency of the
/// run's last fifth is within three times that of its first fifth, plus 5 ms. A server that
/// cannot keep up answers each delivery later than the one before, all run long.
fn keeps_up(acks: &[Duration]) -> bool {
    let fifth = acks.len() / 5;
    if fifth == 0 {
        return true;
    }
    let mut first = acks[..fifth].to_vec();
    let mut last = acks[acks.len() - fifth..].to_vec();
    let (first, last) = (median(&mut first), median(&mut last));
    last <= first * 3 + Duration::from_millis(5)
}

/// The middle of a few runs' figures (the lower middle of an even count; durations and
/// rates are never NaN, so their partial order is total).
fn median<T: Copy + Default + PartialOrd>(figures: &mut [T]) -> T {
    figures.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    figures
        .get(figures.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// The least and the greatest of a few runs' figures.
fn range(figures: &[Duration]) -> (Duration, Duration) {
    let least = figures.iter().min().copied().unwrap_or_default();
    let greatest = figures.iter().max().copied().unwrap_or_default();
    (least, greatest)
}

/// The worker and the projector running, as `subledger serve` runs them.
struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Background {
    fn start(engine: &Arc<Engine>) -> Self {
        let (stop, shutdown) = Shutdown::new();
        let tasks = [
            engine.spawn_worker(shutdown.clone()),
            engine.spawn_projector(shutdown),
        ];
        Self { stop, tasks }
    }

    /// Stops both after the item in hand.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await?;
        }
        Ok(())
    }
}

/// Sends `deliveries` open-loop at `rate` and watches every new customer's answer appear:
/// each delivery's acknowledgement latency (from when it was due) and the time from its
/// acknowledgement until the customer is answered from memory.
/// Each customer's acknowledgement instant is returned too.
async fn ack_and_visibility(
    engine: &Engine,
    addr: SocketAddr,
    deliveries: &[(String, Vec<u8>)],
    rate: f64,
    first: u32,
) -> Result<(Vec<Duration>, Vec<Duration>, Vec<(String, Instant)>)> {
    let (tell, acked) = std::sync::mpsc::channel::<(String, Instant)>();
    let sent = Cell::new(false);
    let sender = async {
        let result = http_load::open_loop(addr, deliveries.to_vec(), rate, move |n| {
            let id = u32::try_from(n).map_or_else(|_| String::new(), |n| customer(first + n));
            let _ = tell.send((id, Instant::now()));
        })
        .await;
        sent.set(true);
        result
    };
    let watcher = async {
        let mut waiting: Vec<(String, Instant)> = Vec::new();
        let mut acked_at = Vec::with_capacity(deliveries.len());
        let mut visible = Vec::with_capacity(deliveries.len());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Read before the loop's end condition: once all is sent, this drains the rest.
            let all_sent = sent.get();
            let newly: Vec<(String, Instant)> = acked.try_iter().collect();
            acked_at.extend(newly.iter().cloned());
            waiting.extend(newly);
            waiting.retain(|(id, at)| {
                if engine.entitlements(id).is_some() {
                    visible.push(at.elapsed());
                    false
                } else {
                    true
                }
            });
            if all_sent && waiting.is_empty() {
                return Ok((visible, acked_at));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} acknowledged customers were not answered within 60 s",
                    waiting.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let (acks, watched) = tokio::join!(sender, watcher);
    let (visible, acked_at) = watched?;
    Ok((acks?, visible, acked_at))
}

pub(crate) fn per_sec<N: TryInto<u32>>(count: N, elapsed: Duration) -> f64 {
    let count = count.try_into().map_or(f64::from(u32::MAX), f64::from);
    count / elapsed.as_secs_f64().max(1e-9)
}

pub(crate) fn as_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// A count as a float, for ratios (exact below 2^53; counts here are far smaller).
pub(crate) fn as_f64<N: TryInto<u32>>(count: N) -> f64 {
    count.try_into().map_or(f64::from(u32::MAX), f64::from)
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

/// `part` of `whole` as a power of two: "1/4".
fn fraction(part: f64, whole: f64) -> String {
    format!("1/{:.0}", whole / part.max(1e-9))
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(measured: f64, floor: f64) -> String {
    format!("{:.2}×", measured / floor.max(1e-9))
}

/// The ratio beside its target: "0.91× (target ≥ 0.6×)".
fn against(measured: f64, floor: f64, target: &str) -> String {
    format!("{} (target ≥ {target}×)", ratio(measured, floor))
}

fn render(all: &[Figures], args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `make bench` (`crates/bench`) on {}, {}. Release build; the stores, the \
         load generators and the server on the same machine. Each figure stands beside a floor \
         measured in the same run, because the machine is shared and noisy: read the ratios, \
         not the absolute numbers. Targets are issue 11's.\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine()
    );
    let _ = writeln!(
        out,
        "| store | path | measured | floor in the same run | ratio or target |\n| --- | --- | --- | --- | --- |"
    );
    for f in all {
        let mut row = |path: String, measured: String, floor: String, verdict: String| {
            let _ = writeln!(
                out,
                "| {} | {path} | {measured} | {floor} | {verdict} |",
                f.store
            );
        };
        let (floor_name, inbox_floor_name) = if f.floor_eight_clients.is_some() {
            (
                "pgbench one-row insert, 1 client",
                "pgbench running the inbox's own insert of a delivery, 1 client",
            )
        } else {
            (
                "sqlx one-row insert, 1 connection",
                "sqlx running the inbox's own insert of a delivery, 1 connection",
            )
        };
        row(
            format!("worker, {} pending rows, one new customer each", args.rows),
            format!("{:.0} rows/s", f.worker_rows_per_sec),
            format!("{floor_name}: {:.0}/s", f.floor_one_client),
            against(f.worker_rows_per_sec, f.floor_one_client, "0.6"),
        );
        if let Some(eight) = f.floor_eight_clients {
            row(
                "(the same worker)".to_owned(),
                format!("{:.0} rows/s", f.worker_rows_per_sec),
                format!("pgbench one-row insert, 8 clients: {eight:.0}/s"),
                ratio(f.worker_rows_per_sec, eight),
            );
        }
        row(
            format!(
                "one customer with {} events: the last 100 beside the first 500 (whole batches)",
                args.history
            ),
            format!("{:.0} rows/s (the last 100)", f.history_last),
            format!("{:.0} rows/s (the first 500)", f.history_first),
            against(f.history_last, f.history_first, "0.67"),
        );
        row(
            format!(
                "ingest over HTTP, 1 connection, as fast as it goes (medians of {INGEST_ROUNDS} \
                 rounds, each after its floor)"
            ),
            format!("{:.0} deliveries/s", f.ingest_saturation),
            format!("{inbox_floor_name}: {:.0}/s", f.floor_inbox),
            against(f.ingest_saturation, f.floor_inbox, "0.8"),
        );
        row(
            "(the same ingest)".to_owned(),
            format!("{:.0} deliveries/s", f.ingest_saturation),
            format!(
                "{floor_name}, as many bytes into a two-column table: {:.0}/s",
                f.floor_one_client
            ),
            ratio(f.ingest_saturation, f.floor_one_client),
        );
        row(
            format!(
                "ingest open-loop at {:.0}/s (half of that), alone: acknowledgement p99",
                f.ingest_rate
            ),
            millis(f.ingest_alone_ack_p99),
            format!(
                "the inbox's own insert at the same rate, open-loop: p99 {}",
                millis(f.floor_commit_p99)
            ),
            "target ≤ 10 ms".to_owned(),
        );
        row(
            "(the same rate) with the worker and projector running: acknowledgement p99".to_owned(),
            millis(f.ingest_ack_p99),
            "from when each delivery was due".to_owned(),
            String::new(),
        );
        row(
            "(the same run) acknowledgement → answer changed, p99".to_owned(),
            millis(f.visible_p99),
            "polled every millisecond".to_owned(),
            "target ≤ 1 s".to_owned(),
        );
        let [(alone_p50, alone_p99), (with_p50, with_p99)] = f.stream_acks;
        row(
            format!(
                "ingest open-loop at {:.0}/s ({} of saturation: with the worker and projector running, {}) with {} subscribers following the change stream (their own process and scheduling group, idle policy): acknowledgement p50 / p99, medians of {SUBSCRIBER_ROUNDS} runs",
                f.stream_rate,
                fraction(f.stream_rate, f.ingest_saturation),
                if f.stream_rate_kept_up {
                    "half of the highest such rate it kept up with"
                } else {
                    "half of a rate it fell behind at"
                },
                args.subscribers
            ),
            format!("{} / {}", millis(with_p50), millis(with_p99)),
            format!(
                "the same without subscribers, each run just before: {} / {} (p99 of single runs: {}–{} without, {}–{} with)",
                millis(alone_p50),
                millis(alone_p99),
                millis(f.ack_p99_ranges[0].0),
                millis(f.ack_p99_ranges[0].1),
                millis(f.ack_p99_ranges[1].0),
                millis(f.ack_p99_ranges[1].1)
            ),
            format!(
                "{} / {}",
                ratio(with_p50.as_secs_f64(), alone_p50.as_secs_f64()),
                ratio(with_p99.as_secs_f64(), alone_p99.as_secs_f64())
            ),
        );
        row(
            "(the same runs) acknowledgement → change heard on a stream, p99 (median)".to_owned(),
            millis(f.heard_p99),
            format!(
                "changes heard, all subscribers: {} of {}",
                f.stream_changes.0, f.stream_changes.1
            ),
            "target ≤ 1 s".to_owned(),
        );
        row(
            format!("restart with {} customers", f.customers),
            format!("all answered after {:.2} s", f.restart.as_secs_f64()),
            String::new(),
            String::new(),
        );
        row(
            "heap per customer after the restart".to_owned(),
            format!("{:.0} bytes", f.heap_per_customer),
            "live heap bytes, counted by the allocator".to_owned(),
            "target ≤ 1024 bytes".to_owned(),
        );
        row(
            "entitlement check in process (answer + one feature)".to_owned(),
            format!(
                "p50 {} ns, p99 {} ns",
                f.check_p50.as_nanos(),
                f.check_p99.as_nanos()
            ),
            format!("{IN_PROCESS_CHECKS} calls, each timed"),
            "target p99 ≤ 1,000 ns".to_owned(),
        );
        row(
            "entitlement check over HTTP, `wrk` at 32 connections".to_owned(),
            format!("{:.0} requests/s", f.check_http),
            format!("unknown route, same server: {:.0}/s", f.unknown_route_http),
            against(f.check_http, f.unknown_route_http, "0.9"),
        );
        row(
            "one customer's answer revalidated with `If-None-Match` (`304`), `wrk` at 32 connections".to_owned(),
            format!("{:.0} requests/s", f.revalidate_http),
            format!("the full answer (`200`), same customer: {:.0}/s", f.full_answer_http),
            ratio(f.revalidate_http, f.full_answer_http),
        );
        let read_floor = if f.floor_eight_clients.is_some() {
            "`COPY events TO STDOUT` via psql"
        } else {
            "every row of the log read through sqlx"
        };
        row(
            format!(
                "replay, its first part: read and apply {} events (medians of {REPLAY_ROUNDS} \
                 rounds, each beside its floor)",
                f.replay_events
            ),
            format!("{:.0} events/s", f.rebuild_rate),
            format!("{read_floor}: {:.0}/s", f.replay_floor),
            against(f.rebuild_rate, f.replay_floor, "0.5"),
        );
        row(
            format!(
                "replay, whole: the same, then save {} views and serve from them",
                f.customers
            ),
            format!("{:.0} events/s", f.replay_rate),
            format!("{read_floor}: {:.0}/s", f.replay_floor),
            against(f.replay_rate, f.replay_floor, "0.5"),
        );
    }
    out
}
