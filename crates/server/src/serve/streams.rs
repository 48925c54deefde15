//! The change streams' lane: a thread of lower scheduling priority for connections that
//! follow `/v1/changes/stream`.
//!
//! With hundreds of subscribers every change is written hundreds of times; on a machine whose
//! cores are busy that work would compete on equal terms with acknowledging webhooks, and
//! Stripe counts a slow acknowledgement as a failed delivery. Tokio has no task priorities, so
//! the priority is the kernel's: stream connections are served by a runtime on a thread whose
//! nice value is [`NICE`] higher. When cores are idle the thread runs at full speed; when they
//! are not, acknowledgements go first and streams catch up (a stream only ever waits, it never
//! loses a change: it resumes from the feed).
//!
//! A connection is sorted by a peek at its first request line, which leaves the bytes for
//! hyper to read. A connection that opens a stream after other requests (a keep-alive client
//! reusing its connection) is served where it is, correctly but without the lower priority.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// What a change stream's request line starts with.
const STREAM_REQUEST: &[u8] = b"GET /v1/changes/stream";

/// How much lower the streams' thread's priority is (`nice` values run from -20 to 19; CFS
/// gives a thread at 10 about a tenth of the time of one at 0 when both want a core).
const NICE: i32 = 10;

/// Where a new connection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Its first request opens the change stream.
    Stream,
    /// Anything else, including a request line that arrived in pieces.
    Requests,
    /// It closed, failed or sent nothing within the header timeout.
    Closed,
}

/// Sorts a new connection by its first bytes, without consuming them.
pub(super) async fn lane_of(stream: &TcpStream, header_read_timeout: Duration) -> Lane {
    let mut head = [0_u8; STREAM_REQUEST.len()];
    match tokio::time::timeout(header_read_timeout, stream.peek(&mut head)).await {
        // Silent for the whole header timeout: hyper would close it the same way.
        Err(_) | Ok(Err(_) | Ok(0)) => Lane::Closed,
        Ok(Ok(read)) if head[..read] == *STREAM_REQUEST => Lane::Stream,
        Ok(Ok(_)) => Lane::Requests,
    }
}

/// Serves `stream` with `serve` on the streams' thread, or here if that thread could not be
/// started.
pub(super) fn serve<F, Fut>(stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(streams) = runtime() else {
        tokio::spawn(serve(stream));
        return;
    };
    // A socket belongs to the runtime that registered it: hand it over as a plain socket.
    let socket = match stream.into_std() {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(%error, "a stream's connection could not be handed over");
            return;
        }
    };
    streams.spawn(async move {
        match TcpStream::from_std(socket) {
            Ok(stream) => serve(stream).await,
            Err(error) => tracing::debug!(%error, "a stream's connection could not be taken over"),
        }
    });
}

/// The streams' runtime, started on first use and kept for the life of the process.
fn runtime() -> Option<&'static Handle> {
    static STREAMS: OnceLock<Option<Handle>> = OnceLock::new();
    STREAMS.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        // At most 15 bytes: Linux keeps no more of a thread's name.
        .name("change-streams".to_owned())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%error, "change streams share the request threads: their runtime cannot start");
                    let _ = sender.send(None);
                    return;
                }
            };
            let _ = sender.send(Some(runtime.handle().clone()));
            runtime.block_on(std::future::pending::<()>());
        });
    if let Err(error) = thread {
        tracing::warn!(%error, "change streams share the request threads: their thread cannot start");
        return None;
    }
    receiver.recv().ok().flatten()
}

/// Lowers the calling thread's priority. On Linux the nice value belongs to the thread
/// (setpriority(2), NOTES), so the rest of the process keeps its own.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let lowered = rustix::process::getpriority_process(None)
        .and_then(|current| rustix::process::setpriority_process(None, (current + NICE).min(19)));
    if let Err(error) = lowered {
        tracing::warn!(%error, "change streams run at the same priority as acknowledgements");
    }
}

/// Elsewhere the nice value is the whole process's: leave it.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
