//! Load over real HTTP against a server in this process: `wrk` for the read path (it is the
//! tool people compare with), and a one-connection client of our own for ingest, because
//! ingest is measured open-loop (latency counted from when a request was due, not from when
//! a busy client got round to sending it) and `wrk` is closed-loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection that sends a request and reads its whole answer.
#[derive(Debug)]
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// POSTs a signed delivery to `/webhooks/stripe`; the answer's status.
    pub async fn post_webhook(&mut self, signature: &str, body: &[u8]) -> Result<u16> {
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
             Stripe-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<u16> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection mid-answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// Runs a client's `load` on a thread and runtime of its own, as `pgbench` and `wrk` run in
/// processes of their own: on the server's runtime threads, the client's work would queue
/// with the server's and be counted against it.
async fn on_own_thread<T: Send + 'static>(
    load: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-client".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(load));
            let _ = answer.send(result);
        })?;
    answered
        .await
        .context("the client's thread ended without an answer")?
}

/// Sends every delivery as fast as one connection allows: deliveries per second.
pub async fn saturate(addr: SocketAddr, deliveries: Vec<(String, Vec<u8>)>) -> Result<f64> {
    on_own_thread(async move {
        let mut connection = Connection::open(addr).await?;
        let started = Instant::now();
        for (signature, body) in &deliveries {
            let status = connection.post_webhook(signature, body).await?;
            if status != 200 {
                bail!("a delivery was answered {status}");
            }
        }
        Ok(crate::per_sec(deliveries.len(), started.elapsed()))
    })
    .await
}

/// Sends the deliveries on one connection at `rate` per second, each due at a fixed time, and
/// calls `acked` with each delivery's index as its answer arrives. Returns each delivery's
/// latency from when it was due, so a slow answer also counts against the ones queued behind.
pub async fn open_loop(
    addr: SocketAddr,
    deliveries: Vec<(String, Vec<u8>)>,
    rate: f64,
    mut acked: impl FnMut(usize) + Send + 'static,
) -> Result<Vec<Duration>> {
    on_own_thread(async move {
        let mut connection = Connection::open(addr).await?;
        let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let started = tokio::time::Instant::now();
        let mut latencies = Vec::with_capacity(deliveries.len());
        let mut due = started;
        for (n, (signature, body)) in deliveries.iter().enumerate() {
            tokio::time::sleep_until(due).await;
            let status = connection.post_webhook(signature, body).await?;
            if status != 200 {
                bail!("a delivery was answered {status}");
            }
            acked(n);
            latencies.push(due.elapsed());
            due += interval;
        }
        Ok(latencies)
    })
    .await
}

/// `wrk` at `connections` connections for `secs` seconds running `script` (Lua): requests per
/// second. With `only_2xx`, any other answer fails the run (the unknown route is all 404s).
pub fn wrk(
    addr: SocketAddr,
    script: &str,
    connections: u32,
    secs: u64,
    only_2xx: bool,
) -> Result<f64> {
    let path = std::env::temp_dir().join(format!(
        "subledger-bench-{}-{}.lua",
        std::process::id(),
        addr.port()
    ));
    std::fs::write(&path, script)?;
    let output = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(&path)
        .arg(format!("http://{addr}"))
        .output()
        .context("cannot run wrk (install it: apt-get install wrk)");
    let _ = std::fs::remove_file(&path);
    let output = output?;
    let text = String::from_utf8_lossy(&output.stdout);
    if only_2xx && text.contains("Non-2xx") {
        bail!("wrk saw answers other than 2xx:\n{text}");
    }
    text.lines()
        .find_map(|line| {
            line.strip_prefix("Requests/sec:")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("wrk printed no rate: {text}"))
}

/// The `q`-th quantile (0..=1) of `samples`, sorted in place.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let last = samples.len() - 1;
    let rank = (q * crate::as_f64(last)).round();
    let index = (0..=last)
        .find(|&i| crate::as_f64(i) >= rank)
        .unwrap_or(last);
    samples[index]
}
