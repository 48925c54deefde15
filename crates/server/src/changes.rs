//! The entitlement change feed, for product services that would rather hear of a change than
//! ask on every request:
//!
//! - `GET /v1/changes?after=CURSOR&limit=N`: the changes after a cursor (from the first one
//!   without `after`), oldest first, each with its cursor, when it was recorded, what caused
//!   it and the customer's complete new entitlements answer; `next_cursor` to continue.
//! - `GET /v1/changes/stream`: the same as Server-Sent Events (`id:` is the cursor), from
//!   `Last-Event-ID` when the client sends one, else from now; it opens with a block naming
//!   where it starts (`id:`, no data), so a consumer whose connection dies before the first
//!   change still resumes without a gap; a comment line as heartbeat.
//! - `GET /v1/entitlements?customers=a,b,c` and `?changed_since=CURSOR`: answers in bulk, to
//!   fill a local copy before following the stream.
//!
//! A cursor names a row of the shared store's feed (see `subledger_engine::changes`), so it
//! means the same on every server and after restarts. One task per server hands new changes
//! to every stream, so subscribers cost no queries of their own once caught up: those this
//! server records as it records them, and others' (or any it missed) read from the store.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::header;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subledger_engine::Engine;
use subledger_store::ChangeRow;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::auth::Authorized;
use crate::error::ApiError;
use crate::AppState;

/// Changes per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// How often the tail asks the store for changes other servers recorded.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// How often an idle stream sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Batches of changes (up to 500 each) a stream may fall behind the tail before it reads them
/// from the store instead.
const TAIL_CAPACITY: usize = 1024;

/// Changes as the tail hands them to every stream: all it read at once, so a stream wakes
/// once per batch rather than once per change.
type ChangeBatch = Arc<Vec<Arc<PreparedChange>>>;

use subledger_engine::changes::{
    cursor_of, Change, RecordedChanges, UnreadableChange, CURSOR_PREFIX,
};

fn invalid_cursor(name: &str, value: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        format!("`{name}` must be a cursor this API gave (chg_ and digits), not `{value}`"),
    )
}

/// The row number a cursor names, checked against the newest one: a cursor this feed never
/// gave is refused rather than silently answered with nothing.
async fn parse_cursor(engine: &Engine, name: &str, value: &str) -> Result<i64, ApiError> {
    let seq = cursor_seq(name, value)?;
    let last = engine.last_change().await.map_err(store_failed)?;
    not_newer(name, value, seq, last)
}

/// The row number a cursor names, if it is one this API gives.
fn cursor_seq(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .strip_prefix(CURSOR_PREFIX)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<i64>().ok())
        .ok_or_else(|| invalid_cursor(name, value))
}

/// `seq`, unless it is newer than the newest change, `last`.
fn not_newer(name: &str, value: &str, seq: i64, last: i64) -> Result<i64, ApiError> {
    if seq > last {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_cursor",
            format!(
                "`{name}` names no change of this feed: `{value}` is newer than the newest, {}",
                cursor_of(last)
            ),
        ));
    }
    Ok(seq)
}

/// A stored change this build cannot read back: the feed cannot go past it.
fn unreadable(error: UnreadableChange) -> ApiError {
    tracing::error!(%error, "the change feed holds a damaged change");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unreadable_change",
        format!("{error}; an operator must repair it before the feed can go on"),
    )
}

fn store_failed(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "the change feed could not be read");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the change feed cannot be read right now; retry shortly",
    )
}

/// A page of changes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// Where to continue: the last change's cursor, or the `after` given when there is
    /// nothing newer (absent only while the feed is empty and no `after` was given).
    pub next_cursor: Option<String>,
    /// Whether more changes follow right away.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChangesQuery {
    /// A cursor: the changes after it (default: from the first)
    after: Option<String>,
    /// How many changes at most, 1 to 1000 (default 100)
    limit: Option<String>,
}

fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_LIMIT);
    };
    text.parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{text}`"),
            )
        })
}

/// The changes after a cursor, oldest first.
#[utoipa::path(get, path = "/v1/changes", tag = "changes",
    params(ChangesQuery),
    responses((status = 200, body = ChangesPage),
        (status = 400, description = "A malformed or unknown cursor, or a limit out of range", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 500, description = "A stored change cannot be read back (`unreadable_change`)", body = crate::error::ApiErrorBody),
        (status = 503, description = "The store cannot be read", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list(
    Authorized(state): Authorized,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<ChangesPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| bad_query("invalid_query", rejection.body_text()))?;
    let limit = parse_limit(query.limit.as_deref())?;
    let after = match query.after.as_deref() {
        Some(cursor) => Some(parse_cursor(&state.engine, "after", cursor).await?),
        None => None,
    };
    // One more than asked tells whether more follow.
    let mut rows = state
        .engine
        .changes_after(after.unwrap_or(0), limit + 1)
        .await
        .map_err(store_failed)?;
    let has_more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = rows.last().map(|row| row.seq).or(after).map(cursor_of);
    Ok(Json(ChangesPage {
        changes: rows
            .iter()
            .map(Change::of)
            .collect::<Result<_, _>>()
            .map_err(unreadable)?,
        next_cursor,
        has_more,
    }))
}

/// A change as a stream sends it, written once for every stream that sends it: the cursor
/// and the change's JSON (or why the stored row cannot be read). With hundreds of subscribers
/// each change would otherwise be parsed and written again per subscriber, on the cores that
/// acknowledge webhooks.
#[derive(Debug)]
struct PreparedChange {
    seq: i64,
    cursor: String,
    json: Result<String, String>,
}

impl PreparedChange {
    fn of(row: &ChangeRow) -> Self {
        let json = Change::of(row)
            .map_err(|error| error.to_string())
            .and_then(|change| serde_json::to_string(&change).map_err(|e| e.to_string()));
        Self {
            seq: row.seq,
            cursor: cursor_of(row.seq),
            json,
        }
    }
}

/// Follows the feed, once per server, for every stream: the changes this server records and
/// those others record.
#[derive(Debug)]
pub struct ChangeTail {
    sender: broadcast::Sender<ChangeBatch>,
    /// Set once the tail knows where it starts: no stream listens before that.
    started: tokio::sync::OnceCell<()>,
    /// The runtime of the request threads, where the tail and the streams read the store.
    store_lane: Option<Handle>,
}

impl ChangeTail {
    /// The tail of the state's feed, started on first use. It runs for as long as the
    /// process does (one small query every half second), so no stream can catch it stopping.
    ///
    /// A stream subscribes, then reads the store up to now, then follows the tail; so the
    /// tail must have settled where it starts before any stream subscribes. Were it to settle
    /// later, a change recorded between a stream's read and the tail's start would be in
    /// neither (found by `crates/cli/tests/hearing_changes.rs`).
    async fn of(state: &AppState) -> Arc<Self> {
        let tail = Arc::clone(&state.change_tail);
        let engine = &state.engine;
        tail.started
            .get_or_init(|| async {
                // Listen first, then read where the feed is: nothing falls in between.
                let recorded = engine.recorded_changes();
                let engine = Arc::clone(engine);
                let head = match tail
                    .read_store(async move { engine.last_change().await })
                    .await
                {
                    Ok(last) => last,
                    Err(error) => {
                        tracing::warn!(%error, "the change tail starts from the first change");
                        0
                    }
                };
                tail.follow(Arc::clone(&state.engine), head, recorded);
            })
            .await;
        tail
    }

    /// Runs a read of the store on the request threads and waits for its answer.
    ///
    /// Streams are served on a thread of lower priority (`serve::streams`). A read made there
    /// holds its store connection until that thread next gets a core, which on a busy
    /// machine can be tens of milliseconds; on SQLite the pool has one connection, so the
    /// inbox writer, and with it every webhook's acknowledgement, would wait on the streams
    /// after all. Made on the request threads, the read lets go of its connection at once.
    async fn read_store<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, StoreReadFailed>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let read = match &self.store_lane {
            Some(lane) => lane
                .spawn(work)
                .await
                .map_err(|error| StoreReadFailed(error.to_string()))?,
            None => work.await,
        };
        read.map_err(|error| StoreReadFailed(error.to_string()))
    }

    /// Hands every stream the changes after `head`, in order: those this process records as
    /// it records them (`recorded`, subscribed before `head` was read), and from the store
    /// those it did not see recorded (other servers', or after falling behind), which it
    /// finds as a gap before this process's next batch or at the next poll.
    fn follow(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        mut head: i64,
        mut recorded: broadcast::Receiver<RecordedChanges>,
    ) {
        let tail = Arc::clone(self);
        let spawn = |work| match &self.store_lane {
            Some(lane) => drop(lane.spawn(work)),
            None => drop(tokio::spawn(work)),
        };
        spawn(async move {
            loop {
                match engine.changes_after(head, 500).await {
                    Ok(rows) => {
                        let full = rows.len() == 500;
                        tail.hand_on(&mut head, &rows);
                        if full {
                            continue;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "the change tail cannot read the store"),
                }
                // Until something is missing, what this process records needs no read.
                loop {
                    tokio::select! {
                        batch = recorded.recv() => match batch {
                            Ok(rows) => match on_recorded(head, &rows) {
                                OnRecorded::HandOn => tail.hand_on(&mut head, &rows),
                                OnRecorded::AlreadyRead => {}
                                OnRecorded::ReadStore => break,
                            },
                            // Fell behind: the store has what was missed.
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => {
                                tokio::time::sleep(TAIL_POLL).await;
                                break;
                            }
                        },
                        () = tokio::time::sleep(TAIL_POLL) => break,
                    }
                }
            }
        });
    }

    /// Hands the rows after `head` to every stream, and moves `head` past them.
    fn hand_on(&self, head: &mut i64, rows: &[ChangeRow]) {
        let new = rows.iter().filter(|row| row.seq > *head);
        // No receiver is no error: nobody is listening right now.
        if self.sender.receiver_count() > 0 {
            let batch: Vec<_> = new.map(|row| Arc::new(PreparedChange::of(row))).collect();
            if !batch.is_empty() {
                let _ = self.sender.send(Arc::new(batch));
            }
        }
        *head = rows.last().map_or(*head, |row| row.seq.max(*head));
    }
}

impl Default for ChangeTail {
    /// A tail that reads the store on the runtime it is made on (the request threads', when
    /// the router is built), or wherever a stream asks when made outside any runtime.
    fn default() -> Self {
        Self {
            sender: broadcast::channel(TAIL_CAPACITY).0,
            started: tokio::sync::OnceCell::new(),
            store_lane: Handle::try_current().ok(),
        }
    }
}

/// A read of the store for the streams failed, or the request threads could not run it
/// (the process is shutting down).
#[derive(Debug)]
struct StoreReadFailed(String);

impl std::fmt::Display for StoreReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the tail does with a batch of changes this process recorded, having handed on every
/// change up to `head`.
#[derive(Debug, PartialEq, Eq)]
enum OnRecorded {
    /// It follows `head` with nothing left out: handed on as it is, with no read.
    HandOn,
    /// Read from the store already (the tail found it there first).
    AlreadyRead,
    /// Something came between (another server's changes, or numbers a rolled-back
    /// transaction took): the store has it, and this batch too.
    ReadStore,
}

fn on_recorded(head: i64, rows: &[ChangeRow]) -> OnRecorded {
    if rows.last().is_none_or(|row| row.seq <= head) {
        OnRecorded::AlreadyRead
    } else if follows(head, rows.first().map(|row| row.seq)) {
        OnRecorded::HandOn
    } else {
        OnRecorded::ReadStore
    }
}

/// Whether a batch starting at number `first` (none: empty) leaves no number out after `last`.
fn follows(last: i64, first: Option<i64>) -> bool {
    first.is_none_or(|first| first <= last.saturating_add(1))
}

/// Whether `batch` leaves no number out after `last`.
fn continues_after(last: i64, batch: &[Arc<PreparedChange>]) -> bool {
    follows(last, batch.first().map(|change| change.seq))
}

/// One stream's place in the feed.
struct Follower {
    engine: Arc<Engine>,
    tail: Arc<ChangeTail>,
    receiver: Option<broadcast::Receiver<ChangeBatch>>,
    /// The newest change sent.
    cursor: i64,
    ready: VecDeque<Arc<PreparedChange>>,
}

impl Follower {
    /// Whether `batch` leaves nothing out after the cursor. A batch that starts further on
    /// (the stream fell behind, or numbers were skipped by a transaction that rolled back)
    /// sends the stream back to the store, which answers either way.
    fn continues(&self, batch: &ChangeBatch) -> bool {
        let last_queued = self.ready.back().map_or(self.cursor, |row| row.seq);
        continues_after(last_queued, batch)
    }

    /// The next change after the cursor if one is waiting already, without waiting.
    fn next_waiting(&mut self) -> Option<Arc<PreparedChange>> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                if row.seq > self.cursor {
                    self.cursor = row.seq;
                    return Some(row);
                }
                continue;
            }
            match self.receiver.as_mut()?.try_recv() {
                Ok(batch) if self.continues(&batch) => self.ready.extend(batch.iter().cloned()),
                // `next` reads the store from the cursor, which holds this batch too.
                Ok(_) => {
                    self.receiver = None;
                    return None;
                }
                Err(broadcast::error::TryRecvError::Empty) => return None,
                // Fell behind the tail: `next` reads the store again.
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.receiver = None;
                    return None;
                }
                Err(broadcast::error::TryRecvError::Closed) => return None,
            }
        }
    }

    /// The next change after the cursor: from the store until caught up with the tail, then
    /// from the tail (back to the store if it fell too far behind).
    async fn next(&mut self) -> Arc<PreparedChange> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                if row.seq > self.cursor {
                    self.cursor = row.seq;
                    return row;
                }
                continue;
            }
            match &mut self.receiver {
                Some(receiver) => match receiver.recv().await {
                    Ok(batch) if self.continues(&batch) => {
                        self.ready.extend(batch.iter().cloned());
                    }
                    Ok(_) => self.receiver = None,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.receiver = None,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.receiver = None;
                        tokio::time::sleep(TAIL_POLL).await;
                    }
                },
                None => {
                    // Listen first, then read what came before: nothing falls in between.
                    let receiver = self.tail.sender.subscribe();
                    let (engine, cursor) = (Arc::clone(&self.engine), self.cursor);
                    let read = async move { engine.changes_after(cursor, 500).await };
                    match self.tail.read_store(read).await {
                        Ok(rows) => {
                            let caught_up = rows.len() < 500;
                            self.ready
                                .extend(rows.iter().map(|row| Arc::new(PreparedChange::of(row))));
                            if caught_up {
                                self.receiver = Some(receiver);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "a change stream cannot read the store; retrying");
                            tokio::time::sleep(TAIL_POLL).await;
                        }
                    }
                }
            }
        }
    }
}

/// The changes as Server-Sent Events.
#[utoipa::path(get, path = "/v1/changes/stream", tag = "changes",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (default: from now)")),
    responses((status = 200, description = "Server-Sent Events: first a block with only `id:`, the cursor the stream starts after; then per change `id:` the cursor, `event: entitlements.updated`, `data:` a change as `GET /v1/changes` gives it", content_type = "text/event-stream"),
        (status = 400, description = "A malformed or unknown Last-Event-ID", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 503, description = "The store cannot be read", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn stream(
    Authorized(state): Authorized,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = match headers.get("last-event-id").map(|value| value.to_str()) {
        Some(Ok(cursor)) => Some((cursor_seq("Last-Event-ID", cursor.trim())?, cursor.trim())),
        Some(Err(_)) => return Err(invalid_cursor("Last-Event-ID", "(not text)")),
        None => None,
    };
    let tail = ChangeTail::of(&state).await;
    // Served on the streams' thread: the store is read on the request threads (`read_store`).
    let engine = Arc::clone(&state.engine);
    let last = tail
        .read_store(async move { engine.last_change().await })
        .await
        .map_err(store_failed)?;
    let cursor = match resume {
        Some((seq, cursor)) => not_newer("Last-Event-ID", cursor, seq, last)?,
        None => last,
    };
    let follower = Follower {
        engine: Arc::clone(&state.engine),
        tail,
        receiver: None,
        cursor,
        ready: VecDeque::new(),
    };
    // The block that names where the stream starts: a consumer (an EventSource too) takes the
    // cursor as its last event id although no event is dispatched.
    let opening = format!("id: {}\n: following from here\n\n", cursor_of(cursor));
    let body = futures_util::stream::once(std::future::ready(Ok(Bytes::from(opening))))
        .chain(futures_util::stream::unfold(Some(follower), next_chunk));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The most bytes of changes written as one chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long a stream at the live tail that has a change gathers more before writing: during
/// a burst each subscriber costs one write per interval instead of one per batch, on the
/// cores that acknowledge webhooks; a change waits this long at most.
const GATHER: Duration = Duration::from_millis(50);

/// The stream's next chunk: the next change and every other one already waiting, written
/// together (with hundreds of subscribers, one write per subscriber for a burst of changes
/// rather than one per change), or a heartbeat after [`HEARTBEAT`] without any. A change
/// that cannot be read ends the stream with a comment saying so: skipping it would lose it,
/// and a reconnecting consumer meets the same error as a 500 from the list.
async fn next_chunk(
    follower: Option<Follower>,
) -> Option<(Result<Bytes, Infallible>, Option<Follower>)> {
    let mut follower = follower?;
    // `Follower::next` is cancel-safe: a change leaves its queue only when returned.
    let Ok(first) = tokio::time::timeout(HEARTBEAT, follower.next()).await else {
        return Some((Ok(Bytes::from_static(b":heartbeat\n\n")), Some(follower)));
    };
    let mut chunk = Vec::new();
    let mut change = Some(first);
    let mut gathered = false;
    loop {
        while let Some(next) = change.take() {
            match &next.json {
                Ok(json) => {
                    chunk.extend_from_slice(b"id: ");
                    chunk.extend_from_slice(next.cursor.as_bytes());
                    chunk.extend_from_slice(b"\nevent: entitlements.updated\ndata: ");
                    chunk.extend_from_slice(json.as_bytes());
                    chunk.extend_from_slice(b"\n\n");
                }
                Err(error) => {
                    tracing::error!(%error, "a change stream ends at a damaged change");
                    chunk.extend_from_slice(
                        format!(": {error}; the stream ends here\n\n").as_bytes(),
                    );
                    return Some((Ok(Bytes::from(chunk)), None));
                }
            }
            if chunk.len() < CHUNK_BYTES {
                change = follower.next_waiting();
            }
        }
        // Catching up fills whole chunks at once; at the live tail, wait a moment for more.
        if gathered || chunk.len() >= CHUNK_BYTES {
            break;
        }
        tokio::time::sleep(GATHER).await;
        gathered = true;
        change = follower.next_waiting();
    }
    Some((Ok(Bytes::from(chunk)), Some(follower)))
}

/// The most customers one bulk read names.
const MAX_CUSTOMERS: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BulkQuery {
    /// Customer ids, comma-separated (at most 100; a connected account's as acct_…/cus_…)
    customers: Option<String>,
    /// A cursor: the newest answer of each customer whose entitlements changed after it
    changed_since: Option<String>,
    /// With `changed_since`: how many changes to look at, 1 to 1000 (default 100)
    limit: Option<String>,
}

/// Answers in bulk.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkAnswer {
    /// Each customer's answer, as `GET /v1/customers/{id}/entitlements` gives it.
    #[schema(value_type = Vec<subledger_domain::entitlements::Entitlements>)]
    pub entitlements: Vec<Value>,
    /// With `customers`: those Subledger knows nothing of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_found: Option<Vec<String>>,
    /// With `changed_since`: where to continue (as in `GET /v1/changes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// With `changed_since`: whether more changes follow right away.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
}

fn bad_query(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Several customers' answers at once: named, or those changed since a cursor.
#[utoipa::path(get, path = "/v1/entitlements", tag = "changes",
    params(BulkQuery),
    responses((status = 200, body = BulkAnswer),
        (status = 400, description = "Neither or both of `customers` and `changed_since`, too many or malformed customer ids, a malformed or unknown cursor, a limit out of range", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 500, description = "A stored change cannot be read back (`unreadable_change`)", body = crate::error::ApiErrorBody),
        (status = 503, description = "The store cannot be read", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn bulk(
    Authorized(state): Authorized,
    query: Result<Query<BulkQuery>, QueryRejection>,
) -> Result<Json<BulkAnswer>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| bad_query("invalid_query", rejection.body_text()))?;
    match (query.customers.as_deref(), query.changed_since.as_deref()) {
        (Some(customers), None) => named(&state, customers),
        (None, Some(cursor)) => {
            let limit = parse_limit(query.limit.as_deref())?;
            changed_since(&state, cursor, limit).await
        }
        _ => Err(bad_query(
            "invalid_query",
            "ask for either `customers` (ids, comma-separated) or `changed_since` (a cursor)",
        )),
    }
}

fn named(state: &AppState, customers: &str) -> Result<Json<BulkAnswer>, ApiError> {
    let ids: Vec<&str> = customers.split(',').map(str::trim).collect();
    if ids.len() > MAX_CUSTOMERS {
        return Err(bad_query(
            "too_many_customers",
            format!(
                "`customers` names {} customers; ask for at most {MAX_CUSTOMERS} at once",
                ids.len()
            ),
        ));
    }
    if let Some(bad) = ids.iter().find(|id| {
        id.is_empty()
            || id.len() > 255
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
    }) {
        return Err(bad_query(
            "invalid_customers",
            format!(
                "`customers` must be Stripe customer ids separated by commas; `{bad}` is not one"
            ),
        ));
    }
    let mut entitlements = Vec::with_capacity(ids.len());
    let mut not_found = Vec::new();
    for id in ids {
        let answer = state
            .engine
            .entitlements(id)
            .and_then(|found| found.json().ok());
        match answer.and_then(|json| serde_json::from_slice(&json).ok()) {
            Some(answer) => entitlements.push(answer),
            None => not_found.push(id.to_owned()),
        }
    }
    Ok(Json(BulkAnswer {
        entitlements,
        not_found: Some(not_found),
        next_cursor: None,
        has_more: None,
    }))
}

/// The newest recorded answer of each customer changed after `cursor`: read from the feed,
/// not from this server's memory, so a consumer that continues from `next_cursor` is never
/// ahead of the answers it was given.
async fn changed_since(
    state: &AppState,
    cursor: &str,
    limit: i64,
) -> Result<Json<BulkAnswer>, ApiError> {
    let after = parse_cursor(&state.engine, "changed_since", cursor).await?;
    let mut rows = state
        .engine
        .changes_after(after, limit + 1)
        .await
        .map_err(store_failed)?;
    let has_more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = cursor_of(rows.last().map_or(after, |row| row.seq));
    let mut newest: std::collections::BTreeMap<&str, &ChangeRow> =
        std::collections::BTreeMap::new();
    for row in &rows {
        newest.insert(&row.customer_id, row);
    }
    let mut latest: Vec<&ChangeRow> = newest.into_values().collect();
    latest.sort_by_key(|row| row.seq);
    Ok(Json(BulkAnswer {
        entitlements: latest
            .into_iter()
            .map(|row| Change::of(row).map(|change| change.entitlements))
            .collect::<Result<_, _>>()
            .map_err(unreadable)?,
        not_found: None,
        next_cursor: Some(next_cursor),
        has_more: Some(has_more),
    }))
}

/// One endpoint's lane, as operators see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LaneStatus {
    /// The endpoint, without credentials.
    pub endpoint: String,
    pub lane: i64,
    /// The newest change this lane is done with (delivered or given up).
    pub delivered_through: String,
    /// The change it is retrying, how often it tried, and when it tries next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrying: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One attempt to deliver one change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptStatus {
    pub endpoint: String,
    pub change: String,
    pub customer: String,
    pub attempt: i64,
    pub at: DateTime<Utc>,
    /// `delivered`, `failed` (to be retried) or `gave_up`.
    pub outcome: String,
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// Outbound notifications: where each endpoint's lanes are, and the newest attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationStatus {
    pub lanes: Vec<LaneStatus>,
    /// The newest 100, newest first.
    pub attempts: Vec<AttemptStatus>,
}

/// Outbound notifications, for operators.
#[utoipa::path(get, path = "/v1/notifications", tag = "changes",
    responses((status = 200, body = NotificationStatus),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 403, description = "Not an admin token", body = crate::error::ApiErrorBody),
        (status = 503, description = "The store cannot be read", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn notifications(
    crate::auth::Admin(state): crate::auth::Admin,
) -> Result<Json<NotificationStatus>, ApiError> {
    use subledger_engine::notify::redacted;
    let (lanes, attempts) = state
        .engine
        .notification_status(100)
        .await
        .map_err(store_failed)?;
    let time = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    Ok(Json(NotificationStatus {
        lanes: lanes
            .into_iter()
            .map(|lane| LaneStatus {
                endpoint: redacted(&lane.endpoint),
                lane: lane.lane,
                delivered_through: cursor_of(lane.delivered_through),
                retrying: lane.retry.as_ref().map(|r| cursor_of(r.seq)),
                attempts: lane.retry.as_ref().map(|r| r.attempts),
                next_attempt_at: lane.retry.as_ref().map(|r| time(r.next_attempt_ms)),
            })
            .collect(),
        attempts: attempts
            .into_iter()
            .map(|a| AttemptStatus {
                endpoint: redacted(&a.endpoint),
                change: cursor_of(a.change_seq),
                customer: a.customer_id,
                attempt: a.attempt,
                at: time(a.at_ms),
                outcome: a.outcome,
                status: a.status,
                error: a.error,
                duration_ms: a.duration_ms,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: std::ops::RangeInclusive<i64>) -> Vec<Arc<PreparedChange>> {
        seqs.map(|seq| {
            Arc::new(PreparedChange {
                seq,
                cursor: cursor_of(seq),
                json: Ok(String::new()),
            })
        })
        .collect()
    }

    #[test]
    fn a_batch_that_skips_numbers_sends_the_stream_back_to_the_store() {
        assert!(continues_after(12, &batch(13..=15)));
        assert!(
            continues_after(14, &batch(13..=15)),
            "rows already sent are skipped"
        );
        assert!(!continues_after(12, &batch(14..=15)), "13 would be lost");
        assert!(continues_after(12, &[]));
    }

    fn rows(seqs: &[i64]) -> Vec<ChangeRow> {
        seqs.iter()
            .map(|&seq| ChangeRow {
                seq,
                customer_id: format!("cus_{seq}"),
                cause: "log:1".to_owned(),
                changed_at_ms: 0,
                answer: "{}".to_owned(),
            })
            .collect()
    }

    /// The changes this server records are handed to the streams without reading them back,
    /// unless something may have come between.
    #[test]
    fn the_tail_reads_the_store_only_for_what_it_did_not_see_recorded() {
        assert_eq!(on_recorded(5, &rows(&[6, 7])), OnRecorded::HandOn);
        // Partly read from the store already: the rest is handed on.
        assert_eq!(on_recorded(6, &rows(&[6, 7])), OnRecorded::HandOn);
        assert_eq!(on_recorded(7, &rows(&[6, 7])), OnRecorded::AlreadyRead);
        assert_eq!(on_recorded(5, &rows(&[])), OnRecorded::AlreadyRead);
        // Number 6 is another server's, or was taken by a transaction that rolled back.
        assert_eq!(on_recorded(5, &rows(&[7, 8])), OnRecorded::ReadStore);
    }

    /// What [`ChangeTail::hand_on`] sends: only what follows the head, once.
    #[tokio::test]
    async fn the_tail_hands_on_each_change_once() {
        let tail = ChangeTail::default();
        let mut stream = tail.sender.subscribe();
        let mut head = 6;
        tail.hand_on(&mut head, &rows(&[5, 6, 7, 8]));
        tail.hand_on(&mut head, &rows(&[7, 8]));
        tail.hand_on(&mut head, &rows(&[9]));
        let mut sent = Vec::new();
        while let Ok(batch) = stream.try_recv() {
            sent.push(batch.iter().map(|change| change.seq).collect::<Vec<_>>());
        }
        assert_eq!(sent, [vec![7, 8], vec![9]]);
        assert_eq!(head, 9);
    }

    /// Streams are served on a thread of lower priority; their store reads must run on the
    /// request threads the tail was made on, or a read would hold a store connection (on
    /// SQLite the only one) until the streams' thread got a core again.
    #[test]
    fn streams_read_the_store_on_the_request_threads() -> std::io::Result<()> {
        let requests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("request-thread")
            .enable_all()
            .build()?;
        let tail = requests.block_on(async { ChangeTail::default() });
        let streams = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let read_on = streams.block_on(tail.read_store(async {
            Ok::<_, Infallible>(std::thread::current().name().map(str::to_owned))
        }));
        assert_eq!(
            read_on.map_err(|error| error.to_string()),
            Ok(Some("request-thread".to_owned()))
        );
        Ok(())
    }
}
