//! The webhook receiver's half of the engine: verify, then one durable insert. Nothing else.
//!
//! Concurrent deliveries are group-committed: a single writer task takes every request that is
//! waiting and stores them in one transaction, so under load many deliveries share one commit
//! (and one fsync) instead of queueing for one each. Each caller is answered only after the
//! commit that holds its row.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use subledger_store::{Database, NewInboxEvent, StoreError};
use subledger_stripe::{EnvelopeError, EventEnvelope, SignatureError};
use tokio::sync::{mpsc, oneshot, Notify};

/// What the receiver tells Stripe after a successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: String,
    /// The event was already in the inbox (a redelivery).
    pub duplicate: bool,
}

/// Why a delivery was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    NotAnEvent(#[from] EnvelopeError),
    #[error("no webhook signing secret is configured")]
    NoSecretsConfigured,
    #[error("the event store is unavailable")]
    StoreUnavailable(#[source] Arc<StoreError>),
}

/// The most deliveries one commit takes.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<bool, Arc<StoreError>>>;

/// The handle callers use to store an event; the writer task owns the database side.
#[derive(Debug, Clone)]
pub(crate) struct InboxWriter {
    requests: mpsc::Sender<(NewInboxEvent, Reply)>,
    /// Deliveries sent and not yet answered.
    waiting: Arc<AtomicUsize>,
}

/// Counts a delivery as waiting until it is answered or its request is dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InboxWriter {
    /// Starts the writer task. `stored` is notified after each commit that added rows.
    pub(crate) fn spawn(db: Database, stored: Arc<Notify>) -> Self {
        let (requests, mut receiver) = mpsc::channel::<(NewInboxEvent, Reply)>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                match db.insert_inbox_events(&events).await {
                    Ok(new) => {
                        if new.iter().any(|is_new| *is_new) {
                            stored.notify_one();
                        }
                        for (reply, is_new) in replies.into_iter().zip(new) {
                            // A caller that gave up (client disconnected) is no loss: the row
                            // is stored and a redelivery will be answered as a duplicate.
                            let _ = reply.send(Ok(is_new));
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, rows = events.len(), "inbox insert failed");
                        let error = Arc::new(error);
                        for reply in replies {
                            let _ = reply.send(Err(Arc::clone(&error)));
                        }
                    }
                }
            }
        });
        Self {
            requests,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many deliveries are waiting for their row to be stored.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Stores one event; `Ok(true)` if it was new.
    pub(crate) async fn store(&self, event: NewInboxEvent) -> Result<bool, Arc<StoreError>> {
        let _waiting = Waiting::new(&self.waiting);
        let (reply, answer) = oneshot::channel();
        let closed = || {
            Arc::new(StoreError::Corrupt(
                "the inbox writer has stopped".to_owned(),
            ))
        };
        self.requests
            .send((event, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Reads the envelope of a verified body into an inbox row.
pub(crate) fn inbox_row(
    body: &[u8],
    received_at_ms: i64,
    correlation_id: &str,
) -> Result<NewInboxEvent, EnvelopeError> {
    let envelope = EventEnvelope::parse(body)?;
    // The envelope parsed as JSON, so the body is UTF-8; keep it byte for byte.
    let payload = std::str::from_utf8(body)
        .map_err(|e| EnvelopeError::NotJson(e.to_string()))?
        .to_owned();
    Ok(NewInboxEvent {
        event_id: envelope.id,
        event_type: envelope.event_type,
        api_version: envelope.api_version,
        livemode: envelope.livemode,
        account: envelope.account,
        ordering_key: envelope.ordering_key,
        stripe_created: envelope.created,
        payload,
        received_at_ms,
        correlation_id: correlation_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery counts as waiting from its send until it is answered, or until its request
    /// is dropped (a client that hung up): the worker never waits on a count that leaked.
    #[tokio::test]
    async fn a_delivery_waits_until_answered_or_dropped() {
        let (requests, mut receiver) = mpsc::channel::<(NewInboxEvent, Reply)>(4);
        let writer = InboxWriter {
            requests,
            waiting: Arc::new(AtomicUsize::new(0)),
        };
        let row = || NewInboxEvent {
            event_id: "evt_1".to_owned(),
            event_type: "customer.created".to_owned(),
            api_version: None,
            livemode: false,
            account: None,
            ordering_key: None,
            stripe_created: 1,
            payload: "{}".to_owned(),
            received_at_ms: 1,
            correlation_id: "corr_1".to_owned(),
        };
        let answered = tokio::spawn({
            let writer = writer.clone();
            async move { writer.store(row()).await }
        });
        let (_, reply) = receiver.recv().await.unwrap();
        assert_eq!(writer.waiting(), 1);
        reply.send(Ok(true)).unwrap();
        assert!(answered.await.unwrap().unwrap());
        assert_eq!(writer.waiting(), 0);

        let abandoned = tokio::spawn({
            let writer = writer.clone();
            async move { writer.store(row()).await }
        });
        let _request = receiver.recv().await.unwrap();
        assert_eq!(writer.waiting(), 1);
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(writer.waiting(), 0);
    }
}
