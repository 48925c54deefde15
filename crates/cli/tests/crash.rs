//! The crash harness: a burst of signed webhooks while the `subledger serve` and
//! `subledger worker` processes are killed with SIGKILL at random points and restarted, as
//! Stripe keeps redelivering whatever was not acknowledged. At the end every process is
//! killed once more, and the harness checks that
//! - every acknowledged event is stored exactly once (nothing lost, nothing doubled);
//! - every stored event is applied exactly once (no Stripe event has two effects on one
//!   aggregate, and the state equals a clean, crash-free run of the same events);
//! - the saved projections, caught up, equal a rebuild from the event log.
//!
//! PostgreSQL (when `SUBLEDGER_TEST_POSTGRES_URL` is set): a server without a worker and two
//! worker processes. SQLite: a server with its worker and one worker process on one file.
//! `SUBLEDGER_CRASH_SEED` replays a run; `SUBLEDGER_CRASH_MIN_KILLS` sets how many kills at
//! least (default 20). The figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;
use subledger_store::{Checkpoint, Database, Origin};

#[path = "common/processes.rs"]
mod processes;

use processes::{burst, deliver, free_addr, Process, Rng, CATALOG, SECRET};

/// Concurrent deliveries, as Stripe sends them.
const SENDERS: usize = 4;
/// How long the burst is spread over, so that kills land in the middle of it.
const BURST: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server { with_worker: bool },
    Worker,
}

/// The processes under test, each restartable with the same arguments.
struct Fleet {
    database_url: String,
    catalog: PathBuf,
    addr: SocketAddr,
    processes: Vec<(Role, Process)>,
}

impl Fleet {
    fn start(&mut self, roles: &[Role]) {
        for role in roles {
            let mut args: Vec<String> = match role {
                Role::Server { with_worker } => {
                    let mut args = vec!["serve".into(), "--addr".into(), self.addr.to_string()];
                    if !with_worker {
                        args.push("--no-worker".into());
                    }
                    args
                }
                Role::Worker => vec!["worker".into()],
            };
            args.extend([
                "--catalog".into(),
                self.catalog.display().to_string(),
                "--database-url".into(),
                self.database_url.clone(),
                "--poll-interval-ms".into(),
                "20".into(),
                "--worker-lease-secs".into(),
                "2".into(),
            ]);
            let env = vec![("SUBLEDGER_WEBHOOK_SECRETS".into(), SECRET.into())];
            self.processes.push((*role, Process::start(args, env)));
        }
    }

    /// `kill -9` one process and start it again.
    fn crash_and_restart(&mut self, index: usize) -> Role {
        let (role, process) = &mut self.processes[index];
        process.crash_and_restart();
        *role
    }

    fn kill_all(&mut self) {
        for (_, process) in &mut self.processes {
            process.kill();
        }
    }
}

#[derive(Debug, Default)]
struct Figures {
    events: usize,
    attempts: AtomicUsize,
    acknowledged: Mutex<HashSet<String>>,
}

/// Runs the burst against `roles` on `database_url` and checks every property.
async fn crash_run(name: &str, database_url: &str, roles: &[Role], events: &[Value], seed: u64) {
    let catalog = std::env::temp_dir().join(format!(
        "subledger-crash-catalog-{}-{name}.yaml",
        std::process::id()
    ));
    std::fs::write(&catalog, CATALOG).unwrap();
    let mut fleet = Fleet {
        database_url: database_url.to_owned(),
        catalog: catalog.clone(),
        addr: free_addr(),
        processes: Vec::new(),
    };
    fleet.start(roles);

    let min_kills: usize = std::env::var("SUBLEDGER_CRASH_MIN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let figures = Arc::new(Figures {
        events: events.len(),
        ..Figures::default()
    });
    let queue = Arc::new(Mutex::new(events.iter().cloned().collect::<VecDeque<_>>()));
    let pace = BURST / u32::try_from(events.len() / SENDERS).unwrap().max(1);
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (queue, figures, addr) = (Arc::clone(&queue), Arc::clone(&figures), fleet.addr);
        senders.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(event) = next else { break };
                let attempts = deliver(&[addr], &event).await;
                figures.attempts.fetch_add(attempts, Ordering::Relaxed);
                let id = event["id"].as_str().unwrap().to_owned();
                figures.acknowledged.lock().unwrap().insert(id);
                tokio::time::sleep(pace).await;
            }
        }));
    }
    let sent = Arc::new(AtomicBool::new(false));
    let all_sent = Arc::clone(&sent);
    let senders = tokio::spawn(async move {
        for sender in senders {
            sender.await.unwrap();
        }
        all_sent.store(true, Ordering::SeqCst);
    });

    // Kill at random points until the burst is delivered and enough kills have landed.
    let mut rng = Rng(seed.max(1));
    let (mut server_kills, mut worker_kills) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !sent.load(Ordering::SeqCst) || server_kills + worker_kills < min_kills {
        assert!(
            Instant::now() < deadline,
            "{name}: the burst never finished"
        );
        tokio::time::sleep(Duration::from_millis(40 + rng.below(360))).await;
        let victim = usize::try_from(rng.below(fleet.processes.len() as u64)).unwrap();
        match fleet.crash_and_restart(victim) {
            Role::Server { .. } => server_kills += 1,
            Role::Worker => worker_kills += 1,
        }
    }
    senders.await.unwrap();

    // Let the survivors finish the inbox, then crash everything once more.
    let db = Database::connect(database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = db.inbox_stats().await.unwrap();
        if stats.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the workers never finished: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.kill_all();

    // Every acknowledged event is stored exactly once (the inbox is unique on the event id and
    // holds only what was sent, so equal counts mean equal sets).
    let acknowledged = figures.acknowledged.lock().unwrap().len();
    let stats = db.inbox_stats().await.unwrap();
    let stored = stats.pending + stats.processed + stats.ignored;
    let lost = acknowledged - usize::try_from(stored).unwrap();
    assert_eq!(acknowledged, events.len(), "{name}: unacknowledged events");
    assert_eq!(
        lost, 0,
        "{name}: acknowledged events missing from the inbox"
    );

    // Every stored event is applied exactly once: no Stripe event has two effects of one kind
    // on one aggregate...
    let log = db
        .read_events_after(Checkpoint::default(), i64::MAX)
        .await
        .unwrap();
    let mut effects = HashSet::new();
    for event in &log {
        let stripe_event = match event.metadata().unwrap().origin {
            Origin::Webhook { event_id, .. } => Some(event_id),
            _ => None,
        };
        let effect = (
            event.aggregate_type.clone(),
            event.aggregate_id.clone(),
            stripe_event,
            event.event_type.clone(),
        );
        assert!(
            effects.insert(effect.clone()),
            "{name}: applied twice: {effect:?}"
        );
    }
    // ...and the state is the one a clean run of the same events reaches.
    let reference = clean_run(events).await;

    // The projections the killed processes saved, caught up, equal a rebuild from the log.
    let engine = Engine::start(config(database_url)).await.unwrap();
    engine.project().await.unwrap();
    let saved = serde_json::to_string(&engine.current_views().await).unwrap();
    let rebuilt = serde_json::to_string(&engine.rebuild_views().await.unwrap()).unwrap();
    assert_eq!(
        saved, rebuilt,
        "{name}: saved projections differ from a rebuild"
    );
    assert_eq!(
        rebuilt, reference,
        "{name}: the state differs from a clean run"
    );
    engine.close().await;
    db.close().await;
    std::fs::remove_file(&catalog).unwrap();

    eprintln!(
        "crash harness ({name}, seed {seed}): {} events sent in {} deliveries, {acknowledged} \
         acknowledged, {server_kills} server and {worker_kills} worker processes killed, \
         {} domain events, {lost} events lost",
        figures.events,
        figures.attempts.load(Ordering::Relaxed),
        log.len(),
    );
}

fn config(database_url: &str) -> EngineConfig {
    let mut config = EngineConfig::new(database_url, Catalog::from_yaml("c", CATALOG).unwrap());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config
}

/// The billing views of the same events delivered once each, in order, with no crash.
async fn clean_run(events: &[Value]) -> String {
    let engine = Engine::start(config("sqlite::memory:")).await.unwrap();
    for event in events {
        let body = serde_json::to_vec(event).unwrap();
        let header = WebhookSecret::new(SECRET).header(chrono::Utc::now().timestamp(), &body);
        engine
            .receive_webhook(Some(&header), &body, "clean")
            .await
            .unwrap();
    }
    engine.drain().await.unwrap();
    assert_eq!(engine.inbox_stats().await.unwrap().pending, 0);
    let views = serde_json::to_string(&engine.rebuild_views().await.unwrap()).unwrap();
    engine.close().await;
    views
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_killed_mid_burst_lose_nothing_and_apply_everything_once() {
    let seed = processes::seed();
    let events = burst();

    let file = std::env::temp_dir().join(format!("subledger-crash-{}.db", std::process::id()));
    let sqlite_url = format!("sqlite://{}", file.display());
    crash_run(
        "sqlite",
        &sqlite_url,
        &[Role::Server { with_worker: true }, Role::Worker],
        &events,
        seed,
    )
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }

    match ScratchDatabase::postgres().await.unwrap() {
        None => eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set"),
        Some(test_db) => {
            crash_run(
                "postgres",
                &test_db.url,
                &[
                    Role::Server { with_worker: false },
                    Role::Worker,
                    Role::Worker,
                ],
                &events,
                seed,
            )
            .await;
            test_db.cleanup().await.unwrap();
        }
    }
}
