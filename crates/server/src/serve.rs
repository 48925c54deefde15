//! Serving the router over HTTP/1.1 with limits: each a default, a flag and a variable in the
//! CLI. `axum::serve` has none of them, and a server facing the internet needs all:
//!
//! - a request's headers must arrive within `header_read_timeout`; the same bound closes a
//!   keep-alive connection that sends nothing (hyper starts the timer whenever it waits for a
//!   request head), so slow or idle clients cannot hold connections for ever;
//! - a request's body may pause at most `body_read_timeout` between two pieces (a webhook
//!   whose body stops arriving is answered `408`); bodies are at most 1 MiB;
//! - at most `max_connections` are open at once; while that many are, new ones wait in the
//!   kernel's accept queue rather than being accepted and starved;
//! - on shutdown it stops accepting, lets requests in flight finish (at most `drain_timeout`),
//!   then returns;
//! - a connection whose first request opens the change stream is served on a thread of its
//!   own with a lower scheduling priority ([`streams`]): hundreds of subscribers receiving
//!   every change must not delay a webhook's acknowledgement, which is what Stripe waits for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

mod streams;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    /// Generous for Stripe (it sends a delivery in one go, and waits 20 s for the answer) and
    /// for product services on a keep-alive pool; tight enough that a slow-loris client holds
    /// a connection for seconds, not for ever.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 4_096,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(LazyTimer)
        .header_read_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        // A free slot first, so that over the limit connections wait to be accepted.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: the error is the listener's, not
                    // one connection's. Pause rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (http, router, watcher) = (Arc::clone(&http), router.clone(), graceful.watcher());
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match streams::lane_of(&stream, header_read_timeout).await {
                streams::Lane::Closed => {}
                streams::Lane::Stream => {
                    streams::serve(stream, move |stream| async move {
                        serve_connection(&http, router, watcher, stream).await;
                        drop(slot);
                    });
                }
                streams::Lane::Requests => {
                    serve_connection(&http, router, watcher, stream).await;
                    drop(slot);
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            after = ?limits.drain_timeout,
            "requests still in flight at shutdown were cut off"
        );
    }
}

/// Serves the requests of one connection until it closes or the server shuts down.
async fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    router: Router,
    watcher: Watcher,
    stream: TcpStream,
) {
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// hyper's timer for the header timeout, resetting lazily. hyper moves a connection's header
/// deadline at every request; with `TokioTimer` each move re-registers a tokio timer, which
/// took a fifth of the entitlement check's throughput and a third of one connection's ingest
/// rate in `make bench` (SQLite, 5,000 rows: 75,700 requests/s and 1,102 deliveries/s, against
/// 94,500 and 1,821 with no header timeout at all). Here a move only records the new deadline;
/// the armed tokio timer, when it fires, re-arms itself once for the later deadline.
#[derive(Debug, Clone, Copy)]
struct LazyTimer;

struct LazySleep {
    deadline: Instant,
    armed: Pin<Box<tokio::time::Sleep>>,
}

impl std::future::Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.armed.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= this.deadline {
                return Poll::Ready(());
            }
            // The deadline moved while the timer was armed: arm it for the new one.
            this.armed.as_mut().reset(this.deadline.into());
        }
    }
}

impl hyper::rt::Sleep for LazySleep {}

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep {
            deadline,
            armed: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LazySleep>() {
            Some(mut lazy) => {
                if new_deadline < lazy.armed.deadline().into_std() {
                    // Earlier than armed: only a real reset fires in time.
                    lazy.armed.as_mut().reset(new_deadline.into());
                }
                lazy.deadline = new_deadline;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}
