//! The HTTP limits over real sockets: slow clients sending their headers byte by byte are cut
//! off at the header timeout and do not hold up other deliveries' acknowledgements; an idle
//! keep-alive connection is closed; a body that never finishes gets a 408; connections over
//! the limit wait to be accepted; shutdown answers what is in flight; change streams are
//! served on a thread of lower priority, and still served when their request line arrives in
//! pieces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, WebhookSecret};
use subledger_server::{router, serve, ApiTokens, HttpLimits};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::fixtures;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "whsec_slow_clients_test";
const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n";

async fn server(limits: HttpLimits) -> (SocketAddr, Arc<Engine>, tokio::sync::oneshot::Sender<()>) {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let mut config = EngineConfig::new(&test_db.url, Catalog::from_yaml("c", CATALOG).unwrap());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    let engine = Engine::start(config).await.unwrap();
    // The scratch database lives as long as the engine's pool holds it.
    std::mem::forget(test_db);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Arc::clone(&engine), ApiTokens::none());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    (addr, engine, stop)
}

fn delivery(n: usize) -> Vec<u8> {
    let event = fixtures::event(
        &format!("evt_slow_{n}"),
        "customer.created",
        chrono::Utc::now().timestamp(),
        fixtures::customer(&format!("cus_{n}"), json!({})),
    );
    let body = serde_json::to_vec(&event).unwrap();
    let signature = WebhookSecret::new(SECRET).header(chrono::Utc::now().timestamp(), &body);
    let mut request = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Stripe-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// Reads one response's status line and headers and its Content-Length body.
async fn read_response(stream: &mut TcpStream) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buffer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buffer).to_string();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the server closed `stream` (read returns 0 or fails) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 512];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer));
        if let Ok(Ok(0) | Err(_)) = read.await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_delay_other_deliveries() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(1_500),
        ..HttpLimits::default()
    };
    let (addr, _engine, _stop) = server(limits).await;
    // 200 clients that send a request's headers a byte at a time, every 100 ms.
    let slow = 200;
    let mut slow_clients = Vec::new();
    for _ in 0..slow {
        slow_clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            for byte in b"POST /webhooks/stripe HTTP/1.1\r\nHost: slow\r\nX-Padding: "
                .iter()
                .cycle()
            {
                if stream.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                let mut probe = [0u8; 1];
                let read =
                    tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return None;
                }
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile, deliveries on a keep-alive connection are acknowledged as usual.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut slowest = Duration::ZERO;
    for n in 0..50 {
        let sent = Instant::now();
        stream.write_all(&delivery(n)).await.unwrap();
        assert_eq!(read_response(&mut stream).await, Some(200));
        slowest = slowest.max(sent.elapsed());
    }
    let mut cut_off = Vec::new();
    for client in slow_clients {
        cut_off.push(
            client
                .await
                .unwrap()
                .expect("a slow client was never cut off"),
        );
    }
    let last_cut = cut_off.iter().max().unwrap();
    eprintln!(
        "{slow} slow connections held, each cut off after at most {last_cut:?}; \
         the slowest of 50 acknowledgements meanwhile took {slowest:?}"
    );
    assert!(*last_cut < Duration::from_secs(5), "{last_cut:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_an_unfinished_body_gets_408() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        ..HttpLimits::default()
    };
    let (addr, _engine, _stop) = server(limits).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(&delivery(1)).await.unwrap();
    assert_eq!(read_response(&mut idle).await, Some(200));
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle connection kept open"
    );

    let mut unfinished = TcpStream::connect(addr).await.unwrap();
    let mut request = delivery(2);
    request.truncate(request.len() - 10);
    unfinished.write_all(&request).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(3), read_response(&mut unfinished))
        .await
        .expect("an unfinished body was waited for without end");
    assert_eq!(answered, Some(408));
}

#[tokio::test]
async fn over_the_connection_limit_a_connection_waits_and_shutdown_answers_what_is_in_flight() {
    let limits = HttpLimits {
        max_connections: 1,
        ..HttpLimits::default()
    };
    let (addr, _engine, stop) = server(limits).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&delivery(1)).await.unwrap();
    assert_eq!(read_response(&mut first).await, Some(200));
    // The second connects (the kernel queues it) but is not served while the first is open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(&delivery(2)).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), read_response(&mut second)).await;
    assert!(waited.is_err(), "a connection over the limit was served");
    drop(first);
    assert_eq!(read_response(&mut second).await, Some(200));

    // Shutdown: a request in flight (its body half sent) is still answered; then the
    // connection closes.
    let request = delivery(3);
    let (head, rest) = request.split_at(request.len() - 10);
    second.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.write_all(rest).await.unwrap();
    assert_eq!(read_response(&mut second).await, Some(200));
    assert!(closed_within(&mut second, Duration::from_secs(5)).await);
    assert!(
        TcpStream::connect(addr).await.is_err() || {
            let mut late = TcpStream::connect(addr).await.unwrap();
            late.write_all(&delivery(4)).await.unwrap();
            read_response(&mut late).await.is_none()
        }
    );
}

/// Opens `/v1/changes/stream` (HTTP/1.0: the body is the bare event stream) and reads up to
/// the opening block; with `in_pieces` the request line arrives in two writes.
async fn open_stream(addr: SocketAddr, in_pieces: bool) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /v1/changes/stream HTTP/1.0\r\nHost: t\r\n\r\n";
    if in_pieces {
        stream.write_all(&request[..12]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&request[12..]).await.unwrap();
    } else {
        stream.write_all(request).await.unwrap();
    }
    let seen = read_until(&mut stream, String::new(), "following from here\n\n").await;
    assert!(seen.starts_with("HTTP/1.0 200"), "{seen}");
    (stream, seen)
}

/// Reads `stream` onto `seen` until it holds `mark`; panics after 10 s.
async fn read_until(stream: &mut TcpStream, mut seen: String, mark: &str) -> String {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(mark) {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buffer)).await;
        let read = read.unwrap_or_else(|_| panic!("no {mark:?} within 10 s: {seen}"));
        let read = read.unwrap();
        assert!(read > 0, "the stream closed before {mark:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    seen
}

/// The nice value of a thread from `/proc/self/task/{tid}/stat` (its 19th field).
fn nice_of(task: &std::path::Path) -> i32 {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_streams_run_on_a_lower_priority_thread_and_still_work_in_pieces() {
    let (addr, engine, _stop) = server(HttpLimits::default()).await;
    let (mut whole, mut seen_whole) = open_stream(addr, false).await;
    let (mut pieces, mut seen_pieces) = open_stream(addr, true).await;

    // The streams' thread runs ten nice steps below the process's main thread.
    let tasks: Vec<_> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| task.unwrap().path())
        .collect();
    let streams = tasks
        .iter()
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|n| n.trim() == "change-streams")
        })
        .expect("a stream was opened, so the streams' thread runs");
    let own = nice_of(std::path::Path::new("/proc/self"));
    assert_eq!(nice_of(streams), (own + 10).min(19));

    // Both connections hear a change: the one on the streams' thread and the one whose
    // request line came in pieces (served where requests are).
    let mut poster = TcpStream::connect(addr).await.unwrap();
    poster.write_all(&delivery(7)).await.unwrap();
    assert_eq!(read_response(&mut poster).await, Some(200));
    engine.drain().await.unwrap();
    engine.project().await.unwrap();
    seen_whole = read_until(&mut whole, seen_whole, "\"cus_7\"").await;
    seen_pieces = read_until(&mut pieces, seen_pieces, "\"cus_7\"").await;
    for seen in [seen_whole, seen_pieces] {
        assert!(seen.contains("event: entitlements.updated"), "{seen}");
    }
}
