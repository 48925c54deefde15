//! The golden event log: a year of twelve customers' billing (renewals, failed payments and
//! dunning, cancellations, orders, an operator's hold), as stored by the build that wrote it
//! (`tests/golden/events.jsonl`, one stored event per line, byte for byte), with that build's
//! answers (`tests/golden/answers.json`). Every later build must load it on every backend and
//! answer exactly as recorded: entitlements at the log's last moment by both clocks, the
//! explanation of a feature, orders; `replay` and `replay --verify` agree with it.
//!
//! When a stored shape changes, the old log must still load (an upcaster in
//! `subledger_domain::schema`); the log is never regenerated to make this test pass. A new
//! log, written by `SUBLEDGER_WRITE_GOLDEN=1 cargo test -p subledger-scenario --test golden`,
//! is added beside the old ones, never in their place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::{a_year_of_history, catalog, webhook_fed_on};
use serde_json::{json, Value};
use subledger_engine::clock::ManualClock;
use subledger_engine::{Basis, Engine, EngineConfig};
use subledger_store::scratch::ScratchDatabase;
use subledger_store::Database;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One stored event, as the events table holds it.
#[derive(Debug, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
struct StoredRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

/// Every answer the golden log must keep giving.
async fn answers(engine: &Engine, at: DateTime<Utc>, customers: &[String]) -> Value {
    let mut by_customer = BTreeMap::new();
    for customer in customers {
        let effective = engine
            .entitlements_at(customer, at, Basis::Effective)
            .await
            .unwrap();
        let served: Value = engine
            .entitlements(customer)
            .map(|found| serde_json::from_slice(&found.json().unwrap()).unwrap())
            .unwrap_or(Value::Null);
        let explained = engine
            .explain(customer, "sso", Some((at, Basis::Effective)))
            .await
            .unwrap();
        by_customer.insert(
            customer.clone(),
            json!({
                "entitlements_at": effective,
                "served": served,
                "explain_sso": explained,
                "timeline_events": engine.timeline(customer).await.unwrap().len(),
            }),
        );
    }
    let mut orders = BTreeMap::new();
    for n in [4, 13] {
        let id = format!("order_{n}");
        orders.insert(id.clone(), json!(engine.order(None, &id).await.unwrap()));
    }
    json!({ "at": at, "customers": by_customer, "orders": orders })
}

/// Every value recorded is answered the same; fields added to an answer since are allowed
/// (an answer may grow, never change).
fn assert_recorded(recorded: &Value, answered: &Value, store: &str) {
    fn differences(path: &str, recorded: &Value, answered: &Value, out: &mut Vec<String>) {
        match (recorded, answered) {
            (Value::Object(r), Value::Object(a)) => {
                for (key, value) in r {
                    match a.get(key) {
                        Some(answer) => differences(&format!("{path}.{key}"), value, answer, out),
                        None => out.push(format!("{path}.{key}: recorded {value}, now missing")),
                    }
                }
            }
            (Value::Array(r), Value::Array(a)) if r.len() == a.len() => {
                for (i, (value, answer)) in r.iter().zip(a).enumerate() {
                    differences(&format!("{path}[{i}]"), value, answer, out);
                }
            }
            (r, a) if r == a => {}
            (r, a) => out.push(format!("{path}: recorded {r}, now {a}")),
        }
    }
    let mut out = Vec::new();
    differences("", recorded, answered, &mut out);
    assert!(
        out.is_empty(),
        "{store}: the golden log answers differently:\n{}",
        out.join("\n")
    );
}

async fn rows_of(db: &Database) -> Vec<StoredRow> {
    const SQL: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                              payload, metadata FROM events ORDER BY position";
    match db {
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Database::Postgres(_) => unreachable!("the golden log is written from SQLite"),
    }
}

async fn import(db: &Database, rows: &[StoredRow]) {
    for row in rows {
        let sql = match db {
            Database::Sqlite(_) => "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            Database::Postgres(_) => "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, CAST($6 AS json), CAST($7 AS json))",
        };
        macro_rules! insert {
            ($pool:expr) => {
                sqlx::query(sql)
                    .bind(&row.aggregate_type)
                    .bind(&row.aggregate_id)
                    .bind(row.sequence)
                    .bind(&row.event_type)
                    .bind(&row.event_version)
                    .bind(&row.payload)
                    .bind(&row.metadata)
                    .execute($pool)
                    .await
                    .unwrap()
                    .rows_affected()
            };
        }
        let inserted = match db {
            Database::Sqlite(pool) => insert!(pool),
            Database::Postgres(pool) => insert!(pool),
        };
        assert_eq!(inserted, 1);
    }
}

fn engine_config(url: &str, at: DateTime<Utc>) -> EngineConfig {
    let mut config = EngineConfig::new(url, catalog());
    config.clock = Arc::new(ManualClock::new(at));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_log_loads_and_answers_exactly_as_recorded() {
    if std::env::var("SUBLEDGER_WRITE_GOLDEN").is_ok() {
        write_golden().await;
    }
    let text = std::fs::read_to_string(golden_dir().join("events.jsonl")).unwrap();
    let rows: Vec<StoredRow> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("answers.json")).unwrap())
            .unwrap();
    let at: DateTime<Utc> = serde_json::from_value(recorded["at"].clone()).unwrap();
    let customers: Vec<String> = recorded["customers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        rows.len() > 100 && customers.len() == 12,
        "{} events",
        rows.len()
    );

    let file = std::env::temp_dir().join(format!("subledger-golden-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut stores = vec![
        ScratchDatabase::sqlite_at(&format!("sqlite://{}", file.display()))
            .await
            .unwrap(),
    ];
    stores.extend(ScratchDatabase::postgres().await.unwrap());
    for scratch in stores {
        import(&scratch.database, &rows).await;
        let url = scratch.url.clone();
        let engine = Engine::start(engine_config(&url, at)).await.unwrap();
        engine.drain().await.unwrap();
        let answered = answers(&engine, at, &customers).await;
        assert_recorded(&recorded, &answered, scratch.name);

        // replay --verify finds the saved views equal to a rebuild; replay changes no answer.
        assert!(
            engine.verify_views(&mut |_| {}).await.unwrap().is_empty(),
            "{}",
            scratch.name
        );
        engine.replay(&mut |_| {}).await.unwrap();
        assert!(
            engine.verify_views(&mut |_| {}).await.unwrap().is_empty(),
            "{}",
            scratch.name
        );
        assert_recorded(
            &recorded,
            &answers(&engine, at, &customers).await,
            scratch.name,
        );
        engine.close().await;
        scratch.cleanup().await.unwrap();
    }
    let _ = std::fs::remove_file(&file);
}

/// Writes a new golden log from today's build (see the module docs before using it).
async fn write_golden() {
    let mut story = a_year_of_history(12);
    // One more customer's card fails at its last renewal: in dunning, within grace, at the end.
    story
        .attach_card("cus_00007", "pm_card_chargeCustomerFail")
        .unwrap();
    story.advance_by(chrono::Duration::days(5)).unwrap();
    let file =
        std::env::temp_dir().join(format!("subledger-golden-write-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let scratch = ScratchDatabase::sqlite_at(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let engine = webhook_fed_on(&story, &scratch).await;
    let at = story.now();
    engine
        .place_hold(
            "cus_00005",
            subledger_engine::NewHold {
                hold_id: "hold_fraud_review".to_owned(),
                reason: "fraud review".to_owned(),
                at: Some(at - chrono::Duration::days(2)),
                ..subledger_engine::NewHold::default()
            },
            "golden",
        )
        .await
        .unwrap();
    engine.drain().await.unwrap();
    let rows = rows_of(&scratch.database).await;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::create_dir_all(golden_dir()).unwrap();
    std::fs::write(golden_dir().join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    let customers: Vec<String> = story.customers().map(|c| c.id.clone()).collect();
    let served = Engine::start(engine_config(&scratch.url, at))
        .await
        .unwrap();
    served.drain().await.unwrap();
    let recorded = answers(&served, at, &customers).await;
    std::fs::write(
        golden_dir().join("answers.json"),
        serde_json::to_string_pretty(&recorded).unwrap() + "\n",
    )
    .unwrap();
    let _ = std::fs::remove_file(&file);
}
