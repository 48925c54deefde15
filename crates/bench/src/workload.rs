//! The synthetic account: signed subscription deliveries of a real delivery's size, stored
//! through the engine's own ingest path, and the worker run until nothing is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use subledger_engine::Engine;
use subledger_stripe::WebhookSecret;

use crate::{per_sec, PAYLOAD_BYTES, SECRET};

/// A subscription event for customer `n`: the `seq`-th change, with `quantity` seats.
pub fn subscription_event(event_type: &str, n: u32, seq: u32, quantity: u32) -> Value {
    let mut object = subledger_stripe::fixtures::resource("subscription");
    object["id"] = json!(format!("sub_bench{n}"));
    object["customer"] = json!(format!("cus_bench{n}"));
    object["status"] = json!("active");
    object["items"]["data"][0]["price"]["lookup_key"] = json!("pro_monthly");
    object["items"]["data"][0]["quantity"] = json!(quantity);
    object["metadata"] = json!({});
    let created = 1_767_225_600 + i64::from(seq);
    let mut event = subledger_stripe::fixtures::event(
        &format!("evt_bench{n}x{seq}"),
        event_type,
        created,
        object,
    );
    if seq > 0 {
        event["data"]["previous_attributes"] =
            json!({ "items": { "data": [{ "quantity": quantity - 1 }] } });
    }
    // Pad to the size of a real delivery (Stripe's objects carry much more than we read).
    let size = event.to_string().len();
    event["data"]["object"]["description"] = json!("x".repeat(PAYLOAD_BYTES.saturating_sub(size)));
    event
}

/// Stores every delivery in the inbox, signed, 32 at a time as concurrent requests would.
pub async fn ingest(engine: &Arc<Engine>, events: Vec<Value>) -> Result<()> {
    let mut pending = tokio::task::JoinSet::new();
    for (n, (signature, body)) in signed(&events)?.into_iter().enumerate() {
        let engine = Arc::clone(engine);
        pending.spawn(async move {
            engine
                .receive_webhook(Some(&signature), &body, &format!("bench-{n}"))
                .await
        });
        if pending.len() >= 32 {
            if let Some(done) = pending.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs the worker until nothing is due: rows handled and the time it took.
pub async fn work(engine: &Engine) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut rows = 0u64;
    loop {
        let report = engine.process_inbox().await?;
        if report.failed > 0 {
            bail!("{} rows failed", report.failed);
        }
        if report.handled() == 0 {
            return Ok((rows, started.elapsed()));
        }
        rows += u64::try_from(report.handled())?;
    }
}

/// The rate of the first 500 and of the last 100 of `events` rows of one customer. The worker
/// handles rows a batch at a time, so each rate is over whole batches: from the start to the
/// first batch that reaches 500 rows, and from the last batch boundary that leaves at least
/// 100 rows to the end.
pub async fn history_rates(engine: &Engine, events: u32) -> Result<(f64, f64)> {
    let started = Instant::now();
    // (rows handled, when) at every batch boundary, the start included.
    let mut boundaries = vec![(0u64, started)];
    loop {
        let report = engine.process_inbox().await?;
        if report.failed > 0 {
            bail!("{} rows failed", report.failed);
        }
        if report.handled() == 0 {
            break;
        }
        let done = boundaries.last().map_or(0, |(done, _)| *done);
        boundaries.push((done + u64::try_from(report.handled())?, Instant::now()));
    }
    let total = u64::from(events);
    let (done, ended) = *boundaries.last().context("no rows handled")?;
    if done != total {
        bail!("the history run handled {done} rows of {total}");
    }
    let &(first_rows, first_end) = boundaries
        .iter()
        .find(|(done, _)| *done >= 500)
        .context("fewer than 500 rows")?;
    let &(last_from, last_start) = boundaries
        .iter()
        .rev()
        .find(|(done, _)| *done + 100 <= total)
        .context("fewer than 100 rows")?;
    Ok((
        per_sec(first_rows, first_end - started),
        per_sec(total - last_from, ended - last_start),
    ))
}

/// Deliveries ready to send: each event's signature header (signed now) and body.
pub fn signed(events: &[Value]) -> Result<Vec<(String, Vec<u8>)>> {
    let secret = WebhookSecret::new(SECRET);
    let now = chrono::Utc::now().timestamp();
    events
        .iter()
        .map(|event| {
            let body = serde_json::to_vec(event)?;
            Ok((secret.header(now, &body), body))
        })
        .collect()
}
