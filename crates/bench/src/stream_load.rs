//! Product services listening: many subscribers on `/v1/changes/stream` at once, as the
//! webhook load runs, and a revalidation of one answer by its `ETag`.
//!
//! The subscribers run in a process, session and scheduling group of their own at the lowest
//! priority (SCHED_IDLE, see `spawn`; a group at nice 19, see `lowest_scheduling_group`),
//! standing for product services on other machines: on one 2-core machine their reading would
//! otherwise be charged to the server's acknowledgements. The server's own cost of writing the streams is
//! measured in full.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Subscribers following the stream in their own process, until dropped.
#[derive(Debug)]
pub struct Subscribers {
    process: Child,
    /// When the first subscriber heard of each customer's newest change.
    pub heard: Arc<Mutex<HashMap<String, Instant>>>,
    /// Changes heard, all subscribers together.
    pub changes: Arc<AtomicU64>,
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts `count` subscribers following the stream from now, in a process of their own;
/// returns once every stream is answered `200`.
pub fn spawn(addr: SocketAddr, token: &str, count: usize) -> Result<Subscribers> {
    let bench = std::env::current_exe().context("cannot find the bench's own executable")?;
    // SCHED_IDLE (`chrt --idle`, sched(7)): the subscribers run only on a core nothing else
    // wants, and any other thread that wakes takes the core from them at once, as if they were
    // on machines of their own. A nice value has no influence under this policy; an
    // unprivileged process may always choose it.
    let mut process = Command::new("chrt")
        .args(["--idle", "0"])
        .arg(bench)
        .args(["--subscriber-process", &addr.to_string()])
        .args(["--subscribers", &count.to_string()])
        .env(TOKEN_VARIABLE, token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the subscribers' process (util-linux's `chrt` runs it)")?;
    let stdout = process
        .stdout
        .take()
        .context("the subscribers' process has no output")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line == "ready" => {}
        Some(Ok(line)) => bail!("the subscribers' process said {line:?} instead of ready"),
        Some(Err(error)) => bail!("cannot read the subscribers' process: {error}"),
        None => bail!("the subscribers' process ended before its streams were open"),
    }
    let heard = Arc::new(Mutex::new(HashMap::new()));
    let changes = Arc::new(AtomicU64::new(0));
    // Instants of this process from the other's wall-clock times.
    let (anchor, anchor_wall) = (Instant::now(), SystemTime::now());
    let (heard_by, counted) = (Arc::clone(&heard), Arc::clone(&changes));
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("changes"), Some(count), None) => {
                    counted.store(count.parse().unwrap_or(0), Ordering::Relaxed);
                }
                (Some("heard"), Some(customer), Some(micros)) => {
                    let wall = UNIX_EPOCH + Duration::from_micros(micros.parse().unwrap_or(0));
                    let at = match wall.duration_since(anchor_wall) {
                        Ok(after) => anchor + after,
                        Err(before) => anchor.checked_sub(before.duration()).unwrap_or(anchor),
                    };
                    if let Ok(mut heard) = heard_by.lock() {
                        heard.insert(customer.to_owned(), at);
                    }
                }
                _ => eprintln!("the subscribers' process said {line:?}"),
            }
        }
    });
    Ok(Subscribers {
        process,
        heard,
        changes,
    })
}

/// Puts this process where it takes the least from everything else on the machine, as
/// subscribers on other machines would.
///
/// A nice value alone is not enough where the kernel groups processes by session
/// ("autogroup", `/proc/sys/kernel/sched_autogroup_enabled`, on by default in Debian's
/// kernels): nice then ranks threads only within their session, while sessions share the CPU
/// as equals, so a process at nice 19 in the bench's session still took as much from
/// PostgreSQL (a session of its own) as the bench's server did. (Measured: two busy threads
/// at nice 19 in this process made PostgreSQL's acknowledgement p50 12× slower and left
/// SQLite's, served inside the bench's session, unchanged.) So the process starts a session
/// of its own and gives that session's group the lowest weight, nice 19 (sched(7),
/// "The autogroup feature"). Where there are no autogroups, the idle policy the process is
/// started under (`spawn`) already puts it below every other.
fn lowest_scheduling_group() {
    #[cfg(target_os = "linux")]
    if rustix::process::setsid().is_ok() {
        // Absent without autogroups; refused only where raising a nice value is.
        let _ = std::fs::write("/proc/self/autogroup", "19");
    }
}

/// Where the subscribers' process finds the API token (not on its command line).
const TOKEN_VARIABLE: &str = "SUBLEDGER_BENCH_TOKEN";

/// The subscribers' process: opens `count` streams, says `ready`, then every 100 ms the
/// changes heard so far (`changes N`) and when the timed subscriber heard each customer
/// (`heard CUSTOMER UNIX_MICROS`), until killed.
pub async fn subscriber_process(addr: SocketAddr, count: usize) -> Result<()> {
    let token = std::env::var(TOKEN_VARIABLE)
        .with_context(|| format!("{TOKEN_VARIABLE} must hold the API token"))?;
    lowest_scheduling_group();
    let subscribers = subscribe(addr, &token, count).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let heard: Vec<(String, SystemTime)> = match subscribers.heard.lock() {
            Ok(mut heard) => heard.drain(..).collect(),
            Err(_) => bail!("the timed subscriber panicked"),
        };
        for (customer, at) in heard {
            let micros = at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            writeln!(out, "heard {customer} {micros}")?;
        }
        writeln!(
            out,
            "changes {}",
            subscribers.changes.load(Ordering::Relaxed)
        )?;
        out.flush()?;
    }
}

/// Subscribers following the stream inside this process.
struct InProcess {
    tasks: Vec<JoinHandle<()>>,
    /// Each customer the timed subscriber heard, and when.
    heard: Arc<Mutex<Vec<(String, SystemTime)>>>,
    changes: Arc<AtomicU64>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens `count` streams from now; returns once every one is answered `200`.
async fn subscribe(addr: SocketAddr, token: &str, count: usize) -> Result<InProcess> {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let changes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        // HTTP/1.0: the body is the bare event stream, with no chunk framing to undo.
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /v1/changes/stream HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let mut chunk = [0_u8; 4096];
        let head_end = loop {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("the stream closed before answering");
            }
            buffer.extend_from_slice(&chunk[..read]);
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("the stream answered {head}");
        }
        buffer.drain(..head_end + 4);
        let (heard, changes) = (Arc::clone(&heard), Arc::clone(&changes));
        let timed = n == 0;
        tasks.push(tokio::spawn(async move {
            if timed {
                follow_timed(stream, buffer, &heard, &changes).await;
            } else {
                count_changes(stream, buffer, &changes).await;
            }
        }));
    }
    Ok(InProcess {
        tasks,
        heard,
        changes,
    })
}

/// What a change's block holds that nothing else in the stream does.
const CHANGE_MARK: &[u8] = b"\ndata: ";

/// Counts the changes a subscriber hears, as cheaply as a reader can (the load generator
/// shares the machine with the server it measures): the mark is searched across reads,
/// keeping only its length less one byte from the previous read.
async fn count_changes(mut stream: TcpStream, first: Vec<u8>, changes: &AtomicU64) {
    let mut carry: Vec<u8> = Vec::new();
    let mut chunk = vec![0_u8; 64 * 1024];
    let mut data = first;
    loop {
        carry.extend_from_slice(&data);
        let found = carry
            .windows(CHANGE_MARK.len())
            .filter(|w| *w == CHANGE_MARK)
            .count();
        changes.fetch_add(u64::try_from(found).unwrap_or(0), Ordering::Relaxed);
        let keep = carry.len().saturating_sub(CHANGE_MARK.len() - 1);
        carry.drain(..keep);
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => data = chunk[..read].to_vec(),
        }
    }
}

/// Reads every change's block and notes when each customer's arrived.
async fn follow_timed(
    mut stream: TcpStream,
    mut buffer: Vec<u8>,
    heard: &Mutex<Vec<(String, SystemTime)>>,
    changes: &AtomicU64,
) {
    let mut chunk = vec![0_u8; 64 * 1024];
    loop {
        let mut start = 0;
        while let Some(end) = buffer[start..].windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&buffer[start..start + end]).into_owned();
            start += end + 2;
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            changes.fetch_add(1, Ordering::Relaxed);
            let change: serde_json::Value =
                serde_json::from_str(data.trim_start()).unwrap_or_default();
            if let Some(customer) = change["customer"].as_str() {
                if let Ok(mut heard) = heard.lock() {
                    heard.push((customer.to_owned(), SystemTime::now()));
                }
            }
        }
        buffer.drain(..start);
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// The `ETag` of `path`'s answer.
pub async fn etag(addr: SocketAddr, token: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_owned())
        })
        .with_context(|| format!("{path} was answered without an ETag: {answer:.200}"))
}
