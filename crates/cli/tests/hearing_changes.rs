//! Product services hearing of changes from real `subledger serve` processes: two servers on
//! one PostgreSQL take a burst of webhooks while they are killed with SIGKILL at random and
//! started again, and an outbound receiver is down for a while. At the end
//! - a consumer that followed `/v1/changes/stream`, moving to the other server whenever its
//!   connection died and resuming with `Last-Event-ID`, saw every change of the feed exactly
//!   once, in the feed's order, each with the answer the feed holds;
//! - the receiver of `SUBLEDGER_NOTIFY_URLS` got every change at least once, signed, each
//!   customer's first arrivals in the feed's order, and last each customer's current answer.
//!
//! PostgreSQL only (`SUBLEDGER_TEST_POSTGRES_URL`): several servers share one store there.
//! `SUBLEDGER_CRASH_SEED` replays a run. The figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use subledger_engine::{WebhookSecret, WebhookVerifier};
use subledger_store::scratch::ScratchDatabase;
use subledger_store::Database;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/processes.rs"]
mod processes;

use processes::{burst, deliver, free_addr, Process, Rng, CATALOG, SECRET};

const TOKEN: &str = "read-token-hearing-changes-0123456789";
const NOTIFY_SECRET: &str = "notify-secret-hearing-changes-0123456789";
const KILLS: usize = 8;

/// One change as a consumer heard it: its feed position, customer and answer.
type Heard = (i64, String, Value);

fn position(cursor: &str) -> i64 {
    cursor.strip_prefix("chg_").unwrap().parse().unwrap()
}

#[derive(Default)]
struct Receiver {
    down: AtomicBool,
    refused: AtomicUsize,
    received: Mutex<Vec<Heard>>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers
        .get("subledger-signature")
        .and_then(|v| v.to_str().ok());
    let verifier = WebhookVerifier::new(
        vec![WebhookSecret::new(NOTIFY_SECRET)],
        Duration::from_secs(300),
    );
    assert!(
        verifier
            .verify(signature, &body, chrono::Utc::now().timestamp())
            .is_ok(),
        "a notification signed wrongly: {signature:?}"
    );
    if receiver.down.load(Ordering::SeqCst) {
        receiver.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    let change = &event["data"];
    receiver.received.lock().unwrap().push((
        position(event["id"].as_str().unwrap()),
        change["customer"].as_str().unwrap().to_owned(),
        change["entitlements"].clone(),
    ));
    StatusCode::OK
}

/// What the stream consumer heard, and how often it had to connect again.
#[derive(Default)]
struct Consumer {
    heard: Mutex<Vec<Heard>>,
    /// The last `id:` the stream sent: a change's, or where a stream started.
    last_id: Mutex<Option<i64>>,
    connections: AtomicUsize,
    following: AtomicBool,
}

/// Follows `/v1/changes/stream` for ever, on `addrs` in turn: whenever a connection cannot be
/// made or dies, the next server is asked to resume after the last change heard.
async fn follow(addrs: [SocketAddr; 2], consumer: Arc<Consumer>) {
    let mut turn = 0;
    loop {
        let addr = addrs[turn % 2];
        turn += 1;
        let last = *consumer.last_id.lock().unwrap();
        if let Err(error) = follow_one(addr, last, &consumer).await {
            if consumer.following.load(Ordering::SeqCst) {
                eprintln!("stream from {addr} ended: {error}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One connection: HTTP/1.0, so the body is the bare event stream until the server closes.
async fn follow_one(
    addr: SocketAddr,
    last: Option<i64>,
    consumer: &Consumer,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut request = format!(
        "GET /v1/changes/stream HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(last) = last {
        request.push_str(&format!("Last-Event-ID: chg_{last}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 8192];
    let mut head_done = false;
    loop {
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if !head_done {
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let status = head.split_whitespace().nth(1).unwrap_or_default();
            match status {
                "200" => {}
                // Starting, or its store is briefly out of reach: ask the other one.
                "503" => return Err(format!("answered {status}")),
                _ => panic!(
                    "the stream answered {head}: {}",
                    String::from_utf8_lossy(&buffer)
                ),
            }
            buffer.drain(..end + 4);
            head_done = true;
            consumer.connections.fetch_add(1, Ordering::SeqCst);
            consumer.following.store(true, Ordering::SeqCst);
        }
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buffer[..end].to_vec()).unwrap();
            buffer.drain(..end + 2);
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim_start)
                    .map(str::to_owned)
            };
            // A heartbeat is a comment line only; the stream's opening block has no data.
            let Some(id) = field("id:") else { continue };
            *consumer.last_id.lock().unwrap() = Some(position(&id));
            let Some(data) = field("data:") else { continue };
            let change: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(change["cursor"].as_str(), Some(id.as_str()));
            consumer.heard.lock().unwrap().push((
                position(&id),
                change["customer"].as_str().unwrap().to_owned(),
                change["entitlements"].clone(),
            ));
        }
    }
}

/// The whole feed as the store holds it.
async fn feed(db: &Database) -> Vec<Heard> {
    db.changes_after(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.seq,
                row.customer_id,
                serde_json::from_str(&row.answer).unwrap(),
            )
        })
        .collect()
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_stream_consumers_once_and_receivers_in_order_through_kills() {
    let Some(scratch) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let seed = processes::seed();
    let events = burst();
    let catalog = std::env::temp_dir().join(format!(
        "subledger-hearing-catalog-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&catalog, CATALOG).unwrap();

    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/hooks", listener.local_addr().unwrap());
    let hooks = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(Arc::clone(&receiver));
    tokio::spawn(async move { axum::serve(listener, hooks).await.unwrap() });

    let addrs = [free_addr(), free_addr()];
    let mut servers: Vec<Process> = addrs
        .iter()
        .map(|addr| {
            let args = [
                "serve",
                "--addr",
                &addr.to_string(),
                "--catalog",
                &catalog.display().to_string(),
                "--database-url",
                &scratch.url,
                "--poll-interval-ms",
                "20",
                "--worker-lease-secs",
                "2",
            ]
            .map(str::to_owned)
            .to_vec();
            let env = [
                ("SUBLEDGER_WEBHOOK_SECRETS", SECRET),
                ("SUBLEDGER_API_TOKENS", TOKEN),
                ("SUBLEDGER_NOTIFY_URLS", endpoint.as_str()),
                ("SUBLEDGER_NOTIFY_SECRET", NOTIFY_SECRET),
                ("SUBLEDGER_NOTIFY_TIMEOUT_SECS", "1"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec();
            Process::start(args, env)
        })
        .collect();

    // The consumer connects before the first event: from then on it must hear everything.
    let consumer = Arc::new(Consumer::default());
    let following = tokio::spawn(follow(addrs, Arc::clone(&consumer)));
    let connected = Arc::clone(&consumer);
    until(
        "the consumer's first connection",
        Duration::from_secs(60),
        || connected.connections.load(Ordering::SeqCst) > 0,
    )
    .await;

    // Stripe delivers the burst to either server while they are killed and restarted, and the
    // receiver is down for a while in the middle.
    let queue = Arc::new(Mutex::new(events.clone()));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let queue = Arc::clone(&queue);
        senders.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(event) = next else { break };
                deliver(&addrs, &event).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    queue.lock().unwrap().reverse();
    let mut rng = Rng(seed.max(1));
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
        if kill == 2 {
            receiver.down.store(true, Ordering::SeqCst);
        }
        if kill == 5 {
            // Up again only once a server met the outage: a fixed window can fall between
            // notifications while both servers restart.
            until(
                "a notification refused while the receiver is down",
                Duration::from_secs(60),
                || receiver.refused.load(Ordering::Relaxed) > 0,
            )
            .await;
            receiver.down.store(false, Ordering::SeqCst);
        }
        let victim = usize::try_from(rng.below(2)).unwrap();
        servers[victim].crash_and_restart();
    }
    receiver.down.store(false, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }

    // Everything applied and fed; then the consumer and the receiver have caught up.
    let db = Database::connect(&scratch.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.inbox_stats().await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "the inbox was never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The projector records a change a moment after the last event is applied.
    let mut fed = feed(&db).await;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = feed(&db).await;
        if now.len() != fed.len() {
            quiet_since = Instant::now();
        }
        fed = now;
    }
    let last = fed.last().map(|c| c.0);
    assert!(fed.len() > 50, "the burst made only {} changes", fed.len());
    let heard = Arc::clone(&consumer);
    until(
        "the consumer's last change",
        Duration::from_secs(60),
        || heard.heard.lock().unwrap().last().map(|h| h.0) == last,
    )
    .await;
    let positions: BTreeSet<i64> = fed.iter().map(|c| c.0).collect();
    let got = Arc::clone(&receiver);
    until(
        "every change at the receiver",
        Duration::from_secs(120),
        || {
            let received: BTreeSet<i64> =
                got.received.lock().unwrap().iter().map(|r| r.0).collect();
            positions.is_subset(&received)
        },
    )
    .await;
    following.abort();
    for server in &mut servers {
        server.kill();
    }

    // The stream: every change exactly once, in order, with the feed's answer.
    let heard = consumer.heard.lock().unwrap().clone();
    let heard_positions: Vec<i64> = heard.iter().map(|h| h.0).collect();
    let fed_positions: Vec<i64> = fed.iter().map(|c| c.0).collect();
    assert_eq!(heard_positions, fed_positions, "the stream, seed {seed}");
    assert_eq!(heard, fed, "the stream's answers, seed {seed}");

    // The receiver: at least once, in order per customer, ending on the current answer.
    let received = receiver.received.lock().unwrap().clone();
    let mut first_arrivals: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (at, customer, _) in &received {
        if seen.insert(*at) {
            first_arrivals.entry(customer).or_default().push(*at);
        }
    }
    for (customer, order) in &first_arrivals {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{customer} out of order at the receiver, seed {seed}: {order:?}"
        );
    }
    let mut current: BTreeMap<&str, &Value> = BTreeMap::new();
    for (_, customer, answer) in &fed {
        current.insert(customer, answer);
    }
    for (customer, answer) in &current {
        let last = received.iter().rev().find(|r| r.1 == *customer).unwrap();
        assert_eq!(
            &&last.2, answer,
            "{customer}'s last notification, seed {seed}"
        );
    }
    assert!(
        receiver.refused.load(Ordering::Relaxed) > 0,
        "the receiver's outage was never noticed"
    );

    eprintln!(
        "hearing changes (seed {seed}): {} events, {KILLS} server kills, {} changes; the \
         stream consumer connected {} times; the receiver got {} notifications ({} again), \
         refused {} while down",
        events.len(),
        fed.len(),
        consumer.connections.load(Ordering::SeqCst),
        received.len(),
        received.len() - seen.len(),
        receiver.refused.load(Ordering::Relaxed),
    );
    db.close().await;
    std::fs::remove_file(&catalog).unwrap();
    scratch.cleanup().await.unwrap();
}
